//! Schedules: the order in which the executor runs a graph's nodes.
//!
//! A schedule is a topological order of the compiled graph, chosen by a
//! list scheduler (Kahn's algorithm that always takes the ready node with
//! the smallest key), so every schedule is valid by construction and the
//! key only says which valid order is preferred:
//!
//! - **layer-major** (the default): each layer's T steps together, layers in
//!   source order in the forward and in reverse in the backward (within a
//!   layer, the backward walks time backwards). This is the order in which
//!   a layer's T steps can become one batched GEMM.
//! - **time-major**: one step of every layer at a time in the forward
//!   (t = 0 through all layers, then t = 1, …), so per-step values die as
//!   soon as the next layer has read them; the per-step backward of BPTT
//!   runs t = T−1 down to 0 through all layers.
//!
//! Before ordering, the graph executor's lowering passes ([`lowering`])
//! rewrite the graph for either schedule (the result is for running, not
//! for differentiating again):
//!
//! - `detach` nodes, the identity once autodiff has run, are bypassed
//!   ([`BypassDetach`]);
//! - **time reductions become running accumulators** ([`Chain`]):
//!   an n-ary `sum`/`time_mean` over the T steps would keep all T operands
//!   alive until the last one exists; a chain `((x₀ + x₁) + x₂) + …`
//!   (then a `scale(1/n)` for a mean) lets each operand die once added.
//!   Forward sums are chained in step order, backward ones in reverse step
//!   order (the order in which the backward produces them).
//! - **batch-norm recompute** (time-major, optional; [`RecomputeBn`]):
//!   temporal batch norm normalises with statistics over all T steps, so
//!   under a plain time-major schedule every pre-BN value `z_t` stays alive
//!   until the last step has been computed. With recompute, the per-step
//!   forward that leads to `z_t` is duplicated: the copy feeds per-step
//!   statistics (`m_t = channel_mean(z'_t)`, `v_t = channel_var(m_t, z'_t)`)
//!   and dies at once; the statistics are combined exactly (Chan et al.):
//!   `mean = mean_t m_t`, `var = mean_t v_t + mean_t (m_t − mean)²`; the
//!   original `z_t` is computed after the statistics and normalised at once.
//!   Each batch-norm layer costs one more forward of the layers up to it.
//!
//! Time-major ordering also needs to know which values *can't* be used yet:
//! a value whose users wait for batch-norm statistics should be computed
//! after the statistics, not before. Forward nodes therefore carry a
//! *stage*: the number of statistics barriers before them (a barrier is a
//! shared, time-reducing node such as a batch-norm mean), computed as late
//! as the nodes that need them allow; side branches that only feed time
//! accumulators (the rate pass's `r`, `g`, `x̄`) follow their operands.
//!
//! The order itself is the [`Order`] pass (`schedule`), which leaves the
//! graph as it is and sets the program's order.

use super::{Pass, PassError, Program};
use crate::ir::{Graph, Node, NodeIndex, Op, Role};
use petgraph::visit::{EdgeRef, IntoEdgeReferences, NodeIndexable};
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// The two schedules (README, "Schedules and the memory plan").
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Each layer's T steps together; layers in order (forward), in reverse
    /// (backward).
    #[default]
    LayerMajor,
    /// One step of every layer at a time.
    TimeMajor,
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::LayerMajor => "layer-major",
            Schedule::TimeMajor => "time-major",
        })
    }
}

/// A schedule and its options.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SchedOpts {
    pub schedule: Schedule,
    /// Time-major only: duplicate the per-step forward that feeds each
    /// batch norm's statistics (see the module documentation).
    pub recompute_bn: bool,
}

impl SchedOpts {
    pub const LAYER_MAJOR: SchedOpts = SchedOpts {
        schedule: Schedule::LayerMajor,
        recompute_bn: false,
    };
    pub const TIME_MAJOR: SchedOpts = SchedOpts {
        schedule: Schedule::TimeMajor,
        recompute_bn: false,
    };
    pub const TIME_MAJOR_RECOMPUTE: SchedOpts = SchedOpts {
        schedule: Schedule::TimeMajor,
        recompute_bn: true,
    };
    /// The names `FromStr` accepts.
    pub const NAMES: [&'static str; 3] = ["layer-major", "time-major", "time-major-recompute"];
}

impl std::fmt::Display for SchedOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.schedule)?;
        if self.recompute_bn {
            f.write_str("-recompute")?;
        }
        Ok(())
    }
}

/// A schedule name `SchedOpts` does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown schedule `{0}`; expected one of: {names}", names = SchedOpts::NAMES.join(", "))]
pub struct UnknownSchedule(pub String);

impl std::str::FromStr for SchedOpts {
    type Err = UnknownSchedule;
    fn from_str(s: &str) -> Result<SchedOpts, UnknownSchedule> {
        match s {
            "layer-major" => Ok(SchedOpts::LAYER_MAJOR),
            "time-major" => Ok(SchedOpts::TIME_MAJOR),
            "time-major-recompute" => Ok(SchedOpts::TIME_MAJOR_RECOMPUTE),
            _ => Err(UnknownSchedule(s.to_string())),
        }
    }
}

/// The graph executor's lowering for `opts`: batch-norm recompute (for
/// time-major with `recompute_bn`), every time reduction chained, `detach`
/// bypassed. The result computes the same values as its input up to f32
/// rounding.
pub fn lowering(opts: SchedOpts) -> Vec<Box<dyn Pass>> {
    let mut passes: Vec<Box<dyn Pass>> = Vec::new();
    if opts.schedule == Schedule::TimeMajor && opts.recompute_bn {
        passes.push(Box::new(RecomputeBn));
    }
    passes.push(Box::new(Chain));
    passes.push(Box::new(BypassDetach));
    passes
}

/// The graph executor's lowering for `opts` ([`lowering`]), then its order
/// (the [`Order`] pass), each checked (`passes::check`).
pub fn schedule(g: &Graph, opts: SchedOpts) -> (Graph, Vec<NodeIndex>) {
    let mut passes = lowering(opts);
    passes.push(Box::new(Order(opts.schedule)));
    let mut p = Program::new(g.clone());
    if let Err(e) = super::Pipeline::new(passes).run(&mut p) {
        // The lowering passes only rewrite verified graphs into verified
        // graphs; an error here is a compiler bug, not a user error.
        panic!("internal: {e}");
    }
    let order = p.order.take().expect("the order pass sets the order");
    (p.graph, order)
}

/// Batch-norm recompute as a pass ([`recompute_bn`]).
pub struct RecomputeBn;

impl Pass for RecomputeBn {
    fn name(&self) -> &'static str {
        "recompute-bn"
    }
    fn about(&self) -> &'static str {
        "per-step batch-norm statistics on a recomputed copy of the forward (time-major)"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        recompute_bn(&mut p.graph);
        Ok(())
    }
}

/// Every time reduction as a running accumulator ([`chain_reductions`]).
pub struct Chain;

impl Pass for Chain {
    fn name(&self) -> &'static str {
        "chain"
    }
    fn about(&self) -> &'static str {
        "turn n-ary time sums and means into running accumulators"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        chain_reductions(&mut p.graph);
        Ok(())
    }
}

/// `detach` bypassed ([`bypass_detach`]).
pub struct BypassDetach;

impl Pass for BypassDetach {
    fn name(&self) -> &'static str {
        "bypass-detach"
    }
    fn about(&self) -> &'static str {
        "bypass `detach` (the identity once autodiff has run)"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        bypass_detach(&mut p.graph);
        Ok(())
    }
}

/// The execution order under a schedule ([`order`]): sets the program's
/// order, leaves the graph.
pub struct Order(pub Schedule);

impl Pass for Order {
    fn name(&self) -> &'static str {
        "schedule"
    }
    fn about(&self) -> &'static str {
        match self.0 {
            Schedule::LayerMajor => "execution order: each layer's steps together (layer-major)",
            Schedule::TimeMajor => {
                "execution order: one step of every layer at a time (time-major)"
            }
        }
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        p.order = Some(order(&p.graph, self.0));
        Ok(())
    }
}

/// An execution order as text: one line per node in order.
pub fn order_text(g: &Graph, order: &[NodeIndex]) -> String {
    use std::fmt::Write;
    let mut pos = vec![usize::MAX; g.g.node_bound()];
    for (i, &v) in order.iter().enumerate() {
        pos[v.index()] = i;
    }
    let mut out = format!(
        "order {} steps={} batch={}: {} nodes\n",
        g.name,
        g.steps,
        g.batch,
        order.len()
    );
    for (i, &v) in order.iter().enumerate() {
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
        let _ = writeln!(
            out,
            "  %{i:<3} = {call:<44} {:<14} {}{}{}",
            crate::shape::list(&node.shape).replace(' ', ""),
            node.layer
                .map(|l| format!("{}:{} ", g.layers[l].path, g.layers[l].keyword))
                .unwrap_or_default(),
            node.t.map(|t| format!("t={t} ")).unwrap_or_default(),
            node.role.short()
        );
    }
    out
}

/// Removes every `detach` (the identity once autodiff has run), its users
/// reading its operand instead. For graphs that are executed, not
/// differentiated again. Returns how many were removed.
pub fn bypass_detach(g: &mut Graph) -> usize {
    let ds: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|&n| g.g[n].op == Op::Detach)
            .collect();
    for &d in &ds {
        let x = g.operands(d)[0];
        redirect(g, d, x);
    }
    ds.len()
}

fn is_backward(n: &Node) -> bool {
    matches!(n.role, Role::Backward | Role::Gradient)
}

/// Moves every use of `old` (edges and named outputs) to `new`.
pub(crate) fn redirect(g: &mut Graph, old: NodeIndex, new: NodeIndex) {
    let uses: Vec<(NodeIndex, usize)> =
        g.g.edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
    for (u, w) in uses {
        g.g.add_edge(new, u, w);
    }
    for (_, n) in g.outputs.iter_mut() {
        if *n == old {
            *n = new;
        }
    }
    g.g.remove_node(old);
}

/// Rewrites every `sum` of more than two operands and every `time_mean` of
/// two or more as a left-to-right chain of two-operand sums (then
/// `scale(1/n)` for a mean). Operands of forward reductions are added in
/// step order, of backward ones in reverse step order; shared operands
/// first. Returns how many reductions were rewritten.
pub fn chain_reductions(g: &mut Graph) -> usize {
    chain_reductions_where(g, |_, _| true)
}

/// `chain_reductions` for the reductions `pick` accepts.
pub fn chain_reductions_where(g: &mut Graph, pick: impl Fn(&Graph, NodeIndex) -> bool) -> usize {
    let targets: Vec<NodeIndex> = g
        .topo_order()
        .expect("acyclic")
        .into_iter()
        .filter(|&n| pick(g, n))
        .filter(|&n| {
            let k = g.g.edges_directed(n, Direction::Incoming).count();
            match g.g[n].op {
                Op::Sum => k > 2,
                Op::TimeMean => k >= 2,
                _ => false,
            }
        })
        .collect();
    for &n in &targets {
        let node = g.g[n].clone();
        let backward = is_backward(&node);
        let mut ops = g.operands(n);
        // In the order the operands are produced: forward steps ascending,
        // backward steps descending (stable: same-step operands keep their
        // order; shared ones first).
        ops.sort_by_key(|&o| match (g.g[o].t, backward) {
            (None, _) => (0, 0i64),
            (Some(t), false) => (1, t as i64),
            (Some(t), true) => (1, -(t as i64)),
        });
        let inner_role = match node.role {
            Role::Gradient | Role::Backward => Role::Backward,
            _ => Role::Forward,
        };
        let mean = node.op == Op::TimeMean;
        let mut acc = ops[0];
        for (i, &o) in ops.iter().enumerate().skip(1) {
            let last = i + 1 == ops.len() && !mean;
            let role = if last { node.role } else { inner_role };
            acc = g.add_op("chain", Op::Sum, node.layer, node.t, role, &[acc, o]);
        }
        if mean {
            let c = 1.0 / ops.len() as f64;
            acc = g.add_op("chain", Op::Scale(c), node.layer, node.t, node.role, &[acc]);
        }
        redirect(g, n, acc);
    }
    if !targets.is_empty() {
        g.ad = None;
    }
    targets.len()
}

/// Per-step, non-leaf forward ancestors of `roots` (roots included),
/// stopping at shared nodes (parameters, inputs, statistics, means).
fn per_step_ancestors(g: &Graph, roots: &[NodeIndex]) -> HashSet<NodeIndex> {
    let mut set = HashSet::new();
    let mut stack: Vec<NodeIndex> = roots.to_vec();
    while let Some(n) = stack.pop() {
        let node = &g.g[n];
        if node.t.is_none() || node.op.is_leaf() || is_backward(node) {
            continue;
        }
        if set.insert(n) {
            stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        }
    }
    set
}

/// Batch-norm recompute for time-major schedules. For each forward
/// `channel_mean` over T > 1 per-step values `z_t` (and its `channel_var`),
/// duplicates the per-step forward that computes the `z_t`, takes per-step
/// statistics of the copy and combines them exactly; users of the old
/// statistics (normalisations, running-statistics outputs, the backward)
/// read the new ones. Returns how many batch norms were rewritten.
pub fn recompute_bn(g: &mut Graph) -> usize {
    let means: Vec<NodeIndex> = g
        .topo_order()
        .expect("acyclic")
        .into_iter()
        .filter(|&n| {
            let node = &g.g[n];
            let ops = g.operands(n);
            node.op == Op::ChannelMean
                && !is_backward(node)
                && ops.len() > 1
                && ops.iter().all(|&o| g.g[o].t.is_some())
        })
        .collect();
    for &mean in &means {
        let layer = g.g[mean].layer;
        let zs = g.operands(mean);
        let var = g.users(mean).into_iter().find(|&u| {
            g.g[u].op == Op::ChannelVar && {
                let ops = g.operands(u);
                ops[0] == mean && ops[1..] == zs[..]
            }
        });
        // Clone the per-step forward that computes the z_t, in topological
        // order so operands are cloned before their users.
        let set = per_step_ancestors(g, &zs);
        let mut copy: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        for n in g.topo_order().expect("acyclic") {
            if !set.contains(&n) {
                continue;
            }
            let args: Vec<NodeIndex> = g
                .operands(n)
                .into_iter()
                .map(|o| copy.get(&o).copied().unwrap_or(o))
                .collect();
            let node = g.g[n].clone();
            copy.insert(n, g.add(node, &args));
        }
        let fwd = |g: &mut Graph, op: &Op, t: Option<usize>, args: &[NodeIndex]| {
            g.add_op("recompute-bn", op.clone(), layer, t, Role::Forward, args)
        };
        let mut step_means = Vec::new();
        let mut step_vars = Vec::new();
        for &z in &zs {
            let t = g.g[z].t;
            let zc = copy[&z];
            let m = fwd(g, &Op::ChannelMean, t, &[zc]);
            if var.is_some() {
                step_vars.push(fwd(g, &Op::ChannelVar, t, &[m, zc]));
            }
            step_means.push((m, t));
        }
        let ms: Vec<NodeIndex> = step_means.iter().map(|&(m, _)| m).collect();
        let new_mean = fwd(g, &Op::TimeMean, None, &ms);
        if let Some(var) = var {
            let mut spreads = Vec::new();
            for &(m, t) in &step_means {
                let d = fwd(g, &Op::Sub, t, &[m, new_mean]);
                spreads.push(fwd(g, &Op::Mul, t, &[d, d]));
            }
            let within = fwd(g, &Op::TimeMean, None, &step_vars);
            let between = fwd(g, &Op::TimeMean, None, &spreads);
            let new_var = fwd(g, &Op::Add, None, &[within, between]);
            redirect(g, var, new_var);
        }
        redirect(g, mean, new_mean);
    }
    if !means.is_empty() {
        g.ad = None;
    }
    means.len()
}

/// The execution order of `g` under `schedule`: a topological order.
pub fn order(g: &Graph, schedule: Schedule) -> Vec<NodeIndex> {
    let topo = g.topo_order().expect("a verified graph is acyclic");
    let bound = g.g.node_bound();
    let steps = g.steps.max(1);
    let layers = g.layers.len().max(1);

    // Effective step and layer of every node.
    let mut t_eff = vec![0usize; bound];
    for &n in &topo {
        let node = &g.g[n];
        t_eff[n.index()] = match node.t {
            Some(t) => t,
            None if is_backward(node) => g
                .operands(n)
                .iter()
                .filter(|&&o| is_backward(&g.g[o]))
                .map(|o| t_eff[o.index()])
                .min()
                .unwrap_or(steps - 1),
            None => g
                .operands(n)
                .iter()
                .map(|o| t_eff[o.index()])
                .max()
                .unwrap_or(0),
        };
    }
    let layer = |n: NodeIndex| g.g[n].layer.unwrap_or(0);
    let stage = match schedule {
        Schedule::TimeMajor => stages(g, &topo),
        Schedule::LayerMajor => vec![0; bound],
    };
    let key = |n: NodeIndex| -> (usize, usize, usize, usize, usize) {
        let i = n.index();
        let (t, l) = (t_eff[i], layer(n));
        if is_backward(&g.g[n]) {
            let (rt, rl) = (steps - 1 - t.min(steps - 1), layers - 1 - l.min(layers - 1));
            match schedule {
                Schedule::LayerMajor => (1, 0, rl, rt, i),
                Schedule::TimeMajor => (1, 0, rt, rl, i),
            }
        } else {
            match schedule {
                Schedule::LayerMajor => (0, 0, l, t, i),
                Schedule::TimeMajor => (0, stage[i], t, l, i),
            }
        }
    };

    // Kahn's algorithm. Among the ready nodes of the smallest group (the
    // key without the node index), take the one that adds the fewest live
    // bytes under the memory planner's model (its output, unless written in
    // place, minus the operands it is the last user of); then the oldest.
    let kept: HashSet<NodeIndex> = g.outputs.iter().map(|&(_, n)| n).collect();
    let mut indeg = vec![0usize; bound];
    let mut users_left = vec![0usize; bound];
    for n in g.g.node_indices() {
        indeg[n.index()] = g.g.edges_directed(n, Direction::Incoming).count();
        users_left[n.index()] = g.g.edges_directed(n, Direction::Outgoing).count();
    }
    // Live bytes added by running `n` now; `left(o)` is how many of o's
    // uses are still to run.
    let delta = |n: NodeIndex, left: &dyn Fn(NodeIndex) -> usize| -> i64 {
        let node = &g.g[n];
        let ops = g.operands(n);
        let uses = |o: NodeIndex| ops.iter().filter(|&&p| p == o).count();
        let dies = |o: NodeIndex| !g.g[o].op.resident() && !kept.contains(&o) && left(o) == uses(o);
        let out = crate::ir::value_bytes(&node.shape) as i64;
        let mut seen = HashSet::new();
        let mut freed = 0i64;
        for &o in &ops {
            if seen.insert(o) && dies(o) {
                freed += crate::ir::value_bytes(&g.g[o].shape) as i64;
            }
        }
        let in_place = ops.first().is_some_and(|&o| {
            node.op.in_place()
                && dies(o)
                && uses(o) == 1
                && crate::ir::value_bytes(&g.g[o].shape) == out as u64
        });
        if in_place {
            -(freed - out)
        } else {
            out - freed
        }
    };
    // `delta(n)`, and the net bytes after also running the chain of nodes
    // that each read only their predecessor's value as their last pending
    // operand (an in-place chain into an accumulator nets to zero): a
    // one-path lookahead that runs side branches which free what they
    // allocate before branches that keep it.
    let cost = |n: NodeIndex, users_left: &[usize], indeg: &[usize]| -> (i64, i64) {
        let first = delta(n, &|o| users_left[o.index()]);
        let mut net = first;
        let mut cur = n;
        let mut done: Vec<NodeIndex> = vec![n];
        for _ in 0..8 {
            let mut outs = g.g.edges_directed(cur, Direction::Outgoing);
            let (Some(e), None) = (outs.next(), outs.next()) else {
                break;
            };
            let u = e.target();
            if indeg[u.index()] != 1 {
                break;
            }
            let left = |o: NodeIndex| {
                let ran = done
                    .iter()
                    .map(|&d| g.operands(d).iter().filter(|&&p| p == o).count())
                    .sum::<usize>();
                users_left[o.index()] - ran
            };
            net += delta(u, &left);
            done.push(u);
            cur = u;
        }
        (net, first)
    };
    type Key = (usize, usize, usize, usize);
    let group = |n: NodeIndex| -> Key {
        let k = key(n);
        (k.0, k.1, k.2, k.3)
    };
    let mut ready: BinaryHeap<Reverse<(Key, usize)>> =
        g.g.node_indices()
            .filter(|n| indeg[n.index()] == 0)
            .map(|n| Reverse((group(n), n.index())))
            .collect();
    let mut out = Vec::with_capacity(g.node_count());
    while let Some(Reverse((k, first))) = ready.pop() {
        let mut same = vec![first];
        while let Some(&Reverse((k2, i))) = ready.peek() {
            if k2 != k {
                break;
            }
            ready.pop();
            same.push(i);
        }
        let pick = *same
            .iter()
            .min_by_key(|&&i| (cost(NodeIndex::new(i), &users_left, &indeg), i))
            .expect("non-empty");
        for &i in &same {
            if i != pick {
                ready.push(Reverse((k, i)));
            }
        }
        let n = NodeIndex::new(pick);
        out.push(n);
        for o in g.operands(n) {
            users_left[o.index()] -= 1;
        }
        for e in g.g.edges_directed(n, Direction::Outgoing) {
            let m = e.target();
            indeg[m.index()] -= 1;
            if indeg[m.index()] == 0 {
                ready.push(Reverse((group(m), m.index())));
            }
        }
    }
    debug_assert_eq!(out.len(), g.node_count());
    out
}

/// Time-major stages of the forward nodes (see the module documentation).
fn stages(g: &Graph, topo: &[NodeIndex]) -> Vec<usize> {
    let bound = g.g.node_bound();
    let fwd = |n: NodeIndex| !is_backward(&g.g[n]);
    let per_step = |n: NodeIndex| {
        let node = &g.g[n];
        fwd(n) && node.t.is_some() && !node.op.is_leaf()
    };
    // Barriers: shared computed forward nodes that depend on per-step
    // values and are read by per-step nodes (batch-norm statistics; not the
    // time accumulators, which only shared nodes read).
    let mut timed = vec![false; bound];
    let mut barrier = vec![false; bound];
    for &n in topo {
        let ops = g.operands(n);
        timed[n.index()] = per_step(n) || ops.iter().any(|o| timed[o.index()]);
        let node = &g.g[n];
        barrier[n.index()] = fwd(n)
            && node.t.is_none()
            && !node.op.is_leaf()
            && timed[n.index()]
            && g.users(n).into_iter().any(per_step);
    }
    let b = |o: NodeIndex| usize::from(barrier[o.index()]);
    // Earliest stage.
    let mut early = vec![0usize; bound];
    for &n in topo {
        early[n.index()] = g
            .operands(n)
            .iter()
            .filter(|&&o| fwd(o))
            .map(|&o| early[o.index()] + b(o))
            .max()
            .unwrap_or(0);
    }
    // Per-step nodes that lead, through per-step users, to a node that
    // reads a barrier: they are pulled to the stage their users run at.
    let mut reach = vec![false; bound];
    let mut stage = vec![0usize; bound];
    for &n in topo.iter().rev() {
        if !per_step(n) {
            continue;
        }
        let anchored = g.operands(n).iter().any(|o| barrier[o.index()]);
        let users: Vec<NodeIndex> = g
            .users(n)
            .into_iter()
            .filter(|&u| per_step(u) && reach[u.index()])
            .collect();
        if anchored || !users.is_empty() {
            reach[n.index()] = true;
            let late = users.iter().map(|u| stage[u.index()]).min();
            stage[n.index()] = early[n.index()].max(late.unwrap_or(0));
        }
    }
    // Everything else follows its operands.
    for &n in topo {
        if reach[n.index()] || !fwd(n) {
            continue;
        }
        stage[n.index()] = g
            .operands(n)
            .iter()
            .filter(|&&o| fwd(o))
            .map(|&o| stage[o.index()] + b(o))
            .max()
            .unwrap_or(0)
            .max(early[n.index()]);
    }
    stage
}

/// Why an order is not a schedule of a graph.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order has {order} nodes, the graph {graph}")]
    Count { order: usize, graph: usize },
    #[error("node {0} is not in the graph")]
    Missing(usize),
    #[error("node {0} appears twice")]
    Twice(usize),
    #[error("node {node} ({op}) runs before its operand {operand} ({operand_op})")]
    Early {
        node: usize,
        op: &'static str,
        operand: usize,
        operand_op: &'static str,
    },
}

/// Whether `order` is a topological order of `g` that runs every node once.
pub fn is_topological(g: &Graph, order: &[NodeIndex]) -> Result<(), OrderError> {
    if order.len() != g.node_count() {
        return Err(OrderError::Count {
            order: order.len(),
            graph: g.node_count(),
        });
    }
    let mut pos = vec![usize::MAX; g.g.node_bound()];
    for (i, &n) in order.iter().enumerate() {
        if !g.g.contains_node(n) {
            return Err(OrderError::Missing(n.index()));
        }
        if pos[n.index()] != usize::MAX {
            return Err(OrderError::Twice(n.index()));
        }
        pos[n.index()] = i;
    }
    for e in (&g.g).edge_references() {
        if pos[e.source().index()] >= pos[e.target().index()] {
            return Err(OrderError::Early {
                node: e.target().index(),
                op: g.g[e.target()].op.name(),
                operand: e.source().index(),
                operand_op: g.g[e.source()].op.name(),
            });
        }
    }
    Ok(())
}
