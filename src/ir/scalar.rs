//! One scalar definition per elementwise op and per surrogate, as kernel-IR
//! expressions ([`Expr`]). Everything that computes an elementwise op
//! derives from here: the reference interpreter evaluates the expression
//! ([`super::scalar_eval`]), fusion inlines it into kernels, and the C and
//! CUDA renderers print it (the library's per-op kernels included).
//!
//! Each definition fixes the order of operations, and every backend keeps
//! it (C is compiled without FMA contraction, NVRTC with `--fmad=false`), so
//! an op rounds the same way everywhere it runs in the same precision.

use super::kernel::{expr, sg_name, BinOp, DefSpelling, Expr, Func};
use super::Op;
use crate::model::SurrogateKind;
use std::fmt::Write;

/// A scalar function with named intermediate values: `lets[k]` is
/// `Expr::Local(k)` and may read the arguments (`Expr::Arg`) and earlier
/// locals; `ret` is the result.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarFn {
    pub lets: Vec<Expr>,
    pub ret: Expr,
}

/// The derivative of a surrogate spike function at `x = Arg(0)` with
/// steepness `α = Arg(1)` (docs/math.md §1). The only place a surrogate's
/// math is written; the test oracles (tests/common) keep their own.
pub fn surrogate_derivative(kind: SurrogateKind) -> ScalarFn {
    use BinOp::{Add, Div, Mul, Sub};
    let (x, a) = (Expr::Arg(0), Expr::Arg(1));
    let local = Expr::Local(0);
    let one = || Expr::Num(1.0);
    match kind {
        // α·σ(αx)(1 − σ(αx)), written as α·z/(1 + z)² with z = e^(−α|x|)
        // (the function is even in x): 1 − σ would cancel to a few digits
        // once σ nears 1, and z never overflows.
        SurrogateKind::Sigmoid => ScalarFn {
            lets: vec![Expr::call(
                Func::Exp,
                Expr::bin(
                    Mul,
                    Expr::call(Func::Neg, a.clone()),
                    Expr::call(Func::Abs, x),
                ),
            )],
            ret: Expr::bin(
                Div,
                Expr::bin(Mul, a, local.clone()),
                Expr::bin(
                    Mul,
                    Expr::bin(Add, one(), local.clone()),
                    Expr::bin(Add, one(), local),
                ),
            ),
        },
        // α / (2·(1 + u²)) with u = (π/2)·α·x.
        SurrogateKind::Atan => ScalarFn {
            lets: vec![Expr::bin(
                Mul,
                Expr::bin(Mul, Expr::Num(std::f64::consts::FRAC_PI_2), a.clone()),
                x,
            )],
            ret: Expr::bin(
                Div,
                a,
                Expr::bin(
                    Mul,
                    Expr::Num(2.0),
                    Expr::bin(Add, one(), Expr::bin(Mul, local.clone(), local)),
                ),
            ),
        },
        // max(0, α − α²·|x|).
        SurrogateKind::Triangle => ScalarFn {
            lets: vec![Expr::bin(
                Sub,
                a.clone(),
                Expr::bin(Mul, Expr::bin(Mul, a.clone(), a), Expr::call(Func::Abs, x)),
            )],
            ret: Expr::call(Func::Pos, local),
        },
        // 1 / (1 + α·|x|)², with d = 1 + α·|x|.
        SurrogateKind::FastSigmoid => ScalarFn {
            lets: vec![Expr::bin(
                Add,
                one(),
                Expr::bin(Mul, a, Expr::call(Func::Abs, x)),
            )],
            ret: Expr::bin(Div, one(), Expr::bin(Mul, local.clone(), local)),
        },
    }
}

/// The surrogate derivatives a kernel calls (`Expr::Sg`), rendered from
/// their one definition (`ir::scalar::surrogate_derivative`): one function
/// per surrogate, `QUAL float sg_NAME(float x, float a)`, or in double
/// `sg_NAME_d` when `wide` (`QUAL` is `static inline` in C and
/// `__device__ __forceinline__` in CUDA).
pub fn prelude(qual: &str) -> String {
    surrogate_fns(qual, false)
}

/// [`prelude`] in f32 (`wide` false) or f64.
pub fn surrogate_fns(qual: &str, wide: bool) -> String {
    let ty = if wide { "double" } else { "float" };
    let sp = DefSpelling {
        args: &["x", "a"],
        wide,
    };
    let mut o = String::new();
    for kind in SurrogateKind::ALL {
        let def = surrogate_derivative(kind);
        let mut body = String::new();
        for (k, e) in def.lets.iter().enumerate() {
            let _ = write!(body, "const {ty} x{k} = {}; ", expr(e, &sp));
        }
        let _ = writeln!(
            o,
            "{qual} {ty} {}({ty} x, {ty} a) {{ {body}return {}; }}",
            sg_name(kind, wide),
            expr(&def.ret, &sp)
        );
    }
    o
}

/// The numeric attributes of an elementwise op, in the order [`define`]
/// takes them.
pub fn attrs(op: &Op) -> Vec<f64> {
    match op {
        Op::Scale(c) | Op::AddScalar(c) => vec![*c],
        Op::Spike { theta, .. } => vec![*theta],
        Op::SurrogateGrad { theta, surrogate } => vec![*theta, surrogate.alpha],
        Op::Normalize { eps } | Op::Rsqrt { eps } => vec![*eps],
        _ => vec![],
    }
}

/// The value of an elementwise op at one element: `args` are its operands'
/// values there (per-channel operands already read at the element's
/// channel), `at` its attributes ([`attrs`], as constants or as named
/// parameters of a rendered kernel). `None` for ops that are not
/// elementwise.
pub fn define(op: &Op, args: Vec<Expr>, at: &[Expr]) -> Option<Expr> {
    use BinOp::*;
    let attr = |k: usize| at[k].clone();
    if matches!(op, Op::Sum | Op::TimeMean) {
        // Left to right from 0, as an accumulator would.
        let n = args.len();
        let mut acc = Expr::Num(0.0);
        for e in args {
            acc = Expr::bin(Add, acc, e);
        }
        return Some(if matches!(op, Op::TimeMean) {
            Expr::bin(Div, acc, Expr::Num(n as f64))
        } else {
            acc
        });
    }
    let mut it = args.into_iter();
    let mut x = || it.next().expect("operand count checked by the verifier");
    Some(match op {
        Op::Add | Op::BiasAdd => Expr::bin(Add, x(), x()),
        Op::Sub => Expr::bin(Sub, x(), x()),
        Op::Mul | Op::ChannelScale => Expr::bin(Mul, x(), x()),
        Op::Scale(_) => Expr::bin(Mul, attr(0), x()),
        Op::AddScalar(_) => Expr::bin(Add, x(), attr(0)),
        Op::Detach | Op::ChannelBroadcast { .. } => x(),
        // Heaviside with H(0) = 1: fires exactly at threshold.
        Op::Spike { .. } => Expr::bin(Ge, x(), attr(0)),
        Op::SurrogateGrad { surrogate, .. } => {
            Expr::sg(surrogate.kind, Expr::bin(Sub, x(), attr(0)), attr(1))
        }
        Op::Normalize { .. } => {
            let (v, m, var) = (x(), x(), x());
            Expr::bin(
                Div,
                Expr::bin(Sub, v, m),
                Expr::call(Func::Sqrt, Expr::bin(Add, var, attr(0))),
            )
        }
        Op::Rsqrt { .. } => Expr::call(Func::Rsqrt, Expr::bin(Add, x(), attr(0))),
        _ => return None,
    })
}

/// [`define`] with the op's own attributes as exact constants.
pub fn define_const(op: &Op, args: Vec<Expr>) -> Option<Expr> {
    let at: Vec<Expr> = attrs(op).into_iter().map(Expr::Num).collect();
    define(op, args, &at)
}

/// Every elementwise op, attributes zeroed: what renderers that emit one
/// kernel per op (the CUDA backend's library) iterate. A new elementwise op
/// is added here, next to its definition.
pub fn elementwise_ops() -> Vec<Op> {
    use crate::model::Surrogate;
    let surrogate = Surrogate {
        kind: SurrogateKind::Sigmoid,
        alpha: 0.0,
    };
    vec![
        Op::Add,
        Op::Sub,
        Op::Mul,
        Op::Scale(0.0),
        Op::AddScalar(0.0),
        Op::Detach,
        Op::Spike {
            theta: 0.0,
            surrogate,
        },
        Op::SurrogateGrad {
            theta: 0.0,
            surrogate,
        },
        Op::Rsqrt { eps: 0.0 },
        Op::BiasAdd,
        Op::ChannelScale,
        Op::ChannelBroadcast { shape: vec![] },
        Op::Normalize { eps: 0.0 },
        Op::Sum,
        Op::TimeMean,
    ]
}

/// The variants of an op whose definition also depends on a discrete
/// choice, each with the integer a kernel selects it by: the surrogate
/// derivative (by `SurrogateKind::code`); other ops have one.
pub fn variants(op: &Op) -> Vec<(i32, Op)> {
    match op {
        Op::SurrogateGrad { theta, surrogate } => SurrogateKind::ALL
            .into_iter()
            .map(|kind| {
                let surrogate = crate::model::Surrogate { kind, ..*surrogate };
                let op = Op::SurrogateGrad {
                    theta: *theta,
                    surrogate,
                };
                (kind.code(), op)
            })
            .collect(),
        op => vec![(0, op.clone())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listed_ops_are_the_elementwise_ones() {
        for op in elementwise_ops() {
            assert!(op.elementwise(), "{}", op.name());
            let n = match op.info().arity {
                super::super::Arity::Exactly(n) | super::super::Arity::AtLeast(n) => n,
            };
            let args = (0..n).map(Expr::Arg).collect();
            assert!(define_const(&op, args).is_some(), "{}", op.name());
        }
    }
}
