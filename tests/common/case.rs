//! A random test case for a model: parameters, inputs, labels.

use snnc::init::{self, Params};
use snnc::model::{Model, Reset, SurrogateKind};
use snnc::rng::Rng;
use snnc::shape;
use snnc::tensor::Tensor;

pub struct Case {
    pub params: Params,
    pub x: Tensor<f64>,
    pub labels: Tensor<f64>,
}

/// Initialised parameters (BN γ, β jittered off 1 and 0), inputs uniform in
/// [0, `scale`) and random one-hot labels; `salt` separates the draws of
/// different test files.
pub fn case(model: &Model, batch: usize, seed: u64, scale: f64, salt: u64) -> Case {
    let analysis = shape::analyze(model).expect("valid model");
    let mut params = init::init_params(&analysis, seed);
    let mut rng = Rng::new(seed ^ salt);
    let mut names: Vec<String> = params.keys().cloned().collect();
    names.sort();
    for name in names {
        let p = params.get_mut(&name).unwrap();
        if name.ends_with(".gamma") {
            p.data.iter_mut().for_each(|v| *v = rng.range(0.5, 1.5));
        } else if name.ends_with(".beta") {
            p.data.iter_mut().for_each(|v| *v = rng.range(-0.3, 0.3));
        }
    }
    let mut xshape = vec![batch];
    xshape.extend_from_slice(&model.input.shape);
    let n: usize = xshape.iter().product();
    let x = Tensor::from_vec(&xshape, (0..n).map(|_| scale * rng.uniform()).collect());
    let k = analysis.output[0];
    let mut labels = Tensor::zeros(&[batch, k]);
    for b in 0..batch {
        labels.data[b * k + rng.below(k)] = 1.0;
    }
    Case { params, x, labels }
}

/// The four reset variants: (reset, detached).
pub const RESETS: [(Reset, bool); 4] = [
    (Reset::Soft, true),
    (Reset::Soft, false),
    (Reset::Hard, true),
    (Reset::Hard, false),
];

/// Each surrogate with an α.
pub const SURROGATES: [(SurrogateKind, f64); 4] = [
    (SurrogateKind::Sigmoid, 4.0),
    (SurrogateKind::Atan, 2.0),
    (SurrogateKind::Triangle, 2.0),
    (SurrogateKind::FastSigmoid, 4.0),
];
