//! One plain kernel per op. Tensors are dense row-major, so every kernel is
//! explicit index arithmetic over `data`; sums run in a fixed order and
//! accumulate in the element type `F`, like a straightforward backend would.
//! Elementwise ops have no kernel here: they evaluate their one scalar
//! definition (`ir::scalar`) per element.

use super::grad_ops as g;
use super::pool::{self, Pool, Window};
use super::scalar::{constant, count, inner};
use super::RunOptions;
use crate::ir::scalar_eval::{OpProgram, ScalarError};
use crate::ir::Op;
use crate::precision::Precision;
use crate::rng;
use crate::tensor::Tensor;
use num_traits::Float;

use super::OpError;

/// `t` with every element rounded to `p` (through f32, the type the
/// backends round from).
fn round_tensor<F: Float>(t: &Tensor<F>, p: Precision) -> Tensor<F> {
    let data = t
        .data
        .iter()
        .map(|v| {
            let r = p.round(v.to_f32().unwrap_or(f32::NAN));
            F::from(r).unwrap_or_else(F::nan)
        })
        .collect();
    Tensor::from_vec(&t.shape, data)
}

/// Evaluates a non-leaf op (or the generated `DropoutMask` leaf) on its
/// operands. `shape` is the node's annotated output shape; a mismatch with
/// what the op infers from the operands is an error, not a panic, so a bad
/// graph is reported with the offending node.
pub fn eval_op<F: Float>(
    op: &Op,
    shape: &[usize],
    operands: &[&Tensor<F>],
    opts: &RunOptions,
) -> Result<Tensor<F>, OpError> {
    for (k, x) in operands.iter().enumerate() {
        let need: usize = x.shape.iter().product();
        if x.data.len() != need {
            return Err(OpError::OperandLength {
                k,
                len: x.data.len(),
                shape: x.shape.clone(),
                need,
            });
        }
    }
    // `Op::infer_shape` divides by the conv stride before it checks it, so a
    // zero stride must be caught here first.
    if let Op::Conv2d { stride: 0, .. } = op {
        return Err(OpError::ZeroStride);
    }
    let shapes: Vec<&[usize]> = operands.iter().map(|x| x.shape.as_slice()).collect();
    match op.infer_shape(&shapes)? {
        Some(s) if s != shape => {
            return Err(OpError::Annotated {
                inferred: s,
                annotated: shape.to_vec(),
            })
        }
        Some(_) => {}
        None if matches!(op, Op::DropoutMask { .. }) => {}
        None => return Err(OpError::Leaf(op.name())),
    }

    // A matrix product reads its operands rounded to the run's precision,
    // as the backends' GEMMs do (`crate::precision`).
    let rounded: Vec<Tensor<F>> = match opts.precision {
        p if p != Precision::Fp32 && op.is_matrix_product() => {
            operands.iter().map(|t| round_tensor(t, p)).collect()
        }
        _ => Vec::new(),
    };
    let rounded_refs: Vec<&Tensor<F>> = rounded.iter().collect();
    let operands = if rounded.is_empty() {
        operands
    } else {
        &rounded_refs[..]
    };
    let x = |k: usize| operands[k];
    if op.elementwise() {
        return Ok(elementwise(op, shape, operands)?);
    }
    let out = match op {
        Op::Input { .. } | Op::Param { .. } => unreachable!("rejected above"),
        Op::DropoutMask { p, stream } => dropout_mask(shape, *p, *stream, opts.seed)?,
        Op::Poisson { stream } => poisson(x(0), *stream, opts.seed),
        Op::TimeSlice { t } => time_slice(x(0), *t),
        Op::MatMul { ta, tb } => matmul(x(0), x(1), *ta, *tb),
        Op::Conv2d { stride, padding } => conv2d(x(0), x(1), *stride, *padding),
        &Op::AvgPool {
            kernel,
            stride,
            padding,
        } => pool::pool(x(0), win(kernel, stride, padding), Pool::Avg),
        &Op::MaxPool {
            kernel,
            stride,
            padding,
            ..
        } => pool::pool(x(0), win(kernel, stride, padding), Pool::Max),
        Op::Reshape { shape } => Tensor::from_vec(shape, x(0).data.clone()),
        Op::ChannelMean => channel_mean(operands),
        Op::ChannelVar => channel_var(operands[0], &operands[1..]),
        Op::ChannelSum => g::channel_sum(x(0)),
        Op::ChannelDot => {
            let product = elementwise(&Op::Mul, &x(0).shape, &operands[..2]);
            g::channel_sum(&product?)
        }
        Op::Conv2dGradInput {
            stride,
            padding,
            in_h,
            in_w,
        } => g::conv2d_grad_input(x(0), x(1), *stride, *padding, *in_h, *in_w),
        Op::Conv2dGradWeight {
            stride,
            padding,
            kernel,
        } => g::conv2d_grad_weight(x(0), x(1), *stride, *padding, *kernel),
        &Op::AvgPoolGrad {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
        } => pool::avgpool_grad(x(0), win(kernel, stride, padding), in_h, in_w),
        &Op::AvgPoolGradMul { in_h, in_w, .. } => {
            // The two ops it stands for, in their order: the same roundings.
            let (k, s, p) = op.window().expect("a pooling op");
            let up = pool::avgpool_grad(x(0), win(k, s, p), in_h, in_w);
            elementwise(&Op::Mul, &up.shape, &[&up, x(1)])?
        }
        &Op::MaxPoolGrad {
            kernel,
            stride,
            padding,
            ..
        } => pool::maxpool_grad(x(0), x(1), win(kernel, stride, padding)),
        &Op::MaxPoolMask {
            kernel,
            stride,
            padding,
        } => pool::maxpool_mask(x(0), win(kernel, stride, padding)),
        &Op::MaxPoolSelect {
            kernel,
            stride,
            padding,
        } => pool::maxpool_select(x(0), win(kernel, stride, padding)),
        &Op::MaxPoolRoute {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
        } => pool::maxpool_route(x(0), x(1), win(kernel, stride, padding), in_h, in_w),
        Op::SoftmaxCrossEntropy => g::softmax_xent(x(0), x(1)),
        Op::SoftmaxCrossEntropyGrad => g::softmax_xent_grad(x(0), x(1)),
        _ => unreachable!("{} is elementwise", op.name()),
    };
    debug_assert_eq!(
        out.shape,
        shape,
        "{} kernel disagrees with infer_shape",
        op.name()
    );
    Ok(out)
}

/// An elementwise op of result shape `shape`: element `i` is the op's
/// scalar definition at element `i` of each operand (a per-channel operand
/// at `i`'s channel).
pub(crate) fn elementwise<F: Float>(
    op: &Op,
    shape: &[usize],
    xs: &[&Tensor<F>],
) -> Result<Tensor<F>, ScalarError> {
    let program = OpProgram::<F>::new(op, xs.len())?;
    let chan: Vec<bool> = (0..xs.len()).map(|k| op.chan_operand(k)).collect();
    // Channel axis 1 of the result, `r` elements per (batch, channel) slab.
    let (c, r) = if chan.contains(&true) {
        (shape[1], inner(shape))
    } else {
        (1, 1)
    };
    let n: usize = shape.iter().product();
    let mut args = vec![F::zero(); xs.len()];
    let data = (0..n)
        .map(|i| {
            for ((a, x), &per_channel) in args.iter_mut().zip(xs).zip(&chan) {
                *a = x.data[if per_channel { (i / r) % c } else { i }];
            }
            program.eval(&args)
        })
        .collect();
    Ok(Tensor::from_vec(shape, data))
}

fn dropout_mask<F: Float>(
    shape: &[usize],
    p: f64,
    stream: u64,
    seed: u64,
) -> Result<Tensor<F>, OpError> {
    // p = 1 would make the keep scale infinite; outside [0, 1) is meaningless.
    if !(0.0..1.0).contains(&p) {
        return Err(OpError::DropoutP(p));
    }
    let keep: F = constant(1.0 / (1.0 - p))?;
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            if rng::uniform(seed, stream, i as u64) >= p {
                keep
            } else {
                F::zero()
            }
        })
        .collect();
    Ok(Tensor::from_vec(shape, data))
}

fn poisson<F: Float>(x: &Tensor<F>, stream: u64, seed: u64) -> Tensor<F> {
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            // Compared in f64 so f32 and f64 runs draw identical spikes: the
            // f32 → f64 widening is exact and `uniform` has only 24 bits. A
            // NaN intensity never fires (the comparison is false).
            let prob = v.to_f64().expect("float widens to f64").clamp(0.0, 1.0);
            if rng::uniform(seed, stream, i as u64) < prob {
                F::one()
            } else {
                F::zero()
            }
        })
        .collect();
    Tensor::from_vec(&x.shape, data)
}

fn time_slice<F: Float>(x: &Tensor<F>, t: usize) -> Tensor<F> {
    let (b, steps, r) = (x.shape[0], x.shape[1], inner(&x.shape));
    let mut data = Vec::with_capacity(b * r);
    for bi in 0..b {
        let start = (bi * steps + t) * r;
        data.extend_from_slice(&x.data[start..start + r]);
    }
    let mut shape = vec![b];
    shape.extend_from_slice(&x.shape[2..]);
    Tensor::from_vec(&shape, data)
}

fn matmul<F: Float>(a: &Tensor<F>, b: &Tensor<F>, ta: bool, tb: bool) -> Tensor<F> {
    let (ar, ac) = (a.shape[0], a.shape[1]);
    let (br, bc) = (b.shape[0], b.shape[1]);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let n = if tb { br } else { bc };
    // op(A)[i][p] and op(B)[p][j], reading the stored layout directly.
    let at = |i: usize, p: usize| {
        if ta {
            a.data[p * ac + i]
        } else {
            a.data[i * ac + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if tb {
            b.data[j * bc + p]
        } else {
            b.data[p * bc + j]
        }
    };
    let mut out = Tensor::zeros(&[m, n]);
    for i in 0..m {
        for j in 0..n {
            let mut acc = F::zero();
            for p in 0..k {
                acc = acc + at(i, p) * bt(p, j);
            }
            out.data[i * n + j] = acc;
        }
    }
    out
}

pub(crate) fn conv2d<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    stride: usize,
    padding: usize,
) -> Tensor<F> {
    let (b, ci, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (co, k) = (w.shape[0], w.shape[2]);
    let ho = (h + 2 * padding - k) / stride + 1;
    let wo = (wd + 2 * padding - k) / stride + 1;
    let mut out = Tensor::zeros(&[b, co, ho, wo]);
    for bi in 0..b {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = F::zero();
                    for c in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                // Position in the unpadded input; taps that
                                // land in the zero padding contribute nothing.
                                let iy = (oy * stride + ky).checked_sub(padding);
                                let ix = (ox * stride + kx).checked_sub(padding);
                                let (Some(iy), Some(ix)) = (iy, ix) else {
                                    continue;
                                };
                                if iy >= h || ix >= wd {
                                    continue;
                                }
                                let xv = x.data[((bi * ci + c) * h + iy) * wd + ix];
                                let wv = w.data[((o * ci + c) * k + ky) * k + kx];
                                acc = acc + xv * wv;
                            }
                        }
                    }
                    out.data[((bi * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    out
}

/// Per-channel sums of `f(x, channel)` over every operand and every
/// non-channel axis, plus the number of terms per channel.
fn channel_sums<F: Float>(xs: &[&Tensor<F>], f: impl Fn(F, usize) -> F) -> (Vec<F>, usize) {
    let shape = &xs[0].shape;
    let (c, r) = (shape[1], inner(shape));
    let mut sums = vec![F::zero(); c];
    for x in xs {
        for (i, &v) in x.data.iter().enumerate() {
            let ch = (i / r) % c;
            sums[ch] = sums[ch] + f(v, ch);
        }
    }
    (sums, xs.len() * shape[0] * r)
}

fn channel_mean<F: Float>(xs: &[&Tensor<F>]) -> Tensor<F> {
    let (sums, n) = channel_sums(xs, |v, _| v);
    let n: F = count(n);
    let c = sums.len();
    Tensor::from_vec(&[c], sums.into_iter().map(|s| s / n).collect())
}

/// Two-pass biased variance around the supplied mean (not one recomputed
/// here), so the graph's own mean node is what gets tested.
fn channel_var<F: Float>(mean: &Tensor<F>, xs: &[&Tensor<F>]) -> Tensor<F> {
    let (sums, n) = channel_sums(xs, |v, ch| {
        let d = v - mean.data[ch];
        d * d
    });
    let n: F = count(n);
    let c = sums.len();
    Tensor::from_vec(&[c], sums.into_iter().map(|s| s / n).collect())
}

fn win(kernel: usize, stride: usize, padding: usize) -> Window {
    Window {
        kernel,
        stride,
        padding,
    }
}
