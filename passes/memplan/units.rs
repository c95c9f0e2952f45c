//! The memory plan of a plan run by the executor (`codegen::exec`): which
//! values each unit reads and writes, when each is allocated and freed, and
//! where everything lives in the one arena the executor allocates.
//!
//! The model, which the executor follows exactly (its measured peak in the
//! arena is this plan's peak):
//!
//! - positions are the plan's units; a unit allocates the values it writes
//!   first; a value is freed after the last unit that reads or writes it
//!   (outputs and kept values live to the end);
//! - a kernel run one step per unit keeps its state from its first step to
//!   its last;
//! - reshape and detach units are views: they share their operand's
//!   buffer, which lives until the last of them is freed;
//! - a node unit takes its library call's scratch ([`Workspace`]) while it
//!   runs;
//! - inputs and parameters live in buffers of their own, outside the arena
//!   (the caller's data, uploaded or read in place).

use super::{finish, Buffer, BufferKind, MemPlan, Workspace};
use crate::ir::{Graph, NodeIndex, Op};
use crate::passes::fuse::{Plan, Unit};
use std::collections::{HashMap, HashSet};

/// Why a plan cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitsError {
    #[error("the plan has no kernel {0}")]
    NoKernel(usize),
    #[error("kernel {kernel} has no step {step}")]
    NoStep { kernel: usize, step: usize },
    #[error("step {step} reads node {node} before it is computed")]
    ReadBeforeWrite { step: usize, node: usize },
    #[error("node {0} is computed twice")]
    Twice(usize),
    #[error("the plan does not store node {0}, an output or kept value")]
    NotStored(usize),
}

/// Per unit of a plan: what it reads (a node's operands with repeats; a
/// kernel's inputs, each once) and writes, the values it writes first
/// (allocates), and those freed after it.
#[derive(Clone, Debug, Default)]
pub struct Lifetimes {
    pub reads: Vec<Vec<NodeIndex>>,
    pub writes: Vec<Vec<NodeIndex>>,
    pub fresh: Vec<Vec<NodeIndex>>,
    pub frees: Vec<Vec<NodeIndex>>,
}

/// Checks `plan` against `g` and works out its [`Lifetimes`]; `keep` lists
/// values that must survive the run besides the outputs.
pub fn lifetimes(g: &Graph, plan: &Plan, keep: &[NodeIndex]) -> Result<Lifetimes, UnitsError> {
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    // Each value's writer: a node (None), or kernel k, whose steps may each
    // write part of it.
    let mut written: HashMap<NodeIndex, Option<usize>> = HashMap::new();
    for (i, u) in plan.units.iter().enumerate() {
        let kernel = |k: usize| plan.kernels.get(k).ok_or(UnitsError::NoKernel(k));
        let (r, w, by) = match *u {
            Unit::Node(n) => (g.operands(n), vec![n], None),
            Unit::Kernel(k) => {
                let f = kernel(k)?;
                (f.reads(), f.outputs(), Some(k))
            }
            Unit::Step(k, t) => {
                let f = kernel(k)?;
                if t >= f.kernel.steps {
                    return Err(UnitsError::NoStep { kernel: k, step: t });
                }
                let (r, w) = f.step_access(t);
                (r, w, Some(k))
            }
        };
        if let Some(o) = r.iter().find(|o| !written.contains_key(*o)) {
            return Err(UnitsError::ReadBeforeWrite {
                step: i,
                node: o.index(),
            });
        }
        for &n in &w {
            match written.insert(n, by) {
                Some(prev) if !(matches!(u, Unit::Step(..)) && prev == by) => {
                    return Err(UnitsError::Twice(n.index()))
                }
                _ => {}
            }
        }
        reads.push(r);
        writes.push(w);
    }
    let kept = kept(g, keep);
    if let Some(n) = kept.iter().find(|n| !written.contains_key(*n)) {
        return Err(UnitsError::NotStored(n.index()));
    }
    let steps = reads.len();
    let mut last: HashMap<NodeIndex, usize> = HashMap::new();
    let mut fresh = vec![Vec::new(); steps];
    for i in 0..steps {
        for &w in &writes[i] {
            if !last.contains_key(&w) {
                fresh[i].push(w);
            }
            last.insert(w, i);
        }
        for &r in &reads[i] {
            last.insert(r, i);
        }
    }
    let mut frees = vec![Vec::new(); steps];
    let mut dying: Vec<(usize, NodeIndex)> = last
        .into_iter()
        .filter(|(n, _)| !kept.contains(n))
        .map(|(n, i)| (i, n))
        .collect();
    dying.sort();
    for (i, n) in dying {
        frees[i].push(n);
    }
    Ok(Lifetimes {
        reads,
        writes,
        fresh,
        frees,
    })
}

/// The outputs and the `keep` values: live to the end of a run.
fn kept(g: &Graph, keep: &[NodeIndex]) -> HashSet<NodeIndex> {
    g.outputs
        .iter()
        .map(|&(_, n)| n)
        .chain(keep.iter().copied())
        .collect()
}

/// Where everything of a plan lives in the arena.
#[derive(Clone, Debug)]
pub struct Arena {
    pub mem: MemPlan,
    /// Byte offset of each value the arena holds.
    pub value: HashMap<NodeIndex, u64>,
    /// Per unit: the byte offset and size of its workspace.
    pub workspace: Vec<Option<(u64, u64)>>,
    /// Per kernel run one step per unit: the byte offset of its state.
    pub state: HashMap<usize, u64>,
}

/// Plans the arena of `plan` (with `life` from [`lifetimes`]), node units
/// taking the scratch `ws` says.
pub fn arena(g: &Graph, plan: &Plan, life: &Lifetimes, ws: &dyn Workspace) -> Arena {
    let n = plan.units.len();
    let mut death: HashMap<NodeIndex, usize> = HashMap::new();
    for (i, frees) in life.frees.iter().enumerate() {
        for &v in frees {
            death.insert(v, i);
        }
    }
    let death_of = |v: &NodeIndex| death.get(v).copied().unwrap_or(n);
    // What each unit allocates, views, workspaces and states.
    let mut allocs: Vec<Vec<NodeIndex>> = vec![Vec::new(); n];
    let mut alias: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut workspace = vec![0u64; n];
    let mut state: Vec<(usize, u64, usize, usize)> = Vec::new();
    for (i, u) in plan.units.iter().enumerate() {
        for &v in &life.fresh[i] {
            // Leaves and views are nodes run alone (a kernel stores even an
            // identity it computes).
            let alone = matches!(u, Unit::Node(_));
            match g.node(v).op {
                Op::Input { .. } | Op::Param { .. } if alone => {}
                Op::Reshape { .. } | Op::Detach if alone => {
                    let o = g.operands(v)[0];
                    let root = alias.get(&o).copied().unwrap_or(o);
                    alias.insert(v, root);
                }
                _ => allocs[i].push(v),
            }
        }
        match *u {
            Unit::Node(v) => {
                let node = g.node(v);
                let ops = g.operands(v);
                let shapes: Vec<&[usize]> =
                    ops.iter().map(|o| g.node(*o).shape.as_slice()).collect();
                workspace[i] = ws.scratch_bytes(&node.op, &shapes, &node.shape);
            }
            Unit::Step(k, _) if plan.kernels[k].state_floats() > 0 => {
                let bytes = 4 * plan.kernels[k].state_floats() as u64;
                match state.iter_mut().find(|s| s.0 == k) {
                    Some(s) => s.3 = i,
                    None => state.push((k, bytes, i, i)),
                }
            }
            _ => {}
        }
    }
    // A buffer ends when the last of its value and the value's views dies.
    let mut end: HashMap<NodeIndex, usize> =
        allocs.iter().flatten().map(|v| (*v, death_of(v))).collect();
    for (view, root) in &alias {
        if let Some(e) = end.get_mut(root) {
            *e = (*e).max(death_of(view));
        }
    }
    enum Owner {
        Value(NodeIndex),
        Workspace(usize),
        State(usize),
    }
    let mut buffers = Vec::new();
    let mut owners = Vec::new();
    let mut push = |kind, bytes, (start, end), owner| {
        buffers.push(Buffer {
            kind,
            nodes: vec![start],
            bytes,
            start,
            end,
            offset: 0,
        });
        owners.push(owner);
    };
    for (i, vs) in allocs.iter().enumerate() {
        if workspace[i] > 0 {
            push(
                BufferKind::Workspace,
                workspace[i],
                (i, i),
                Owner::Workspace(i),
            );
        }
        for &v in vs {
            let bytes = crate::ir::value_bytes(&g.node(v).shape);
            push(BufferKind::Value, bytes, (i, end[&v]), Owner::Value(v));
        }
    }
    for &(k, bytes, first, last) in &state {
        push(BufferKind::Workspace, bytes, (first, last), Owner::State(k));
    }
    let mem = finish(Vec::new(), n, buffers, 0, 0);
    let mut arena = Arena {
        value: HashMap::new(),
        workspace: vec![None; n],
        state: HashMap::new(),
        mem,
    };
    for (b, owner) in arena.mem.buffers.iter().zip(owners) {
        match owner {
            Owner::Value(v) => {
                arena.value.insert(v, b.offset);
            }
            Owner::Workspace(i) => arena.workspace[i] = Some((b.offset, b.bytes)),
            Owner::State(k) => {
                arena.state.insert(k, b.offset);
            }
        }
    }
    arena
}

/// The memory plan of `plan` as the executor runs it (see the module
/// comment); `keep` as for [`lifetimes`].
pub fn plan_units(
    g: &Graph,
    plan: &Plan,
    keep: &[NodeIndex],
    ws: &dyn Workspace,
) -> Result<MemPlan, UnitsError> {
    let life = lifetimes(g, plan, keep)?;
    Ok(arena(g, plan, &life, ws).mem)
}
