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
