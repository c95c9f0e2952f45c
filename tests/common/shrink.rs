//! Example models at reduced sizes: every convolution and hidden linear
//! layer `factor` times narrower (at least 2 wide), the architecture
//! otherwise unchanged, so backends can be checked against the slow
//! reference interpreter on the real layer sequences.

use snnc::model::{Layer, LayerKind, Model};

pub fn shrink(model: &Model, factor: usize) -> Model {
    let mut m = model.clone();
    let n = m.layers.len();
    for (i, l) in m.layers.iter_mut().enumerate() {
        // The last linear layer is the readout: its width is the classes.
        let readout = i + 1 == n;
        narrow(l, factor, readout);
    }
    m
}

fn narrow(l: &mut Layer, factor: usize, readout: bool) {
    match &mut l.kind {
        LayerKind::Conv2d { out, .. } => *out = (*out / factor).max(2),
        LayerKind::Linear { out, .. } if !readout => *out = (*out / factor).max(2),
        LayerKind::Residual { main, shortcut } => {
            for x in main.iter_mut().chain(shortcut.iter_mut()) {
                narrow(x, factor, false);
            }
        }
        _ => {}
    }
}

/// An ImageNet model (3×224×224 input) on 3×64×64 images: its final
/// average pool (7×7, the adaptive pool to 1×1 on a 7×7 map) becomes the
/// 2×2 pool that does the same on the 2×2 map; every other layer is kept.
/// The reference interpreter then runs the whole architecture in seconds.
pub fn small_images(model: &Model) -> Model {
    let mut m = model.clone();
    if m.input.shape != [3, 224, 224] {
        return m;
    }
    m.input.shape = vec![3, 64, 64];
    for l in m.layers.iter_mut() {
        if let LayerKind::AvgPool { kernel, stride, .. } = &mut l.kind {
            if *kernel == 7 && *stride == 7 {
                (*kernel, *stride) = (2, 2);
            }
        }
    }
    m
}
