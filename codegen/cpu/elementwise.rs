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

fn map_mut(x: &mut Tensor<f32>, f: impl Fn(f32) -> f32 + Sync) {
    if x.len() >= PAR_MIN {
        x.data.par_iter_mut().for_each(|v| *v = f(*v));
    } else {
        x.data.iter_mut().for_each(|v| *v = f(*v));
    }
}

fn zip_mut(x: &mut Tensor<f32>, b: &Tensor<f32>, f: impl Fn(f32, f32) -> f32 + Sync) {
    if x.len() >= PAR_MIN {
        x.data
            .par_iter_mut()
            .zip(&b.data)
            .for_each(|(v, &w)| *v = f(*v, w));
    } else {
        x.data
            .iter_mut()
            .zip(&b.data)
            .for_each(|(v, &w)| *v = f(*v, w));
    }
}

fn per_channel_mut(x: &mut Tensor<f32>, v: &Tensor<f32>, f: impl Fn(f32, f32) -> f32 + Sync) {
    let (c, r): (usize, usize) = (x.shape[1], x.shape[2..].iter().product());
    let g = |(i, a): (usize, &mut f32)| *a = f(*a, v.data[(i / r) % c]);
    if x.len() >= PAR_MIN {
        x.data.par_iter_mut().enumerate().for_each(g);
    } else {
        x.data.iter_mut().enumerate().for_each(g);
    }
}

/// The op computed over its first operand's buffer `x` (which the caller
/// owns and no one else reads any more); `rest` are the other operands and
/// `shape` the node's shape. Each element gets the same expression as in
/// `eval` and the reference kernels (`sum` adds the operands in order).
/// Handles exactly the ops `memplan::in_place` names.
pub fn eval_in_place(op: &Op, x: &mut Tensor<f32>, rest: &[&Tensor<f32>], shape: &[usize]) {
    match op {
        Op::Add => zip_mut(x, rest[0], |a, b| a + b),
        Op::Sub => zip_mut(x, rest[0], |a, b| a - b),
        Op::Mul => zip_mut(x, rest[0], |a, b| a * b),
        Op::Sum => {
            for r in rest {
                zip_mut(x, r, |a, b| a + b);
            }
        }
        Op::Scale(c) => {
            let c = *c as f32;
            map_mut(x, move |v| c * v)
        }
        Op::AddScalar(c) => {
            let c = *c as f32;
            map_mut(x, move |v| v + c)
        }
        Op::Spike { theta, .. } => {
            let t = *theta as f32;
            map_mut(x, move |v| if v >= t { 1.0 } else { 0.0 })
        }
        Op::SurrogateGrad { theta, surrogate } => {
            let (t, s) = (*theta, *surrogate);
            map_mut(x, move |v| surrogate_grad(&s, f64::from(v) - t) as f32)
        }
        Op::BiasAdd => per_channel_mut(x, rest[0], |a, b| a + b),
        Op::ChannelScale => per_channel_mut(x, rest[0], |a, b| a * b),
        Op::Normalize { eps } => {
            // (x − mean)/sqrt(var + eps) per channel, as `interp::ops`.
            let eps = *eps as f32;
            let (c, r): (usize, usize) = (x.shape[1], x.shape[2..].iter().product());
            let (mean, var) = (rest[0], rest[1]);
            let g = |(i, a): (usize, &mut f32)| {
                let ch = (i / r) % c;
                *a = (*a - mean.data[ch]) / (var.data[ch] + eps).sqrt();
            };
            if x.len() >= PAR_MIN {
                x.data.par_iter_mut().enumerate().for_each(g);
            } else {
                x.data.iter_mut().enumerate().for_each(g);
            }
        }
        Op::Detach => {}
        Op::Reshape { .. } => x.shape = shape.to_vec(),
        _ => unreachable!("{} has no in-place form", op.name()),
    }
}
