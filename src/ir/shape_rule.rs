//! Each op's shape rule: the output shape for given operand shapes, or a
//! typed reason why the operands do not fit the op.
//!
//! The messages are the ones the verifier, the unroller and the interpreter
//! have always printed; diagnostics and snapshots quote them.

use super::Op;
use crate::shape::list;

/// Why operand shapes do not fit an op.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShapeRuleError {
    #[error("{op} takes {expected} operands, got {got}")]
    Arity {
        op: &'static str,
        expected: usize,
        got: usize,
    },
    /// An n-ary op (a sum or a mean) given none.
    #[error("{op} needs operands")]
    NoOperands { op: &'static str },
    #[error("channel_var needs (mean, x...)")]
    ChannelVarOperands,
    /// Operands that must have one shape have two.
    #[error("operand shapes differ: {} vs {}", list(.first), list(.other))]
    ShapesDiffer {
        first: Vec<usize>,
        other: Vec<usize>,
    },
    #[error("time_slice t={t} of shape {}", list(.shape))]
    TimeSlice { t: usize, shape: Vec<usize> },
    #[error("matmul needs 2-D operands, got {} and {}", list(.a), list(.b))]
    MatMulRank { a: Vec<usize>, b: Vec<usize> },
    #[error("matmul inner dimensions differ: {} · {}", list(.a), list(.b))]
    MatMulInner { a: Vec<usize>, b: Vec<usize> },
    /// A per-channel operand (bias or scale) that is not `[C]` of `x`.
    #[error("bias {} does not fit {}", list(.bias), list(.x))]
    Bias { bias: Vec<usize>, x: Vec<usize> },
    #[error("conv2d of {} with weight {}", list(.x), list(.w))]
    Conv2d { x: Vec<usize>, w: Vec<usize> },
    #[error("conv2d stride must be > 0")]
    ZeroStride,
    #[error("conv2d kernel {kernel} does not fit {}", list(.x))]
    ConvKernel { kernel: usize, x: Vec<usize> },
    #[error("pool kernel {kernel} does not fit {}", list(.x))]
    PoolKernel { kernel: usize, x: Vec<usize> },
    #[error("pool padding {padding} is more than half the kernel {kernel}")]
    PoolPadding { kernel: usize, padding: usize },
    #[error("reshape {} to {}", list(.from), list(.to))]
    Reshape { from: Vec<usize>, to: Vec<usize> },
    /// An operand of the wrong rank for `op` (a channel reduction of a
    /// vector, a pooling gradient that is not 4-D).
    #[error("{op} of {}", list(.shape))]
    Rank { op: &'static str, shape: Vec<usize> },
    #[error("channel_var mean {} for {}", list(.mean), list(.x))]
    ChannelVarMean { mean: Vec<usize>, x: Vec<usize> },
    #[error("batchnorm statistics do not fit {}", list(.x))]
    BatchNormStats { x: Vec<usize> },
    #[error("channel_broadcast of {} to {}", list(.from), list(.to))]
    ChannelBroadcast { from: Vec<usize>, to: Vec<usize> },
    #[error("conv2d_grad_input of {} with weight {} for {in_h}x{in_w}", list(.d), list(.w))]
    Conv2dGradInput {
        d: Vec<usize>,
        w: Vec<usize>,
        in_h: usize,
        in_w: usize,
    },
    /// A gradient op whose two operands are not a forward op's input and
    /// output.
    #[error("{op} of {} and {}", list(.a), list(.b))]
    GradPair {
        op: &'static str,
        a: Vec<usize>,
        b: Vec<usize>,
    },
    #[error("avgpool_grad of {} for {in_h}x{in_w}", list(.d))]
    AvgPoolGrad {
        d: Vec<usize>,
        in_h: usize,
        in_w: usize,
    },
    #[error("cross-entropy needs [B, K] logits, got {}", list(.logits))]
    Logits { logits: Vec<usize> },
}

impl Op {
    /// The output shape for the given operand shapes, or why they are wrong.
    /// Leaves have no rule (their node carries the shape): `Ok(None)`.
    pub fn infer_shape(&self, ins: &[&[usize]]) -> Result<Option<Vec<usize>>, ShapeRuleError> {
        let arity = |n: usize| {
            if ins.len() == n {
                Ok(())
            } else {
                Err(ShapeRuleError::Arity {
                    op: self.name(),
                    expected: n,
                    got: ins.len(),
                })
            }
        };
        let same = |a: &[usize], b: &[usize]| {
            if a == b {
                Ok(())
            } else {
                Err(ShapeRuleError::ShapesDiffer {
                    first: a.to_vec(),
                    other: b.to_vec(),
                })
            }
        };
        let out = match self {
            Op::Input { .. } | Op::Param { .. } | Op::DropoutMask { .. } => {
                arity(0)?;
                return Ok(None);
            }
            Op::Poisson { .. }
            | Op::Scale(_)
            | Op::AddScalar(_)
            | Op::Detach
            | Op::Spike { .. }
            | Op::SurrogateGrad { .. }
            | Op::Rsqrt { .. } => {
                arity(1)?;
                ins[0].to_vec()
            }
            Op::TimeSlice { t } => {
                arity(1)?;
                let s = ins[0];
                if s.len() < 2 || *t >= s[1] {
                    return Err(ShapeRuleError::TimeSlice {
                        t: *t,
                        shape: s.to_vec(),
                    });
                }
                let mut o = vec![s[0]];
                o.extend_from_slice(&s[2..]);
                o
            }
            Op::Add | Op::Sub | Op::Mul => {
                arity(2)?;
                same(ins[0], ins[1])?;
                ins[0].to_vec()
            }
            Op::MatMul { ta, tb } => {
                arity(2)?;
                let (a, b) = (ins[0], ins[1]);
                if a.len() != 2 || b.len() != 2 {
                    return Err(ShapeRuleError::MatMulRank {
                        a: a.to_vec(),
                        b: b.to_vec(),
                    });
                }
                let (m, ka) = if *ta { (a[1], a[0]) } else { (a[0], a[1]) };
                let (kb, n) = if *tb { (b[1], b[0]) } else { (b[0], b[1]) };
                if ka != kb {
                    return Err(ShapeRuleError::MatMulInner {
                        a: a.to_vec(),
                        b: b.to_vec(),
                    });
                }
                vec![m, n]
            }
            Op::BiasAdd | Op::ChannelScale => {
                arity(2)?;
                if ins[0].len() < 2 || ins[1] != [ins[0][1]] {
                    return Err(ShapeRuleError::Bias {
                        bias: ins[1].to_vec(),
                        x: ins[0].to_vec(),
                    });
                }
                ins[0].to_vec()
            }
            Op::Conv2d { stride, padding } => {
                arity(2)?;
                let (x, w) = (ins[0], ins[1]);
                if x.len() != 4 || w.len() != 4 || x[1] != w[1] || w[2] != w[3] {
                    return Err(ShapeRuleError::Conv2d {
                        x: x.to_vec(),
                        w: w.to_vec(),
                    });
                }
                let k = w[2];
                if *stride == 0 {
                    return Err(ShapeRuleError::ZeroStride);
                }
                let o = |n: usize| (n + 2 * padding).checked_sub(k).map(|d| d / stride + 1);
                match (o(x[2]), o(x[3])) {
                    (Some(h), Some(wd)) => vec![x[0], w[0], h, wd],
                    _ => {
                        return Err(ShapeRuleError::ConvKernel {
                            kernel: k,
                            x: x.to_vec(),
                        })
                    }
                }
            }
            Op::AvgPool { .. } | Op::MaxPool { .. } | Op::MaxPoolSelect { .. } => {
                arity(1)?;
                let x = ins[0];
                let (kernel, stride, padding) = self.window().expect("a pooling op");
                let (ho, wo) = pooled(x, kernel, stride, padding)?;
                // The selection holds a window's k² offsets.
                match self {
                    Op::MaxPoolSelect { .. } => vec![x[0], x[1], ho, wo, kernel * kernel],
                    _ => vec![x[0], x[1], ho, wo],
                }
            }
            Op::Reshape { shape } => {
                arity(1)?;
                if shape.iter().product::<usize>() != ins[0].iter().product::<usize>() {
                    return Err(ShapeRuleError::Reshape {
                        from: ins[0].to_vec(),
                        to: shape.clone(),
                    });
                }
                shape.clone()
            }
            Op::ChannelMean => {
                if ins.is_empty() {
                    return Err(ShapeRuleError::NoOperands { op: "channel_mean" });
                }
                for s in ins {
                    same(ins[0], s)?;
                }
                if ins[0].len() < 2 {
                    return Err(ShapeRuleError::Rank {
                        op: "channel_mean",
                        shape: ins[0].to_vec(),
                    });
                }
                vec![ins[0][1]]
            }
            Op::ChannelVar => {
                if ins.len() < 2 {
                    return Err(ShapeRuleError::ChannelVarOperands);
                }
                for s in &ins[2..] {
                    same(ins[1], s)?;
                }
                if ins[1].len() < 2 || ins[0] != [ins[1][1]] {
                    return Err(ShapeRuleError::ChannelVarMean {
                        mean: ins[0].to_vec(),
                        x: ins[1].to_vec(),
                    });
                }
                ins[0].to_vec()
            }
            Op::Normalize { .. } => {
                arity(3)?;
                let x = ins[0];
                if x.len() < 2 || ins[1..].iter().any(|s| *s != [x[1]]) {
                    return Err(ShapeRuleError::BatchNormStats { x: x.to_vec() });
                }
                x.to_vec()
            }
            Op::TimeMean | Op::Sum => {
                if ins.is_empty() {
                    return Err(ShapeRuleError::NoOperands { op: self.name() });
                }
                for s in ins {
                    same(ins[0], s)?;
                }
                ins[0].to_vec()
            }
            Op::ChannelSum => {
                arity(1)?;
                if ins[0].len() < 2 {
                    return Err(ShapeRuleError::Rank {
                        op: "channel_sum",
                        shape: ins[0].to_vec(),
                    });
                }
                vec![ins[0][1]]
            }
            Op::ChannelDot => {
                arity(2)?;
                same(ins[0], ins[1])?;
                if ins[0].len() < 2 {
                    return Err(ShapeRuleError::Rank {
                        op: "channel_dot",
                        shape: ins[0].to_vec(),
                    });
                }
                vec![ins[0][1]]
            }
            Op::ChannelBroadcast { shape } => {
                arity(1)?;
                if shape.len() < 2 || ins[0] != [shape[1]] {
                    return Err(ShapeRuleError::ChannelBroadcast {
                        from: ins[0].to_vec(),
                        to: shape.clone(),
                    });
                }
                shape.clone()
            }
            Op::Conv2dGradInput {
                stride,
                padding,
                in_h,
                in_w,
            } => {
                arity(2)?;
                let (d, w) = (ins[0], ins[1]);
                let fwd = Op::Conv2d {
                    stride: *stride,
                    padding: *padding,
                };
                let x = [
                    d.first().copied().unwrap_or(0),
                    w.get(1).copied().unwrap_or(0),
                    *in_h,
                    *in_w,
                ];
                match fwd.infer_shape(&[&x, w]) {
                    Ok(Some(y)) if y == d => x.to_vec(),
                    _ => {
                        return Err(ShapeRuleError::Conv2dGradInput {
                            d: d.to_vec(),
                            w: w.to_vec(),
                            in_h: *in_h,
                            in_w: *in_w,
                        })
                    }
                }
            }
            Op::Conv2dGradWeight {
                stride,
                padding,
                kernel,
            } => {
                arity(2)?;
                let (x, d) = (ins[0], ins[1]);
                if x.len() != 4 || d.len() != 4 {
                    return Err(ShapeRuleError::GradPair {
                        op: "conv2d_grad_weight",
                        a: x.to_vec(),
                        b: d.to_vec(),
                    });
                }
                let w = [d[1], x[1], *kernel, *kernel];
                let fwd = Op::Conv2d {
                    stride: *stride,
                    padding: *padding,
                };
                match fwd.infer_shape(&[x, &w]) {
                    Ok(Some(y)) if y == d => w.to_vec(),
                    _ => {
                        return Err(ShapeRuleError::GradPair {
                            op: "conv2d_grad_weight",
                            a: x.to_vec(),
                            b: d.to_vec(),
                        })
                    }
                }
            }
            Op::AvgPoolGrad {
                kernel,
                stride,
                padding,
                in_h,
                in_w,
            }
            | Op::AvgPoolGradMul {
                kernel,
                stride,
                padding,
                in_h,
                in_w,
            } => {
                let with = matches!(self, Op::AvgPoolGradMul { .. });
                arity(1 + usize::from(with))?;
                let d = ins[0];
                if d.len() != 4 {
                    return Err(ShapeRuleError::Rank {
                        op: self.name(),
                        shape: d.to_vec(),
                    });
                }
                let x = [d[0], d[1], *in_h, *in_w];
                match pooled(&x, *kernel, *stride, *padding) {
                    Ok((ho, wo)) if [ho, wo] == d[2..] => {
                        if with && ins[1] != x {
                            return Err(ShapeRuleError::ShapesDiffer {
                                first: x.to_vec(),
                                other: ins[1].to_vec(),
                            });
                        }
                        x.to_vec()
                    }
                    _ => {
                        return Err(ShapeRuleError::AvgPoolGrad {
                            d: d.to_vec(),
                            in_h: *in_h,
                            in_w: *in_w,
                        })
                    }
                }
            }
            Op::MaxPoolGrad {
                kernel,
                stride,
                padding,
                ..
            } => {
                arity(2)?;
                let (x, d) = (ins[0], ins[1]);
                match pooled(x, *kernel, *stride, *padding) {
                    Ok((ho, wo)) if d.len() == 4 && d[..2] == x[..2] && [ho, wo] == d[2..] => {
                        x.to_vec()
                    }
                    _ => {
                        return Err(ShapeRuleError::GradPair {
                            op: "maxpool_grad",
                            a: x.to_vec(),
                            b: d.to_vec(),
                        })
                    }
                }
            }
            Op::MaxPoolMask {
                kernel,
                stride,
                padding,
            } => {
                arity(1)?;
                pooled(ins[0], *kernel, *stride, *padding)?;
                ins[0].to_vec()
            }
            Op::MaxPoolRoute {
                kernel,
                stride,
                padding,
                in_h,
                in_w,
            } => {
                arity(2)?;
                let (s, d) = (ins[0], ins[1]);
                let x = [
                    d.first().copied().unwrap_or(0),
                    d.get(1).copied().unwrap_or(0),
                    *in_h,
                    *in_w,
                ];
                match pooled(&x, *kernel, *stride, *padding) {
                    Ok((ho, wo))
                        if d.len() == 4
                            && [ho, wo] == d[2..]
                            && s.len() == 5
                            && s[..4] == d[..]
                            && s[4] == kernel * kernel =>
                    {
                        x.to_vec()
                    }
                    _ => {
                        return Err(ShapeRuleError::GradPair {
                            op: "maxpool_route",
                            a: s.to_vec(),
                            b: d.to_vec(),
                        })
                    }
                }
            }
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => {
                arity(2)?;
                same(ins[0], ins[1])?;
                if ins[0].len() != 2 {
                    return Err(ShapeRuleError::Logits {
                        logits: ins[0].to_vec(),
                    });
                }
                if *self == Op::SoftmaxCrossEntropy {
                    vec![1]
                } else {
                    ins[0].to_vec()
                }
            }
        };
        Ok(Some(out))
    }
}

/// The output height and width of a pooling window over `x[B, C, H, W]`
/// padded by `padding` on every side. Padding is at most half the kernel
/// (PyTorch's rule), so every window holds at least one input element.
pub fn pooled(
    x: &[usize],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(usize, usize), ShapeRuleError> {
    if 2 * padding > kernel {
        return Err(ShapeRuleError::PoolPadding { kernel, padding });
    }
    let fits = |n: usize| n + 2 * padding >= kernel;
    if x.len() != 4 || kernel == 0 || stride == 0 || !fits(x[2]) || !fits(x[3]) {
        return Err(ShapeRuleError::PoolKernel {
            kernel,
            x: x.to_vec(),
        });
    }
    let out = |n: usize| (n + 2 * padding - kernel) / stride + 1;
    Ok((out(x[2]), out(x[3])))
}
