//! Channel reductions (batch-norm statistics and their gradients) in two
//! passes: partial sums per (channel, part) in double, then one sum per
//! channel.

use super::{inner, int, ExecError, Executor};
use crate::codegen::backend::{Arg, Backend};

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
        use Arg::{D, I, P};
        let (kernel, mean) = match pass {
            Pass1::Sum => ("snnc_chan_partial", other),
            Pass1::Dot => ("snnc_chan_dot_partial", other),
        };
        let (b, c, r) = (shape[0], shape[1], inner(shape));
        let parts = chan_parts(shape);
        let floats = chan_work_floats(xs.len(), shape);
        let work = self.take_scratch(floats)?;
        let wp = self.mem_ptr(&work);
        let mut run = || -> Result<(), ExecError> {
            for (k, &xp) in xs.iter().enumerate() {
                self.launch(
                    kernel,
                    c * parts,
                    &[
                        P(xp),
                        P(mean),
                        P(wp + 8 * (k * c * parts) as u64),
                        I(int(c)?),
                        I(int(b)?),
                        I(int(r)?),
                        I(int(parts)?),
                    ],
                )?;
            }
            self.launch(
                "snnc_chan_finish",
                c,
                &[
                    P(wp),
                    P(out),
                    I(int(c)?),
                    I(int(parts)?),
                    I(int(xs.len())?),
                    D(count),
                ],
            )
        };
        let result = run();
        self.give_scratch(work, floats);
        result
    }
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
