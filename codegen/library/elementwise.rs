//! The library's per-op elementwise kernels (`snnc_add`, `snnc_scale`,
//! `snnc_surrogate_grad`, …), rendered from the op table: each kernel's
//! body is the op's one scalar definition (`ir::scalar`), so no op's math
//! is written by hand for any backend. The rest of the library
//! (`kernels.cu`) holds what is not elementwise.
//!
//! Kernel `snnc_NAME` (the op's name) takes, in order: one `const float*`
//! per operand, `float* out`, `int n`; `int c, int r` when an operand is
//! per-channel (channel `(i / r) % c`); one `float` per attribute (`double`
//! for ops the reference evaluates in f64, which then compute in double);
//! and `int kind` for ops with variants (the surrogate's code).

use crate::codegen::backend::Arg;
use crate::ir::kernel::{expr, DefSpelling, Expr};
use crate::ir::scalar::surrogate_fns;
use crate::ir::{scalar, Arity, Op};
use std::fmt::Write;

/// Whether `op` runs on a rendered kernel: elementwise with a fixed number
/// of operands (n-ary sums chain `snnc_sum8`) and not a view (an identity
/// on a same-shaped operand, such as `detach`, launches nothing).
pub fn has_kernel(op: &Op) -> bool {
    let Arity::Exactly(n) = op.info().arity else {
        return false;
    };
    let args = (0..n).map(Expr::Arg).collect();
    match scalar::define_const(op, args) {
        Some(Expr::Arg(0)) => op.chan_operand(0),
        Some(_) => true,
        None => false,
    }
}

fn arity(op: &Op) -> usize {
    match op.info().arity {
        Arity::Exactly(n) | Arity::AtLeast(n) => n,
    }
}

fn has_chan(op: &Op) -> bool {
    (0..arity(op)).any(|k| op.chan_operand(k))
}

/// The kernel's parameter signature (the `KERNELS` table's letters).
pub fn signature(op: &Op) -> String {
    let mut s = "p".repeat(arity(op) + 1);
    s.push('i');
    if has_chan(op) {
        s.push_str("ii");
    }
    let attr = if op.wide() { 'd' } else { 'f' };
    s.extend(std::iter::repeat_n(attr, scalar::attrs(op).len()));
    if scalar::variants(op).len() > 1 {
        s.push('i');
    }
    s
}

/// The launch arguments of `op` over operands `ins` (device address and
/// shape) into `out`, `n` elements; `int` checks a size fits a kernel `int`.
pub fn args<E>(
    op: &Op,
    ins: &[(u64, &[usize])],
    out: u64,
    n: usize,
    int: fn(usize) -> Result<i32, E>,
) -> Result<Vec<Arg>, E> {
    let mut a: Vec<Arg> = ins.iter().map(|x| Arg::P(x.0)).collect();
    a.push(Arg::P(out));
    a.push(Arg::I(int(n)?));
    if has_chan(op) {
        // The channel axis of the result: operand 0's shape, or for a
        // broadcast its target shape.
        let s: &[usize] = match op {
            Op::ChannelBroadcast { shape } => shape,
            _ => ins[0].1,
        };
        a.push(Arg::I(int(s[1])?));
        a.push(Arg::I(int(s[2..].iter().product())?));
    }
    for v in scalar::attrs(op) {
        a.push(if op.wide() {
            Arg::D(v)
        } else {
            Arg::F(v as f32)
        });
    }
    if let Op::SurrogateGrad { surrogate, .. } = op {
        a.push(Arg::I(surrogate.kind.code()));
    }
    Ok(a)
}

/// The CUDA source of every rendered kernel, with the double surrogate
/// derivatives they call.
pub fn source() -> String {
    let mut o = String::from(
        "// ---- elementwise: rendered from the op table (codegen/library/elementwise.rs) ----\n\n",
    );
    o.push_str(&surrogate_fns("__device__ __forceinline__", true));
    for op in scalar::elementwise_ops().into_iter().filter(has_kernel) {
        o.push('\n');
        kernel(&op, &mut o);
    }
    o
}

fn kernel(op: &Op, o: &mut String) {
    let (n, wide) = (arity(op), op.wide());
    let attr_ty = if wide { "double" } else { "float" };
    let mut params: Vec<String> = (0..n).map(|k| format!("const float* a{k}")).collect();
    params.push("float* out".into());
    params.push("int n".into());
    if has_chan(op) {
        params.push("int c".into());
        params.push("int r".into());
    }
    let attrs = scalar::attrs(op).len();
    params.extend((0..attrs).map(|j| format!("{attr_ty} k{j}")));
    let variants = scalar::variants(op);
    if variants.len() > 1 {
        params.push("int kind".into());
    }
    // Operand k at element i (a per-channel one at i's channel), then the
    // attributes, as the definition's arguments.
    let mut names: Vec<String> = (0..n)
        .map(|k| {
            let at = if op.chan_operand(k) {
                "(i / r) % c"
            } else {
                "i"
            };
            if wide {
                format!("(double)a{k}[{at}]")
            } else {
                format!("a{k}[{at}]")
            }
        })
        .collect();
    names.extend((0..attrs).map(|j| format!("k{j}")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let sp = DefSpelling { args: &refs, wide };
    let body = |op: &Op| {
        let args = (0..n).map(Expr::Arg).collect();
        let at: Vec<Expr> = (n..n + attrs).map(Expr::Arg).collect();
        let e = scalar::define(op, args, &at).expect("elementwise op");
        expr(&e, &sp)
    };
    // Ops with variants select one by `kind` (the last is the fallback).
    let mut value = body(&variants.last().expect("one variant at least").1);
    for (code, v) in variants.iter().rev().skip(1) {
        value = format!("kind == {code} ? {} : {value}", body(v));
    }
    if wide {
        value = format!("(float)({value})");
    }
    let _ = writeln!(
        o,
        "extern \"C\" __global__ void snnc_{}({}) {{\n    SNNC_LOOP(i, n) {{ out[i] = {value}; }}\n}}",
        op.name(),
        params.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::backend::KERNELS;

    #[test]
    fn rendered_kernels_have_the_table_signatures() {
        for op in scalar::elementwise_ops().into_iter().filter(has_kernel) {
            let name = format!("snnc_{}", op.name());
            let want = KERNELS.iter().find(|(k, _)| *k == name).map(|(_, s)| *s);
            assert_eq!(want, Some(signature(&op).as_str()), "{name}");
        }
    }
}
