//! The primitive op set.
//!
//! Small on purpose (the luminal idea): elementwise ops, matmul, conv and
//! pooling, reductions for batch norm, reshape, the spike, and time means.
//! A LIF neuron is not an op: unrolling writes it as charge (`scale`, `add`),
//! fire (`spike`) and reset (`detach`, `scale`/`mul`, `sub`), so autodiff
//! and the rate pass see every term of the recurrence.

use crate::model::Surrogate;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Op {
    // ---- leaves: shape is given by the node ----
    /// A graph input (the batch of encoded samples, or event frames).
    Input {
        name: String,
    },
    /// A trained parameter or a batch-norm running statistic.
    Param {
        name: String,
    },
    /// Dropout mask shared by all timesteps: `1/(1-p)` with probability
    /// `1-p`, else 0; bits from `rng::uniform(run_seed, stream, i)`.
    DropoutMask {
        p: f64,
        stream: u64,
    },

    // ---- encoders ----
    /// Bernoulli spikes: 1 where `rng::uniform(run_seed, stream, i) <
    /// clamp(x, 0, 1)`.
    Poisson {
        stream: u64,
    },
    /// `[B, T, ...] -> [B, ...]`: frame `t` of an event input.
    TimeSlice {
        t: usize,
    },

    // ---- elementwise, same shapes ----
    Add,
    Sub,
    Mul,
    /// `c · x`
    Scale(f64),
    /// `x + c`
    AddScalar(f64),
    /// Identity forward; autodiff sends no gradient through it.
    Detach,
    /// `H(x − θ)` forward (1 where x ≥ θ); autodiff uses the surrogate's
    /// derivative at `x − θ`.
    Spike {
        theta: f64,
        surrogate: Surrogate,
    },

    // ---- linear algebra ----
    /// 2-D product `op(A)·op(B)` where `op` transposes when its flag is set.
    MatMul {
        ta: bool,
        tb: bool,
    },
    /// `x[B, C, ...] + b[C]`, broadcast over every axis but 1.
    BiasAdd,
    /// `x[B, Ci, H, W] ⋆ w[Co, Ci, k, k]` (cross-correlation), zero padding.
    Conv2d {
        stride: usize,
        padding: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    Reshape {
        shape: Vec<usize>,
    },

    // ---- batch norm (temporal: statistics over every operand) ----
    /// Per-channel mean over all operands and all axes but 1 → `[C]`.
    ChannelMean,
    /// Operands `(mean, x_1, …, x_n)`: per-channel biased variance → `[C]`.
    ChannelVar,
    /// Operands `(x, mean, var)`: `(x − mean)/sqrt(var + eps)` per channel.
    /// Batch norm is `bias_add(channel_scale(normalize(x), gamma), beta)`:
    /// three ops whose derivatives are simple.
    Normalize {
        eps: f64,
    },
    /// `x[B, C, ...] · c[C]`, broadcast over every axis but 1.
    ChannelScale,

    // ---- time ----
    /// Mean of the operands (one per timestep).
    TimeMean,

    // ---- gradients (built by autodiff) ----
    /// Elementwise sum of any number of operands (gradient accumulation;
    /// over timesteps it is the n-ary time sum).
    Sum,
    /// `σ'(x − θ)`: the surrogate's derivative at the spike's input.
    SurrogateGrad {
        theta: f64,
        surrogate: Surrogate,
    },
    /// `1/sqrt(x + eps)`, elementwise.
    Rsqrt {
        eps: f64,
    },
    /// `x[B, C, ...] -> [C]`: per-channel sum over every axis but 1.
    ChannelSum,
    /// `(a, b) -> [C]`: `channel_sum(mul(a, b))` without the product
    /// tensor. Only the CPU executor's lowering writes it (after autodiff;
    /// it has no derivative rule).
    ChannelDot,
    /// `c[C] -> shape`: `c` broadcast along axis 1.
    ChannelBroadcast {
        shape: Vec<usize>,
    },
    /// `(δy[B,Co,Ho,Wo], w[Co,Ci,k,k]) -> δx[B,Ci,H,W]` of `Conv2d`.
    Conv2dGradInput {
        stride: usize,
        padding: usize,
        in_h: usize,
        in_w: usize,
    },
    /// `(x[B,Ci,H,W], δy[B,Co,Ho,Wo]) -> δw[Co,Ci,k,k]` of `Conv2d`.
    Conv2dGradWeight {
        stride: usize,
        padding: usize,
        kernel: usize,
    },
    /// `δy -> δx[B,C,H,W]` of `AvgPool`.
    AvgPoolGrad {
        kernel: usize,
        stride: usize,
        in_h: usize,
        in_w: usize,
    },
    /// `(x, δy) -> δx` of `MaxPool`: each window's δ goes to its first
    /// maximum.
    MaxPoolGrad {
        kernel: usize,
        stride: usize,
    },
    /// `x -> mask` of x's shape: 1 at each pooling window's first maximum.
    /// With non-overlapping windows, `maxpool_grad(x, δ) =
    /// mask(x) · k²·avgpool_grad(δ)`, a product the rate pass can average.
    MaxPoolMask {
        kernel: usize,
        stride: usize,
    },
    /// `(z[B,K], y[B,K]) -> [1]`: mean over the batch of
    /// `−Σ_k y_k·log softmax(z)_k` (y one-hot or any distribution).
    SoftmaxCrossEntropy,
    /// `(z, y) -> (softmax(z) − y)/B`, the gradient of the above.
    SoftmaxCrossEntropyGrad,
}

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    /// One or more (n-ary sums, means and channel statistics).
    AtLeast(usize),
}

/// In which operands an op's result is linear when the others are fixed
/// (the rate pass moves time means through these positions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linearity {
    No,
    /// Linear in all operands together: `a + b`, `Σ xᵢ`.
    Jointly,
    /// Linear in each listed operand with the others fixed.
    Each(&'static [usize]),
}

/// Floating-point work of an op (`passes::cost` counts it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cost {
    /// No arithmetic: leaves and views.
    Free,
    /// This many operations per output element.
    PerOutput(f64),
    /// One operation per operand element (n-ary sums, channel sums).
    PerInput,
    /// Depends on the operand shapes beyond the element count (products,
    /// convolutions, pooling windows): `passes::cost` computes it.
    Shaped,
}

/// The op table's row for one op: everything a pass or backend needs to
/// know about it besides its shape rule ([`Op::infer_shape`]) and, for
/// elementwise ops, its scalar definition (`ir::scalar::define`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpInfo {
    pub arity: Arity,
    /// Each output element is a function of the operands' same element
    /// (per-channel operands at its channel): it has a scalar definition,
    /// and fusion can put it in a kernel.
    pub elementwise: bool,
    /// Can write its result over its first operand (same size, each
    /// element computed from the same element of the operand).
    pub in_place: bool,
    /// Operand positions read per channel: a `[C]` vector broadcast along
    /// axis 1 of the result.
    pub chan: &'static [usize],
    pub linear: Linearity,
    /// The product of its two operands (bilinear): the rate pass splits
    /// its time mean into the product of means plus a covariance.
    pub bilinear: bool,
    /// The reference backends (interpreter, CPU graph executor, the CUDA
    /// backend's per-op kernel) evaluate the definition in f64 and round
    /// once; fused kernels compute it in f32.
    pub wide: bool,
    pub cost: Cost,
}

impl Op {
    /// The op table: one row per op.
    pub fn info(&self) -> OpInfo {
        use Arity::{AtLeast, Exactly};
        let row = |arity, cost| OpInfo {
            arity,
            elementwise: false,
            in_place: false,
            chan: &[],
            linear: Linearity::No,
            bilinear: false,
            wide: false,
            cost,
        };
        // Elementwise, in place over operand 0.
        let elem = |arity, cost| OpInfo {
            elementwise: true,
            in_place: true,
            ..row(arity, cost)
        };
        let one = Cost::PerOutput(1.0);
        match self {
            Op::Input { .. } | Op::Param { .. } => row(Exactly(0), Cost::Free),
            Op::DropoutMask { .. } => row(Exactly(0), one),
            Op::Poisson { .. } => row(Exactly(1), one),
            Op::TimeSlice { .. } => row(Exactly(1), Cost::Free),
            Op::Add | Op::Sub => OpInfo {
                linear: Linearity::Jointly,
                ..elem(Exactly(2), one)
            },
            Op::Mul => OpInfo {
                linear: Linearity::Each(&[0, 1]),
                bilinear: true,
                ..elem(Exactly(2), one)
            },
            Op::Scale(_) | Op::AddScalar(_) | Op::Spike { .. } => elem(Exactly(1), one),
            Op::Detach => elem(Exactly(1), Cost::Free),
            Op::SurrogateGrad { .. } => OpInfo {
                wide: true,
                ..elem(Exactly(1), Cost::PerOutput(4.0))
            },
            Op::MatMul { .. } => OpInfo {
                linear: Linearity::Each(&[0, 1]),
                bilinear: true,
                ..row(Exactly(2), Cost::Shaped)
            },
            Op::BiasAdd => OpInfo {
                chan: &[1],
                linear: Linearity::Jointly,
                ..elem(Exactly(2), one)
            },
            Op::ChannelScale => OpInfo {
                chan: &[1],
                linear: Linearity::Each(&[0, 1]),
                bilinear: true,
                ..elem(Exactly(2), one)
            },
            Op::Conv2d { .. } => row(Exactly(2), Cost::Shaped),
            Op::AvgPool { .. } | Op::MaxPool { .. } => row(Exactly(1), Cost::Shaped),
            Op::Reshape { .. } => OpInfo {
                in_place: true,
                linear: Linearity::Each(&[0]),
                ..row(Exactly(1), Cost::Free)
            },
            Op::ChannelMean => row(AtLeast(1), Cost::PerInput),
            Op::ChannelVar => row(AtLeast(2), Cost::Shaped),
            Op::Normalize { .. } => OpInfo {
                chan: &[1, 2],
                ..elem(Exactly(3), Cost::PerOutput(2.0))
            },
            Op::TimeMean => OpInfo {
                in_place: false,
                ..elem(AtLeast(1), Cost::PerInput)
            },
            Op::Sum => OpInfo {
                linear: Linearity::Jointly,
                ..elem(AtLeast(1), Cost::PerInput)
            },
            Op::Rsqrt { .. } => OpInfo {
                in_place: false,
                ..elem(Exactly(1), one)
            },
            Op::ChannelSum => OpInfo {
                linear: Linearity::Each(&[0]),
                ..row(Exactly(1), Cost::PerInput)
            },
            Op::ChannelDot => row(Exactly(2), Cost::Shaped),
            Op::ChannelBroadcast { .. } => OpInfo {
                in_place: false,
                chan: &[0],
                linear: Linearity::Each(&[0]),
                ..elem(Exactly(1), one)
            },
            Op::Conv2dGradInput { .. } => OpInfo {
                linear: Linearity::Each(&[0, 1]),
                ..row(Exactly(2), Cost::Shaped)
            },
            Op::Conv2dGradWeight { .. } => OpInfo {
                linear: Linearity::Each(&[0, 1]),
                bilinear: true,
                ..row(Exactly(2), Cost::Shaped)
            },
            Op::AvgPoolGrad { .. } => OpInfo {
                linear: Linearity::Each(&[0]),
                ..row(Exactly(1), Cost::Shaped)
            },
            Op::MaxPoolGrad { .. } => OpInfo {
                linear: Linearity::Each(&[1]),
                ..row(Exactly(2), Cost::Shaped)
            },
            Op::MaxPoolMask { .. } => row(Exactly(1), one),
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => row(Exactly(2), Cost::Shaped),
        }
    }

    /// Whether the node's value is owned by the caller (input or parameter)
    /// and read in place, not allocated by a run.
    pub fn resident(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Param { .. })
    }

    /// Whether the op can write its result over its first operand.
    pub fn in_place(&self) -> bool {
        self.info().in_place
    }

    /// Whether the op has a scalar definition (`ir::scalar`).
    pub fn elementwise(&self) -> bool {
        self.info().elementwise
    }

    /// Whether operand `pos` is a per-channel vector.
    pub fn chan_operand(&self, pos: usize) -> bool {
        self.info().chan.contains(&pos)
    }

    /// Whether the reference evaluates the op in f64 ([`OpInfo::wide`]).
    pub fn wide(&self) -> bool {
        self.info().wide
    }

    /// The sets of operand positions in which the op (applied to `arity`
    /// operands) is linear when the others are fixed: one set for ops
    /// linear in all operands jointly, one per operand otherwise.
    pub fn linear_operands(&self, arity: usize) -> Vec<Vec<usize>> {
        match self.info().linear {
            Linearity::No => vec![],
            Linearity::Jointly => vec![(0..arity).collect()],
            Linearity::Each(ps) => ps.iter().map(|&p| vec![p]).collect(),
        }
    }

    /// Whether the op is the product of its two operands.
    pub fn is_bilinear(&self) -> bool {
        self.info().bilinear
    }

    /// The name printed in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::DropoutMask { .. } => "dropout_mask",
            Op::Poisson { .. } => "poisson",
            Op::TimeSlice { .. } => "time_slice",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Scale(_) => "scale",
            Op::AddScalar(_) => "add_scalar",
            Op::Detach => "detach",
            Op::Spike { .. } => "spike",
            Op::MatMul { .. } => "matmul",
            Op::BiasAdd => "bias_add",
            Op::Conv2d { .. } => "conv2d",
            Op::AvgPool { .. } => "avgpool",
            Op::MaxPool { .. } => "maxpool",
            Op::Reshape { .. } => "reshape",
            Op::ChannelMean => "channel_mean",
            Op::ChannelVar => "channel_var",
            Op::Normalize { .. } => "normalize",
            Op::ChannelScale => "channel_scale",
            Op::TimeMean => "time_mean",
            Op::Sum => "sum",
            Op::SurrogateGrad { .. } => "surrogate_grad",
            Op::Rsqrt { .. } => "rsqrt",
            Op::ChannelSum => "channel_sum",
            Op::ChannelDot => "channel_dot",
            Op::ChannelBroadcast { .. } => "channel_broadcast",
            Op::Conv2dGradInput { .. } => "conv2d_grad_input",
            Op::Conv2dGradWeight { .. } => "conv2d_grad_weight",
            Op::AvgPoolGrad { .. } => "avgpool_grad",
            Op::MaxPoolGrad { .. } => "maxpool_grad",
            Op::MaxPoolMask { .. } => "maxpool_mask",
            Op::SoftmaxCrossEntropy => "softmax_xent",
            Op::SoftmaxCrossEntropyGrad => "softmax_xent_grad",
        }
    }

    /// Attributes shown after the name in the text form, e.g. `stride=2`.
    pub fn attrs(&self) -> String {
        match self {
            Op::Input { name } | Op::Param { name } => format!("\"{}\"", name.escape_debug()),
            Op::DropoutMask { p, stream } => format!("p={p} stream={stream:#x}"),
            Op::Poisson { stream } => format!("stream={stream:#x}"),
            Op::TimeSlice { t } => format!("t={t}"),
            Op::Scale(c) | Op::AddScalar(c) => format!("{c}"),
            Op::Spike { theta, surrogate } | Op::SurrogateGrad { theta, surrogate } => format!(
                "theta={theta} {}({})",
                surrogate.kind.name(),
                surrogate.alpha
            ),
            Op::MatMul { ta, tb } => match (ta, tb) {
                (false, false) => String::new(),
                (true, false) => "ta".into(),
                (false, true) => "tb".into(),
                (true, true) => "ta tb".into(),
            },
            Op::Conv2d { stride, padding } => format!("stride={stride} padding={padding}"),
            Op::AvgPool { kernel, stride } | Op::MaxPool { kernel, stride } => {
                format!("kernel={kernel} stride={stride}")
            }
            Op::Reshape { shape } => crate::shape::list(shape),
            Op::Normalize { eps } | Op::Rsqrt { eps } => format!("eps={eps}"),
            Op::ChannelBroadcast { shape } => crate::shape::list(shape),
            Op::Conv2dGradInput {
                stride,
                padding,
                in_h,
                in_w,
            } => format!("stride={stride} padding={padding} in={in_h}x{in_w}"),
            Op::Conv2dGradWeight {
                stride,
                padding,
                kernel,
            } => format!("stride={stride} padding={padding} kernel={kernel}"),
            Op::AvgPoolGrad {
                kernel,
                stride,
                in_h,
                in_w,
            } => format!("kernel={kernel} stride={stride} in={in_h}x{in_w}"),
            Op::MaxPoolGrad { kernel, stride } | Op::MaxPoolMask { kernel, stride } => {
                format!("kernel={kernel} stride={stride}")
            }
            _ => String::new(),
        }
    }

    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::DropoutMask { .. }
        )
    }

    /// The output shape for the given operand shapes, or why they are wrong.
    /// Leaves have no rule (their node carries the shape): `Ok(None)`.
    pub fn infer_shape(&self, ins: &[&[usize]]) -> Result<Option<Vec<usize>>, String> {
        let arity = |n: usize| -> Result<(), String> {
            if ins.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{} takes {n} operands, got {}",
                    self.name(),
                    ins.len()
                ))
            }
        };
        let same = |a: &[usize], b: &[usize]| -> Result<(), String> {
            if a == b {
                Ok(())
            } else {
                Err(format!(
                    "operand shapes differ: {} vs {}",
                    crate::shape::list(a),
                    crate::shape::list(b)
                ))
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
                    return Err(format!(
                        "time_slice t={t} of shape {}",
                        crate::shape::list(s)
                    ));
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
                    return Err(format!(
                        "matmul needs 2-D operands, got {} and {}",
                        crate::shape::list(a),
                        crate::shape::list(b)
                    ));
                }
                let (m, ka) = if *ta { (a[1], a[0]) } else { (a[0], a[1]) };
                let (kb, n) = if *tb { (b[1], b[0]) } else { (b[0], b[1]) };
                if ka != kb {
                    return Err(format!(
                        "matmul inner dimensions differ: {} · {}",
                        crate::shape::list(a),
                        crate::shape::list(b)
                    ));
                }
                vec![m, n]
            }
            Op::BiasAdd | Op::ChannelScale => {
                arity(2)?;
                if ins[0].len() < 2 || ins[1] != [ins[0][1]] {
                    return Err(format!(
                        "bias {} does not fit {}",
                        crate::shape::list(ins[1]),
                        crate::shape::list(ins[0])
                    ));
                }
                ins[0].to_vec()
            }
            Op::Conv2d { stride, padding } => {
                arity(2)?;
                let (x, w) = (ins[0], ins[1]);
                if x.len() != 4 || w.len() != 4 || x[1] != w[1] || w[2] != w[3] {
                    return Err(format!(
                        "conv2d of {} with weight {}",
                        crate::shape::list(x),
                        crate::shape::list(w)
                    ));
                }
                let k = w[2];
                if *stride == 0 {
                    return Err("conv2d stride must be > 0".into());
                }
                let o = |n: usize| (n + 2 * padding).checked_sub(k).map(|d| d / stride + 1);
                match (o(x[2]), o(x[3])) {
                    (Some(h), Some(wd)) => vec![x[0], w[0], h, wd],
                    _ => {
                        return Err(format!(
                            "conv2d kernel {k} does not fit {}",
                            crate::shape::list(x)
                        ))
                    }
                }
            }
            Op::AvgPool { kernel, stride } | Op::MaxPool { kernel, stride } => {
                arity(1)?;
                let x = ins[0];
                if x.len() != 4 || *kernel == 0 || *stride == 0 || x[2] < *kernel || x[3] < *kernel
                {
                    return Err(format!(
                        "pool kernel {kernel} does not fit {}",
                        crate::shape::list(x)
                    ));
                }
                vec![
                    x[0],
                    x[1],
                    (x[2] - kernel) / stride + 1,
                    (x[3] - kernel) / stride + 1,
                ]
            }
            Op::Reshape { shape } => {
                arity(1)?;
                if shape.iter().product::<usize>() != ins[0].iter().product::<usize>() {
                    return Err(format!(
                        "reshape {} to {}",
                        crate::shape::list(ins[0]),
                        crate::shape::list(shape)
                    ));
                }
                shape.clone()
            }
            Op::ChannelMean => {
                if ins.is_empty() {
                    return Err("channel_mean needs operands".into());
                }
                for s in ins {
                    same(ins[0], s)?;
                }
                if ins[0].len() < 2 {
                    return Err(format!("channel_mean of {}", crate::shape::list(ins[0])));
                }
                vec![ins[0][1]]
            }
            Op::ChannelVar => {
                if ins.len() < 2 {
                    return Err("channel_var needs (mean, x...)".into());
                }
                for s in &ins[2..] {
                    same(ins[1], s)?;
                }
                if ins[1].len() < 2 || ins[0] != [ins[1][1]] {
                    return Err(format!(
                        "channel_var mean {} for {}",
                        crate::shape::list(ins[0]),
                        crate::shape::list(ins[1])
                    ));
                }
                ins[0].to_vec()
            }
            Op::Normalize { .. } => {
                arity(3)?;
                let x = ins[0];
                if x.len() < 2 || ins[1..].iter().any(|s| *s != [x[1]]) {
                    return Err(format!(
                        "batchnorm statistics do not fit {}",
                        crate::shape::list(x)
                    ));
                }
                x.to_vec()
            }
            Op::TimeMean | Op::Sum => {
                if ins.is_empty() {
                    return Err(format!("{} needs operands", self.name()));
                }
                for s in ins {
                    same(ins[0], s)?;
                }
                ins[0].to_vec()
            }
            Op::ChannelSum => {
                arity(1)?;
                if ins[0].len() < 2 {
                    return Err(format!("channel_sum of {}", crate::shape::list(ins[0])));
                }
                vec![ins[0][1]]
            }
            Op::ChannelDot => {
                arity(2)?;
                same(ins[0], ins[1])?;
                if ins[0].len() < 2 {
                    return Err(format!("channel_dot of {}", crate::shape::list(ins[0])));
                }
                vec![ins[0][1]]
            }
            Op::ChannelBroadcast { shape } => {
                arity(1)?;
                if shape.len() < 2 || ins[0] != [shape[1]] {
                    return Err(format!(
                        "channel_broadcast of {} to {}",
                        crate::shape::list(ins[0]),
                        crate::shape::list(shape)
                    ));
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
                        return Err(format!(
                            "conv2d_grad_input of {} with weight {} for {in_h}x{in_w}",
                            crate::shape::list(d),
                            crate::shape::list(w)
                        ))
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
                    return Err(format!(
                        "conv2d_grad_weight of {} and {}",
                        crate::shape::list(x),
                        crate::shape::list(d)
                    ));
                }
                let w = [d[1], x[1], *kernel, *kernel];
                let fwd = Op::Conv2d {
                    stride: *stride,
                    padding: *padding,
                };
                match fwd.infer_shape(&[x, &w]) {
                    Ok(Some(y)) if y == d => w.to_vec(),
                    _ => {
                        return Err(format!(
                            "conv2d_grad_weight of {} and {}",
                            crate::shape::list(x),
                            crate::shape::list(d)
                        ))
                    }
                }
            }
            Op::AvgPoolGrad {
                kernel,
                stride,
                in_h,
                in_w,
            } => {
                arity(1)?;
                let d = ins[0];
                if d.len() != 4 {
                    return Err(format!("avgpool_grad of {}", crate::shape::list(d)));
                }
                let x = [d[0], d[1], *in_h, *in_w];
                let fwd = Op::AvgPool {
                    kernel: *kernel,
                    stride: *stride,
                };
                match fwd.infer_shape(&[&x]) {
                    Ok(Some(y)) if y == d => x.to_vec(),
                    _ => {
                        return Err(format!(
                            "avgpool_grad of {} for {in_h}x{in_w}",
                            crate::shape::list(d)
                        ))
                    }
                }
            }
            Op::MaxPoolGrad { kernel, stride } => {
                arity(2)?;
                let fwd = Op::MaxPool {
                    kernel: *kernel,
                    stride: *stride,
                };
                match fwd.infer_shape(&[ins[0]]) {
                    Ok(Some(y)) if y == ins[1] => ins[0].to_vec(),
                    _ => {
                        return Err(format!(
                            "maxpool_grad of {} and {}",
                            crate::shape::list(ins[0]),
                            crate::shape::list(ins[1])
                        ))
                    }
                }
            }
            Op::MaxPoolMask { kernel, stride } => {
                arity(1)?;
                let fwd = Op::MaxPool {
                    kernel: *kernel,
                    stride: *stride,
                };
                fwd.infer_shape(ins)?;
                ins[0].to_vec()
            }
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => {
                arity(2)?;
                same(ins[0], ins[1])?;
                if ins[0].len() != 2 {
                    return Err(format!(
                        "cross-entropy needs [B, K] logits, got {}",
                        crate::shape::list(ins[0])
                    ));
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
