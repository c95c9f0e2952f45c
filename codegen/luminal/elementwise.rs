//! Elementwise ops, lowered from their one scalar definition
//! (`ir::scalar::define_const`): the definition's expression is walked into
//! luminal primitives, so no op's arithmetic is written here.
//!
//! Per-channel operands (the op table's `chan` positions) stay `[C]`
//! vectors while a subexpression reads only them and constants (batch
//! norm's `sqrt(var + ε)` is computed once per channel), and are broadcast
//! along every axis but 1 where they meet a per-element value.
//!
//! luminal 0.2 has no subtraction, division or comparison `≥`: `a − b` is
//! `a + (−b)`, `a / b` is `a · Recip(b)` (luminal's own `/`), and `a ≥ b`
//! is `1 − LessThan(a, b)`. A definition that calls a function luminal has
//! no primitive for (`exp`, `abs`, the positive part, a surrogate
//! derivative) is refused with the op's name.

use luminal::op as lop;

use super::{Lower, LuminalError, V};
use crate::ir::kernel::{BinOp, Expr, Func};
use crate::ir::Op;

/// A lowered subexpression and the shape it is computed at.
#[derive(Clone, Copy)]
enum Val {
    /// A definition constant, not yet a node: it takes the shape of what
    /// it meets.
    Num(f32),
    /// `[C]`: reads only per-channel operands and constants.
    Chan(V),
    /// The result's shape.
    Full(V),
}

/// The op's operands and the shapes a value can have.
struct Operands<'a> {
    vals: &'a [V],
    /// Positions read per channel.
    chan: &'static [usize],
    /// The result's shape.
    dims: &'a [usize],
    /// `[C]`, the channel axis of the result.
    chan_dims: [usize; 1],
}

impl Lower {
    /// Lowers the elementwise `op` of result shape `dims` over `vals`.
    pub(super) fn elementwise(
        &mut self,
        op: &Op,
        vals: &[V],
        dims: &[usize],
    ) -> Result<V, LuminalError> {
        let args = (0..vals.len()).map(Expr::Arg).collect();
        let def = crate::ir::scalar::define_const(op, args)
            .expect("the op table marks the op elementwise, so it has a definition");
        let ops = Operands {
            vals,
            chan: op.info().chan,
            dims,
            chan_dims: [dims.get(1).copied().unwrap_or(1)],
        };
        let v = self.scalar(op, &def, &ops)?;
        let v = self.full(v, &ops);
        // A broadcast result (`channel_broadcast`) is stored, so that every
        // lowered value is contiguous: unary primitives read storage, not
        // the view.
        Ok(
            if v.shape.is_contiguous() && !v.shape.is_sliced() && !v.shape.is_padded() {
                v
            } else {
                self.contiguous(v, dims)
            },
        )
    }

    fn scalar(&mut self, op: &Op, e: &Expr, ops: &Operands) -> Result<Val, LuminalError> {
        let no_primitive = |what: &'static str| LuminalError::NoPrimitive {
            op: op.name(),
            what,
        };
        Ok(match e {
            Expr::Arg(k) if ops.chan.contains(k) => Val::Chan(ops.vals[*k]),
            Expr::Arg(k) => Val::Full(ops.vals[*k]),
            Expr::Num(c) => Val::Num(*c as f32),
            Expr::Bin(b, x, y) => {
                let x = self.scalar(op, x, ops)?;
                let y = self.scalar(op, y, ops)?;
                match b {
                    BinOp::Add => self.bin_val(lop::Add, x, y, ops),
                    BinOp::Mul => self.bin_val(lop::Mul, x, y, ops),
                    BinOp::Sub => {
                        let ny = self.negate(y, ops);
                        self.bin_val(lop::Add, x, ny, ops)
                    }
                    BinOp::Div => {
                        let ry = self.unary_val(lop::Recip, f32::recip, y, ops);
                        self.bin_val(lop::Mul, x, ry, ops)
                    }
                    BinOp::Ge => {
                        let below = self.bin_val(lop::LessThan, x, y, ops);
                        let above = self.negate(below, ops);
                        self.bin_val(lop::Add, above, Val::Num(1.0), ops)
                    }
                }
            }
            Expr::Call(f, x) => {
                let x = self.scalar(op, x, ops)?;
                match f {
                    Func::Sqrt => self.unary_val(lop::Sqrt, f32::sqrt, x, ops),
                    Func::Rsqrt => {
                        let s = self.unary_val(lop::Sqrt, f32::sqrt, x, ops);
                        self.unary_val(lop::Recip, f32::recip, s, ops)
                    }
                    Func::Neg => self.negate(x, ops),
                    Func::Exp => return Err(no_primitive("exp")),
                    Func::Abs => return Err(no_primitive("abs")),
                    Func::Pos => return Err(no_primitive("the positive part")),
                }
            }
            Expr::Sg(..) => return Err(no_primitive("a surrogate derivative")),
            // Kernel-level nodes: fusion's, never in a definition.
            Expr::Const(_)
            | Expr::StepConst(_)
            | Expr::Local(_)
            | Expr::Reg(_)
            | Expr::Load(..) => {
                unreachable!("a scalar definition holds only operands, numbers and operations")
            }
        })
    }

    /// `v` at the result's shape.
    fn full(&mut self, v: Val, ops: &Operands) -> V {
        match v {
            Val::Num(c) => self.constant(c, ops.dims),
            Val::Chan(c) => self.channel(c, ops.dims),
            Val::Full(f) => f,
        }
    }

    /// `v` at `[C]` (`v` is not per-element).
    fn per_channel(&mut self, v: Val, ops: &Operands) -> V {
        match v {
            Val::Num(c) => self.constant(c, &ops.chan_dims),
            Val::Chan(c) => c,
            Val::Full(_) => unreachable!("a per-element value stays at the result's shape"),
        }
    }

    /// `x` and `y` at one shape: `[C]` when neither is per-element.
    fn joint(&mut self, x: Val, y: Val, ops: &Operands) -> (V, V, bool) {
        let chan = !matches!(x, Val::Full(_))
            && !matches!(y, Val::Full(_))
            && (matches!(x, Val::Chan(_)) || matches!(y, Val::Chan(_)));
        if chan {
            (self.per_channel(x, ops), self.per_channel(y, ops), true)
        } else {
            (self.full(x, ops), self.full(y, ops), false)
        }
    }

    fn bin_val<O: lop::Operator + 'static>(&mut self, o: O, x: Val, y: Val, ops: &Operands) -> Val {
        let (x, y, chan) = self.joint(x, y, ops);
        if chan {
            Val::Chan(Lower::bin(self, o, x, y, &ops.chan_dims))
        } else {
            Val::Full(Lower::bin(self, o, x, y, ops.dims))
        }
    }

    /// The unary primitive `o` of `x`; of a constant, `fold` (what `o`
    /// computes per element): luminal's unary ops map the stored elements
    /// and ignore the view, so they cannot take a broadcast constant.
    fn unary_val<O: lop::Operator + 'static>(
        &mut self,
        o: O,
        fold: fn(f32) -> f32,
        x: Val,
        ops: &Operands,
    ) -> Val {
        match x {
            Val::Num(c) => Val::Num(fold(c)),
            Val::Chan(c) => Val::Chan(self.unary(o, c, &ops.chan_dims)),
            Val::Full(f) => Val::Full(self.unary(o, f, ops.dims)),
        }
    }

    fn negate(&mut self, x: Val, ops: &Operands) -> Val {
        match x {
            Val::Num(c) => Val::Num(-c),
            Val::Chan(c) => Val::Chan(self.neg(c, &ops.chan_dims)),
            Val::Full(f) => Val::Full(self.neg(f, ops.dims)),
        }
    }
}
