//! The library calls' scratch, for the memory plan: which pieces a node
//! takes while it runs (im2col buffers of a convolution chunk, the partial
//! sums of a channel reduction), in the order the drivers take them.

use super::conv::ConvGeo;
use super::reduce::chan_work_floats;
use crate::ir::Op;
use crate::passes::memplan::{self, Workspace};

/// Bytes a workspace piece of `len` floats takes in the arena: whole
/// multiples of the plan's alignment, so every piece is aligned for doubles.
pub(super) fn piece_bytes(len: usize) -> usize {
    (4 * len.max(1)).div_ceil(memplan::ALIGN as usize) * memplan::ALIGN as usize
}

/// The scratch pieces (floats) of `op` with operands of shapes `ins` and
/// a result of shape `out`, convolutions chunked to `conv_workspace`.
pub(super) fn pieces(
    op: &Op,
    ins: &[&[usize]],
    out: &[usize],
    conv_workspace: usize,
) -> Vec<usize> {
    match op {
        // The operands summed: all of them, or those after the mean; a
        // mean sums x and x² (`reduce`).
        Op::ChannelMean => vec![2 * chan_work_floats(ins.len(), ins[0])],
        // A channel sum or dot may also compute its partner over the same
        // operand (`reduce::paired_reduction`): two sets of partial sums.
        Op::ChannelSum | Op::ChannelDot => vec![2 * chan_work_floats(1, ins[0])],
        Op::ChannelVar => vec![chan_work_floats(ins.len() - 1, ins[1])],
        // A convolution the executor rejects takes nothing: it fails
        // before it asks for scratch.
        _ => match ConvGeo::of(op, ins, out) {
            Ok(Some(geo)) => {
                let nb = geo.chunk(conv_workspace);
                geo.per_sample().iter().map(|&s| s * nb).collect()
            }
            _ => Vec::new(),
        },
    }
}

/// The library's scratch model with a convolution workspace cap.
pub struct LibraryScratch {
    pub conv_workspace: usize,
}

impl Workspace for LibraryScratch {
    fn scratch_bytes(&self, op: &Op, ins: &[&[usize]], out: &[usize]) -> u64 {
        pieces(op, ins, out, self.conv_workspace)
            .into_iter()
            .map(|p| piece_bytes(p) as u64)
            .sum()
    }
}
