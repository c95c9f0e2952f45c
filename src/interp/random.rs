//! Random inputs and labels for a graph: what `snnc run`, `grad-check`
//! and `bench` feed a model when no data is given, and what the tests use.

use crate::ir::{self, Op};
use crate::rng;
use crate::tensor::Tensor;

/// One-hot labels, seeded.
pub fn random_labels(batch: usize, classes: usize, seed: u64) -> Tensor<f64> {
    let mut r = rng::Rng::new(seed ^ 0x1abe1);
    let mut t = Tensor::zeros(&[batch, classes]);
    for b in 0..batch {
        t.data[b * classes + r.below(classes)] = 1.0;
    }
    t
}

/// A random input batch for the graph's `x`: uniform [0, 1) intensities,
/// or 0/1 event frames with 20 % density.
pub fn random_input(g: &ir::Graph, events: bool, seed: u64) -> Tensor<f64> {
    let shape =
        g.g.node_weights()
            .find(|n| matches!(&n.op, Op::Input { name } if name == "x"))
            .expect("every unrolled graph has input x")
            .shape
            .clone();
    random_values(&shape, events, seed ^ 0x1_0000_0001)
}

/// A tensor of `shape` with values uniform in [0, 1), or for event input 0/1
/// spikes with probability 0.2, drawn from `Rng::new(seed)`.
pub fn random_values(shape: &[usize], events: bool, seed: u64) -> Tensor<f64> {
    let mut r = rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            let u = r.uniform();
            if events {
                f64::from(u8::from(u < 0.2))
            } else {
                u
            }
        })
        .collect();
    Tensor::from_vec(shape, data)
}
