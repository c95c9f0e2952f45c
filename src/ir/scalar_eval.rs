//! Evaluates the scalar definitions of `ir::scalar` in any float type: the
//! reference interpreter's and the CPU graph executor's elementwise math.
//!
//! Each operation rounds to the element type exactly as the definition
//! orders it (Rust does not contract `a·b + c`), so a definition evaluated
//! here in f32 agrees bit for bit with the same definition compiled as C.

use super::kernel::{BinOp, Expr, Func};
use super::scalar::{self, surrogate_derivative, ScalarFn};
use super::Op;
use crate::model::SurrogateKind;
use num_traits::Float;
use std::marker::PhantomData;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScalarError {
    #[error("constant {0} is not representable in the element type")]
    Constant(f64),
    #[error("{0} has no scalar definition")]
    NotElementwise(&'static str),
    #[error("a scalar definition cannot read {0} (only kernels have it)")]
    KernelOnly(&'static str),
}

/// Most locals a definition may bind (the surrogates use one).
const MAX_LOCALS: usize = 4;

/// An op's definition, ready to be evaluated once per element with the
/// operand values at that element.
pub struct OpProgram<F> {
    expr: Expr,
    /// Evaluated in f64 and rounded once (`Op::wide`).
    wide: bool,
    /// The surrogate derivatives, by `SurrogateKind::code`.
    sg: Vec<ScalarFn>,
    _elem: PhantomData<fn() -> F>,
}

impl<F: Float> OpProgram<F> {
    /// The definition of `op` applied to `arity` operands. Ops the
    /// reference computes in f64 (`Op::wide`) convert their operands to
    /// f64 and round the result once.
    pub fn new(op: &Op, arity: usize) -> Result<Self, ScalarError> {
        let args = (0..arity).map(Expr::Arg).collect();
        let expr = scalar::define_const(op, args).ok_or(ScalarError::NotElementwise(op.name()))?;
        let sg: Vec<ScalarFn> = SurrogateKind::ALL
            .into_iter()
            .map(surrogate_derivative)
            .collect();
        let wide = op.wide();
        let mut exprs = vec![&expr];
        for f in &sg {
            exprs.extend(f.lets.iter());
            exprs.push(&f.ret);
        }
        for e in exprs {
            if wide {
                check::<f64>(e)?
            } else {
                check::<F>(e)?
            }
        }
        if wide {
            assert!(arity <= MAX_LOCALS, "wide ops are unary");
        }
        Ok(OpProgram {
            expr,
            wide,
            sg,
            _elem: PhantomData,
        })
    }

    pub fn eval(&self, args: &[F]) -> F {
        if !self.wide {
            return eval(&self.expr, args, &[], &self.sg);
        }
        let mut w = [0f64; MAX_LOCALS];
        for (w, v) in w.iter_mut().zip(args) {
            *w = v.to_f64().expect("float widens to f64");
        }
        let v: f64 = eval(&self.expr, &w[..args.len()], &[], &self.sg);
        F::from(v).expect("f64 narrows to a float")
    }
}

/// A surrogate's derivative at `x` with steepness `alpha`, in f64.
pub fn surrogate_derivative_f64(kind: SurrogateKind, alpha: f64, x: f64) -> f64 {
    let sg: Vec<ScalarFn> = SurrogateKind::ALL
        .into_iter()
        .map(surrogate_derivative)
        .collect();
    call(&sg[kind.code() as usize], &[x, alpha], &sg)
}

/// Every constant of `e` fits `F`, and `e` reads nothing a definition
/// cannot.
fn check<F: Float>(e: &Expr) -> Result<(), ScalarError> {
    match e {
        Expr::Num(v) => F::from(*v).map(drop).ok_or(ScalarError::Constant(*v)),
        Expr::Const(v) => F::from(*v)
            .map(drop)
            .ok_or(ScalarError::Constant(f64::from(*v))),
        Expr::StepConst(_) => Err(ScalarError::KernelOnly("a per-step constant")),
        Expr::Reg(_) => Err(ScalarError::KernelOnly("a register")),
        Expr::Load(..) => Err(ScalarError::KernelOnly("a tensor slot")),
        e => e.children().into_iter().try_for_each(check::<F>),
    }
}

fn constant<F: Float>(v: f64) -> F {
    F::from(v).expect("constants were checked when the program was built")
}

fn eval<F: Float>(e: &Expr, args: &[F], locals: &[F], sg: &[ScalarFn]) -> F {
    let ev = |x: &Expr| eval(x, args, locals, sg);
    match e {
        Expr::Num(v) => constant(*v),
        Expr::Const(v) => constant(f64::from(*v)),
        Expr::Arg(k) => args[*k],
        Expr::Local(k) => locals[*k],
        Expr::Bin(op, a, b) => bin(*op, ev(a), ev(b)),
        Expr::Call(f, a) => func(*f, ev(a)),
        Expr::Sg(kind, x, al) => call(&sg[kind.code() as usize], &[ev(x), ev(al)], sg),
        Expr::StepConst(_) | Expr::Reg(_) | Expr::Load(..) => {
            unreachable!("rejected when the program was built")
        }
    }
}

/// A `ScalarFn` applied to `args`.
fn call<F: Float>(f: &ScalarFn, args: &[F], sg: &[ScalarFn]) -> F {
    assert!(
        f.lets.len() <= MAX_LOCALS,
        "too many locals in a definition"
    );
    let mut l = [F::zero(); MAX_LOCALS];
    for (k, e) in f.lets.iter().enumerate() {
        l[k] = eval(e, args, &l[..k], sg);
    }
    eval(&f.ret, args, &l[..f.lets.len()], sg)
}

fn bin<F: Float>(op: BinOp, a: F, b: F) -> F {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Ge => {
            if a >= b {
                F::one()
            } else {
                F::zero()
            }
        }
    }
}

fn func<F: Float>(f: Func, a: F) -> F {
    match f {
        Func::Rsqrt => F::one() / a.sqrt(),
        Func::Sqrt => a.sqrt(),
        Func::Exp => a.exp(),
        Func::Abs => a.abs(),
        Func::Neg => -a,
        Func::Pos => {
            if a > F::zero() {
                a
            } else {
                F::zero()
            }
        }
    }
}
