//! The kernel IR: what the fusion pass (`passes/fuse`) produces and the C
//! and CUDA renderers print.
//!
//! A kernel is one element-parallel loop over `n` elements with an inner
//! time loop of `steps` iterations (forward or reverse). Every element runs
//! the same statements: its state lives in registers across iterations, its
//! time sums in accumulators, and it reads and writes tensors through one
//! pointer table, so every kernel has the same ABI on every target:
//!
//! ```text
//! kernel(float *const *p, long lo, long hi)    // C: elements [lo, hi)
//! kernel(float *const *p, long long n)         // CUDA: one thread per element
//! ```
//!
//! Slot `s` of the table is a tensor; a per-step tensor stream occupies
//! `steps` consecutive slots (`p[s + t]`). The time loop's body differs only
//! at the boundaries (the first step has no previous state, the last no
//! next), so a kernel holds a few `runs`: ranges of steps sharing one body.
//! Generated code therefore does not grow with T.

use crate::model::SurrogateKind;
use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    /// Elements (the parallel dimension).
    pub n: usize,
    /// `(C, inner)`: a channel-indexed load reads element `(i / inner) % C`.
    pub chan: (usize, usize),
    pub steps: usize,
    /// The time loop runs from `steps − 1` down to 0 (reverse-time backward).
    pub reverse: bool,
    pub regs: usize,
    pub accs: usize,
    /// Length of the pointer table.
    pub slots: usize,
    /// Ranges of steps `[lo, hi)` and the body each runs, in loop order.
    pub runs: Vec<(usize, usize, Vec<Stmt>)>,
    /// After the time loop (reduction results).
    pub epilogue: Vec<Stmt>,
    /// Per-step constants (`StepConst(j)` reads `step_consts[j][t]`): the
    /// rate pass's ρ_t factors differ by step while the code does not.
    pub step_consts: Vec<Vec<f32>>,
    /// Each element is a pooling window (`Index::Window` reads inside it).
    pub window: Option<Window>,
}

impl Kernel {
    /// The elements its statements run on: `n`, or every window's `k²`.
    pub fn elements(&self) -> usize {
        self.n * self.window.map_or(1, |w| w.k * w.k)
    }

    /// A windowed kernel's statements as one element per window (CUDA:
    /// one thread per window): runs and epilogue with every statement
    /// repeated for each window element `d` (its locals, registers and
    /// accumulators renumbered `x + d·count`, its loads and stores at
    /// `Index::Window`), and each pooled stream summed in the pooling
    /// kernel's order `((0 + v0) + v1) + …` and divided by `k²`. Returns
    /// (runs, epilogue, registers, accumulators).
    #[allow(clippy::type_complexity)]
    pub fn per_window(&self) -> (Vec<(usize, usize, Vec<Stmt>)>, Vec<Stmt>, usize, usize) {
        let Some(win) = self.window else {
            return (
                self.runs.clone(),
                self.epilogue.clone(),
                self.regs,
                self.accs,
            );
        };
        let offsets = win.offsets();
        let locals = self
            .runs
            .iter()
            .flat_map(|(_, _, b)| b)
            .filter_map(|st| match st {
                Stmt::Let(x, _) => Some(x + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let (regs, accs) = (self.regs, self.accs);
        fn at(e: &Expr, d: usize, off: usize, (l, r): (usize, usize)) -> Expr {
            let go = |e: &Expr| at(e, d, off, (l, r));
            match e {
                Expr::Local(x) => Expr::Local(x + d * l),
                Expr::Reg(x) => Expr::Reg(x + d * r),
                Expr::Load(s, Index::Elem) => Expr::Load(*s, Index::Window(off)),
                Expr::Bin(op, a, b) => Expr::bin(*op, go(a), go(b)),
                Expr::Call(f, a) => Expr::call(*f, go(a)),
                Expr::Sg(kind, a, b) => Expr::sg(*kind, go(a), go(b)),
                e => e.clone(),
            }
        }
        let k2 = offsets.len();
        let mut runs = Vec::new();
        for (lo, hi, body) in &self.runs {
            let mut out = Vec::new();
            // Each pooled stream's values, window element by element.
            let mut pooled: Vec<(Slot, Vec<Expr>)> = Vec::new();
            for (d, &off) in offsets.iter().enumerate() {
                let x = |e: &Expr| at(e, d, off, (locals, regs));
                for st in body {
                    out.push(match st {
                        Stmt::Let(l, e) => Stmt::Let(l + d * locals, x(e)),
                        Stmt::SetReg(r, e) => Stmt::SetReg(r + d * regs, x(e)),
                        Stmt::Accumulate(a, e) => Stmt::Accumulate(a + d * accs, x(e)),
                        Stmt::Store(s, Index::Pool, e) => {
                            match pooled.iter_mut().find(|(t, _)| t == s) {
                                Some((_, vs)) => vs.push(x(e)),
                                None => pooled.push((*s, vec![x(e)])),
                            }
                            continue;
                        }
                        Stmt::Store(s, _, e) => Stmt::Store(*s, Index::Window(off), x(e)),
                        Stmt::StoreAcc(..) => {
                            unreachable!("accumulators are stored after the loop")
                        }
                    });
                }
            }
            for (s, vs) in pooled {
                let sum = vs
                    .into_iter()
                    .fold(Expr::Const(0.0), |acc, v| Expr::bin(BinOp::Add, acc, v));
                let avg = Expr::bin(BinOp::Div, sum, Expr::Const(k2 as f32));
                out.push(Stmt::Store(s, Index::Elem, avg));
            }
            runs.push((*lo, *hi, out));
        }
        let mut epilogue = Vec::new();
        for (d, &off) in offsets.iter().enumerate() {
            for st in &self.epilogue {
                if let Stmt::StoreAcc(s, a, div, _) = st {
                    epilogue.push(Stmt::StoreAcc(*s, a + d * accs, *div, Index::Window(off)));
                }
            }
        }
        (runs, epilogue, regs * k2, accs * k2)
    }
}

/// Element `i` of a windowed kernel stands for the `k`×`k` window of a
/// `[…, H, W]` tensor (`W` = `w`) under output position `i` of a pooling
/// with `wo` output columns (stride `k`, no padding, `k` dividing H and
/// W): its first element is `iw = (i / wo)·k·w + (i % wo)·k`, and the
/// window's element (dy, dx) is `iw + dy·w + dx`. A pooling absorbed by
/// fusion (`passes/fuse`) makes its producer's kernel windowed, so the
/// full-size values it pools are never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub k: usize,
    pub wo: usize,
    pub w: usize,
}

impl Window {
    /// The offsets `dy·w + dx` of the window's elements, row-major.
    pub fn offsets(&self) -> Vec<usize> {
        (0..self.k)
            .flat_map(|dy| (0..self.k).map(move |dx| dy * self.w + dx))
            .collect()
    }
}

/// Which element of a slot's tensor a load reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Index {
    /// Element `i`.
    Elem,
    /// Element `(i / inner) % C`: a per-channel vector broadcast.
    Chan,
    /// Element `iw + off` of a windowed kernel (`Window`), in its
    /// per-window form (`Kernel::per_window`).
    Window(usize),
    /// A store of a windowed kernel: the value's average over the window
    /// goes to element `i` of the pooled tensor.
    Pool,
}

/// Where a tensor lives in the pointer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// One tensor for all steps: `p[s]`.
    Fixed(usize),
    /// A per-step stream, at step `t + dt`: `p[s + t + dt]`.
    Step(usize, i32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `a >= b ? 1 : 0`
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Func {
    /// `1/sqrt(x)`
    Rsqrt,
    Sqrt,
    Exp,
    Abs,
    /// `−x`
    Neg,
    /// `x > 0 ? x : 0` (NaN gives 0)
    Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Const(f32),
    /// A constant that depends on the step: `Kernel::step_consts[j][t]`.
    StepConst(usize),
    Local(usize),
    Reg(usize),
    Load(Slot, Index),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Call(Func, Box<Expr>),
    /// The surrogate derivative `σ'(x)` of steepness `alpha`: `(kind, x,
    /// alpha)`. Its definition (`ir::scalar::surrogate_derivative`) is
    /// rendered once per translation unit (`prelude`) and called.
    Sg(SurrogateKind, Box<Expr>, Box<Expr>),
    /// Operand `k` of a scalar definition (`ir::scalar`): definitions are
    /// templates over their operands and attributes.
    Arg(usize),
    /// A constant of a definition, exact: each evaluator rounds it once to
    /// its element type (f32 kernels, f64 reference), as the op attributes
    /// always were.
    Num(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `x{k} = e` (a fresh local).
    Let(usize, Expr),
    /// Store to a tensor, at element `i` (`Index::Elem`) or inside the
    /// window (`Index::Window`).
    Store(Slot, Index, Expr),
    /// Register write; a body's register writes take effect at its end,
    /// after every read of the step.
    SetReg(usize, Expr),
    /// `acc[k] += e`
    Accumulate(usize, Expr),
    /// Epilogue: `p[slot][i] = acc[k] / divisor` (a time mean divides by
    /// its operand count, as the interpreter does); `i` as in `Store`.
    StoreAcc(usize, usize, f32, Index),
}

impl Expr {
    pub fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Bin(op, Box::new(a), Box::new(b))
    }
    pub fn call(f: Func, a: Expr) -> Expr {
        Expr::Call(f, Box::new(a))
    }
    pub fn sg(kind: SurrogateKind, x: Expr, alpha: Expr) -> Expr {
        Expr::Sg(kind, Box::new(x), Box::new(alpha))
    }

    /// The direct subexpressions, in evaluation order.
    pub fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Bin(_, a, b) | Expr::Sg(_, a, b) => vec![a, b],
            Expr::Call(_, a) => vec![a],
            _ => vec![],
        }
    }

    fn children_mut(&mut self) -> Vec<&mut Expr> {
        match self {
            Expr::Bin(_, a, b) | Expr::Sg(_, a, b) => vec![a, b],
            Expr::Call(_, a) => vec![a],
            _ => vec![],
        }
    }

    /// Every `Num` rounded to an f32 `Const`: what a kernel in f32 holds.
    pub fn into_f32(mut self) -> Expr {
        fn go(e: &mut Expr) {
            if let Expr::Num(v) = *e {
                *e = Expr::Const(v as f32);
            }
            for c in e.children_mut() {
                go(c);
            }
        }
        go(&mut self);
        self
    }

    /// Replaces every `Arg(k)` by `args[k]`.
    pub fn substitute(mut self, args: &[Expr]) -> Expr {
        fn go(e: &mut Expr, args: &[Expr]) {
            if let Expr::Arg(k) = *e {
                *e = args[k].clone();
            }
            for c in e.children_mut() {
                go(c, args);
            }
        }
        go(&mut self, args);
        self
    }
}

/// How a target spells the few things that differ between C and CUDA.
pub trait Spelling {
    /// The register `k` (C: an array over the block; CUDA: a scalar).
    fn reg(&self, k: usize) -> String;
    fn acc(&self, k: usize) -> String;
    /// The pointer of a slot (`p[s + t + dt]`, or a hoisted name).
    fn ptr(&self, slot: Slot) -> String;
    /// The per-step constant table `j`, indexed by `t`.
    fn step_const(&self, j: usize) -> String;
    /// Where a windowed kernel's element keeps a value to be pooled into
    /// `slot` (`Index::Pool`; targets that run one element per window
    /// never see it: `Kernel::per_window`).
    fn pool_store(&self, _slot: Slot) -> String {
        unreachable!("pooled stores are rendered per window")
    }
    /// A per-channel load (`Index::Chan`) of a slot.
    fn chan_load(&self, slot: Slot) -> String {
        format!("{}[ch]", self.ptr(slot))
    }
    /// Operand `k` of a definition being rendered as a function.
    fn arg(&self, k: usize) -> String {
        format!("a{k}")
    }
    /// Whether the code computes in double (the CUDA backend's reference
    /// surrogate kernel) instead of float.
    fn wide(&self) -> bool {
        false
    }
}

/// Renders nothing but definitions: operands by name, f32 or f64.
pub struct DefSpelling<'a> {
    pub args: &'a [&'a str],
    pub wide: bool,
}

impl Spelling for DefSpelling<'_> {
    fn reg(&self, _: usize) -> String {
        unreachable!("definitions have no registers")
    }
    fn acc(&self, _: usize) -> String {
        unreachable!("definitions have no accumulators")
    }
    fn ptr(&self, _: Slot) -> String {
        unreachable!("definitions read operands, not slots")
    }
    fn step_const(&self, _: usize) -> String {
        unreachable!("definitions have no step constants")
    }
    fn arg(&self, k: usize) -> String {
        self.args[k].to_string()
    }
    fn wide(&self) -> bool {
        self.wide
    }
}

/// Calls `f` on every constant of the statements, in a fixed order.
pub fn visit_consts(stmts: &mut [Stmt], f: &mut dyn FnMut(&mut Expr)) {
    fn e(x: &mut Expr, f: &mut dyn FnMut(&mut Expr)) {
        match x {
            Expr::Const(_) | Expr::StepConst(_) => f(x),
            _ => {
                for c in x.children_mut() {
                    e(c, f)
                }
            }
        }
    }
    for s in stmts {
        match s {
            Stmt::Let(_, x)
            | Stmt::Store(_, _, x)
            | Stmt::SetReg(_, x)
            | Stmt::Accumulate(_, x) => e(x, f),
            Stmt::StoreAcc(..) => {}
        }
    }
}

/// A double literal that C and CUDA read back as the same f64.
pub fn lit_f64(v: f64) -> String {
    if !v.is_finite() {
        return format!("(double){}", lit(v as f32));
    }
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// A float literal that C and CUDA read back as the same f32.
pub fn lit(v: f32) -> String {
    if v.is_nan() {
        return "(0.0f/0.0f)".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "(1.0f/0.0f)"
        } else {
            "(-1.0f/0.0f)"
        }
        .into();
    }
    // `{:?}` prints the shortest decimal that round-trips to the same f32.
    let s = format!("{v:?}");
    let s = if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    };
    format!("{s}f")
}

pub fn expr(e: &Expr, sp: &dyn Spelling) -> String {
    match e {
        Expr::Const(v) => lit(*v),
        Expr::StepConst(j) => sp.step_const(*j),
        Expr::Local(k) => format!("x{k}"),
        Expr::Reg(k) => sp.reg(*k),
        Expr::Load(slot, Index::Chan) => sp.chan_load(*slot),
        Expr::Load(slot, ix) => format!("{}[{}]", sp.ptr(*slot), at(*ix)),
        Expr::Bin(op, a, b) => {
            let (a, b) = (expr(a, sp), expr(b, sp));
            match op {
                BinOp::Add => format!("({a} + {b})"),
                BinOp::Sub => format!("({a} - {b})"),
                BinOp::Mul => format!("({a} * {b})"),
                BinOp::Div => format!("({a} / {b})"),
                BinOp::Ge => format!("({a} >= {b} ? 1.0f : 0.0f)"),
            }
        }
        Expr::Call(f, a) => {
            let a = expr(a, sp);
            // float functions, or their double versions in wide code.
            let (fl, zero, one) = if sp.wide() {
                ("", "0.0", "1.0")
            } else {
                ("f", "0.0f", "1.0f")
            };
            match f {
                Func::Rsqrt => format!("({one} / sqrt{fl}({a}))"),
                Func::Sqrt => format!("sqrt{fl}({a})"),
                Func::Exp => format!("exp{fl}({a})"),
                Func::Abs => format!("fabs{fl}({a})"),
                Func::Neg if a.starts_with('-') => format!("(-({a}))"),
                Func::Neg => format!("(-{a})"),
                Func::Pos => format!("({a} > {zero} ? {a} : {zero})"),
            }
        }
        Expr::Sg(kind, x, al) => format!(
            "{}({}, {})",
            sg_name(*kind, sp.wide()),
            expr(x, sp),
            expr(al, sp)
        ),
        Expr::Arg(k) => sp.arg(*k),
        Expr::Num(v) if sp.wide() => lit_f64(*v),
        Expr::Num(v) => lit(*v as f32),
    }
}

/// The element an element-indexed or windowed access reads or writes.
fn at(ix: Index) -> String {
    match ix {
        Index::Elem => "i".into(),
        Index::Window(0) => "iw".into(),
        Index::Window(off) => format!("iw + {off}"),
        Index::Chan | Index::Pool => unreachable!("spelled by the target"),
    }
}

/// The rendered function computing a surrogate's derivative.
pub fn sg_name(kind: SurrogateKind, wide: bool) -> String {
    format!("sg_{}{}", kind.name(), if wide { "_d" } else { "" })
}

/// The statements of one body, one per line, each indented by `ind`.
/// Register writes are deferred to the end of the body.
pub fn body(stmts: &[Stmt], sp: &dyn Spelling, ind: &str, out: &mut String) {
    let mut late = Vec::new();
    for s in stmts {
        match s {
            Stmt::Let(k, e) => writeln!(out, "{ind}const float x{k} = {};", expr(e, sp)),
            Stmt::Store(slot, Index::Pool, e) => {
                writeln!(out, "{ind}{} = {};", sp.pool_store(*slot), expr(e, sp))
            }
            Stmt::Store(slot, ix, e) => writeln!(
                out,
                "{ind}{}[{}] = {};",
                sp.ptr(*slot),
                at(*ix),
                expr(e, sp)
            ),
            Stmt::SetReg(k, e) => {
                late.push(format!("{ind}{} = {};", sp.reg(*k), expr(e, sp)));
                Ok(())
            }
            Stmt::Accumulate(k, e) => writeln!(out, "{ind}{} += {};", sp.acc(*k), expr(e, sp)),
            Stmt::StoreAcc(slot, k, scale, ix) => writeln!(
                out,
                "{ind}{}[{}] = {} / {};",
                sp.ptr(Slot::Fixed(*slot)),
                at(*ix),
                sp.acc(*k),
                lit(*scale)
            ),
        }
        .expect("writing to a String");
    }
    for l in late {
        out.push_str(&l);
        out.push('\n');
    }
}

/// Does any statement use the channel index?
pub fn uses_chan(stmts: &[Stmt]) -> bool {
    fn e(x: &Expr) -> bool {
        match x {
            Expr::Load(_, Index::Chan) => true,
            _ => x.children().into_iter().any(e),
        }
    }
    stmts.iter().any(|s| match s {
        Stmt::Let(_, x) | Stmt::Store(_, _, x) | Stmt::SetReg(_, x) | Stmt::Accumulate(_, x) => {
            e(x)
        }
        Stmt::StoreAcc(..) => false,
    })
}

/// The slots a body reads per channel.
pub fn chan_slots_of(stmts: &[Stmt]) -> Vec<Slot> {
    fn e(x: &Expr, out: &mut Vec<Slot>) {
        match x {
            Expr::Load(s, Index::Chan) if !out.contains(s) => out.push(*s),
            _ => {
                for c in x.children() {
                    e(c, out)
                }
            }
        }
    }
    let mut out = Vec::new();
    for s in stmts {
        match s {
            Stmt::Let(_, x)
            | Stmt::Store(_, _, x)
            | Stmt::SetReg(_, x)
            | Stmt::Accumulate(_, x) => e(x, &mut out),
            Stmt::StoreAcc(..) => {}
        }
    }
    out
}

/// The slots a body touches (for hoisting their pointers).
pub fn slots_of(stmts: &[Stmt]) -> Vec<Slot> {
    fn e(x: &Expr, out: &mut Vec<Slot>) {
        match x {
            Expr::Load(s, _) => out.push(*s),
            _ => {
                for c in x.children() {
                    e(c, out)
                }
            }
        }
    }
    let mut out = Vec::new();
    for s in stmts {
        match s {
            Stmt::Let(_, x) | Stmt::SetReg(_, x) | Stmt::Accumulate(_, x) => e(x, &mut out),
            Stmt::Store(slot, _, x) => {
                out.push(*slot);
                e(x, &mut out)
            }
            Stmt::StoreAcc(slot, _, _, _) => out.push(Slot::Fixed(*slot)),
        }
    }
    let mut seen = Vec::new();
    for s in out {
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen
}

/// The kernel's per-step constant tables, one declaration per line
/// (`qual` is `static const` in C and `__constant__` in CUDA).
pub fn step_const_tables(k: &Kernel, qual: &str) -> String {
    let mut o = String::new();
    for (j, vals) in k.step_consts.iter().enumerate() {
        let v: Vec<String> = vals.iter().map(|&x| lit(x)).collect();
        let _ = writeln!(
            o,
            "{qual} float {}_sc{j}[{}] = {{{}}};",
            k.name,
            vals.len(),
            v.join(", ")
        );
    }
    o
}
