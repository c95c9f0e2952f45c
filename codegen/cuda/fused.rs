//! A fusion plan's kernels as one CUDA module for the executor.
//!
//! The module is `render_cuda`'s text for every kernel of the plan, with
//! each kernel renamed `NAME_HASH` (HASH: the plan's source text). Fusion
//! names kernels by position (`k0_…`), so two plans (another model, another
//! T) reuse names for different code; with the suffix a kernel name
//! identifies its code, so a module cache keyed by source and any tool that
//! finds kernels by name (profilers, the fake driver of the tests) cannot
//! confuse two plans.

use super::nvrtc::fnv1a;
pub use crate::codegen::backend::Module;
use crate::codegen::render_cuda;
use crate::ir::{Graph, Op};
use crate::passes::fuse::{Fused, Plan};

/// Renders `plan`'s kernels as one module.
pub fn module(plan: &Plan) -> Module {
    let render = |suffix: Option<&str>| -> (String, Vec<String>) {
        let mut src = render_cuda::header();
        let mut names = Vec::new();
        for f in &plan.kernels {
            let mut k = f.kernel.clone();
            if let Some(s) = suffix {
                k.name = format!("{}_{s}", k.name);
            }
            src.push('\n');
            src.push_str(&render_cuda::kernel(&k));
            names.push(k.name);
        }
        (src, names)
    };
    let hash = fnv1a(&[render(None).0.as_bytes()]);
    let (source, names) = render(Some(&format!("{:012x}", hash & 0xffff_ffff_ffff)));
    Module {
        source,
        names,
        hash,
    }
}

/// Bytes one launch of `f` must move at least: every tensor of its pointer
/// table once (reads and writes; a per-channel vector counts its C
/// elements). The numerator of a kernel's achieved bandwidth.
pub fn traffic_bytes(g: &Graph, f: &Fused) -> usize {
    let mut seen = Vec::new();
    for n in f.table.iter().flatten() {
        if !seen.contains(n) {
            seen.push(*n);
        }
    }
    seen.iter()
        .map(|&n| 4 * g.node(n).shape.iter().product::<usize>())
        .sum()
}

/// Bytes one launch of step `t` of `f` alone must move at least: each
/// tensor that step reads or writes once, and its state loaded (unless it
/// is the loop's first step) and stored (unless it is the last).
pub fn step_traffic_bytes(g: &Graph, f: &Fused, t: usize) -> usize {
    let (reads, writes) = f.step_access(t);
    let tensors: usize = reads
        .iter()
        .chain(&writes)
        .map(|&n| 4 * g.node(n).shape.iter().product::<usize>())
        .sum();
    let steps = f.loop_steps();
    let moves = usize::from(steps.first() != Some(&t)) + usize::from(steps.last() != Some(&t));
    tensors + moves * 4 * f.state_floats()
}

/// Does `f` compute a spike (a LIF/IF layer's update)?
pub fn is_lif(g: &Graph, f: &Fused) -> bool {
    f.nodes
        .iter()
        .any(|&n| matches!(g.node(n).op, Op::Spike { .. }))
}
