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
    // Operand k at element i (a per-channel one at i's channel).
    let at = |k: usize| {
        let at = if op.chan_operand(k) {
            "(i / r) % c"
        } else {
            "i"
        };
        format!("a{k}[{at}]")
    };
    let (_, value) = value(op, &at, false);
    let _ = writeln!(
        o,
        "extern \"C\" __global__ void snnc_{}({}) {{\n    SNNC_LOOP(i, n) {{ out[i] = {value}; }}\n}}",
        op.name(),
        params(op).join(", ")
    );
}

/// The kernel's parameters (the same for the GPU and the CPU form).
fn params(op: &Op) -> Vec<String> {
    let attr_ty = if op.wide() { "double" } else { "float" };
    let mut params: Vec<String> = (0..arity(op))
        .map(|k| format!("const float* a{k}"))
        .collect();
    params.push("float* out".into());
    params.push("int n".into());
    if has_chan(op) {
        params.push("int c".into());
        params.push("int r".into());
    }
    let attrs = scalar::attrs(op).len();
    params.extend((0..attrs).map(|j| format!("{attr_ty} k{j}")));
    if scalar::variants(op).len() > 1 {
        params.push("int kind".into());
    }
    params
}

/// The C expression of `op`'s value at one element, operand k read as
/// `operand(k)` (a float) and attribute j as `kj`. With `hoist`, the
/// largest subexpressions that read only per-channel operands and
/// attributes are taken out as locals `xK`, returned in order as their C
/// initialisers, so that a loop over one channel's row computes them once:
/// the same operations on the same values, so the same result.
fn value(op: &Op, operand: &dyn Fn(usize) -> String, hoist: bool) -> (Vec<String>, String) {
    let (n, wide) = (arity(op), op.wide());
    let attrs = scalar::attrs(op).len();
    let mut names: Vec<String> = (0..n)
        .map(|k| match wide {
            true => format!("(double){}", operand(k)),
            false => operand(k),
        })
        .collect();
    names.extend((0..attrs).map(|j| format!("k{j}")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let sp = DefSpelling { args: &refs, wide };
    // Per channel: the channel operands and the attributes.
    let per_row = |k: usize| k >= n || op.chan_operand(k);
    let mut lets = Vec::new();
    let mut body = |op: &Op| {
        let args = (0..n).map(Expr::Arg).collect();
        let at: Vec<Expr> = (n..n + attrs).map(Expr::Arg).collect();
        let e = scalar::define(op, args, &at).expect("elementwise op");
        let e = match hoist {
            true => hoist_per_row(&e, &per_row, &mut lets),
            false => e,
        };
        expr(&e, &sp)
    };
    // Ops with variants select one by `kind` (the last is the fallback).
    let variants = scalar::variants(op);
    let mut value = body(&variants.last().expect("one variant at least").1);
    for (code, v) in variants.iter().rev().skip(1) {
        value = format!("kind == {code} ? {} : {value}", body(v));
    }
    if wide {
        value = format!("(float)({value})");
    }
    let lets = lets.iter().map(|e| expr(e, &sp)).collect();
    (lets, value)
}

/// `e` with each largest subexpression that reads only operands `k` with
/// `per_row(k)` (and constants) replaced by `Local(j)`, its definition
/// pushed as `lets[j]`. Bare operands and constants stay in place.
fn hoist_per_row(e: &Expr, per_row: &dyn Fn(usize) -> bool, lets: &mut Vec<Expr>) -> Expr {
    fn invariant(e: &Expr, per_row: &dyn Fn(usize) -> bool) -> bool {
        match e {
            Expr::Arg(k) => per_row(*k),
            Expr::Num(_) | Expr::Const(_) => true,
            Expr::Bin(_, a, b) | Expr::Sg(_, a, b) => {
                invariant(a, per_row) && invariant(b, per_row)
            }
            Expr::Call(_, a) => invariant(a, per_row),
            _ => false,
        }
    }
    let leaf = e.children().is_empty();
    if !leaf && invariant(e, per_row) {
        lets.push(e.clone());
        return Expr::Local(lets.len() - 1);
    }
    let mut h = |x: &Expr| hoist_per_row(x, per_row, lets);
    match e {
        Expr::Bin(op, a, b) => Expr::bin(*op, h(a), h(b)),
        Expr::Sg(kind, a, b) => Expr::sg(*kind, h(a), h(b)),
        Expr::Call(f, a) => Expr::call(*f, h(a)),
        e => e.clone(),
    }
}

/// The library kernels that have a rendered CPU form ([`cpu_source`]):
/// those of the ops with a per-channel operand.
pub fn cpu_forms() -> Vec<String> {
    cpu_ops().map(|op| format!("snnc_{}", op.name())).collect()
}

fn cpu_ops() -> impl Iterator<Item = Op> {
    scalar::elementwise_ops()
        .into_iter()
        .filter(|op| has_kernel(op) && has_chan(op))
}

/// The C++ of the CPU forms (`snnc_cpu_NAME`, same parameters) of the
/// per-channel kernels, for the CPU backend's library after `native.h`
/// (which defines `snnc_range`): the GPU form computes every element's
/// channel `(i / r) % c`, two integer divisions that cost more than the
/// element's arithmetic and keep the loop scalar. These walk the range
/// [snnc_lo, snnc_hi) one row of a channel (r contiguous elements) at a
/// time, partial rows at both ends: the channel's values, and what the
/// definition computes from them alone, once per row; the elements in a
/// contiguous loop the compiler vectorises. Rows of one element walk runs
/// of consecutive channels instead. Each element is the same expression of
/// the same values, so the results are bit for bit the GPU form's.
pub fn cpu_source() -> String {
    let mut o = String::from(
        "// ---- CPU forms of the per-channel elementwise kernels (codegen/library/elementwise.rs) ----\n",
    );
    for op in cpu_ops() {
        o.push('\n');
        cpu_kernel(&op, &mut o);
    }
    o
}

fn cpu_kernel(op: &Op, o: &mut String) {
    let ty = if op.wide() { "double" } else { "float" };
    let row_operand = |k: usize| match op.chan_operand(k) {
        true => format!("c{k}"),
        false => format!("a{k}[e]"),
    };
    let (lets, row_value) = value(op, &row_operand, true);
    // Rows of one element (a linear layer's [B, C]): channel i mod c, so a
    // run of consecutive channels reads each operand contiguously.
    let run_operand = |k: usize| match op.chan_operand(k) {
        true => format!("a{k}[ch + j]"),
        false => format!("a{k}[i + j]"),
    };
    let (_, run_value) = value(op, &run_operand, false);
    let _ = writeln!(
        o,
        "extern \"C\" void snnc_cpu_{}({}) {{",
        op.name(),
        params(op).join(", ")
    );
    let _ = writeln!(
        o,
        "    long long i, hi;
    snnc_range(n, &i, &hi);
    if (i >= hi) return;
    if (r == 1) {{
        for (long long ch = i % c; i < hi; ch = 0) {{
            const long long len = c - ch < hi - i ? c - ch : hi - i;
            for (long long j = 0; j < len; ++j) out[i + j] = {run_value};
            i += len;
        }}
        return;
    }}
    // i's row (b, ch) of r elements; advanced row by row.
    const long long q = i / r;
    int ch = (int)(q % c);
    long long row_end = (q + 1) * r;
    while (i < hi) {{
        const long long end = row_end < hi ? row_end : hi;"
    );
    for k in (0..arity(op)).filter(|&k| op.chan_operand(k)) {
        let _ = writeln!(o, "        const float c{k} = a{k}[ch];");
    }
    for (j, e) in lets.iter().enumerate() {
        let _ = writeln!(o, "        const {ty} x{j} = {e};");
    }
    let _ = writeln!(
        o,
        "        for (long long e = i; e < end; ++e) out[e] = {row_value};
        i = end;
        row_end += r;
        if (++ch == c) ch = 0;
    }}
}}"
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
