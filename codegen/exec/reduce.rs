//! Channel reductions (batch-norm statistics and their gradients) in two
//! passes: partial sums per (channel, part) in double, then one sum per
//! channel.
//!
//! A batch norm's mean and variance over the same operands read them once:
//! the mean's pass 1 also sums x² (`snnc_chan_moments_partial`), its pass 2
//! keeps Σx and Σx² per channel (the node's "moments", a small buffer the
//! executor owns), and the variance is computed from them
//! (`snnc_chan_var_moments`) instead of a second pass over the operands.
//! In double, Σ(x − m)² = Σx² − 2m·Σx + n·m² loses nothing that matters:
//! each square is exact, and the cancellation costs log2(m²/var) of the
//! ~29 bits double carries beyond f32.

use super::{inner, int, ExecError, Executor};
use crate::codegen::backend::{Arg, Backend};
use crate::ir::{NodeIndex, Op};
use std::collections::HashMap;

impl<'a, B: Backend> Executor<'a, B> {
    /// Per-channel sums over the operands `xs` (each `[B, C, …]` of
    /// `shape`), divided by `count` into `out[C]`: of x, or with a non-zero
    /// `other` of (x − other[ch])² (`Pass1::Sum`, `other` the mean), or of
    /// x·other (`Pass1::Dot`, `other` a tensor like x).
    pub(super) fn channel_reduce(
        &mut self,
        pass: Pass1,
        xs: &[u64],
        other: u64,
        shape: &[usize],
        out: u64,
        count: f64,
    ) -> Result<(), ExecError> {
        let kernel = match pass {
            Pass1::Sum => "snnc_chan_partial",
            Pass1::Dot => "snnc_chan_dot_partial",
        };
        let pass1 = |_, x: u64, at: u64, _, geo: &[Arg; 4]| {
            let mut a = vec![Arg::P(x), Arg::P(other), Arg::P(at)];
            a.extend(geo);
            (kernel, a)
        };
        self.chan_passes(xs, shape, 1, pass1, ("snnc_chan_finish", &[out]), count)
    }

    /// ChannelMean node `n` over `xs` (each `[B, C, …]` of `shape`, the
    /// values of nodes `from`) as moments: one pass for Σx and Σx², the
    /// mean into `out`, the moments kept for a variance over the same
    /// operands. An operand whose convolution summed it in this run is
    /// not read again: its sums are put where its pass 1's would go.
    pub(super) fn channel_mean_moments(
        &mut self,
        n: NodeIndex,
        xs: &[u64],
        from: &[NodeIndex],
        shape: &[usize],
        out: u64,
        count: f64,
    ) -> Result<(), ExecError> {
        if !self.moments.contains_key(&n) {
            let buf = self.backend.alloc(4 * shape[1])?;
            self.moments.insert(n, buf);
        }
        let moments = self.backend.ptr(&self.moments[&n]);
        // Per operand, the pass-1 kernel and its first argument: the
        // moments its convolution wrote, or the operand itself.
        let summed: Vec<Option<u64>> = from
            .iter()
            .map(|m| match self.conv_moments.get(m) {
                Some((buf, true)) => Some(self.backend.ptr(buf)),
                _ => None,
            })
            .collect();
        self.conv_summed += summed.iter().flatten().count();
        let pass1 = |k: usize, x: u64, at: u64, half: u64, geo: &[Arg; 4]| {
            let sums = [Arg::P(at), Arg::P(at + half)];
            match summed.get(k).copied().flatten() {
                Some(m) => {
                    let mut a = vec![Arg::P(m)];
                    a.extend(sums);
                    a.extend([geo[0], geo[3]]);
                    ("snnc_chan_moments_put", a)
                }
                None => {
                    let mut a = vec![Arg::P(x)];
                    a.extend(sums);
                    a.extend(geo);
                    ("snnc_chan_moments_partial", a)
                }
            }
        };
        self.chan_passes(
            xs,
            shape,
            2,
            pass1,
            ("snnc_chan_moments_finish", &[moments, out]),
            count,
        )
    }

    /// The two passes of a channel reduction over `xs`: pass 1 per operand
    /// (`pass1(k, x, its partial sums, the bytes from one set of sums to
    /// the next, the geometry c, b, r, parts)` gives the kernel and its
    /// arguments; `sums` sets of partial sums, one after another), then
    /// `finish` (the workspace, `outs`, the geometry, the operand count and
    /// `count`), in a workspace taken and given back.
    fn chan_passes(
        &mut self,
        xs: &[u64],
        shape: &[usize],
        sums: usize,
        pass1: impl Fn(usize, u64, u64, u64, &[Arg; 4]) -> (&'static str, Vec<Arg>),
        (finish, outs): (&'static str, &[u64]),
        count: f64,
    ) -> Result<(), ExecError> {
        use Arg::{D, I, P};
        let (b, c, r) = (shape[0], shape[1], inner(shape));
        let parts = chan_parts(shape);
        let floats = sums * chan_work_floats(xs.len(), shape);
        let work = self.take_scratch(floats)?;
        let wp = self.mem_ptr(&work);
        let half = 8 * (xs.len() * c * parts) as u64;
        let mut run = || -> Result<(), ExecError> {
            let geo = [I(int(c)?), I(int(b)?), I(int(r)?), I(int(parts)?)];
            let set = c * parts;
            let at = |k: usize| wp + 8 * (k * set) as u64;
            for (k, &xp) in xs.iter().enumerate() {
                // An operand seen before (a time-invariant layer's T equal
                // steps) is not read again: its partial sums are copied,
                // so `finish` adds the same values in the same order.
                if let Some(j) = xs[..k].iter().position(|&y| y == xp) {
                    for s in 0..sums as u64 {
                        let (from, to) = (at(j) + s * half, at(k) + s * half);
                        self.launch("snnc_copy", 2 * set, &[P(from), P(to), I(int(2 * set)?)])?;
                    }
                    continue;
                }
                let (kernel, a) = pass1(k, xp, at(k), half, &geo);
                self.launch(kernel, set, &a)?;
            }
            let mut a = vec![P(wp)];
            a.extend(outs.iter().map(|&o| P(o)));
            a.extend([I(int(c)?), I(int(parts)?), I(int(xs.len())?), D(count)]);
            self.launch(finish, c, &a)
        };
        let result = run();
        self.give_scratch(work, floats);
        result
    }

    /// Whether a ChannelMean reads node `n`'s value (its convolution may
    /// then sum the moments as it writes it).
    pub(super) fn feeds_mean(&self, n: NodeIndex) -> bool {
        self.g
            .users(n)
            .iter()
            .any(|&u| self.g.node(u).op == Op::ChannelMean)
    }

    /// ChannelVar node `v` from its mean's moments, when the mean ran as
    /// moments over the same operands in this run; false otherwise (the
    /// caller then makes its own pass).
    pub(super) fn channel_var_moments(
        &mut self,
        v: NodeIndex,
        mean: u64,
        c: usize,
        out: u64,
        count: f64,
    ) -> Result<bool, ExecError> {
        use Arg::{D, I, P};
        let g = self.g;
        let ops = g.operands(v);
        let m = ops[0];
        if g.node(m).op != Op::ChannelMean || !var_over(&ops, m, &g.operands(m)) {
            return Ok(false);
        }
        let Some(buf) = self.moments.get(&m) else {
            return Ok(false);
        };
        let moments = self.backend.ptr(buf);
        self.launch(
            "snnc_chan_var_moments",
            c,
            &[P(moments), P(mean), P(out), I(int(c)?), D(count)],
        )?;
        Ok(true)
    }
}

impl<'a, B: Backend> Executor<'a, B> {
    /// A channel sum of x or a channel dot of x and y (node `n` of unit
    /// `i`, operands `ins`, result at `out`) with a partner over the same x
    /// — batch norm's backward sums g and g·x̂ — in one read of x. If the
    /// partner computed `n` ahead, `n` is copied from there; else, when the
    /// partner runs later and its other operand is live now, both are
    /// computed here (`snnc_chan_sum_dot_partial`: the same partial sums
    /// in the same order as each pass alone, so the same bits) and the
    /// partner's result is kept for it. False: `n` is not such a
    /// reduction; the caller computes it alone.
    pub(super) fn paired_reduction(
        &mut self,
        i: usize,
        n: NodeIndex,
        ins: &[(u64, &[usize])],
        out: u64,
        vals: &HashMap<NodeIndex, usize>,
    ) -> Result<bool, ExecError> {
        use Arg::{I, P};
        if !matches!(self.g.node(n).op, Op::ChannelSum | Op::ChannelDot) {
            return Ok(false);
        }
        let shape = ins[0].1;
        let c = shape[1];
        if let Some((buf, true)) = self.ahead.get(&n) {
            let from = self.backend.ptr(buf);
            self.launch("snnc_copy", c, &[P(from), P(out), I(int(c)?)])?;
            if let Some(a) = self.ahead.get_mut(&n) {
                a.1 = false;
            }
            return Ok(true);
        }
        if !self.pair_reductions {
            return Ok(false);
        }
        let Some((partner, x, y, n_sums)) = self.partner(i, n, vals) else {
            return Ok(false);
        };
        if !self.ahead.contains_key(&partner) {
            let buf = self.backend.alloc(c)?;
            self.ahead.insert(partner, (buf, false));
        }
        let kept = self.backend.ptr(&self.ahead[&partner].0);
        let (xp, yp) = (self.ptr_of(vals[&x]), self.ptr_of(vals[&y]));
        let (sum, dot) = if n_sums { (out, kept) } else { (kept, out) };
        self.channel_sum_dot(xp, yp, shape, sum, dot)?;
        if let Some(a) = self.ahead.get_mut(&partner) {
            a.1 = true;
        }
        self.paired += 1;
        Ok(true)
    }

    /// `n`'s partner for [`Executor::paired_reduction`]: (the partner, x,
    /// y, whether `n` is the sum). The partner is a node unit after unit
    /// `i` and not computed ahead yet; y is live now.
    fn partner(
        &self,
        i: usize,
        n: NodeIndex,
        vals: &HashMap<NodeIndex, usize>,
    ) -> Option<(NodeIndex, NodeIndex, NodeIndex, bool)> {
        let g = self.g;
        let later = |m: NodeIndex| {
            self.node_unit.get(&m).is_some_and(|&u| u > i)
                && !self.ahead.get(&m).is_some_and(|a| a.1)
        };
        let ops = g.operands(n);
        if g.node(n).op == Op::ChannelSum {
            let x = ops[0];
            return g.users(x).into_iter().find_map(|d| {
                if g.node(d).op != Op::ChannelDot || !later(d) {
                    return None;
                }
                let o = g.operands(d);
                let y = if o[0] == x { o[1] } else { o[0] };
                vals.contains_key(&y).then_some((d, x, y, true))
            });
        }
        [(ops[0], ops[1]), (ops[1], ops[0])]
            .into_iter()
            .find_map(|(x, y)| {
                g.users(x)
                    .into_iter()
                    .find(|&s| g.node(s).op == Op::ChannelSum && later(s))
                    .map(|s| (s, x, y, false))
            })
    }

    /// Σx into `sum` and Σx·y into `dot` per channel (x, y of `shape`), in
    /// one pass 1 over x and y and two finishes.
    fn channel_sum_dot(
        &mut self,
        x: u64,
        y: u64,
        shape: &[usize],
        sum: u64,
        dot: u64,
    ) -> Result<(), ExecError> {
        use Arg::{D, I, P};
        let (b, c, r) = (shape[0], shape[1], inner(shape));
        let parts = chan_parts(shape);
        let floats = 2 * chan_work_floats(1, shape);
        let work = self.take_scratch(floats)?;
        let wp = self.mem_ptr(&work);
        let set = 8 * (c * parts) as u64;
        let mut run = || -> Result<(), ExecError> {
            let geo = [I(int(c)?), I(int(b)?), I(int(r)?), I(int(parts)?)];
            let mut a = vec![P(x), P(y), P(wp), P(wp + set)];
            a.extend(geo);
            self.launch("snnc_chan_sum_dot_partial", c * parts, &a)?;
            for (part, out) in [(wp, sum), (wp + set, dot)] {
                let fin = [P(part), P(out), I(int(c)?), I(int(parts)?), I(1), D(1.0)];
                self.launch("snnc_chan_finish", c, &fin)?;
            }
            Ok(())
        };
        let result = run();
        self.give_scratch(work, floats);
        result
    }
}

/// Whether a ChannelVar's operands are (mean node `m`, then exactly `xs`).
fn var_over(var_ops: &[NodeIndex], m: NodeIndex, xs: &[NodeIndex]) -> bool {
    var_ops.first() == Some(&m) && var_ops[1..] == *xs
}

/// Pass 1 of a channel reduction: `snnc_chan_partial` (sums of x or of
/// squared deviations) or `snnc_chan_dot_partial` (sums of x·y).
#[derive(Clone, Copy)]
pub(super) enum Pass1 {
    Sum,
    Dot,
}

/// Partial sums per channel of a channel reduction: each pass-1 thread
/// sums ~64 elements; at most 256 per channel.
pub(super) fn chan_parts(shape: &[usize]) -> usize {
    (shape[0] * inner(shape)).div_ceil(64).clamp(1, 256)
}

/// Floats of a channel reduction's workspace over `xs` operands of
/// `shape`: one double per (operand, channel, part).
pub(super) fn chan_work_floats(xs: usize, shape: &[usize]) -> usize {
    2 * xs * shape[1] * chan_parts(shape)
}
