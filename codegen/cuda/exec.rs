//! The node-level executor: runs a compiled `Graph` on a [`Backend`], one
//! kernel (or cuBLAS call) sequence per node, in topological order, on one
//! stream.
//!
//! Values live in device buffers from a pool keyed by length (a training
//! loop runs the same graph again and again, so after the first step no
//! allocation happens); a value returns to the pool after its last user has
//! run. `Reshape` and `Detach` are views: they share their operand's buffer
//! (a reference count per buffer). Parameters can be made resident
//! ([`Executor::set_resident_params`]) so a step uploads only the inputs.
//!
//! The schedule is a list of [`Step`]s: graph nodes in a schedule's order
//! ([`Executor::new`]), or the units of a fusion plan
//! ([`Executor::fused`]): node units on the kernels above, fused units on
//! one generated module per plan (`render_cuda`, loaded once by the
//! backend). A fused kernel reads and writes its tensors through a pointer
//! table in device memory, one small buffer per kernel; the executor fills
//! it before the launch, and skips the upload when the addresses are those
//! of the previous run (the pool hands out the same buffers in the same
//! order every run, so after the first step no table is uploaded).

use super::backend::{check_args, Arg, Backend};
use super::gemm::Gemm;
use crate::interp::RunOptions;
use crate::ir::{Graph, NodeIndex, Op};
use crate::model::SurrogateKind;
use crate::passes::fuse::{self, Plan, Unit};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// One unit of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Evaluate one graph node with its own kernels.
    Node(NodeIndex),
    /// Launch fused kernel `k` of the plan.
    Kernel(usize),
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
}

/// Elements a single tensor (or workspace) may have: indices are 32-bit in
/// the kernels, with room for the grid-stride step.
pub const MAX_ELEMS: usize = 1 << 30;

/// Threads per block of every launch.
pub const BLOCK: u32 = 256;

/// Default cap on the im2col workspace of one convolution chunk (elements):
/// 32 Mi floats = 128 MiB.
pub const CONV_WORKSPACE: usize = 32 << 20;

struct Slot<Buf> {
    buf: Buf,
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
    /// One pointer-table buffer per kernel, and what it holds now.
    tables: Vec<Buf>,
    uploaded: Vec<Vec<u64>>,
}

pub struct Executor<'a, B: Backend> {
    backend: &'a mut B,
    g: &'a Graph,
    steps: Vec<Step>,
    /// Per step: the values it reads (a node's operands with repeats) and
    /// the values it writes.
    reads: Vec<Vec<NodeIndex>>,
    writes: Vec<Vec<NodeIndex>>,
    operands: HashMap<NodeIndex, Vec<NodeIndex>>,
    uses: HashMap<NodeIndex, usize>,
    /// Outputs and the values callers asked to keep: live to the end.
    kept: HashSet<NodeIndex>,
    keep: Vec<NodeIndex>,
    fused: Option<FusedState<B::Buf>>,
    /// Time every fused kernel (device marks around each launch).
    pub profile: bool,
    /// (kernel, mark before, mark after) of the last run's launches.
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
    /// passes/schedule.rs) and counts each value's uses.
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
        let mut uses: HashMap<NodeIndex, usize> = order.iter().map(|&n| (n, 0)).collect();
        for &n in &order {
            let ops = g.operands(n);
            for o in &ops {
                *uses.entry(*o).or_default() += 1;
            }
            let node = g.node(n);
            if elems(&node.shape) > MAX_ELEMS {
                return Err(format!(
                    "node {} ({}) has {} elements, more than the executor's limit {MAX_ELEMS}",
                    n.index(),
                    node.op.name(),
                    elems(&node.shape)
                ));
            }
            operands.insert(n, ops);
        }
        let reads = order.iter().map(|n| operands[n].clone()).collect();
        let writes = order.iter().map(|&n| vec![n]).collect();
        Ok(Executor {
            backend,
            g,
            steps: order.into_iter().map(Step::Node).collect(),
            reads,
            writes,
            operands,
            uses,
            kept: g.outputs.iter().map(|&(_, n)| n).collect(),
            keep: Vec::new(),
            fused: None,
            profile: false,
            marks: Vec::new(),
            pool: HashMap::new(),
            slots: Vec::new(),
            resident: HashMap::new(),
            stats: MemStats::default(),
            poison: false,
            conv_workspace: CONV_WORKSPACE,
        })
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
    /// its cache) and loads here.
    pub fn with_plan(
        backend: &'a mut B,
        g: &'a Graph,
        plan: Plan,
        keep: &[NodeIndex],
    ) -> Result<Self, String> {
        let mut steps = Vec::new();
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        let mut operands = HashMap::new();
        let mut written = HashSet::new();
        for u in &plan.units {
            let (step, r, w) = match *u {
                Unit::Node(n) => {
                    let ops = g.operands(n);
                    operands.insert(n, ops.clone());
                    (Step::Node(n), ops, vec![n])
                }
                Unit::Kernel(k) => {
                    let f = plan
                        .kernels
                        .get(k)
                        .ok_or_else(|| format!("the plan has no kernel {k}"))?;
                    (Step::Kernel(k), f.reads(), f.outputs())
                }
                // Time-major plans (one kernel step per unit) are a CPU
                // schedule; the CUDA ABI runs a kernel's T steps per launch.
                Unit::Step(..) => {
                    return Err("the CUDA executor runs layer-major fused plans only; \
                         time-major plans (one kernel step per unit) run on the CPU"
                        .to_string())
                }
            };
            if let Some(o) = r.iter().find(|o| !written.contains(*o)) {
                return Err(format!(
                    "step {} reads node {} before it is computed",
                    steps.len(),
                    o.index()
                ));
            }
            for &n in &w {
                if !written.insert(n) {
                    return Err(format!("node {} is computed twice", n.index()));
                }
                if elems(&g.node(n).shape) > MAX_ELEMS {
                    return Err(format!(
                        "node {} ({}) has {} elements, more than the executor's limit {MAX_ELEMS}",
                        n.index(),
                        g.node(n).op.name(),
                        elems(&g.node(n).shape)
                    ));
                }
            }
            steps.push(step);
            reads.push(r);
            writes.push(w);
        }
        let mut kept: HashSet<NodeIndex> = g.outputs.iter().map(|&(_, n)| n).collect();
        kept.extend(keep.iter().copied());
        if let Some(n) = kept.iter().find(|n| !written.contains(*n)) {
            return Err(format!(
                "the plan does not store node {}, an output or kept value",
                n.index()
            ));
        }
        let mut uses: HashMap<NodeIndex, usize> = written.iter().map(|&n| (n, 0)).collect();
        for r in &reads {
            for n in r {
                *uses.get_mut(n).expect("checked above") += 1;
            }
        }
        let fused = if plan.kernels.is_empty() {
            None
        } else {
            let m = super::fused::module(&plan);
            let module = backend.load_module(&m.source, &m.names)?;
            let mut tables = Vec::new();
            for f in &plan.kernels {
                match backend.alloc(2 * f.kernel.slots.max(1)) {
                    Ok(b) => tables.push(b),
                    Err(e) => {
                        for b in tables {
                            backend.free(b);
                        }
                        return Err(format!("allocating a pointer table: {e}"));
                    }
                }
            }
            let uploaded = vec![Vec::new(); tables.len()];
            Some(FusedState {
                plan,
                module,
                tables,
                uploaded,
            })
        };
        Ok(Executor {
            backend,
            g,
            steps,
            reads,
            writes,
            operands,
            uses,
            kept,
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
        })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The fused kernels (empty for a node-level executor).
    pub fn kernels(&self) -> &[fuse::Fused] {
        self.fused.as_ref().map_or(&[], |f| &f.plan.kernels)
    }

    /// Device seconds of each fused kernel launch of the last run with
    /// [`Executor::profile`] set, in launch order.
    pub fn kernel_times(&mut self) -> Result<Vec<(usize, f64)>, String> {
        let marks = std::mem::take(&mut self.marks);
        let times = marks
            .iter()
            .map(|&(k, a, b)| Ok((k, self.backend.elapsed(a, b)?)))
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

    fn new_slot(&mut self, buf: B::Buf, len: usize, pinned: bool) -> usize {
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
        self.backend.ptr(&self.slot(id).buf)
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
            self.release(s.buf, s.len);
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
            let id = self.new_slot(buf, t.len(), true);
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
        self.stats.peak_live_bytes = self.stats.live_bytes;
        self.marks.clear();
        self.backend.clear_marks();
        let mut vals: HashMap<NodeIndex, usize> = HashMap::new();
        let result = self.run_steps(inputs, params, opts, &mut vals, &mut observe);
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
        result
    }

    fn run_steps(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        vals: &mut HashMap<NodeIndex, usize>,
        observe: &mut Option<&mut Observer<'_>>,
    ) -> Result<(), String> {
        let mut remaining = self.uses.clone();
        for i in 0..self.steps.len() {
            let g = self.g;
            match self.steps[i] {
                Step::Node(n) => {
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
                Step::Kernel(k) => self.exec_kernel(k, vals).map_err(|e| {
                    let name = &self.kernels()[k].kernel.name;
                    format!("error: fused kernel {k} ({name}): {e}")
                })?,
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
            for o in self.reads[i].clone() {
                let r = remaining.get_mut(&o).expect("counted");
                *r -= 1;
                if *r == 0 && !self.kept.contains(&o) {
                    let id = vals.remove(&o).expect("computed");
                    self.drop_ref(id);
                }
            }
            for w in self.writes[i].clone() {
                if self.uses[&w] == 0 && !self.kept.contains(&w) {
                    let id = vals.remove(&w).expect("just computed");
                    self.drop_ref(id);
                }
            }
        }
        Ok(())
    }

    /// Launches fused kernel `k`: allocates what it writes, fills its
    /// pointer table (when the addresses changed) and launches one thread
    /// per element.
    fn exec_kernel(
        &mut self,
        k: usize,
        vals: &mut HashMap<NodeIndex, usize>,
    ) -> Result<(), String> {
        let f = &self.fused.as_ref().expect("a fused plan").plan.kernels[k];
        let (table, n) = (f.table.clone(), f.kernel.n);
        for o in f.outputs() {
            let len = elems(&self.g.node(o).shape);
            let buf = self.alloc(len)?;
            let id = self.new_slot(buf, len, false);
            vals.insert(o, id);
        }
        let words: Vec<u64> = table
            .iter()
            .map(|slot| match slot {
                None => Ok(0),
                Some(v) => vals
                    .get(v)
                    .map(|&id| self.ptr_of(id))
                    .ok_or_else(|| format!("node {} is not live", v.index())),
            })
            .collect::<Result<_, String>>()?;
        if n == 0 {
            return Ok(());
        }
        let grid = u32::try_from(n.div_ceil(BLOCK as usize))
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| format!("{n} elements need too many blocks"))?;
        let st = self.fused.as_mut().expect("a fused plan");
        if st.uploaded[k] != words {
            self.backend.upload_words(&mut st.tables[k], &words)?;
            st.uploaded[k] = words;
        }
        let tp = self.backend.ptr(&st.tables[k]);
        let module = st.module;
        let before = if self.profile {
            Some(self.backend.mark()?)
        } else {
            None
        };
        let args = [Arg::P(tp), Arg::L(n as i64)];
        self.backend.launch_module(module, k, grid, BLOCK, &args)?;
        if let Some(a) = before {
            let b = self.backend.mark()?;
            self.marks.push((k, a, b));
        }
        Ok(())
    }

    fn download_value(&mut self, n: NodeIndex, id: usize) -> Result<Tensor<f32>, String> {
        let shape = &self.g.node(n).shape;
        let buf = &self.slots[id].as_ref().expect("live slot").buf;
        let data = self.backend.download(buf, elems(shape))?;
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
        Ok(self.new_slot(buf, t.len(), false))
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
                let out = self.alloc(len)?;
                let p = self.backend.ptr(&out);
                match self.compute(op, &node.shape, &ins, p, opts) {
                    Ok(()) => Ok(self.new_slot(out, len, false)),
                    Err(e) => {
                        self.release(out, len);
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
            Op::ChannelDot => Err("channel_dot comes from the CPU plan's lowering".into()),
            Op::Add | Op::Sub | Op::Mul => {
                let k = match op {
                    Op::Add => "snnc_add",
                    Op::Sub => "snnc_sub",
                    _ => "snnc_mul",
                };
                self.launch(k, n, &[P(x(0)), P(x(1)), P(out), I(ni)])
            }
            Op::Scale(c) => self.launch("snnc_scale", n, &[P(x(0)), P(out), I(ni), F(*c as f32)]),
            Op::AddScalar(c) => self.launch(
                "snnc_add_scalar",
                n,
                &[P(x(0)), P(out), I(ni), F(*c as f32)],
            ),
            Op::Spike { theta, .. } => {
                self.launch("snnc_spike", n, &[P(x(0)), P(out), I(ni), F(*theta as f32)])
            }
            Op::SurrogateGrad { theta, surrogate } => {
                let kind = match surrogate.kind {
                    SurrogateKind::Sigmoid => 0,
                    SurrogateKind::Atan => 1,
                    SurrogateKind::Triangle => 2,
                };
                self.launch(
                    "snnc_surrogate_grad",
                    n,
                    &[
                        P(x(0)),
                        P(out),
                        I(ni),
                        D(*theta),
                        D(surrogate.alpha),
                        I(kind),
                    ],
                )
            }
            Op::Rsqrt { eps } => {
                self.launch("snnc_rsqrt", n, &[P(x(0)), P(out), I(ni), F(*eps as f32)])
            }
            Op::BiasAdd | Op::ChannelScale => {
                let k = if *op == Op::BiasAdd {
                    "snnc_bias_add"
                } else {
                    "snnc_channel_scale"
                };
                let s = ins[0].1;
                self.launch(
                    k,
                    n,
                    &[
                        P(x(0)),
                        P(x(1)),
                        P(out),
                        I(ni),
                        I(int(s[1])?),
                        I(int(inner(s))?),
                    ],
                )
            }
            Op::ChannelBroadcast { shape: s } => self.launch(
                "snnc_channel_broadcast",
                n,
                &[P(x(0)), P(out), I(ni), I(int(s[1])?), I(int(inner(s))?)],
            ),
            Op::Normalize { eps } => {
                let s = ins[0].1;
                self.launch(
                    "snnc_normalize",
                    n,
                    &[
                        P(x(0)),
                        P(x(1)),
                        P(x(2)),
                        P(out),
                        I(ni),
                        I(int(s[1])?),
                        I(int(inner(s))?),
                        F(*eps as f32),
                    ],
                )
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
                self.channel_reduce(&xs, 0, s, out, count)
            }
            Op::ChannelVar => {
                let s = ins[1].1;
                let count = ((ins.len() - 1) * s[0] * inner(s)) as f64;
                let xs: Vec<u64> = ins[1..].iter().map(|i| i.0).collect();
                self.channel_reduce(&xs, x(0), s, out, count)
            }
            Op::ChannelSum => {
                let s = ins[0].1;
                self.channel_reduce(&[x(0)], 0, s, out, 1.0)
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
            Op::Conv2d { stride, padding } => {
                let geo = ConvGeo::new(
                    ins[0].1,
                    ins[1].1[0],
                    ins[1].1[2],
                    *stride,
                    *padding,
                    shape[2],
                    shape[3],
                )?;
                self.conv_forward(&geo, x(0), x(1), out)
            }
            Op::Conv2dGradInput {
                stride, padding, ..
            } => {
                let w = ins[1].1;
                let d = ins[0].1;
                let geo = ConvGeo::new(shape, w[0], w[2], *stride, *padding, d[2], d[3])?;
                self.conv_grad_input(&geo, x(0), x(1), out)
            }
            Op::Conv2dGradWeight {
                stride,
                padding,
                kernel,
            } => {
                let d = ins[1].1;
                let geo = ConvGeo::new(ins[0].1, d[1], *kernel, *stride, *padding, d[2], d[3])?;
                self.conv_grad_weight(&geo, x(0), x(1), out)
            }
        }
    }

    /// Per-channel sums over the operands `xs` (each `[B, C, …]` of
    /// `shape`), of x or, with a `mean` address, of (x − mean)²; divided by
    /// `count` into `out[C]`.
    fn channel_reduce(
        &mut self,
        xs: &[u64],
        mean: u64,
        shape: &[usize],
        out: u64,
        count: f64,
    ) -> Result<(), String> {
        use Arg::{D, I, P};
        let (b, c, r) = (shape[0], shape[1], inner(shape));
        // Each pass-1 thread sums ~64 elements; at most 256 per channel.
        let parts = (b * r).div_ceil(64).clamp(1, 256);
        let part_len = xs.len() * c * parts; // doubles
        let work = self.alloc(2 * part_len)?;
        let wp = self.backend.ptr(&work);
        let mut run = || -> Result<(), String> {
            for (k, &xp) in xs.iter().enumerate() {
                self.launch(
                    "snnc_chan_partial",
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
        self.release(work, 2 * part_len);
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

    fn conv_forward(&mut self, geo: &ConvGeo, x: u64, w: u64, out: u64) -> Result<(), String> {
        let nb = self.chunk(geo);
        let (rows, cols) = (geo.rows(), geo.cols());
        let col = self.alloc(rows * nb * cols)?;
        let cp = self.backend.ptr(&col);
        let mut run = || -> Result<(), String> {
            let mut b0 = 0;
            while b0 < geo.b {
                let cur = nb.min(geo.b - b0);
                self.im2col(geo, at(x, b0 * geo.in_len()), cp, cur)?;
                // out_b[co × cols] = W[co × rows] · col_b[rows × cols], the
                // col_b side by side in col[rows × cur·cols].
                self.gemm(Gemm {
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
                })?;
                b0 += cur;
            }
            Ok(())
        };
        let result = run();
        self.release(col, rows * nb * cols);
        result
    }

    fn conv_grad_input(&mut self, geo: &ConvGeo, d: u64, w: u64, out: u64) -> Result<(), String> {
        use Arg::{I, P};
        let nb = self.chunk(geo);
        let (rows, cols) = (geo.rows(), geo.cols());
        let col = self.alloc(rows * nb * cols)?;
        let cp = self.backend.ptr(&col);
        let mut run = || -> Result<(), String> {
            let mut b0 = 0;
            while b0 < geo.b {
                let cur = nb.min(geo.b - b0);
                // dcol_b[rows × cols] = Wᵀ · d_b[co × cols].
                self.gemm(Gemm {
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
                self.launch("snnc_col2im", n, &args)?;
                b0 += cur;
            }
            Ok(())
        };
        let result = run();
        self.release(col, rows * nb * cols);
        result
    }

    fn conv_grad_weight(&mut self, geo: &ConvGeo, x: u64, d: u64, out: u64) -> Result<(), String> {
        use Arg::{I, P};
        let nb = self.chunk(geo);
        let (rows, cols) = (geo.rows(), geo.cols());
        let col = self.alloc(rows * nb * cols)?;
        let dt = match self.alloc(geo.co * nb * cols) {
            Ok(b) => b,
            Err(e) => {
                self.release(col, rows * nb * cols);
                return Err(e);
            }
        };
        let (cp, dp) = (self.backend.ptr(&col), self.backend.ptr(&dt));
        let mut run = || -> Result<(), String> {
            let mut b0 = 0;
            while b0 < geo.b {
                let cur = nb.min(geo.b - b0);
                self.im2col(geo, at(x, b0 * geo.in_len()), cp, cur)?;
                // d[cur, co, cols] -> dT[co, cur·cols]
                let n = cur * geo.co * cols;
                self.launch(
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
                self.gemm(Gemm {
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
                })?;
                b0 += cur;
            }
            Ok(())
        };
        let result = run();
        self.release(col, rows * nb * cols);
        self.release(dt, geo.co * nb * cols);
        result
    }
}

impl<B: Backend> Drop for Executor<'_, B> {
    fn drop(&mut self) {
        if let Some(f) = self.fused.take() {
            for b in f.tables {
                self.backend.free(b);
            }
        }
        for s in std::mem::take(&mut self.slots).into_iter().flatten() {
            self.backend.free(s.buf);
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
            "`{name}` has shape {:?} ({} elements), but the graph expects {shape:?}",
            t.shape,
            t.data.len()
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

impl ConvGeo {
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
