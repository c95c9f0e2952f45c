//! Parameter initialisation from a seed (deterministic, in parameter order).

use crate::rng::Rng;
use crate::shape::{Analysis, Init};
use crate::tensor::Tensor;
use std::collections::HashMap;

pub type Params = HashMap<String, Tensor<f64>>;

pub fn init_params(analysis: &Analysis, seed: u64) -> Params {
    let mut rng = Rng::new(seed);
    analysis
        .params()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let data = match p.init {
                Init::KaimingUniform { fan_in } => {
                    let b = (6.0 / fan_in as f64).sqrt();
                    (0..n).map(|_| rng.range(-b, b)).collect()
                }
                Init::BiasUniform { fan_in } => {
                    let b = 1.0 / (fan_in as f64).sqrt();
                    (0..n).map(|_| rng.range(-b, b)).collect()
                }
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
            };
            (p.name.clone(), Tensor::from_vec(&p.shape, data))
        })
        .collect()
}

/// Casts every parameter to another float type.
pub fn cast_params<G: num_traits::Float>(p: &Params) -> HashMap<String, Tensor<G>> {
    p.iter().map(|(k, v)| (k.clone(), v.cast())).collect()
}
