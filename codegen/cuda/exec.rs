//! The node-level executor: runs a compiled `Graph` on a [`Backend`], one
//! kernel (or cuBLAS call) sequence per node, in topological order, on one
//! stream.
//!
//! Node by node, values live in device buffers from a pool keyed by length
//! (a training loop runs the same graph again and again, so after the first
//! step no allocation happens); a value returns to the pool after its last
//! user has run. A fusion plan's values, workspaces and kernel states live
//! in one arena at offsets planned before the first run ([`super::arena`]).
//! `Reshape` and `Detach` are views: they share their operand's buffer
//! (a reference count per buffer). Inputs and parameters have buffers of
//! their own from the pool; parameters can be made resident
//! ([`Executor::set_resident_params`]) so a step uploads only the inputs.
//!
//! The schedule is a list of [`Step`]s: graph nodes in a schedule's order
//! ([`Executor::new`]), or the units of a fusion plan
//! ([`Executor::fused`], [`Executor::with_plan`]): node units on the
//! kernels above, fused units on one generated module per plan
//! (`render_cuda`, loaded once by the backend), all of a kernel's steps in
//! one launch (layer-major plans) or one step per unit with the kernel's
//! registers and accumulators in a state buffer between launches
//! (time-major plans, `passes/fuse_time`). A fused unit reads and writes its
//! tensors through a pointer table in device memory, one small buffer per
//! unit; the executor fills it before the launch, and skips the upload when
//! the addresses are those of the previous run (arena offsets are fixed,
//! and the pool hands out the same buffers in the same order every run, so
//! after the first step no table is uploaded).

use super::arena::{self, Arena};
use super::backend::{check_args, Arg, Backend, KERNELS};
use super::elementwise;
use super::gemm::Gemm;
use crate::interp::RunOptions;
use crate::ir::{Graph, NodeIndex, Op};
use crate::passes::fuse::{self, Plan, Unit};
use crate::passes::memplan::{self, MemPlan};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// One unit of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Evaluate one graph node with its own kernels.
    Node(NodeIndex),
    /// Launch fused kernel `k` of the plan (all its steps).
    Kernel(usize),
    /// Launch step `t` of fused kernel `k` alone (time-major plans).
    KernelStep(usize, usize),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Node(n) => write!(f, "node #{}", n.index()),
            Step::Kernel(k) => write!(f, "kernel {k}"),
            Step::KernelStep(k, t) => write!(f, "kernel {k} at t={t}"),
        }
    }
}

/// Values of the graph's outputs, by name.
pub type Outputs = HashMap<String, Tensor<f32>>;

/// Byte counts of the executor's allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemStats {
    /// Bytes in buffers handed out (values, workspaces, resident params).
    pub live_bytes: usize,
    /// The most `live_bytes` reached during the last run.
    pub peak_live_bytes: usize,
    /// Bytes the pool holds from the device (live + cached for reuse).
    pub reserved_bytes: usize,
    pub peak_reserved_bytes: usize,
    /// Device allocations made so far (not reuses).
    pub device_allocs: usize,
    /// A fusion plan's arena (0 until the first run, and node by node),
    /// its planned peak, and the bytes of it in use now and at most during
    /// the last run (also counted in `live_bytes`).
    pub arena_bytes: usize,
    pub planned_peak_bytes: usize,
    pub arena_live_bytes: usize,
    pub peak_arena_live_bytes: usize,
}

/// Elements a single tensor (or workspace) may have: indices are 32-bit in
/// the kernels, with room for the grid-stride step.
pub const MAX_ELEMS: usize = 1 << 30;

/// Threads per block of every launch.
pub const BLOCK: u32 = 256;

/// Default cap on the im2col workspace of one convolution chunk (elements):
/// 32 Mi floats = 128 MiB.
pub const CONV_WORKSPACE: usize = 32 << 20;

/// Device memory of a value: a buffer of its own, or an address in the
/// arena.
enum Mem<Buf> {
    Own(Buf),
    At(u64),
}

struct Slot<Buf> {
    buf: Mem<Buf>,
    len: usize,
    refs: usize,
    /// Resident parameter: never returned to the pool by a run.
    pinned: bool,
}

/// What one step read and wrote (downloaded), for checking.
pub struct Observed<'s> {
    pub step: Step,
    /// A node's operands in operand order (repeats included); a fused
    /// kernel's inputs, each once.
    pub reads: &'s [(NodeIndex, Tensor<f32>)],
    /// The node's value, or every value the kernel stores.
    pub writes: &'s [(NodeIndex, Tensor<f32>)],
}

/// Called after each step.
pub type Observer<'o> = dyn FnMut(&Observed<'_>) + 'o;

/// The fused part of a plan on the device.
struct FusedState<Buf> {
    plan: Plan,
    /// The backend's id of the plan's module.
    module: usize,
    /// One pointer-table buffer per fused unit (by step index), and what it
    /// holds now.
    tables: HashMap<usize, Buf>,
    uploaded: HashMap<usize, Vec<u64>>,
    /// The arena and its plan (made at the first run: the plan depends on
    /// `conv_workspace`), and the workspace of the unit running now: its
    /// address, bytes and bytes handed out.
    arena: Option<(Buf, Arena, usize)>,
    scratch: Option<(u64, usize, usize)>,
}

pub struct Executor<'a, B: Backend> {
    backend: &'a mut B,
    g: &'a Graph,
    steps: Vec<Step>,
    /// Per step: the values it reads (a node's operands with repeats) and
    /// the values it writes.
    reads: Vec<Vec<NodeIndex>>,
    writes: Vec<Vec<NodeIndex>>,
    /// Per step: the values it writes first (allocates), and those freed
    /// after it (after their last read or write; never outputs and kept
    /// values).
    fresh: Vec<Vec<NodeIndex>>,
    frees: Vec<Vec<NodeIndex>>,
    operands: HashMap<NodeIndex, Vec<NodeIndex>>,
    keep: Vec<NodeIndex>,
    fused: Option<FusedState<B::Buf>>,
    /// Time every fused kernel (device marks around each launch).
    pub profile: bool,
    /// (step index, mark before, mark after) of the last run's launches.
    marks: Vec<(usize, usize, usize)>,
    pool: HashMap<usize, Vec<B::Buf>>,
    slots: Vec<Option<Slot<B::Buf>>>,
    resident: HashMap<String, usize>,
    stats: MemStats,
    /// Fill every buffer with NaN when it is handed out and when it returns
    /// to the pool, so that an element a kernel forgets to write, or a value
    /// read after it was freed, shows up as NaN.
    pub poison: bool,
    /// Cap on the im2col workspace of one convolution chunk (elements).
    pub conv_workspace: usize,
}

fn elems(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A size as a kernel `int`.
fn int(v: usize) -> Result<i32, String> {
    if v > MAX_ELEMS {
        return Err(format!(
            "size {v} exceeds the executor's 32-bit indexing limit ({MAX_ELEMS})"
        ));
    }
    Ok(v as i32)
}

/// Checks that node `n`'s value fits the kernels' 32-bit indexing.
fn check_size(g: &Graph, n: NodeIndex) -> Result<(), String> {
    let node = g.node(n);
    if elems(&node.shape) > MAX_ELEMS {
        return Err(format!(
            "node {} ({}) has {} elements, more than the executor's limit {MAX_ELEMS}",
            n.index(),
            node.op.name(),
            elems(&node.shape)
        ));
    }
    Ok(())
}

/// Bytes a workspace piece of `len` floats takes in the arena: whole
/// multiples of the plan's alignment, so every piece is aligned for doubles.
fn piece_bytes(len: usize) -> usize {
    (4 * len.max(1)).div_ceil(memplan::ALIGN as usize) * memplan::ALIGN as usize
}

/// Address of element `i` of a buffer at `p`.
fn at(p: u64, i: usize) -> u64 {
    p + 4 * i as u64
}

/// Product of the axes after the first two.
fn inner(shape: &[usize]) -> usize {
    shape[2..].iter().product()
}

impl<'a, B: Backend> Executor<'a, B> {
    /// Plans `g` in the layer-major schedule (the project's default, see
    /// passes/schedule.rs).
    pub fn new(backend: &'a mut B, g: &'a Graph) -> Result<Self, String> {
        g.topo_order().ok_or("the graph has a cycle")?;
        let order =
            crate::passes::schedule::order(g, crate::passes::schedule::Schedule::LayerMajor);
        Self::with_order(backend, g, order)
    }

    /// Plans `g` to run its nodes in `order` (every node once, operands
    /// first).
    pub fn with_order(
        backend: &'a mut B,
        g: &'a Graph,
        order: Vec<NodeIndex>,
    ) -> Result<Self, String> {
        let mut seen = HashSet::new();
        for &n in &order {
            if g.operands(n).iter().any(|o| !seen.contains(o)) || !seen.insert(n) {
                return Err(format!(
                    "node {} is scheduled before an operand or twice",
                    n.index()
                ));
            }
        }
        if seen.len() != g.node_count() {
            return Err(format!(
                "the order has {} of the graph's {} nodes",
                seen.len(),
                g.node_count()
            ));
        }
        let mut operands = HashMap::new();
        for &n in &order {
            check_size(g, n)?;
            operands.insert(n, g.operands(n));
        }
        let reads = order.iter().map(|n| operands[n].clone()).collect();
        let writes = order.iter().map(|&n| vec![n]).collect();
        let steps = order.into_iter().map(Step::Node).collect();
        let kept = g.outputs.iter().map(|&(_, n)| n).collect();
        Ok(Self::build(
            backend,
            g,
            steps,
            (reads, writes),
            operands,
            kept,
            &[],
            None,
        ))
    }

    /// Fuses `g` (`passes::fuse`, storing the `keep` nodes) and plans the
    /// result; see [`Executor::with_plan`].
    pub fn fused(backend: &'a mut B, g: &'a Graph, keep: &[NodeIndex]) -> Result<Self, String> {
        let plan = fuse::fuse_keeping(g, keep);
        Self::with_plan(backend, g, plan, keep)
    }

    /// Plans a fusion plan of `g` (built with `keep` among the stored
    /// values): node units run on the executor's kernels, fused units on
    /// the plan's generated module, which the backend compiles (or finds in
    /// its cache) and loads here. A time-major plan (`fuse_time::plan`)
    /// runs on the graph it was made for, `fuse_time::lower`'s copy.
    pub fn with_plan(
        backend: &'a mut B,
        g: &'a Graph,
        plan: Plan,
        keep: &[NodeIndex],
    ) -> Result<Self, String> {
        let mut steps = Vec::new();
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        let mut operands = HashMap::new();
        // Each value's writer: a node, or kernel k (whose steps may each
        // write part of it).
        let mut written: HashMap<NodeIndex, Option<usize>> = HashMap::new();
        for u in &plan.units {
            let kernel = |k: usize| {
                plan.kernels
                    .get(k)
                    .ok_or_else(|| format!("the plan has no kernel {k}"))
            };
            let (step, r, w, by) = match *u {
                Unit::Node(n) => {
                    let ops = g.operands(n);
                    operands.insert(n, ops.clone());
                    (Step::Node(n), ops, vec![n], None)
                }
                Unit::Kernel(k) => {
                    let f = kernel(k)?;
                    (Step::Kernel(k), f.reads(), f.outputs(), Some(k))
                }
                Unit::Step(k, t) => {
                    let f = kernel(k)?;
                    if t >= f.kernel.steps {
                        return Err(format!("kernel {k} has no step {t}"));
                    }
                    let (r, w) = f.step_access(t);
                    (Step::KernelStep(k, t), r, w, Some(k))
                }
            };
            if let Some(o) = r.iter().find(|o| !written.contains_key(*o)) {
                return Err(format!(
                    "step {} reads node {} before it is computed",
                    steps.len(),
                    o.index()
                ));
            }
            for &n in &w {
                match written.insert(n, by) {
                    Some(prev) if !(matches!(step, Step::KernelStep(..)) && prev == by) => {
                        return Err(format!("node {} is computed twice", n.index()))
                    }
                    _ => check_size(g, n)?,
                }
            }
            steps.push(step);
            reads.push(r);
            writes.push(w);
        }
        let mut kept: HashSet<NodeIndex> = g.outputs.iter().map(|&(_, n)| n).collect();
        kept.extend(keep.iter().copied());
        if let Some(n) = kept.iter().find(|n| !written.contains_key(*n)) {
            return Err(format!(
                "the plan does not store node {}, an output or kept value",
                n.index()
            ));
        }
        let fused = if plan.kernels.is_empty() {
            None
        } else {
            let m = super::fused::module(&plan);
            let module = backend.load_module(&m.source, &m.names)?;
            let mut tables = HashMap::new();
            for (i, s) in steps.iter().enumerate() {
                let (Step::Kernel(k) | Step::KernelStep(k, _)) = *s else {
                    continue;
                };
                match backend.alloc(2 * plan.kernels[k].kernel.slots.max(1)) {
                    Ok(b) => {
                        tables.insert(i, b);
                    }
                    Err(e) => {
                        for (_, b) in tables {
                            backend.free(b);
                        }
                        return Err(format!("allocating a pointer table: {e}"));
                    }
                }
            }
            Some(FusedState {
                plan,
                module,
                tables,
                uploaded: HashMap::new(),
                arena: None,
                scratch: None,
            })
        };
        Ok(Self::build(
            backend,
            g,
            steps,
            (reads, writes),
            operands,
            kept,
            keep,
            fused,
        ))
    }

    /// The executor of checked steps: works out when each value is
    /// allocated and freed (`kept`: outputs and the values callers asked
    /// to keep, live to the end).
    #[allow(clippy::too_many_arguments)]
    fn build(
        backend: &'a mut B,
        g: &'a Graph,
        steps: Vec<Step>,
        (reads, writes): (Vec<Vec<NodeIndex>>, Vec<Vec<NodeIndex>>),
        operands: HashMap<NodeIndex, Vec<NodeIndex>>,
        kept: HashSet<NodeIndex>,
        keep: &[NodeIndex],
        fused: Option<FusedState<B::Buf>>,
    ) -> Self {
        let mut last: HashMap<NodeIndex, usize> = HashMap::new();
        let mut fresh = vec![Vec::new(); steps.len()];
        for i in 0..steps.len() {
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
        let mut frees = vec![Vec::new(); steps.len()];
        let mut dying: Vec<(usize, NodeIndex)> = last
            .into_iter()
            .filter(|(n, _)| !kept.contains(n))
            .map(|(n, i)| (i, n))
            .collect();
        dying.sort();
        for (i, n) in dying {
            frees[i].push(n);
        }
        Executor {
            backend,
            g,
            steps,
            reads,
            writes,
            fresh,
            frees,
            operands,
            keep: keep.to_vec(),
            fused,
            profile: false,
            marks: Vec::new(),
            pool: HashMap::new(),
            slots: Vec::new(),
            resident: HashMap::new(),
            stats: MemStats::default(),
            poison: false,
            conv_workspace: CONV_WORKSPACE,
        }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The fused kernels (empty for a node-level executor).
    pub fn kernels(&self) -> &[fuse::Fused] {
        self.fused.as_ref().map_or(&[], |f| &f.plan.kernels)
    }

    /// Device seconds of each fused kernel launch of the last run with
    /// [`Executor::profile`] set, in launch order, with its step
    /// ([`Step::Kernel`] or [`Step::KernelStep`]).
    pub fn kernel_times(&mut self) -> Result<Vec<(Step, f64)>, String> {
        let marks = std::mem::take(&mut self.marks);
        let times = marks
            .iter()
            .map(|&(i, a, b)| Ok((self.steps[i], self.backend.elapsed(a, b)?)))
            .collect();
        self.backend.clear_marks();
        times
    }

    pub fn stats(&self) -> MemStats {
        self.stats
    }

    pub fn backend(&mut self) -> &mut B {
        self.backend
    }

    // ---- the pool -------------------------------------------------------

    fn alloc(&mut self, len: usize) -> Result<B::Buf, String> {
        let len = len.max(1);
        int(len)?;
        let buf = match self.pool.get_mut(&len).and_then(Vec::pop) {
            Some(b) => b,
            None => {
                let b = self.backend.alloc(len).map_err(|e| {
                    format!(
                        "allocating {} MiB failed ({} MiB live, {} MiB reserved): {e}",
                        (len * 4) >> 20,
                        self.stats.live_bytes >> 20,
                        self.stats.reserved_bytes >> 20
                    )
                })?;
                self.stats.device_allocs += 1;
                self.stats.reserved_bytes += 4 * len;
                self.stats.peak_reserved_bytes = self
                    .stats
                    .peak_reserved_bytes
                    .max(self.stats.reserved_bytes);
                b
            }
        };
        self.stats.live_bytes += 4 * len;
        self.stats.peak_live_bytes = self.stats.peak_live_bytes.max(self.stats.live_bytes);
        if self.poison {
            let p = self.backend.ptr(&buf);
            let filled = self.launch(
                "snnc_fill",
                len,
                &[Arg::P(p), Arg::I(len as i32), Arg::F(f32::NAN)],
            );
            if let Err(e) = filled {
                self.stats.live_bytes -= 4 * len;
                self.pool.entry(len).or_default().push(buf);
                return Err(e);
            }
        }
        Ok(buf)
    }

    fn release(&mut self, buf: B::Buf, len: usize) {
        let len = len.max(1);
        if self.poison {
            let p = self.backend.ptr(&buf);
            // Best effort: a failure here shows up in the next launch.
            let _ = self.launch(
                "snnc_fill",
                len,
                &[Arg::P(p), Arg::I(len as i32), Arg::F(f32::NAN)],
            );
        }
        self.stats.live_bytes -= 4 * len;
        self.pool.entry(len).or_default().push(buf);
    }

    /// Returns every cached buffer to the device.
    pub fn trim(&mut self) {
        for (len, bufs) in std::mem::take(&mut self.pool) {
            for b in bufs {
                self.stats.reserved_bytes -= 4 * len;
                self.backend.free(b);
            }
        }
    }

    // ---- the arena ------------------------------------------------------

    /// The plan of a fusion plan's arena (after the first run).
    pub fn arena_plan(&self) -> Option<&MemPlan> {
        let f = self.fused.as_ref()?;
        f.arena.as_ref().map(|(_, a, _)| &a.mem)
    }

    /// What the executor allocates at each step and when it frees it: the
    /// events the arena is planned from.
    fn events(&self) -> Result<arena::Events, String> {
        let n = self.steps.len();
        let mut ev = arena::Events {
            positions: n,
            allocs: vec![Vec::new(); n],
            workspace: vec![0; n],
            state: Vec::new(),
            alias: HashMap::new(),
            death: HashMap::new(),
        };
        let kernels = self.kernels();
        let mut state: HashMap<usize, usize> = HashMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            for &v in &self.fresh[i] {
                // Leaves and views are nodes the executor runs alone (a
                // kernel stores even an identity it computes).
                let alone = matches!(step, Step::Node(_));
                match self.g.node(v).op {
                    Op::Input { .. } | Op::Param { .. } if alone => {}
                    Op::Reshape { .. } | Op::Detach if alone => {
                        let o = self.operands[&v][0];
                        let root = ev.alias.get(&o).copied().unwrap_or(o);
                        ev.alias.insert(v, root);
                    }
                    _ => ev.allocs[i].push((v, 4 * elems(&self.g.node(v).shape) as u64)),
                }
            }
            match *step {
                Step::Node(v) => {
                    ev.workspace[i] = self
                        .workspace_pieces(v)?
                        .into_iter()
                        .map(|p| piece_bytes(p) as u64)
                        .sum();
                }
                Step::KernelStep(k, _) if kernels[k].state_floats() > 0 => {
                    let first = *state.entry(k).or_insert(i);
                    ev.state.retain(|s| s.0 != k);
                    ev.state
                        .push((k, 4 * kernels[k].state_floats() as u64, first, i));
                }
                _ => {}
            }
            for &v in &self.frees[i] {
                ev.death.insert(v, i);
            }
        }
        Ok(ev)
    }

    /// Plans and allocates the arena of a fusion plan: before the first
    /// run, and again when `conv_workspace` changed (nothing lives in the
    /// arena between runs).
    fn ensure_arena(&mut self) -> Result<(), String> {
        let Some(f) = self.fused.as_ref() else {
            return Ok(());
        };
        if matches!(&f.arena, Some((_, _, ws)) if *ws == self.conv_workspace) {
            return Ok(());
        }
        let plan = arena::plan(&self.events()?);
        if let Some((buf, a, _)) = self.fused.as_mut().and_then(|f| f.arena.take()) {
            self.backend.free(buf);
            self.stats.reserved_bytes -= a.mem.arena_bytes as usize;
        }
        let len = (plan.mem.arena_bytes as usize).div_ceil(4).max(1);
        let buf = self.backend.alloc(len).map_err(|e| {
            format!(
                "allocating the arena of {} MiB failed: {e}",
                plan.mem.arena_bytes >> 20
            )
        })?;
        self.stats.device_allocs += 1;
        self.stats.reserved_bytes += plan.mem.arena_bytes as usize;
        self.stats.peak_reserved_bytes = self
            .stats
            .peak_reserved_bytes
            .max(self.stats.reserved_bytes);
        self.stats.arena_bytes = plan.mem.arena_bytes as usize;
        self.stats.planned_peak_bytes = plan.mem.peak_bytes as usize;
        let ws = self.conv_workspace;
        self.fused.as_mut().expect("a fused plan").arena = Some((buf, plan, ws));
        Ok(())
    }

    /// The device address of arena offset `off`.
    fn arena_addr(&self, off: u64) -> u64 {
        let (buf, _, _) = self
            .fused
            .as_ref()
            .and_then(|f| f.arena.as_ref())
            .expect("an arena");
        self.backend.ptr(buf) + off
    }

    /// Counts `bytes` at `addr` in the arena as in use (poisoned when
    /// asked).
    fn arena_take(&mut self, addr: u64, bytes: usize) -> Result<(), String> {
        self.stats.live_bytes += bytes;
        self.stats.arena_live_bytes += bytes;
        self.stats.peak_live_bytes = self.stats.peak_live_bytes.max(self.stats.live_bytes);
        self.stats.peak_arena_live_bytes = self
            .stats
            .peak_arena_live_bytes
            .max(self.stats.arena_live_bytes);
        if self.poison {
            self.fill_nan(addr, bytes / 4)?;
        }
        Ok(())
    }

    /// Returns `bytes` at `addr` to the arena (poisoned when asked: a
    /// buffer planned over it while this one was live would read NaN).
    fn arena_give(&mut self, addr: u64, bytes: usize) {
        if self.poison {
            // Best effort: a failure here shows up in the next launch.
            let _ = self.fill_nan(addr, bytes / 4);
        }
        self.stats.live_bytes -= bytes;
        self.stats.arena_live_bytes -= bytes;
    }

    fn fill_nan(&mut self, p: u64, len: usize) -> Result<(), String> {
        if len == 0 {
            return Ok(());
        }
        self.launch(
            "snnc_fill",
            len,
            &[Arg::P(p), Arg::I(int(len)?), Arg::F(f32::NAN)],
        )
    }

    /// A value's buffer: its planned place in the arena when running a
    /// fusion plan, else one from the pool.
    fn value_buffer(&mut self, n: NodeIndex, len: usize) -> Result<Mem<B::Buf>, String> {
        let planned = self
            .fused
            .as_ref()
            .and_then(|f| f.arena.as_ref())
            .map(|(_, a, _)| a.value.get(&n).copied());
        match planned {
            Some(Some(off)) => {
                let addr = self.arena_addr(off);
                self.arena_take(addr, 4 * len)?;
                Ok(Mem::At(addr))
            }
            Some(None) => Err(format!("node {} has no place in the arena", n.index())),
            None => self.alloc(len).map(Mem::Own),
        }
    }

    /// Scratch space of `len` floats for the node running now: the next
    /// piece of its planned workspace in the arena, else a pool buffer.
    fn take_scratch(&mut self, len: usize) -> Result<Mem<B::Buf>, String> {
        let Some((base, size, used)) = self.fused.as_ref().and_then(|f| f.scratch) else {
            return self.alloc(len).map(Mem::Own);
        };
        let bytes = piece_bytes(len);
        if used + bytes > size {
            return Err(format!(
                "a workspace of {} bytes exceeds the {size} planned",
                used + bytes
            ));
        }
        self.arena_take(base + used as u64, bytes)?;
        self.fused.as_mut().expect("a fused plan").scratch = Some((base, size, used + bytes));
        Ok(Mem::At(base + used as u64))
    }

    fn give_scratch(&mut self, m: Mem<B::Buf>, len: usize) {
        match m {
            Mem::Own(b) => self.release(b, len),
            Mem::At(addr) => self.arena_give(addr, piece_bytes(len)),
        }
    }

    fn mem_ptr(&self, m: &Mem<B::Buf>) -> u64 {
        match m {
            Mem::Own(b) => self.backend.ptr(b),
            Mem::At(a) => *a,
        }
    }

    // ---- slots ------------------------------------------------------------

    fn new_slot(&mut self, buf: Mem<B::Buf>, len: usize, pinned: bool) -> usize {
        let slot = Slot {
            buf,
            len,
            refs: 1,
            pinned,
        };
        match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    fn slot(&self, id: usize) -> &Slot<B::Buf> {
        self.slots[id].as_ref().expect("live slot")
    }

    fn ptr_of(&self, id: usize) -> u64 {
        self.mem_ptr(&self.slot(id).buf)
    }

    fn retain(&mut self, id: usize) -> usize {
        self.slots[id].as_mut().expect("live slot").refs += 1;
        id
    }

    fn drop_ref(&mut self, id: usize) {
        let s = self.slots[id].as_mut().expect("live slot");
        s.refs -= 1;
        if s.refs == 0 && !s.pinned {
            let s = self.slots[id].take().expect("live slot");
            self.free_value(s.buf, s.len);
        }
    }

    /// Frees the memory of a value of `len` floats.
    fn free_value(&mut self, m: Mem<B::Buf>, len: usize) {
        match m {
            Mem::Own(b) => self.release(b, len),
            Mem::At(addr) => self.arena_give(addr, 4 * len),
        }
    }

    // ---- resident parameters --------------------------------------------

    /// Uploads the graph's parameters once; later runs use these copies and
    /// ignore the `params` they are given for the same names.
    pub fn set_resident_params(
        &mut self,
        params: &HashMap<String, Tensor<f32>>,
    ) -> Result<(), String> {
        self.clear_resident_params();
        let g = self.g;
        for n in g.g.node_indices() {
            let node = g.node(n);
            let Op::Param { name } = &node.op else {
                continue;
            };
            if self.resident.contains_key(name) {
                continue;
            }
            let t = params
                .get(name)
                .ok_or_else(|| format!("missing param `{name}`"))?;
            check_shape(name, &node.shape, t)?;
            let mut buf = self.alloc(t.len())?;
            self.backend.upload(&mut buf, &t.data)?;
            let id = self.new_slot(Mem::Own(buf), t.len(), true);
            self.resident.insert(name.clone(), id);
        }
        Ok(())
    }

    pub fn clear_resident_params(&mut self) {
        for (_, id) in std::mem::take(&mut self.resident) {
            let s = self.slots[id].as_mut().expect("resident slot");
            s.pinned = false;
            self.drop_ref(id);
        }
    }

    // ---- running ----------------------------------------------------------

    /// Runs the graph: uploads inputs (and parameters that are not
    /// resident), executes every step, downloads the outputs.
    pub fn run(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
    ) -> Result<Outputs, String> {
        self.run_observed(inputs, params, opts, None)
    }

    /// As [`Executor::run`], calling `observe` after every node with its
    /// operands and result (downloaded: slow, for checking).
    pub fn run_observed(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        observe: Option<&mut Observer<'_>>,
    ) -> Result<Outputs, String> {
        self.run_full(inputs, params, opts, observe, false)
            .map(|(o, _)| o)
    }

    /// As [`Executor::run`]; with `extra`, also returns the values of the
    /// nodes the executor was built to keep.
    pub fn run_keeping(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        extra: bool,
    ) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), String> {
        self.run_full(inputs, params, opts, None, extra)
    }

    fn run_full(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        mut observe: Option<&mut Observer<'_>>,
        extra: bool,
    ) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), String> {
        self.ensure_arena()?;
        self.stats.peak_live_bytes = self.stats.live_bytes;
        self.stats.peak_arena_live_bytes = self.stats.arena_live_bytes;
        self.marks.clear();
        self.backend.clear_marks();
        let mut vals: HashMap<NodeIndex, usize> = HashMap::new();
        let mut state: HashMap<usize, u64> = HashMap::new();
        let result = self.run_steps(inputs, params, opts, &mut vals, &mut state, &mut observe);
        let result = result.and_then(|()| {
            let mut outs = Outputs::new();
            for (name, n) in &self.g.outputs {
                let t = self.download_value(*n, vals[n])?;
                outs.insert(name.clone(), t);
            }
            let mut kept = HashMap::new();
            if extra {
                for n in self.keep.clone() {
                    kept.insert(n, self.download_value(n, vals[&n])?);
                }
            }
            Ok((outs, kept))
        });
        for (_, id) in vals {
            self.drop_ref(id);
        }
        // States of kernels an error stopped half way.
        for (k, addr) in state {
            let bytes = 4 * self.kernels()[k].state_floats();
            self.arena_give(addr, bytes);
        }
        if let Some(f) = self.fused.as_mut() {
            f.scratch = None;
        }
        result
    }

    fn run_steps(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        vals: &mut HashMap<NodeIndex, usize>,
        state: &mut HashMap<usize, u64>,
        observe: &mut Option<&mut Observer<'_>>,
    ) -> Result<(), String> {
        for i in 0..self.steps.len() {
            let g = self.g;
            match self.steps[i] {
                Step::Node(n) => {
                    self.set_scratch(i);
                    let id = self.exec_node(n, vals, inputs, params, opts).map_err(|e| {
                        format!(
                            "error: node {} ({} {}): {e}",
                            n.index(),
                            g.node(n).op.name(),
                            g.node(n).op.attrs()
                        )
                    })?;
                    vals.insert(n, id);
                }
                Step::Kernel(k) => {
                    let steps = self.kernels()[k].kernel.steps;
                    self.exec_kernel(i, k, vals, (0, steps), 0)
                        .map_err(|e| self.kernel_error(k, e))?
                }
                Step::KernelStep(k, t) => self
                    .exec_step(i, k, t, vals, state)
                    .map_err(|e| self.kernel_error(k, e))?,
            }
            if let Some(obs) = observe.as_mut() {
                let (r, w) = (self.reads[i].clone(), self.writes[i].clone());
                let mut get = |ns: &[NodeIndex]| -> Result<Vec<(NodeIndex, Tensor<f32>)>, String> {
                    ns.iter()
                        .map(|&o| Ok((o, self.download_value(o, vals[&o])?)))
                        .collect()
                };
                let reads = get(&r)?;
                let writes = get(&w)?;
                obs(&Observed {
                    step: self.steps[i],
                    reads: &reads,
                    writes: &writes,
                });
            }
            for o in self.frees[i].clone() {
                let id = vals.remove(&o).expect("computed");
                self.drop_ref(id);
            }
        }
        Ok(())
    }

    fn kernel_error(&self, k: usize, e: String) -> String {
        let name = &self.kernels()[k].kernel.name;
        format!("error: fused kernel {k} ({name}): {e}")
    }

    /// Points the scratch allocator at step `i`'s planned workspace.
    fn set_scratch(&mut self, i: usize) {
        if let Some(f) = self.fused.as_mut() {
            f.scratch = f.arena.as_ref().and_then(|(buf, a, _)| {
                a.workspace[i].map(|(off, bytes)| (self.backend.ptr(buf) + off, bytes as usize, 0))
            });
        }
    }

    /// Runs step `t` of kernel `k` (step `i` of the schedule): its state
    /// is taken from the arena at the kernel's first step and returned
    /// after its last.
    fn exec_step(
        &mut self,
        i: usize,
        k: usize,
        t: usize,
        vals: &mut HashMap<NodeIndex, usize>,
        state: &mut HashMap<usize, u64>,
    ) -> Result<(), String> {
        let f = &self.kernels()[k];
        let (floats, loop_steps) = (f.state_floats(), f.loop_steps());
        let st = if floats == 0 {
            0
        } else if let Some(&a) = state.get(&k) {
            a
        } else {
            let off = self
                .fused
                .as_ref()
                .and_then(|f| f.arena.as_ref())
                .and_then(|(_, a, _)| a.state.get(&k).copied())
                .ok_or_else(|| format!("kernel {k} has no state in the arena"))?;
            let addr = self.arena_addr(off);
            self.arena_take(addr, 4 * floats)?;
            state.insert(k, addr);
            addr
        };
        self.exec_kernel(i, k, vals, (t, t + 1), st)?;
        if loop_steps.last() == Some(&t) {
            if let Some(addr) = state.remove(&k) {
                self.arena_give(addr, 4 * floats);
            }
        }
        Ok(())
    }

    /// Launches fused kernel `k` for steps `[t0, t1)` (step `i` of the
    /// schedule) with state `st` (0: none): allocates what the step writes
    /// first, fills the step's pointer table (when the addresses changed)
    /// and launches one thread per element. A launch of every step needs
    /// every tensor of the table; one of a single step only the step's,
    /// and the others' slots stay null.
    fn exec_kernel(
        &mut self,
        i: usize,
        k: usize,
        vals: &mut HashMap<NodeIndex, usize>,
        (t0, t1): (usize, usize),
        st: u64,
    ) -> Result<(), String> {
        let f = &self.fused.as_ref().expect("a fused plan").plan.kernels[k];
        let (table, n, all) = (f.table.clone(), f.kernel.n, t1 - t0 == f.kernel.steps);
        for o in self.fresh[i].clone() {
            let len = elems(&self.g.node(o).shape);
            let buf = self.value_buffer(o, len)?;
            let id = self.new_slot(buf, len, false);
            vals.insert(o, id);
        }
        let words: Vec<u64> = table
            .iter()
            .map(|slot| match slot {
                None => Ok(0),
                Some(v) => match vals.get(v) {
                    Some(&id) => Ok(self.ptr_of(id)),
                    None if !all => Ok(0),
                    None => Err(format!("node {} is not live", v.index())),
                },
            })
            .collect::<Result<_, String>>()?;
        if n == 0 {
            return Ok(());
        }
        let grid = u32::try_from(n.div_ceil(BLOCK as usize))
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| format!("{n} elements need too many blocks"))?;
        let fs = self.fused.as_mut().expect("a fused plan");
        let tb = fs.tables.get_mut(&i).expect("a table per fused step");
        if fs.uploaded.get(&i) != Some(&words) {
            self.backend.upload_words(tb, &words)?;
            fs.uploaded.insert(i, words);
        }
        let tp = self.backend.ptr(tb);
        let module = fs.module;
        let before = if self.profile {
            Some(self.backend.mark()?)
        } else {
            None
        };
        let args = [
            Arg::P(tp),
            Arg::L(n as i64),
            Arg::I(t0 as i32),
            Arg::I(t1 as i32),
            Arg::P(st),
        ];
        self.backend.launch_module(module, k, grid, BLOCK, &args)?;
        if let Some(a) = before {
            let b = self.backend.mark()?;
            self.marks.push((i, a, b));
        }
        Ok(())
    }

    fn download_value(&mut self, n: NodeIndex, id: usize) -> Result<Tensor<f32>, String> {
        let shape = &self.g.node(n).shape;
        let data = match &self.slots[id].as_ref().expect("live slot").buf {
            Mem::Own(buf) => self.backend.download(buf, elems(shape))?,
            Mem::At(addr) => {
                let (buf, _, _) = self
                    .fused
                    .as_ref()
                    .and_then(|f| f.arena.as_ref())
                    .expect("an arena");
                let start = (addr - self.backend.ptr(buf)) as usize / 4;
                self.backend.download_range(buf, start, elems(shape))?
            }
        };
        Ok(Tensor::from_vec(shape, data))
    }

    fn upload_leaf(
        &mut self,
        name: &str,
        shape: &[usize],
        t: &Tensor<f32>,
    ) -> Result<usize, String> {
        check_shape(name, shape, t)?;
        let mut buf = self.alloc(t.len())?;
        if let Err(e) = self.backend.upload(&mut buf, &t.data) {
            self.release(buf, t.len());
            return Err(e);
        }
        Ok(self.new_slot(Mem::Own(buf), t.len(), false))
    }

    fn exec_node(
        &mut self,
        n: NodeIndex,
        vals: &HashMap<NodeIndex, usize>,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
    ) -> Result<usize, String> {
        let g = self.g;
        let node = g.node(n);
        match &node.op {
            Op::Input { name } => {
                let t = inputs
                    .get(name)
                    .ok_or_else(|| format!("missing input `{name}`"))?;
                self.upload_leaf(name, &node.shape, t)
            }
            Op::Param { name } => {
                if let Some(&id) = self.resident.get(name) {
                    return Ok(self.retain(id));
                }
                let t = params
                    .get(name)
                    .ok_or_else(|| format!("missing param `{name}`"))?;
                self.upload_leaf(name, &node.shape, t)
            }
            // Views: the same elements in the same order.
            Op::Reshape { .. } | Op::Detach => {
                let o = self.operands[&n][0];
                Ok(self.retain(vals[&o]))
            }
            op => {
                let ins: Vec<(u64, &[usize])> = self.operands[&n]
                    .iter()
                    .map(|o| (self.ptr_of(vals[o]), g.node(*o).shape.as_slice()))
                    .collect();
                let len = elems(&node.shape);
                let out = self.value_buffer(n, len)?;
                let p = self.mem_ptr(&out);
                match self.compute(op, &node.shape, &ins, p, opts) {
                    Ok(()) => Ok(self.new_slot(out, len, false)),
                    Err(e) => {
                        self.free_value(out, len);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Launches `kernel` with one thread per unit of work (grid-stride
    /// beyond the backend's grid limit).
    fn launch(&mut self, kernel: &'static str, threads: usize, args: &[Arg]) -> Result<(), String> {
        check_args(kernel, args)?;
        if threads == 0 {
            return Ok(());
        }
        let grid = threads
            .div_ceil(BLOCK as usize)
            .min(self.backend.max_grid() as usize) as u32;
        self.backend.launch(kernel, grid, BLOCK, args)
    }

    fn gemm(&mut self, g: Gemm) -> Result<(), String> {
        let call = g.to_cublas()?;
        self.backend.gemm(&call)
    }

    /// Evaluates one non-leaf, non-view op into the buffer at `out`.
    fn compute(
        &mut self,
        op: &Op,
        shape: &[usize],
        ins: &[(u64, &[usize])],
        out: u64,
        opts: &RunOptions,
    ) -> Result<(), String> {
        use Arg::{D, F, I, P, U};
        let n = elems(shape);
        let ni = int(n)?;
        let x = |k: usize| ins[k].0;
        match op {
            Op::Input { .. } | Op::Param { .. } | Op::Reshape { .. } | Op::Detach => {
                unreachable!("handled by exec_node")
            }
            // Elementwise ops: their kernels are rendered from the op table.
            op if elementwise::has_kernel(op) => {
                let name = format!("snnc_{}", op.name());
                let k = KERNELS
                    .iter()
                    .map(|(k, _)| *k)
                    .find(|k| *k == name)
                    .ok_or_else(|| format!("no kernel {name} in the kernel table"))?;
                let args = elementwise::args(op, ins, out, n, int)?;
                self.launch(k, n, &args)
            }
            Op::Sum | Op::TimeMean => {
                let total = ins.len();
                let mean = *op == Op::TimeMean;
                for (c, chunk) in ins.chunks(8).enumerate() {
                    let last = (c + 1) * 8 >= total;
                    let div = if mean && last { total as f32 } else { 1.0 };
                    let mut args = vec![
                        P(out),
                        I(ni),
                        I(chunk.len() as i32),
                        I(i32::from(c > 0)),
                        F(div),
                    ];
                    for j in 0..8 {
                        args.push(P(chunk.get(j).map_or(0, |v| v.0)));
                    }
                    self.launch("snnc_sum8", n, &args)?;
                }
                Ok(())
            }
            Op::Poisson { stream } => self.launch(
                "snnc_poisson",
                n,
                &[P(x(0)), P(out), I(ni), U(opts.seed), U(*stream)],
            ),
            Op::DropoutMask { p, stream } => {
                if !(0.0..1.0).contains(p) {
                    return Err(format!("dropout p={p} is not in [0, 1)"));
                }
                let keep = (1.0 / (1.0 - p)) as f32;
                self.launch(
                    "snnc_dropout_mask",
                    n,
                    &[P(out), I(ni), D(*p), F(keep), U(opts.seed), U(*stream)],
                )
            }
            Op::TimeSlice { t } => {
                let s = ins[0].1;
                self.launch(
                    "snnc_time_slice",
                    n,
                    &[
                        P(x(0)),
                        P(out),
                        I(ni),
                        I(int(s[1])?),
                        I(int(*t)?),
                        I(int(inner(s))?),
                    ],
                )
            }
            Op::AvgPool { kernel, stride } | Op::MaxPool { kernel, stride } => {
                let s = ins[0].1;
                let is_max = matches!(op, Op::MaxPool { .. });
                self.launch(
                    "snnc_pool",
                    n,
                    &[
                        P(x(0)),
                        P(out),
                        I(ni),
                        I(int(s[2])?),
                        I(int(s[3])?),
                        I(int(shape[2])?),
                        I(int(shape[3])?),
                        I(int(*kernel)?),
                        I(int(*stride)?),
                        I(i32::from(is_max)),
                    ],
                )
            }
            Op::AvgPoolGrad { kernel, stride, .. } => {
                let d = ins[0].1;
                self.launch(
                    "snnc_avgpool_grad",
                    n,
                    &[
                        P(x(0)),
                        P(out),
                        I(ni),
                        I(int(shape[2])?),
                        I(int(shape[3])?),
                        I(int(d[2])?),
                        I(int(d[3])?),
                        I(int(*kernel)?),
                        I(int(*stride)?),
                    ],
                )
            }
            Op::MaxPoolGrad { kernel, stride } => {
                let d = ins[1].1;
                self.launch(
                    "snnc_maxpool_grad",
                    n,
                    &[
                        P(x(0)),
                        P(x(1)),
                        P(out),
                        I(ni),
                        I(int(shape[2])?),
                        I(int(shape[3])?),
                        I(int(d[2])?),
                        I(int(d[3])?),
                        I(int(*kernel)?),
                        I(int(*stride)?),
                    ],
                )
            }
            Op::MaxPoolMask { kernel, stride } => {
                let (ho, wo) = (
                    (shape[2] - kernel) / stride + 1,
                    (shape[3] - kernel) / stride + 1,
                );
                self.launch(
                    "snnc_maxpool_mask",
                    n,
                    &[
                        P(x(0)),
                        P(out),
                        I(ni),
                        I(int(shape[2])?),
                        I(int(shape[3])?),
                        I(int(ho)?),
                        I(int(wo)?),
                        I(int(*kernel)?),
                        I(int(*stride)?),
                    ],
                )
            }
            Op::ChannelMean => {
                let s = ins[0].1;
                let count = (ins.len() * s[0] * inner(s)) as f64;
                let xs: Vec<u64> = ins.iter().map(|i| i.0).collect();
                self.channel_reduce(Pass1::Sum, &xs, 0, s, out, count)
            }
            Op::ChannelVar => {
                let s = ins[1].1;
                let count = ((ins.len() - 1) * s[0] * inner(s)) as f64;
                let xs: Vec<u64> = ins[1..].iter().map(|i| i.0).collect();
                self.channel_reduce(Pass1::Sum, &xs, x(0), s, out, count)
            }
            Op::ChannelSum => {
                let s = ins[0].1;
                self.channel_reduce(Pass1::Sum, &[x(0)], 0, s, out, 1.0)
            }
            // channel_sum(x·y) of the fused plans' lowering: the same two
            // passes, pass 1 multiplying as it reads.
            Op::ChannelDot => {
                let s = ins[0].1;
                self.channel_reduce(Pass1::Dot, &[x(0)], x(1), s, out, 1.0)
            }
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => {
                let s = ins[0].1;
                let (b, k) = (int(s[0])?, int(s[1])?);
                let (kernel, threads) = if *op == Op::SoftmaxCrossEntropy {
                    ("snnc_softmax_xent", 1)
                } else {
                    ("snnc_softmax_xent_grad", s[0])
                };
                self.launch(kernel, threads, &[P(x(0)), P(x(1)), P(out), I(b), I(k)])
            }
            Op::MatMul { ta, tb } => {
                let (a, b) = (ins[0].1, ins[1].1);
                let (m, k) = if *ta { (a[1], a[0]) } else { (a[0], a[1]) };
                let nn = if *tb { b[0] } else { b[1] };
                let mut gm = Gemm::dense(*ta, *tb, m, nn, k, x(0), x(1), out);
                gm.lda = a[1];
                gm.ldb = b[1];
                self.gemm(gm)
            }
            Op::Conv2d { .. } | Op::Conv2dGradInput { .. } | Op::Conv2dGradWeight { .. } => {
                let shapes: Vec<&[usize]> = ins.iter().map(|i| i.1).collect();
                let geo = ConvGeo::of(op, &shapes, shape)?.expect("a convolution");
                match op {
                    Op::Conv2d { .. } => self.conv_forward(&geo, x(0), x(1), out),
                    Op::Conv2dGradInput { .. } => self.conv_grad_input(&geo, x(0), x(1), out),
                    _ => self.conv_grad_weight(&geo, x(0), x(1), out),
                }
            }
            op => Err(format!("{} has no CUDA kernel", op.name())),
        }
    }

    /// The scratch pieces (floats, in the order they are taken) node `n`
    /// needs on these kernels: the arena plans them as its workspace.
    fn workspace_pieces(&self, n: NodeIndex) -> Result<Vec<usize>, String> {
        let g = self.g;
        let node = g.node(n);
        let Some(ops) = self.operands.get(&n) else {
            return Ok(Vec::new());
        };
        let ins: Vec<&[usize]> = ops.iter().map(|o| g.node(*o).shape.as_slice()).collect();
        Ok(match node.op {
            // The operands summed: all of them, or those after the mean.
            Op::ChannelMean | Op::ChannelSum => vec![chan_work_floats(ins.len(), ins[0])],
            Op::ChannelDot => vec![chan_work_floats(1, ins[0])],
            Op::ChannelVar => vec![chan_work_floats(ins.len() - 1, ins[1])],
            _ => match ConvGeo::of(&node.op, &ins, &node.shape)? {
                Some(geo) => {
                    let nb = self.chunk(&geo);
                    let col = geo.rows() * nb * geo.cols();
                    if matches!(node.op, Op::Conv2dGradWeight { .. }) {
                        vec![col, geo.co * nb * geo.cols()]
                    } else {
                        vec![col]
                    }
                }
                None => Vec::new(),
            },
        })
    }

    /// Per-channel sums over the operands `xs` (each `[B, C, …]` of
    /// `shape`), divided by `count` into `out[C]`: of x, or with a non-zero
    /// `other` of (x − other[ch])² (`Pass1::Sum`, `other` the mean), or of
    /// x·other (`Pass1::Dot`, `other` a tensor like x).
    fn channel_reduce(
        &mut self,
        pass: Pass1,
        xs: &[u64],
        other: u64,
        shape: &[usize],
        out: u64,
        count: f64,
    ) -> Result<(), String> {
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
        let mut run = || -> Result<(), String> {
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

    /// How many samples one convolution chunk holds.
    fn chunk(&self, geo: &ConvGeo) -> usize {
        (self.conv_workspace / (geo.rows() * geo.cols()).max(1)).clamp(1, geo.b)
    }

    fn im2col(&mut self, geo: &ConvGeo, x: u64, col: u64, nb: usize) -> Result<(), String> {
        use Arg::{I, P};
        let n = geo.rows() * nb * geo.cols();
        let mut args = vec![P(x), P(col)];
        args.extend(geo.args(nb)?);
        args.push(I(int(n)?));
        self.launch("snnc_im2col", n, &args)
    }

    /// Runs `f(this, scratch, b0, cur)` over the batch in chunks of at most
    /// `self.chunk(geo)` samples, with scratch buffers of `per_sample[k]`
    /// floats per sample of the chunk (taken once, given back however the
    /// loop ends).
    fn conv_chunks(
        &mut self,
        geo: &ConvGeo,
        per_sample: &[usize],
        mut f: impl FnMut(&mut Self, &[u64], usize, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let nb = self.chunk(geo);
        let mut bufs = Vec::new();
        let mut result = Ok(());
        for &s in per_sample {
            match self.take_scratch(s * nb) {
                Ok(b) => bufs.push(b),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let ptrs: Vec<u64> = bufs.iter().map(|b| self.mem_ptr(b)).collect();
            let mut b0 = 0;
            while b0 < geo.b && result.is_ok() {
                let cur = nb.min(geo.b - b0);
                result = f(self, &ptrs, b0, cur);
                b0 += cur;
            }
        }
        for (b, s) in bufs.into_iter().zip(per_sample) {
            self.give_scratch(b, s * nb);
        }
        result
    }

    fn conv_forward(&mut self, geo: &ConvGeo, x: u64, w: u64, out: u64) -> Result<(), String> {
        let (rows, cols) = (geo.rows(), geo.cols());
        self.conv_chunks(geo, &[rows * cols], |this, scratch, b0, cur| {
            let cp = scratch[0];
            this.im2col(geo, at(x, b0 * geo.in_len()), cp, cur)?;
            // out_b[co × cols] = W[co × rows] · col_b[rows × cols], the
            // col_b side by side in col[rows × cur·cols].
            this.gemm(Gemm {
                ta: false,
                tb: false,
                m: geo.co,
                n: cols,
                k: rows,
                alpha: 1.0,
                a: w,
                lda: rows,
                stride_a: 0,
                b: cp,
                ldb: cur * cols,
                stride_b: cols,
                beta: 0.0,
                c: at(out, b0 * geo.co * cols),
                ldc: cols,
                stride_c: geo.co * cols,
                batch: cur,
            })
        })
    }

    fn conv_grad_input(&mut self, geo: &ConvGeo, d: u64, w: u64, out: u64) -> Result<(), String> {
        use Arg::{I, P};
        let (rows, cols) = (geo.rows(), geo.cols());
        self.conv_chunks(geo, &[rows * cols], |this, scratch, b0, cur| {
            let cp = scratch[0];
            // dcol_b[rows × cols] = Wᵀ · d_b[co × cols].
            this.gemm(Gemm {
                ta: true,
                tb: false,
                m: rows,
                n: cols,
                k: geo.co,
                alpha: 1.0,
                a: w,
                lda: rows,
                stride_a: 0,
                b: at(d, b0 * geo.co * cols),
                ldb: cols,
                stride_b: geo.co * cols,
                beta: 0.0,
                c: cp,
                ldc: cur * cols,
                stride_c: cols,
                batch: cur,
            })?;
            let n = cur * geo.in_len();
            let mut args = vec![P(cp), P(at(out, b0 * geo.in_len()))];
            args.extend(geo.args(cur)?);
            args.push(I(int(n)?));
            this.launch("snnc_col2im", n, &args)
        })
    }

    fn conv_grad_weight(&mut self, geo: &ConvGeo, x: u64, d: u64, out: u64) -> Result<(), String> {
        use Arg::{I, P};
        let (rows, cols) = (geo.rows(), geo.cols());
        self.conv_chunks(
            geo,
            &[rows * cols, geo.co * cols],
            |this, scratch, b0, cur| {
                let (cp, dp) = (scratch[0], scratch[1]);
                this.im2col(geo, at(x, b0 * geo.in_len()), cp, cur)?;
                // d[cur, co, cols] -> dT[co, cur·cols]
                let n = cur * geo.co * cols;
                this.launch(
                    "snnc_bc_swap",
                    n,
                    &[
                        P(at(d, b0 * geo.co * cols)),
                        P(dp),
                        I(int(cur)?),
                        I(int(geo.co)?),
                        I(int(cols)?),
                        I(int(n)?),
                    ],
                )?;
                // dW[co × rows] (+)= dT[co × cur·cols] · colᵀ
                this.gemm(Gemm {
                    ta: false,
                    tb: true,
                    m: geo.co,
                    n: rows,
                    k: cur * cols,
                    alpha: 1.0,
                    a: dp,
                    lda: cur * cols,
                    stride_a: 0,
                    b: cp,
                    ldb: cur * cols,
                    stride_b: 0,
                    beta: if b0 == 0 { 0.0 } else { 1.0 },
                    c: out,
                    ldc: rows,
                    stride_c: 0,
                    batch: 1,
                })
            },
        )
    }
}

impl<B: Backend> Drop for Executor<'_, B> {
    fn drop(&mut self) {
        if let Some(f) = self.fused.take() {
            for (_, b) in f.tables {
                self.backend.free(b);
            }
            if let Some((b, _, _)) = f.arena {
                self.backend.free(b);
            }
        }
        for s in std::mem::take(&mut self.slots).into_iter().flatten() {
            if let Mem::Own(b) = s.buf {
                self.backend.free(b);
            }
        }
        for (_, bufs) in std::mem::take(&mut self.pool) {
            for b in bufs {
                self.backend.free(b);
            }
        }
    }
}

fn check_shape(name: &str, shape: &[usize], t: &Tensor<f32>) -> Result<(), String> {
    if t.shape != shape || t.data.len() != elems(shape) {
        return Err(format!(
            "`{name}` has shape {} ({} elements), but the graph expects {}",
            crate::shape::list(&t.shape),
            t.data.len(),
            crate::shape::list(shape)
        ));
    }
    Ok(())
}

/// A convolution's geometry: input `[b, ci, h, w]`, `co` filters of
/// `k × k`, output `ho × wo`.
struct ConvGeo {
    b: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

/// Pass 1 of a channel reduction: `snnc_chan_partial` (sums of x or of
/// squared deviations) or `snnc_chan_dot_partial` (sums of x·y).
#[derive(Clone, Copy)]
enum Pass1 {
    Sum,
    Dot,
}

/// Partial sums per channel of a channel reduction: each pass-1 thread
/// sums ~64 elements; at most 256 per channel.
fn chan_parts(shape: &[usize]) -> usize {
    (shape[0] * inner(shape)).div_ceil(64).clamp(1, 256)
}

/// Floats of a channel reduction's workspace over `xs` operands of
/// `shape`: one double per (operand, channel, part).
fn chan_work_floats(xs: usize, shape: &[usize]) -> usize {
    2 * xs * shape[1] * chan_parts(shape)
}

impl ConvGeo {
    /// The geometry of a convolution (or gradient) op with operand shapes
    /// `ins` and output `shape`; `None` for other ops.
    fn of(op: &Op, ins: &[&[usize]], shape: &[usize]) -> Result<Option<ConvGeo>, String> {
        let geo = match op {
            Op::Conv2d { stride, padding } => ConvGeo::new(
                ins[0], ins[1][0], ins[1][2], *stride, *padding, shape[2], shape[3],
            ),
            Op::Conv2dGradInput {
                stride, padding, ..
            } => {
                let (d, w) = (ins[0], ins[1]);
                ConvGeo::new(shape, w[0], w[2], *stride, *padding, d[2], d[3])
            }
            Op::Conv2dGradWeight {
                stride,
                padding,
                kernel,
            } => {
                let d = ins[1];
                ConvGeo::new(ins[0], d[1], *kernel, *stride, *padding, d[2], d[3])
            }
            _ => return Ok(None),
        };
        geo.map(Some)
    }

    fn new(
        x: &[usize],
        co: usize,
        k: usize,
        stride: usize,
        pad: usize,
        ho: usize,
        wo: usize,
    ) -> Result<ConvGeo, String> {
        if stride == 0 {
            return Err("conv2d stride must be positive".into());
        }
        let geo = ConvGeo {
            b: x[0],
            ci: x[1],
            h: x[2],
            w: x[3],
            co,
            k,
            stride,
            pad,
            ho,
            wo,
        };
        int(geo.rows() * geo.cols())?;
        Ok(geo)
    }

    fn rows(&self) -> usize {
        self.ci * self.k * self.k
    }

    fn cols(&self) -> usize {
        self.ho * self.wo
    }

    /// Elements of one input sample.
    fn in_len(&self) -> usize {
        self.ci * self.h * self.w
    }

    /// The geometry arguments of im2col/col2im: ci, h, w, k, s, pad, ho, wo, nb.
    fn args(&self, nb: usize) -> Result<Vec<Arg>, String> {
        [
            self.ci,
            self.h,
            self.w,
            self.k,
            self.stride,
            self.pad,
            self.ho,
            self.wo,
            nb,
        ]
        .iter()
        .map(|&v| int(v).map(Arg::I))
        .collect()
    }
}
