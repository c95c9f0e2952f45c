//! The executor: runs a plan (`passes::fuse::Plan`: library calls for
//! single nodes, generated kernels for fused groups) on a [`Backend`], unit
//! by unit, on one stream.
//!
//! Every value a unit computes, every node's library scratch and every
//! kernel state lives in one arena, at the offsets the memory plan
//! (`passes::memplan::units`) assigns before the first run, so the peak
//! measured in the arena is the planned peak. `Reshape` and `Detach` are
//! views: they share their operand's memory (a reference count per value).
//! Inputs and parameters have buffers of their own from a pool keyed by
//! length (a training loop uploads into the same buffers every step);
//! parameters can be made resident ([`Executor::set_resident_params`]) so a
//! step uploads only the inputs.
//!
//! A graph without a fusion plan runs as a plan of one node unit per node
//! ([`Executor::new`], [`Executor::with_order`]). Fused units run one
//! generated module per plan (rendered and loaded once by the backend):
//! all of a kernel's steps in one launch (layer-major plans) or one step per
//! unit with the kernel's registers and accumulators in its state between
//! launches (time-major plans, `passes/fuse_time`). A fused unit reads and
//! writes its tensors through a pointer table, one small buffer per unit;
//! the executor fills it before the launch and skips the upload when the
//! addresses are those of the previous run (arena offsets are fixed, so
//! after the first step no table is uploaded).
//!
//! Submodules: [`memory`] (pool, arena, values), [`kernel`] (fused
//! launches), [`ops`] (an op as library calls), [`reduce`] (channel
//! reductions), [`conv`] (convolution drivers), [`params`] (resident
//! parameters for a training loop that updates them on the device, and a
//! run that hands its outputs to further launches), [`error`].

mod conv;
pub use conv::{default_event_density, EVENT_DENSITY, EVENT_DENSITY_LIBRARY};
mod error;
mod kernel;
mod memory;
mod ops;
mod params;
mod reduce;
mod scratch;

pub use error::ExecError;
pub use params::AfterRun;
pub use scratch::LibraryScratch;

use super::backend::Backend;
use crate::interp::RunOptions;
use crate::ir::{Graph, NodeIndex};
use crate::passes::fuse::{self, Plan, Unit};
use crate::passes::memplan::{self, units, Lifetimes, MemPlan};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// One unit of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Evaluate one graph node with library calls.
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
    /// The arena (0 until the first run), its planned peak, and the bytes
    /// of it in use now and at most during the last run (also counted in
    /// `live_bytes`).
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
/// 32 Mi floats = 128 MiB ([`Backend::conv_workspace`]).
pub const CONV_WORKSPACE: usize = 32 << 20;

/// Memory of a value: a buffer of its own (leaves), or an address in the
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

/// The arena on the device, where its plan puts everything, and the
/// convolution workspace cap it was planned for.
struct ArenaState<Buf> {
    buf: Buf,
    plan: units::Arena,
    conv_workspace: usize,
}

pub struct Executor<'a, B: Backend> {
    backend: &'a mut B,
    g: &'a Graph,
    plan: Plan,
    steps: Vec<Step>,
    /// What each step reads, writes, allocates and frees.
    life: Lifetimes,
    keep: Vec<NodeIndex>,
    /// The backend's id of the plan's module (none without fused kernels).
    module: Option<usize>,
    /// One pointer-table buffer per fused step (by step index), and what
    /// it holds now.
    tables: HashMap<usize, B::Buf>,
    uploaded: HashMap<usize, Vec<u64>>,
    /// Made at the first run (the plan depends on `conv_workspace`).
    arena: Option<ArenaState<B::Buf>>,
    /// The workspace of the node running now: its address, bytes and
    /// bytes handed out.
    scratch: Option<(u64, usize, usize)>,
    /// Time every fused kernel (device marks around each launch).
    pub profile: bool,
    /// (step index, mark before, mark after) of the last run's launches.
    marks: Vec<(usize, usize, usize)>,
    /// `SNNC_PROFILE` is set: each run prints the wall time of every op and
    /// kernel (each step waits for the backend), summed by name.
    profile_steps: bool,
    /// Time every unit of the plan (each waits for the backend before and
    /// after it): [`Executor::unit_seconds`] after a run.
    pub time_units: bool,
    unit_secs: Vec<f64>,
    /// With `profile_steps`: per GEMM shape and per library kernel,
    /// (seconds, calls, FLOPs) of the last run, so the profile shows how
    /// far each shape is from the SGEMM's speed and what a convolution
    /// spends around its GEMMs.
    inner_spent: HashMap<String, (f64, usize, f64)>,
    /// The precision of the GEMMs of the run in progress (from its
    /// `RunOptions`).
    precision: crate::precision::Precision,
    /// The largest fraction of nonzero inputs at which a convolution runs
    /// as events, on a backend that offers them ([`default_event_density`]; a
    /// negative value keeps every convolution dense, 1 sends every one
    /// the backend allows to the event kernel: `snnc bench --events`).
    pub event_density: f64,
    /// Convolutions run as events so far (a count for tests and benches).
    pub event_convs: usize,
    pool: HashMap<usize, Vec<B::Buf>>,
    /// Per ChannelMean node that ran as moments: Σx and Σx² per channel
    /// (2·C doubles), for the ChannelVar over the same operands (`reduce`).
    moments: HashMap<NodeIndex, B::Buf>,
    /// Channel sums and dots computed ahead, in the read of a partner
    /// reduction over the same operand (`reduce::paired_reduction`): the
    /// result (C floats) per node that has not run yet, and whether it is
    /// ready in this run.
    ahead: HashMap<NodeIndex, (B::Buf, bool)>,
    /// Per convolution whose output a ChannelMean reads: the output's Σx
    /// and Σx² per channel (2·C doubles) where the backend summed them
    /// while writing it, and whether it did in this run (`reduce`).
    conv_moments: HashMap<NodeIndex, (B::Buf, bool)>,
    /// Where the convolution running now may write its output's moments
    /// (0: nowhere), and whether it did.
    conv_moments_to: u64,
    conv_moments_written: bool,
    /// The unit that runs each node unit's node.
    node_unit: HashMap<NodeIndex, usize>,
    /// Compute a channel sum and a channel dot over one operand in one
    /// read where the plan allows (on by default; off to check that it
    /// changes nothing).
    pub pair_reductions: bool,
    /// Reductions computed ahead so far (a count for tests).
    pub paired: usize,
    /// Channel-mean operands whose convolution summed their moments so
    /// far (a count for tests).
    pub conv_summed: usize,
    slots: Vec<Option<Slot<B::Buf>>>,
    resident: HashMap<String, usize>,
    stats: MemStats,
    /// Fill every value with NaN when it is handed out and when it is
    /// freed, so that an element a kernel forgets to write, or a value read
    /// after it was freed, shows up as NaN.
    pub poison: bool,
    /// Cap on the im2col workspace of one convolution chunk (elements);
    /// the backend's [`Backend::conv_workspace`] unless changed.
    pub conv_workspace: usize,
}

fn elems(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A size as a kernel `int`.
fn int(v: usize) -> Result<i32, ExecError> {
    if v > MAX_ELEMS {
        return Err(ExecError::TooBig(v));
    }
    Ok(v as i32)
}

/// Checks that node `n`'s value fits the kernels' 32-bit indexing.
fn check_size(g: &Graph, n: NodeIndex) -> Result<(), ExecError> {
    let node = g.node(n);
    if elems(&node.shape) > MAX_ELEMS {
        return Err(ExecError::NodeTooBig {
            node: n.index(),
            op: node.op.name(),
            elems: elems(&node.shape),
        });
    }
    Ok(())
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
    /// Runs `g` node by node in the layer-major schedule (the project's
    /// default, see passes/schedule.rs).
    pub fn new(backend: &'a mut B, g: &'a Graph) -> Result<Self, ExecError> {
        g.topo_order().ok_or(ExecError::Cyclic)?;
        let order =
            crate::passes::schedule::order(g, crate::passes::schedule::Schedule::LayerMajor);
        Self::with_order(backend, g, order)
    }

    /// Runs `g`'s nodes one by one in `order` (every node once, operands
    /// first): a plan of one node unit per node.
    pub fn with_order(
        backend: &'a mut B,
        g: &'a Graph,
        order: Vec<NodeIndex>,
    ) -> Result<Self, ExecError> {
        let mut seen = HashSet::new();
        for &n in &order {
            if g.operands(n).iter().any(|o| !seen.contains(o)) || !seen.insert(n) {
                return Err(ExecError::Order(n.index()));
            }
        }
        if seen.len() != g.node_count() {
            return Err(ExecError::Incomplete {
                got: seen.len(),
                want: g.node_count(),
            });
        }
        Self::with_plan(backend, g, Plan::node_by_node(order), &[])
    }

    /// Fuses `g` (`passes::fuse`, storing the `keep` nodes) and plans the
    /// result; see [`Executor::with_plan`].
    pub fn fused(backend: &'a mut B, g: &'a Graph, keep: &[NodeIndex]) -> Result<Self, ExecError> {
        let plan = fuse::fuse_keeping(g, keep);
        Self::with_plan(backend, g, plan, keep)
    }

    /// Prepares a plan of `g` (built with `keep` among the stored values):
    /// node units run as library calls, fused units on the plan's
    /// generated module, which the backend renders, compiles (or finds in
    /// its cache) and loads here. A time-major plan (`fuse_time::plan`)
    /// runs on the graph it was made for, `fuse_time::lower`'s copy.
    pub fn with_plan(
        backend: &'a mut B,
        g: &'a Graph,
        plan: Plan,
        keep: &[NodeIndex],
    ) -> Result<Self, ExecError> {
        let life = memplan::units::lifetimes(g, &plan, keep)?;
        for &n in life.writes.iter().flatten() {
            check_size(g, n)?;
        }
        let steps: Vec<Step> = plan
            .units
            .iter()
            .map(|u| match *u {
                Unit::Node(n) => Step::Node(n),
                Unit::Kernel(k) => Step::Kernel(k),
                Unit::Step(k, t) => Step::KernelStep(k, t),
            })
            .collect();
        let (module, tables) = if plan.kernels.is_empty() {
            (None, HashMap::new())
        } else {
            let m = backend.render(&plan);
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
                        return Err(ExecError::Table(e));
                    }
                }
            }
            (Some(module), tables)
        };
        let node_unit = steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match *s {
                Step::Node(n) => Some((n, i)),
                _ => None,
            })
            .collect();
        let conv_workspace = backend.conv_workspace();
        let event_density = default_event_density(&*backend);
        Ok(Executor {
            backend,
            g,
            plan,
            steps,
            life,
            keep: keep.to_vec(),
            module,
            tables,
            uploaded: HashMap::new(),
            arena: None,
            scratch: None,
            profile: false,
            marks: Vec::new(),
            profile_steps: std::env::var_os("SNNC_PROFILE").is_some(),
            time_units: false,
            unit_secs: Vec::new(),
            inner_spent: HashMap::new(),
            precision: crate::precision::Precision::Fp32,
            event_density,
            event_convs: 0,
            pool: HashMap::new(),
            moments: HashMap::new(),
            ahead: HashMap::new(),
            conv_moments: HashMap::new(),
            conv_moments_to: 0,
            conv_moments_written: false,
            node_unit,
            pair_reductions: true,
            paired: 0,
            conv_summed: 0,
            slots: Vec::new(),
            resident: HashMap::new(),
            stats: MemStats::default(),
            poison: false,
            conv_workspace,
        })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The fused kernels (empty for a node-by-node plan).
    /// Wall seconds of every unit of the last run with
    /// [`Executor::time_units`] set (or `SNNC_PROFILE`), by step index.
    pub fn unit_seconds(&self) -> &[f64] {
        &self.unit_secs
    }

    /// The graph the executor runs (the lowered one for time-major plans).
    pub fn graph(&self) -> &'a Graph {
        self.g
    }

    pub fn kernels(&self) -> &[fuse::Fused] {
        &self.plan.kernels
    }

    /// Device seconds of each fused kernel launch of the last run with
    /// [`Executor::profile`] set, in launch order, with its step
    /// ([`Step::Kernel`] or [`Step::KernelStep`]).
    pub fn kernel_times(&mut self) -> Result<Vec<(Step, f64)>, ExecError> {
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

    /// The memory plan of the arena (after the first run).
    pub fn arena_plan(&self) -> Option<&MemPlan> {
        self.arena.as_ref().map(|a| &a.plan.mem)
    }
}

impl<'a, B: Backend> Executor<'a, B> {
    /// Runs the graph: uploads inputs (and parameters that are not
    /// resident), executes every step, downloads the outputs.
    pub fn run(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
    ) -> Result<Outputs, ExecError> {
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
    ) -> Result<Outputs, ExecError> {
        self.run_full(inputs, params, opts, observe, false, None)
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
    ) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), ExecError> {
        self.run_full(inputs, params, opts, None, extra, None)
    }

    fn run_full(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        mut observe: Option<&mut Observer<'_>>,
        extra: bool,
        after: Option<(&[&str], &mut AfterRun<'_, B>)>,
    ) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), ExecError> {
        self.ensure_arena()?;
        self.precision = opts.precision;
        self.stats.peak_live_bytes = self.stats.live_bytes;
        self.stats.peak_arena_live_bytes = self.stats.arena_live_bytes;
        self.marks.clear();
        self.backend.clear_marks();
        let mut vals: HashMap<NodeIndex, usize> = HashMap::new();
        let mut state: HashMap<usize, u64> = HashMap::new();
        for a in self.ahead.values_mut() {
            a.1 = false;
        }
        for m in self.conv_moments.values_mut() {
            m.1 = false;
        }
        let result = self.run_steps(inputs, params, opts, &mut vals, &mut state, &mut observe);
        let result = result.and_then(|()| {
            // With `after`: its launches, then only the outputs it names.
            let fetch = match after {
                Some((names, f)) => {
                    let addrs = self.output_addrs(&vals);
                    f(&mut *self.backend, &addrs)?;
                    Some(names)
                }
                None => None,
            };
            let mut outs = Outputs::new();
            for (name, n) in &self.g.outputs {
                if fetch.is_some_and(|f| !f.contains(&name.as_str())) {
                    continue;
                }
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
        self.scratch = None;
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
    ) -> Result<(), ExecError> {
        let timed = self.profile_steps || self.time_units;
        if timed {
            self.unit_secs = vec![0.0; self.steps.len()];
            self.backend.sync()?;
        }
        for i in 0..self.steps.len() {
            let g = self.g;
            let started = std::time::Instant::now();
            match self.steps[i] {
                Step::Node(n) => {
                    self.set_scratch(i);
                    let id = self
                        .exec_node(i, n, vals, inputs, params, opts)
                        .map_err(|e| ExecError::AtNode {
                            node: n.index(),
                            op: g.node(n).op.name(),
                            attrs: g.node(n).op.attrs(),
                            source: Box::new(e),
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
            if timed {
                self.backend.sync()?;
                self.unit_secs[i] = started.elapsed().as_secs_f64();
            }
            if let Some(obs) = observe.as_mut() {
                let (r, w) = (self.life.reads[i].clone(), self.life.writes[i].clone());
                let mut get =
                    |ns: &[NodeIndex]| -> Result<Vec<(NodeIndex, Tensor<f32>)>, ExecError> {
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
            for o in self.life.frees[i].clone() {
                let id = vals.remove(&o).expect("computed");
                self.drop_ref(id);
            }
        }
        if self.profile_steps {
            let mut spent: HashMap<String, (f64, usize)> = HashMap::new();
            for (i, step) in self.steps.iter().enumerate() {
                let name = match *step {
                    Step::Node(n) => self.g.node(n).op.name().to_string(),
                    Step::Kernel(k) | Step::KernelStep(k, _) => {
                        self.kernels()[k].kernel.name.clone()
                    }
                };
                let e = spent.entry(name).or_default();
                e.0 += self.unit_secs[i];
                e.1 += 1;
            }
            print_profile(spent, &self.backend.describe());
            print_inner_profile(std::mem::take(&mut self.inner_spent));
        }
        Ok(())
    }

    fn kernel_error(&self, k: usize, e: ExecError) -> ExecError {
        ExecError::AtKernel {
            kernel: k,
            name: self.kernels()[k].kernel.name.clone(),
            source: Box::new(e),
        }
    }

    /// Points the scratch allocator at step `i`'s planned workspace.
    fn set_scratch(&mut self, i: usize) {
        self.scratch = self.arena.as_ref().and_then(|a| {
            a.plan.workspace[i]
                .map(|(off, bytes)| (self.backend.ptr(&a.buf) + off, bytes as usize, 0))
        });
    }
}

impl<B: Backend> Drop for Executor<'_, B> {
    fn drop(&mut self) {
        for (_, b) in std::mem::take(&mut self.tables) {
            self.backend.free(b);
        }
        if let Some(a) = self.arena.take() {
            self.backend.free(a.buf);
        }
        for s in std::mem::take(&mut self.slots).into_iter().flatten() {
            if let Mem::Own(b) = s.buf {
                self.backend.free(b);
            }
        }
        for (_, b) in std::mem::take(&mut self.moments) {
            self.backend.free(b);
        }
        for (_, (b, _)) in std::mem::take(&mut self.ahead) {
            self.backend.free(b);
        }
        for (_, (b, _)) in std::mem::take(&mut self.conv_moments) {
            self.backend.free(b);
        }
        for (_, bufs) in std::mem::take(&mut self.pool) {
            for b in bufs {
                self.backend.free(b);
            }
        }
    }
}

/// `SNNC_PROFILE`'s table on stderr: seconds and launches per op or
/// kernel, slowest first.
fn print_profile(spent: HashMap<String, (f64, usize)>, on: &str) {
    let mut v: Vec<_> = spent.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let total: f64 = v.iter().map(|(_, (s, _))| s).sum();
    eprintln!("SNNC_PROFILE: {total:.4} s on {on}; seconds per op or kernel (launches)");
    for (name, (s, c)) in v {
        eprintln!("  {name:<24} {s:>8.4} s ({c})");
    }
}

/// `SNNC_PROFILE`'s second table: the library calls inside the ops above
/// (every GEMM shape, every library kernel) with their calls, seconds and,
/// for GEMMs (op(A) m×k times op(B) k×n, `batch` products per call),
/// GFLOP/s.
fn print_inner_profile(spent: HashMap<String, (f64, usize, f64)>) {
    let mut v: Vec<_> = spent.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let gemm: f64 = v
        .iter()
        .filter(|(_, (_, _, f))| *f > 0.0)
        .map(|(_, (s, _, _))| s)
        .sum();
    eprintln!(
        "SNNC_PROFILE: inside the ops above, {gemm:.4} s in GEMMs; seconds per GEMM shape \
         (m×n×k [transposes] ×batch) or library kernel (calls)"
    );
    for (name, (s, c, flops)) in v {
        if flops > 0.0 {
            let rate = flops / s.max(1e-12) / 1e9;
            eprintln!("  {name:<36} {s:>8.4} s ({c}) {rate:>7.1} GFLOP/s");
        } else {
            eprintln!("  {name:<36} {s:>8.4} s ({c})");
        }
    }
}

fn check_shape(name: &str, shape: &[usize], t: &Tensor<f32>) -> Result<(), ExecError> {
    if t.shape != shape || t.data.len() != elems(shape) {
        return Err(ExecError::BadShape {
            name: name.to_string(),
            got: crate::shape::list(&t.shape),
            len: t.data.len(),
            want: crate::shape::list(shape),
        });
    }
    Ok(())
}
