//! Elementwise ops on all cores (rayon), bit-identical to the reference
//! kernels: each element is computed by the same expression, only the
//! order across elements changes.

use crate::interp::surrogate_grad;
use crate::ir::Op;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Below this many elements, threads cost more than they save.
const PAR_MIN: usize = 1 << 14;

fn map(x: &Tensor<f32>, f: impl Fn(f32) -> f32 + Sync) -> Tensor<f32> {
    let data = if x.len() >= PAR_MIN {
        x.data.par_iter().map(|&v| f(v)).collect()
    } else {
        x.data.iter().map(|&v| f(v)).collect()
    };
    Tensor::from_vec(&x.shape, data)
}

fn zip(a: &Tensor<f32>, b: &Tensor<f32>, f: impl Fn(f32, f32) -> f32 + Sync) -> Tensor<f32> {
    let data = if a.len() >= PAR_MIN {
        a.data
            .par_iter()
            .zip(&b.data)
            .map(|(&x, &y)| f(x, y))
            .collect()
    } else {
        a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect()
    };
    Tensor::from_vec(&a.shape, data)
}

/// `f(x, v[channel])` with the channel on axis 1.
fn per_channel(
    x: &Tensor<f32>,
    v: &Tensor<f32>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Tensor<f32> {
    let (c, r): (usize, usize) = (x.shape[1], x.shape[2..].iter().product());
    let g = |(i, &a): (usize, &f32)| f(a, v.data[(i / r) % c]);
    let data = if x.len() >= PAR_MIN {
        x.data.par_iter().enumerate().map(g).collect()
    } else {
        x.data.iter().enumerate().map(g).collect()
    };
    Tensor::from_vec(&x.shape, data)
}

/// The op on all cores, or None when it is not a plain elementwise op (the
/// caller then uses the reference kernel). Operand shapes were checked when
/// the graph was verified.
pub fn eval(op: &Op, xs: &[&Tensor<f32>]) -> Option<Tensor<f32>> {
    Some(match op {
        Op::Add => zip(xs[0], xs[1], |a, b| a + b),
        Op::Sub => zip(xs[0], xs[1], |a, b| a - b),
        Op::Mul => zip(xs[0], xs[1], |a, b| a * b),
        Op::Scale(c) => {
            let c = *c as f32;
            map(xs[0], move |v| c * v)
        }
        Op::AddScalar(c) => {
            let c = *c as f32;
            map(xs[0], move |v| v + c)
        }
        Op::Spike { theta, .. } => {
            let t = *theta as f32;
            map(xs[0], move |v| if v >= t { 1.0 } else { 0.0 })
        }
        Op::SurrogateGrad { theta, surrogate } => {
            let (t, s) = (*theta, *surrogate);
            map(xs[0], move |v| surrogate_grad(&s, f64::from(v) - t) as f32)
        }
        Op::BiasAdd => per_channel(xs[0], xs[1], |a, b| a + b),
        Op::ChannelScale => per_channel(xs[0], xs[1], |a, b| a * b),
        _ => return None,
    })
}
