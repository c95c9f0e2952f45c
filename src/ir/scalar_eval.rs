//! Evaluates the scalar definitions of `ir::scalar` in any float type: the
//! reference interpreter's elementwise math.
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

impl<F: Float> OpProgram<F> {
    /// [`OpProgram::eval`] over a block of elements at once: `args[k]` holds
    /// operand `k` at every element of `out`. Each element gets the same
    /// operations in the same order (so the same bits); the definition is
    /// walked once per block instead of once per element, and each step is
    /// a loop over the block that the compiler vectorises.
    pub fn eval_block(&self, args: &[&[F]], out: &mut [F]) {
        if !self.wide {
            return eval_block(&self.expr, args, &[], &self.sg, out);
        }
        let w: Vec<Vec<f64>> = args
            .iter()
            .map(|a| {
                a.iter()
                    .map(|v| v.to_f64().expect("float widens to f64"))
                    .collect()
            })
            .collect();
        let w: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
        let mut o = vec![0f64; out.len()];
        eval_block(&self.expr, &w, &[], &self.sg, &mut o);
        for (out, v) in out.iter_mut().zip(o) {
            *out = F::from(v).expect("f64 narrows to a float");
        }
    }
}

/// Temporaries of one block's walk, reused from node to node (the walk
/// needs as many at once as the definition is deep).
struct Pool<F>(Vec<Vec<F>>);

impl<F: Float> Pool<F> {
    fn take(&mut self, len: usize) -> Vec<F> {
        let mut v = self.0.pop().unwrap_or_default();
        v.clear();
        v.resize(len, F::zero());
        v
    }
    fn give(&mut self, v: Vec<F>) {
        self.0.push(v);
    }
}

/// `eval` of `e` at every element of `out` (see [`OpProgram::eval_block`]).
fn eval_block<F: Float>(
    e: &Expr,
    args: &[&[F]],
    locals: &[Vec<F>],
    sg: &[ScalarFn],
    out: &mut [F],
) {
    let mut pool = Pool(Vec::new());
    walk(e, args, locals, sg, out, &mut pool);
}

fn walk<F: Float>(
    e: &Expr,
    args: &[&[F]],
    locals: &[Vec<F>],
    sg: &[ScalarFn],
    out: &mut [F],
    pool: &mut Pool<F>,
) {
    match e {
        Expr::Num(v) => out.fill(constant(*v)),
        Expr::Const(v) => out.fill(constant(f64::from(*v))),
        Expr::Arg(k) => out.copy_from_slice(args[*k]),
        Expr::Local(k) => out.copy_from_slice(&locals[*k]),
        Expr::Bin(op, a, b) => {
            walk(a, args, locals, sg, out, pool);
            let mut rhs = pool.take(out.len());
            walk(b, args, locals, sg, &mut rhs, pool);
            match op {
                BinOp::Add => out.iter_mut().zip(&rhs).for_each(|(o, r)| *o = *o + *r),
                BinOp::Sub => out.iter_mut().zip(&rhs).for_each(|(o, r)| *o = *o - *r),
                BinOp::Mul => out.iter_mut().zip(&rhs).for_each(|(o, r)| *o = *o * *r),
                BinOp::Div => out.iter_mut().zip(&rhs).for_each(|(o, r)| *o = *o / *r),
                BinOp::Ge => out
                    .iter_mut()
                    .zip(&rhs)
                    .for_each(|(o, r)| *o = bin(BinOp::Ge, *o, *r)),
            }
            pool.give(rhs);
        }
        Expr::Call(f, a) => {
            walk(a, args, locals, sg, out, pool);
            out.iter_mut().for_each(|o| *o = func(*f, *o));
        }
        Expr::Sg(kind, x, al) => {
            let mut xs = pool.take(out.len());
            let mut als = pool.take(out.len());
            walk(x, args, locals, sg, &mut xs, pool);
            walk(al, args, locals, sg, &mut als, pool);
            let f = &sg[kind.code() as usize];
            let mut l: Vec<Vec<F>> = Vec::with_capacity(f.lets.len());
            for e in &f.lets {
                let mut v = pool.take(out.len());
                walk(e, &[&xs, &als], &l, sg, &mut v, pool);
                l.push(v);
            }
            walk(&f.ret, &[&xs, &als], &l, sg, out, pool);
            l.into_iter().for_each(|v| pool.give(v));
            pool.give(xs);
            pool.give(als);
        }
        Expr::StepConst(_) | Expr::Reg(_) | Expr::Load(..) => {
            unreachable!("rejected when the program was built")
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Surrogate;

    /// The block evaluator gives every element the bits of the per-element
    /// one, for every elementwise op and surrogate, narrow and wide.
    #[test]
    fn blocks_equal_elements_bit_for_bit() {
        let surrogates = SurrogateKind::ALL.map(|kind| Surrogate { kind, alpha: 4.0 });
        let mut ops = scalar::elementwise_ops();
        ops.extend([Op::Scale(0.3), Op::AddScalar(-1.7), Op::Rsqrt { eps: 1e-5 }]);
        for s in surrogates {
            ops.push(Op::Spike {
                theta: 1.0,
                surrogate: s,
            });
            ops.push(Op::SurrogateGrad {
                theta: 0.5,
                surrogate: s,
            });
        }
        let n = 97;
        let col = |k: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * (k + 3)) % 23) as f32 * 0.37 - 3.1 + k as f32)
                .collect()
        };
        let cols: Vec<Vec<f32>> = (0..3).map(col).collect();
        let args: Vec<&[f32]> = cols.iter().map(Vec::as_slice).collect();
        for op in ops {
            let Ok(p) = OpProgram::<f32>::new(&op, 3) else {
                continue;
            };
            let mut block = vec![0f32; n];
            p.eval_block(&args, &mut block);
            for (i, b) in block.iter().enumerate() {
                let one = p.eval(&[cols[0][i], cols[1][i], cols[2][i]]);
                assert_eq!(
                    one.to_bits(),
                    b.to_bits(),
                    "{} element {i}: {one} vs block {b}",
                    op.name()
                );
            }
        }
    }
}
