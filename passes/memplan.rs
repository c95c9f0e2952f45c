//! The memory planner: liveness of every value under an execution order, the
//! static peak, and an assignment of buffers to offsets in one arena.
//!
//! The model is the CPU executor's (`codegen/cpu`), which follows it exactly:
//!
//! - a computed node's value (f32, `4·numel` bytes) is allocated when the
//!   node runs and freed right after its last user has run; graph outputs
//!   (and values the caller asks to keep) live to the end of the step; a
//!   value nobody reads is freed as soon as it is made;
//! - inputs and parameters are not copied: they are *resident*, owned by the
//!   caller, and counted apart;
//! - an elementwise node whose first operand dies at that node (and is not
//!   also its other operand) writes its result into that operand's buffer:
//!   no new allocation ([`in_place`]); reshape and detach of a dying value
//!   are free;
//! - convolutions and their gradients take the scratch their kernels
//!   allocate (im2col and gathered-gradient buffers, chunked to about 4 MiB)
//!   for the duration of the node ([`Workspace`]). The SGEMM
//!   library's own packing buffers are not modelled.
//!
//! The peak is the largest sum of live bytes at any node (its operands, its
//! output and its workspace are live while it runs). The arena assignment
//! places each buffer (best fit among the gaps left by buffers whose
//! lifetimes overlap, in each of a few orders — by size, by size ×
//! lifetime, by lifetime, by start — keeping the smallest arena) so that
//! no two buffers live at the same time share a byte; its size is at least
//! the peak.

pub mod units;

pub use units::{plan_units, Arena, Lifetimes, UnitsError};

use super::schedule::{self, SchedOpts};
use crate::ir::{Graph, NodeIndex, Op};
use petgraph::visit::NodeIndexable;
use std::collections::HashSet;
use std::fmt::Write;

/// Arena offsets are multiples of this.
pub const ALIGN: u64 = 64;

/// Scratch memory a backend's library kernels allocate while one op runs
/// (convolution im2col buffers), given the operand shapes. The plan counts
/// it for the duration of the node; each backend says how much it needs
/// (`codegen::cpu::WORKSPACE`), so the plan lives here without depending on
/// any backend.
pub trait Workspace {
    /// Bytes of scratch `op` takes with operands of shapes `ins` and a
    /// result of shape `out`.
    fn scratch_bytes(&self, op: &Op, ins: &[&[usize]], out: &[usize]) -> u64;
}

/// A backend whose kernels allocate no scratch.
pub struct NoScratch;

impl Workspace for NoScratch {
    fn scratch_bytes(&self, _: &Op, _: &[&[usize]], _: &[usize]) -> u64 {
        0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    /// Holds one value, or a chain of values computed in place.
    Value,
    /// A node's scratch space, live while it runs.
    Workspace,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Buffer {
    pub kind: BufferKind,
    /// Positions (in the order) of the nodes whose values it holds, first
    /// the one that allocated it; for a workspace, its node.
    pub nodes: Vec<usize>,
    pub bytes: u64,
    /// First and last position (inclusive) at which it is live; `end` is
    /// `order.len()` for values that outlive the run (outputs).
    pub start: usize,
    pub end: usize,
    /// Offset in the arena.
    pub offset: u64,
}

impl Buffer {
    fn overlaps_in_time(&self, o: &Buffer) -> bool {
        self.start <= o.end && o.start <= self.end
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MemPlan {
    /// The execution order (`schedule::order`), as node indices; empty for
    /// a fused plan (`plan_fused`).
    #[serde(skip)]
    pub order: Vec<NodeIndex>,
    /// Number of positions: nodes, or units of a fused plan.
    pub positions: usize,
    pub buffers: Vec<Buffer>,
    /// Largest sum of live bytes at any position.
    pub peak_bytes: u64,
    /// The position of the (first) peak.
    pub peak_at: usize,
    /// Size of the arena the buffers are assigned in.
    pub arena_bytes: u64,
    /// Inputs and parameters: read in place, owned by the caller.
    pub resident_bytes: u64,
    /// Nodes that reuse their first operand's buffer.
    pub in_place: usize,
}

/// Plans `order` (a topological order of `g`); `keep` lists nodes whose
/// values must survive the run besides the outputs.
pub fn plan(g: &Graph, order: &[NodeIndex], keep: &[NodeIndex], ws: &dyn Workspace) -> MemPlan {
    let n = order.len();
    let mut pos = vec![usize::MAX; g.g.node_bound()];
    for (i, &v) in order.iter().enumerate() {
        pos[v.index()] = i;
    }
    let kept: HashSet<NodeIndex> = g
        .outputs
        .iter()
        .map(|&(_, v)| v)
        .chain(keep.iter().copied())
        .collect();
    let mut last_use = vec![None::<usize>; n];
    for (i, &v) in order.iter().enumerate() {
        for o in g.operands(v) {
            let p = pos[o.index()];
            last_use[p] = Some(last_use[p].map_or(i, |q: usize| q.max(i)));
        }
    }
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut buffer_of = vec![usize::MAX; n];
    let mut resident_bytes = 0;
    let mut in_place_count = 0;
    for (i, &v) in order.iter().enumerate() {
        let node = &g.g[v];
        let bytes = crate::ir::value_bytes(&node.shape);
        if node.op.resident() {
            resident_bytes = u64::saturating_add(resident_bytes, bytes);
            continue;
        }
        let end = if kept.contains(&v) {
            n
        } else {
            last_use[i].unwrap_or(i)
        };
        let ops = g.operands(v);
        let shapes: Vec<&[usize]> = ops.iter().map(|o| g.g[*o].shape.as_slice()).collect();
        let scratch = ws.scratch_bytes(&node.op, &shapes, &node.shape);
        if scratch > 0 {
            buffers.push(Buffer {
                kind: BufferKind::Workspace,
                nodes: vec![i],
                bytes: scratch,
                start: i,
                end: i,
                offset: 0,
            });
        }
        // Reuse the first operand's buffer when this node is its last use.
        if let Some(&first) = ops.first() {
            let p = pos[first.index()];
            let reuse = node.op.in_place()
                && !g.g[first].op.resident()
                && last_use[p] == Some(i)
                && ops.iter().filter(|&&o| o == first).count() == 1
                && !kept.contains(&first)
                && crate::ir::value_bytes(&g.g[first].shape) == bytes;
            if reuse {
                let b = buffer_of[p];
                buffers[b].nodes.push(i);
                buffers[b].end = end;
                buffer_of[i] = b;
                in_place_count += 1;
                continue;
            }
        }
        buffer_of[i] = buffers.len();
        buffers.push(Buffer {
            kind: BufferKind::Value,
            nodes: vec![i],
            bytes,
            start: i,
            end,
            offset: 0,
        });
    }
    finish(order.to_vec(), n, buffers, resident_bytes, in_place_count)
}

/// The peak (live bytes at each position 0..=positions, the last one being
/// after the run) and the arena offsets.
fn finish(
    order: Vec<NodeIndex>,
    positions: usize,
    mut buffers: Vec<Buffer>,
    resident_bytes: u64,
    in_place: usize,
) -> MemPlan {
    let n = positions;
    // i128: no sum of u64 byte counts over a plan's buffers can overflow
    // it; the peak saturates at u64::MAX.
    let mut delta = vec![0i128; n + 2];
    for b in &buffers {
        delta[b.start] += i128::from(b.bytes);
        delta[b.end + 1] -= i128::from(b.bytes);
    }
    let (mut live, mut peak_bytes, mut peak_at) = (0i128, 0u64, 0usize);
    for (p, d) in delta.iter().take(n + 1).enumerate() {
        live += d;
        let bytes = u64::try_from(live).unwrap_or(u64::MAX);
        if bytes > peak_bytes {
            peak_bytes = bytes;
            peak_at = p;
        }
    }
    let arena_bytes = assign_offsets(&mut buffers);
    MemPlan {
        order,
        positions,
        buffers,
        peak_bytes,
        peak_at,
        arena_bytes,
        resident_bytes,
        in_place,
    }
}

/// The liveness model of a fusion plan (`passes::fuse`) at the level of
/// its units, as `snnc plan` reports it: each unit (a fused kernel or a
/// single node) allocates all the values it writes; inputs and parameters
/// are copied when their unit runs; a value is freed after the last unit
/// that reads it, and one no unit reads stays to the end; the outputs are
/// copied out at the end. Positions are units; `order` is empty. (What the
/// executor allocates is `memplan::units`.)
pub fn plan_fused(g: &Graph, plan: &crate::passes::fuse::Plan, ws: &dyn Workspace) -> MemPlan {
    use crate::passes::fuse::Unit;
    let mut written: HashSet<NodeIndex> = HashSet::new();
    // A kernel run one step at a time keeps its state between its first
    // and last step: (bytes, first unit, last unit).
    let mut state: std::collections::BTreeMap<usize, (u64, usize, usize)> = Default::default();
    let units: Vec<(Vec<NodeIndex>, Vec<NodeIndex>, u64)> = plan
        .units
        .iter()
        .enumerate()
        .map(|(i, u)| match *u {
            // Inputs and parameters are read in place: resident, not values.
            Unit::Node(v) if g.g[v].op.resident() => (vec![], vec![], 0),
            Unit::Node(v) => {
                let mut reads = g.operands(v);
                let shapes: Vec<&[usize]> =
                    reads.iter().map(|o| g.g[*o].shape.as_slice()).collect();
                let scratch = ws.scratch_bytes(&g.g[v].op, &shapes, &g.g[v].shape);
                reads.sort();
                reads.dedup();
                (vec![v], reads, scratch)
            }
            Unit::Kernel(k) => (plan.kernels[k].outputs(), plan.kernels[k].reads(), 0),
            Unit::Step(k, t) => {
                let f = &plan.kernels[k];
                let bytes = 4 * f.state_floats() as u64;
                if bytes > 0 {
                    state.entry(k).or_insert((bytes, i, i)).2 = i;
                }
                let (reads, writes) = f.step_access(t);
                let outs = writes.into_iter().filter(|w| written.insert(*w)).collect();
                (outs, reads, 0)
            }
        })
        .collect();
    let n = units.len();
    let mut last_read: std::collections::HashMap<NodeIndex, usize> = Default::default();
    for (i, (_, reads, _)) in units.iter().enumerate() {
        for &r in reads {
            last_read.insert(r, i);
        }
    }
    let kept: HashSet<NodeIndex> = g.outputs.iter().map(|&(_, v)| v).collect();
    let mut buffers = Vec::new();
    for (i, (outs, _, ws)) in units.iter().enumerate() {
        if *ws > 0 {
            buffers.push(Buffer {
                kind: BufferKind::Workspace,
                nodes: vec![i],
                bytes: *ws,
                start: i,
                end: i,
                offset: 0,
            });
        }
        for &v in outs {
            let end = match last_read.get(&v) {
                Some(&e) if !kept.contains(&v) => e,
                _ => n,
            };
            buffers.push(Buffer {
                kind: BufferKind::Value,
                nodes: vec![i],
                bytes: crate::ir::value_bytes(&g.g[v].shape),
                start: i,
                end,
                offset: 0,
            });
        }
    }
    for (bytes, start, end) in state.into_values() {
        buffers.push(Buffer {
            kind: BufferKind::Workspace,
            nodes: vec![start],
            bytes,
            start,
            end,
            offset: 0,
        });
    }
    // The copies of the outputs handed back.
    for &(_, v) in &g.outputs {
        buffers.push(Buffer {
            kind: BufferKind::Value,
            nodes: vec![],
            bytes: crate::ir::value_bytes(&g.g[v].shape),
            start: n,
            end: n,
            offset: 0,
        });
    }
    finish(Vec::new(), n, buffers, 0, 0)
}

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Places every buffer (`place`) in each of a few orders — largest first;
/// largest size × lifetime first; longest-lived first; earliest first —
/// and keeps the smallest arena (the first order on a tie). No order is
/// best everywhere: greedy by size leaves gaps where a long-lived small
/// buffer lands between short-lived large ones (fmnist_csnn's time-major
/// BPTT plan: an arena 7.7 % above its peak). Returns the arena size.
fn assign_offsets(buffers: &mut [Buffer]) -> u64 {
    let mut best: Option<(u64, Vec<u64>)> = None;
    for way in 0..PLACEMENT_ORDERS {
        let mut order: Vec<usize> = (0..buffers.len()).collect();
        order.sort_by_key(|&i| (placement_key(way, &buffers[i]), i));
        let arena = place(buffers, &order);
        if best.as_ref().is_none_or(|(a, _)| arena < *a) {
            best = Some((arena, buffers.iter().map(|b| b.offset).collect()));
        }
    }
    let (arena, offsets) = best.unwrap_or_default();
    for (b, o) in buffers.iter_mut().zip(offsets) {
        b.offset = o;
    }
    arena
}

const PLACEMENT_ORDERS: usize = 4;

/// The sort key of placement order `way` (smallest first): largest first;
/// largest size × lifetime; longest-lived; earliest start.
fn placement_key(way: usize, b: &Buffer) -> (u64, u64, usize) {
    let span = (b.end - b.start + 1) as u64;
    let larger = u64::MAX - b.bytes;
    match way {
        0 => (larger, 0, b.start),
        1 => (u64::MAX - b.bytes.saturating_mul(span), larger, b.start),
        2 => (u64::MAX - span, larger, b.start),
        _ => (b.start as u64, larger, 0),
    }
}

/// Places the buffers in `order`, each at the best-fitting gap among the
/// already placed buffers whose lifetimes overlap its own. Returns the
/// arena size.
fn place(buffers: &mut [Buffer], order: &[usize]) -> u64 {
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0;
    for &i in order {
        let size = align(buffers[i].bytes);
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&j| buffers[j].overlaps_in_time(&buffers[i]))
            .map(|&j| {
                (
                    buffers[j].offset,
                    buffers[j].offset.saturating_add(align(buffers[j].bytes)),
                )
            })
            .collect();
        busy.sort_unstable();
        let (mut best, mut best_gap) = (None, u64::MAX);
        let mut at = 0;
        for &(s, e) in &busy {
            if s > at && s - at >= size && s - at < best_gap {
                best = Some(at);
                best_gap = s - at;
            }
            at = at.max(e);
        }
        let offset = best.unwrap_or(at);
        buffers[i].offset = offset;
        arena = arena.max(offset.saturating_add(size));
        placed.push(i);
    }
    arena
}

impl MemPlan {
    /// Checks that no two buffers live at the same time overlap in the
    /// arena, and that the arena holds every buffer.
    pub fn check_arena(&self) -> Result<(), ArenaError> {
        for (i, a) in self.buffers.iter().enumerate() {
            if a.offset.saturating_add(a.bytes) > self.arena_bytes {
                return Err(ArenaError::PastEnd(i));
            }
            for (j, b) in self.buffers.iter().enumerate().skip(i + 1) {
                if a.overlaps_in_time(b)
                    && a.offset < b.offset.saturating_add(b.bytes)
                    && b.offset < a.offset.saturating_add(a.bytes)
                {
                    return Err(ArenaError::Overlap {
                        a: Box::new((i, a.start, a.end, a.offset, a.bytes)),
                        b: Box::new((j, b.start, b.end, b.offset, b.bytes)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Live bytes at each position (after the last one: what outlives the
    /// run), recomputed from the buffers.
    pub fn live_bytes(&self) -> Vec<u64> {
        let n = self.positions;
        let mut live = vec![0u64; n + 1];
        for b in &self.buffers {
            for l in &mut live[b.start..=b.end.min(n)] {
                *l = l.saturating_add(b.bytes);
            }
        }
        live
    }

    /// The order and the buffer table as text: one line per node (`%i` is
    /// its position), then one per buffer.
    pub fn to_text(&self, g: &Graph) -> String {
        let mut pos = vec![usize::MAX; g.g.node_bound()];
        for (i, &v) in self.order.iter().enumerate() {
            pos[v.index()] = i;
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan {} steps={} batch={}: {} nodes, peak {} B at %{}, arena {} B, resident {} B, {} in place",
            g.name,
            g.steps,
            g.batch,
            self.order.len(),
            self.peak_bytes,
            self.peak_at,
            self.arena_bytes,
            self.resident_bytes,
            self.in_place
        );
        let live = self.live_bytes();
        for (i, &v) in self.order.iter().enumerate() {
            let node = &g.g[v];
            let args: Vec<String> = g
                .operands(v)
                .iter()
                .map(|o| format!("%{}", pos[o.index()]))
                .collect();
            let attrs = node.op.attrs();
            let mut call = node.op.name().to_string();
            if !attrs.is_empty() {
                let _ = write!(call, "[{attrs}]");
            }
            if !args.is_empty() {
                let _ = write!(call, "({})", args.join(", "));
            }
            let prov = format!(
                "{}{}{}",
                node.layer
                    .map(|l| format!("{}:{} ", g.layers[l].path, g.layers[l].keyword))
                    .unwrap_or_default(),
                node.t.map(|t| format!("t={t} ")).unwrap_or_default(),
                node.role.short()
            );
            let _ = writeln!(
                out,
                "  %{i:<3} = {call:<44} {:<14} {prov:<26} live {}",
                crate::shape::list(&node.shape).replace(' ', ""),
                live[i]
            );
        }
        let _ = writeln!(out, "buffers:");
        for (i, b) in self.buffers.iter().enumerate() {
            let nodes: Vec<String> = b.nodes.iter().map(|p| format!("%{p}")).collect();
            let end = if b.end == self.positions {
                "end".to_string()
            } else {
                b.end.to_string()
            };
            let _ = writeln!(
                out,
                "  b{i:<3} {:<9} {:>10} B  @{:<10} live [{}, {}]  {}",
                match b.kind {
                    BufferKind::Value => "value",
                    BufferKind::Workspace => "workspace",
                },
                b.bytes,
                b.offset,
                b.start,
                end,
                nodes.join(" ")
            );
        }
        out
    }
}

/// Why an arena assignment is wrong ([`MemPlan::check_arena`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    #[error("buffer {0} ends past the arena")]
    PastEnd(usize),
    /// (buffer, first position, last position, offset, bytes) of each.
    #[error(
        "buffers {} [{}, {}] and {} [{}, {}] are live together and overlap at offsets {}+{} / {}+{}",
        a.0, a.1, a.2, b.0, b.1, b.2, a.3, a.4, b.3, b.4
    )]
    Overlap {
        a: Box<(usize, usize, usize, u64, u64)>,
        b: Box<(usize, usize, usize, u64, u64)>,
    },
}

/// A graph lowered for a schedule, its order and its memory plan: what the
/// executor runs.
#[derive(Clone, Debug)]
pub struct Planned {
    pub opts: SchedOpts,
    pub graph: Graph,
    pub mem: MemPlan,
}

impl Planned {
    pub fn order(&self) -> &[NodeIndex] {
        &self.mem.order
    }
}

/// Lowers `g` for `opts`, orders it and plans its memory.
pub fn build(g: &Graph, opts: SchedOpts, ws: &dyn Workspace) -> Planned {
    let (graph, order) = schedule::schedule(g, opts);
    let mem = plan(&graph, &order, &[], ws);
    Planned { opts, graph, mem }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(units: u64, start: usize, end: usize) -> Buffer {
        Buffer {
            kind: BufferKind::Value,
            nodes: vec![start],
            bytes: units * ALIGN,
            start,
            end,
            offset: 0,
        }
    }

    /// Largest first puts the two 3-unit buffers (live at 0 and at 3) at
    /// offset 0, so the 2-unit one (0..2) goes above the first and the
    /// 1-unit one (2..3) above both: 6 units. Earliest first fits them in
    /// the peak, 5 units; the planner keeps that one, and no two buffers
    /// live at once overlap.
    #[test]
    fn the_smallest_arena_of_several_orders_is_kept() {
        let mut bufs = vec![
            buffer(1, 2, 3),
            buffer(2, 0, 2),
            buffer(3, 3, 3),
            buffer(3, 0, 0),
        ];
        let mut order: Vec<usize> = (0..bufs.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(bufs[i].bytes), bufs[i].start, i));
        assert_eq!(place(&mut bufs, &order), 6 * ALIGN);
        let arena = assign_offsets(&mut bufs);
        assert_eq!(arena, 5 * ALIGN);
        let plan = MemPlan {
            order: Vec::new(),
            positions: 4,
            buffers: bufs,
            peak_bytes: 5 * ALIGN,
            peak_at: 0,
            arena_bytes: arena,
            resident_bytes: 0,
            in_place: 0,
        };
        plan.check_arena().unwrap();
    }
}
