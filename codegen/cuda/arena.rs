//! The device memory of a fusion plan as one arena.
//!
//! When the executor runs a fusion plan it allocates one device buffer, the
//! arena, and places every value, workspace and kernel state at an offset
//! planned before the first run (`passes::memplan`'s offset assignment), so
//! the device footprint is the plan's arena and the peak of what is live in
//! it is the plan's peak. The model is `memplan::plan_fused`'s: positions
//! are units; a unit allocates the values it writes first; a value is freed
//! after the last unit that reads or writes it (outputs and kept values
//! live to the end); a kernel run one step per unit keeps its state from
//! its first step to its last. What the device does differently from the
//! CPU plan, and why the plan is built here from the executor's own events:
//!
//! - reshape and detach are views: they share their operand's buffer,
//!   which lives until the last of them is freed;
//! - workspaces are the device kernels' (im2col chunks of the executor's
//!   `conv_workspace`, the channel reductions' partial sums), not the CPU
//!   kernels' (whose size depends on the CPU's thread count);
//! - outputs are downloaded after the run, not copied on the device;
//! - inputs and parameters are uploaded into (or kept resident in) buffers
//!   of their own, outside the arena: the plan's resident bytes.

use crate::ir::NodeIndex;
use crate::passes::memplan::{self, Buffer, BufferKind, MemPlan};
use std::collections::HashMap;

/// What the executor allocates at each of its `positions` units, and when
/// it lets go of each value.
pub struct Events {
    pub positions: usize,
    /// Per unit: the values it allocates (node, bytes).
    pub allocs: Vec<Vec<(NodeIndex, u64)>>,
    /// Per unit: its workspace bytes (0: none).
    pub workspace: Vec<u64>,
    /// Per kernel run one step per unit: (kernel, state bytes, first unit,
    /// last unit).
    pub state: Vec<(usize, u64, usize, usize)>,
    /// Views: the value whose buffer each shares.
    pub alias: HashMap<NodeIndex, NodeIndex>,
    /// The unit after which each value (or view) is freed; absent: it lives
    /// to the end of the run.
    pub death: HashMap<NodeIndex, usize>,
}

/// Where everything lives in the arena.
#[derive(Clone, Debug)]
pub struct Arena {
    pub mem: MemPlan,
    /// Byte offset of each allocated value.
    pub value: HashMap<NodeIndex, u64>,
    /// Per unit: the byte offset and size of its workspace.
    pub workspace: Vec<Option<(u64, u64)>>,
    /// Per kernel run one step per unit: the byte offset of its state.
    pub state: HashMap<usize, u64>,
}

/// Plans the arena of `ev`.
pub fn plan(ev: &Events) -> Arena {
    let n = ev.positions;
    // A buffer ends when the last of its value and the value's views dies.
    let mut end: HashMap<NodeIndex, usize> = HashMap::new();
    let death = |v: &NodeIndex| ev.death.get(v).copied().unwrap_or(n);
    for allocs in &ev.allocs {
        for (v, _) in allocs {
            end.insert(*v, death(v));
        }
    }
    for (view, root) in &ev.alias {
        if let Some(e) = end.get_mut(root) {
            *e = (*e).max(death(view));
        }
    }
    enum Owner {
        Value(NodeIndex),
        Workspace(usize),
        State(usize),
    }
    let mut buffers = Vec::new();
    let mut owners = Vec::new();
    for (i, allocs) in ev.allocs.iter().enumerate() {
        if ev.workspace[i] > 0 {
            buffers.push(Buffer {
                kind: BufferKind::Workspace,
                nodes: vec![i],
                bytes: ev.workspace[i],
                start: i,
                end: i,
                offset: 0,
            });
            owners.push(Owner::Workspace(i));
        }
        for &(v, bytes) in allocs {
            buffers.push(Buffer {
                kind: BufferKind::Value,
                nodes: vec![i],
                bytes,
                start: i,
                end: end[&v],
                offset: 0,
            });
            owners.push(Owner::Value(v));
        }
    }
    for &(k, bytes, first, last) in &ev.state {
        buffers.push(Buffer {
            kind: BufferKind::Workspace,
            nodes: vec![first],
            bytes,
            start: first,
            end: last,
            offset: 0,
        });
        owners.push(Owner::State(k));
    }
    let mem = memplan::from_buffers(n, buffers);
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
