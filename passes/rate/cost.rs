//! The extraction cost of the rate pass: bytes the backward must keep,
//! then FLOPs.
//!
//! A forward-only e-node is computed during the forward; if a backward node
//! reads it, its output is what must be kept — once, whatever it was
//! computed from (a time mean over T steps keeps one tensor, not T). A
//! backward e-node pays what its operands make it keep, plus its FLOPs. A
//! per-step gradient from the region above costs its bytes too: using it
//! means the region above must run per step.
//!
//! In rate mode a first component comes before the bytes: how many
//! per-step values the backward reads (forward values not reduced over
//! time, per-step gradients from the region above). Rate mode's backward
//! reads none, so a collapsed form must win even where it keeps more bytes
//! than T per-step values: `maxpool-route`'s `mean_t select_t` holds k²
//! values per window, more than T copies of the pool's input when T is
//! small and the windows overlap (a 3×3 window of stride 2 keeps 2.25×
//! the input), and by bytes alone extraction kept `Σ_t maxpool_grad(x_t,
//! δ_t)`, which the pass then refused as not collapsed. In BPTT mode the
//! component is zero: its backward runs per step.
//!
//! A last component only breaks ties: the number of `summed` leaves read.
//! Such a leaf is a node the regions above built only for their readers;
//! where a form that does without it costs the same (at an output layer
//! whose incoming gradient is the same at every step, `δᵀ·Σ_t x_t` against
//! `(Σ_t δ)ᵀ·mean_t x_t`), that form is taken. Without it the choice fell to
//! the order in which egg's extractor visits e-classes, i.e. to e-class ids.

use super::lang::{Head, Leaf, RGraph, RNode};
use crate::ir::Op;
use crate::passes::cost::{bytes, flops};
use egg::{CostFunction, Id};

pub struct KeptThenFlops<'a> {
    pub egraph: &'a RGraph,
    /// Rate mode: count per-step reads first.
    pub collapse: bool,
}

/// (per-step values read, bytes kept, FLOPs, summed leaves read).
type Cost = (f64, f64, f64, f64);

impl CostFunction<RNode> for KeptThenFlops<'_> {
    type Cost = Cost;

    fn cost<C>(&mut self, enode: &RNode, costs: C) -> Cost
    where
        C: FnMut(Id) -> Cost,
    {
        let (kept, flops, summed, per_step) = self.kept_then_flops(enode, costs);
        let reads = if self.collapse { per_step } else { 0.0 };
        (reads, kept, flops, summed)
    }
}

impl KeptThenFlops<'_> {
    /// The bytes kept, FLOPs and summed leaves of `enode`, and how many
    /// per-step values it reads.
    fn kept_then_flops<C>(&self, enode: &RNode, mut costs: C) -> (f64, f64, f64, f64)
    where
        C: FnMut(Id) -> Cost,
    {
        let eg = self.egraph;
        let data = |c: Id| &eg[c].data;
        match &enode.head {
            Head::Leaf(kind, n) => {
                let (shape, per_step, param) = &eg.analysis.leaves[n];
                match kind {
                    Leaf::Fwd if *param => (0.0, 0.0, 0.0, 0.0),
                    // One byte more than its size: with T = 1 a step's value
                    // and its time mean are the same size, and the mean
                    // (an accumulator) is the form the backward should read.
                    Leaf::Fwd if *per_step => (bytes(shape) + 1.0, 0.0, 0.0, 1.0),
                    Leaf::Fwd => (bytes(shape), 0.0, 0.0, 0.0),
                    Leaf::Bnd if *per_step => (bytes(shape), 0.0, 0.0, 1.0),
                    Leaf::Bnd => (0.0, 0.0, 0.0, 0.0),
                    Leaf::Summed => (0.0, 0.0, 1.0, 0.0),
                }
            }
            // A scale's constant is an attribute of the op it becomes.
            Head::Num(_) => (0.0, 0.0, 0.0, 0.0),
            head => {
                let kids = &enode.children;
                let shapes: Vec<&[usize]> =
                    kids.iter().map(|&c| data(c).shape.as_slice()).collect();
                let out: Vec<usize> = match head {
                    Head::Op(k) => k.op.infer_shape(&shapes).ok().flatten().unwrap_or_default(),
                    Head::Scale => shapes[1].to_vec(),
                    _ => shapes[0].to_vec(),
                };
                let own = match head {
                    Head::Op(k) => flops(&k.op, &shapes, &out),
                    Head::Scale => flops(&Op::Scale(1.0), &shapes[1..], &out),
                    _ => shapes
                        .iter()
                        .map(|s| s.iter().product::<usize>() as f64)
                        .sum(),
                };
                let child: Vec<Cost> = kids.iter().map(|&c| costs(c)).collect();
                let below: f64 = child.iter().map(|c| c.2).sum::<f64>() + own;
                let summed: f64 = child.iter().map(|c| c.3).sum();
                if kids.iter().all(|&c| data(c).fwd_only) {
                    // Computed in the forward: keeping it costs its size,
                    // except when it only depends on parameters.
                    let per_step = !matches!(head, Head::TSum | Head::TMean)
                        && kids.iter().any(|&c| data(c).per_step);
                    let kept = if kids.iter().all(|&c| data(c).param) {
                        0.0
                    } else {
                        // The extra byte, as for leaves, prefers time means
                        // to per-step values. Half a byte on a time
                        // reduction prefers, among time-invariant forms of
                        // one value, those without an accumulator of their
                        // own; it also keeps extraction off `tmean(c, …, c)`,
                        // which linear-hoist puts in c's own class.
                        let reduction = matches!(head, Head::TSum | Head::TMean);
                        bytes(&out)
                            + if per_step {
                                1.0
                            } else if reduction {
                                0.5
                            } else {
                                0.0
                            }
                    };
                    (kept, below, summed, if per_step { 1.0 } else { 0.0 })
                } else {
                    (
                        child.iter().map(|c| c.1).sum(),
                        below,
                        summed,
                        child.iter().map(|c| c.0).sum(),
                    )
                }
            }
        }
    }
}
