//! The primitive op set.
//!
//! Small on purpose (the luminal idea): elementwise ops, matmul, conv and
//! pooling, reductions for batch norm, reshape, the spike, and time means.
//! A LIF neuron is not an op: unrolling writes it as charge (`scale`, `add`),
//! fire (`spike`) and reset (`detach`, `scale`/`mul`, `sub`), so autodiff
//! and the rate pass see every term of the recurrence.

pub use crate::model::MaxPoolRule;
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
    /// Padded positions count as zeros; the divisor is always kernel².
    AvgPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Padded positions are −∞ (never a window's maximum). `rule` is the
    /// layer's rate-mode rule; it does not change the op's value.
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
        rule: MaxPoolRule,
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
        padding: usize,
        in_h: usize,
        in_w: usize,
    },
    /// `(δy, s) -> AvgPoolGrad(δy) · s`, elementwise with `s` (of the
    /// result's shape), in that order: the CPU lowering's form of an
    /// average pooling's gradient whose only user multiplies it (a spiking
    /// layer's backward), so the full-size gradient is not stored and read
    /// back (`passes::fuse_time::pool_grad_products`).
    AvgPoolGradMul {
        kernel: usize,
        stride: usize,
        padding: usize,
        in_h: usize,
        in_w: usize,
    },
    /// `(x, δy) -> δx` of `MaxPool`: each window's δ goes to its first
    /// maximum.
    MaxPoolGrad {
        kernel: usize,
        stride: usize,
        padding: usize,
        rule: MaxPoolRule,
    },
    /// `x -> mask` of x's shape: 1 at each pooling window's first maximum.
    /// With windows that do not overlap, `maxpool_grad(x, δ) =
    /// mask(x) · k²·avgpool_grad(δ)`, a product the rate pass can average.
    MaxPoolMask {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// `x[B,C,H,W] -> s[B,C,Ho,Wo,k·k]`: per window, 1 at the offset of its
    /// first maximum, 0 elsewhere (the window's selection, one-hot).
    MaxPoolSelect {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// `(s[B,C,Ho,Wo,k·k], δy[B,C,Ho,Wo]) -> δx[B,C,H,W]`: every window
    /// adds `s[w, o]·δy[w]` to the input element at its offset `o`. Then
    /// `maxpool_grad(x, δ) = maxpool_route(maxpool_select(x), δ)` for any
    /// windows, overlapping ones included, and the route is bilinear, so
    /// the rate pass can average the selections.
    MaxPoolRoute {
        kernel: usize,
        stride: usize,
        padding: usize,
        in_h: usize,
        in_w: usize,
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
    /// The reference interpreter and the library's per-op kernel evaluate the definition in f64 and round
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
            Op::AvgPoolGradMul { .. } => OpInfo {
                linear: Linearity::Each(&[0, 1]),
                bilinear: true,
                ..row(Exactly(2), Cost::Shaped)
            },
            Op::MaxPoolGrad { .. } => OpInfo {
                linear: Linearity::Each(&[1]),
                ..row(Exactly(2), Cost::Shaped)
            },
            Op::MaxPoolMask { .. } => row(Exactly(1), one),
            Op::MaxPoolSelect { .. } => row(Exactly(1), Cost::Shaped),
            Op::MaxPoolRoute { .. } => OpInfo {
                linear: Linearity::Each(&[0, 1]),
                bilinear: true,
                ..row(Exactly(2), Cost::Shaped)
            },
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

    /// The window of an average pooling whose windows tile its input of
    /// `shape` ([B, C, H, W]): stride equal to the window, no padding, the
    /// window dividing H and W, so every input element lies in exactly one
    /// window (the pooled tensor has the input's mean; fusion can pool in
    /// the producing kernel).
    pub fn tiling_window(&self, shape: &[usize]) -> Option<usize> {
        match *self {
            Op::AvgPool {
                kernel: k,
                stride,
                padding: 0,
            } if stride == k
                && shape.len() == 4
                && shape[2].is_multiple_of(k)
                && shape[3].is_multiple_of(k) =>
            {
                Some(k)
            }
            _ => None,
        }
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
            Op::AvgPoolGradMul { .. } => "avgpool_grad_mul",
            Op::MaxPoolGrad { .. } => "maxpool_grad",
            Op::MaxPoolMask { .. } => "maxpool_mask",
            Op::MaxPoolSelect { .. } => "maxpool_select",
            Op::MaxPoolRoute { .. } => "maxpool_route",
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
            Op::MaxPool { rule, .. } | Op::MaxPoolGrad { rule, .. } => {
                self.window_attr() + &rule_attr(*rule)
            }
            Op::AvgPool { .. } | Op::MaxPoolMask { .. } | Op::MaxPoolSelect { .. } => {
                self.window_attr()
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
            Op::AvgPoolGrad { in_h, in_w, .. }
            | Op::AvgPoolGradMul { in_h, in_w, .. }
            | Op::MaxPoolRoute { in_h, in_w, .. } => {
                format!("{} in={in_h}x{in_w}", self.window_attr())
            }
            _ => String::new(),
        }
    }

    /// Ops every backend runs as GEMMs (linear layers and convolutions,
    /// forward and backward): the ops whose operands `--precision` rounds.
    pub fn is_matrix_product(&self) -> bool {
        matches!(
            self,
            Op::MatMul { .. }
                | Op::Conv2d { .. }
                | Op::Conv2dGradInput { .. }
                | Op::Conv2dGradWeight { .. }
        )
    }

    /// A pooling op's window: (kernel, stride, padding). Seven ops carry
    /// it; this is the one place that knows which.
    pub fn window(&self) -> Option<(usize, usize, usize)> {
        match *self {
            Op::AvgPool {
                kernel,
                stride,
                padding,
            }
            | Op::MaxPool {
                kernel,
                stride,
                padding,
                ..
            }
            | Op::AvgPoolGrad {
                kernel,
                stride,
                padding,
                ..
            }
            | Op::AvgPoolGradMul {
                kernel,
                stride,
                padding,
                ..
            }
            | Op::MaxPoolGrad {
                kernel,
                stride,
                padding,
                ..
            }
            | Op::MaxPoolMask {
                kernel,
                stride,
                padding,
            }
            | Op::MaxPoolSelect {
                kernel,
                stride,
                padding,
            }
            | Op::MaxPoolRoute {
                kernel,
                stride,
                padding,
                ..
            } => Some((kernel, stride, padding)),
            _ => None,
        }
    }

    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::DropoutMask { .. }
        )
    }
}

impl Op {
    /// A pooling window's attributes as printed: the padding only when
    /// there is some (so unpadded pools print as they always have).
    fn window_attr(&self) -> String {
        let (kernel, stride, padding) = self.window().expect("a pooling op");
        if padding == 0 {
            format!("kernel={kernel} stride={stride}")
        } else {
            format!("kernel={kernel} stride={stride} padding={padding}")
        }
    }
}

/// A max-pool's rate rule as printed: nothing for the default.
fn rule_attr(rule: MaxPoolRule) -> String {
    match rule {
        MaxPoolRule::Masks => String::new(),
        rule => format!(" rule={}", rule.name()),
    }
}
