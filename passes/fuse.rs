//! Fusion: groups elementwise nodes into kernels of the kernel IR
//! (`codegen/kernel_ir`), re-rolling each group's T unrolled copies into one
//! time loop.
//!
//! 1. **Groups.** Elementwise ops (add, mul, scale, spike, surrogate,
//!    bias/scale per channel, normalize, …) that feed each other with the
//!    same shape and in the same phase (forward or backward) are merged,
//!    greedily, while the group stays *convex* (no path leaves it and comes
//!    back, so it can run as one kernel) and its cross-step edges all point
//!    one way (forward recurrence or reverse-time backward). A value whose
//!    channel sums flow back into its own elementwise descendants (batch
//!    norm's backward g) does not take its users into its group
//!    ([`reentrant`]).
//!    Time reductions (`time_mean`, the n-ary time `sum`) whose operands all
//!    lie in one group become its accumulators: the rate-mode r, g and x̄.
//! 2. **Re-rolling.** Each step's nodes are put in a canonical order and
//!    named by a *local colour* (a hash of the op and its same-step
//!    operands; a value from another step is seen only through its op), so
//!    step t and step t+1 print the same body whenever they compute the same
//!    thing. Values crossing steps become registers, per-step inputs and
//!    outputs become pointer-table streams. Consecutive equal bodies form a
//!    run; a group whose steps do not collapse to a few runs is left
//!    unfused, so generated code never grows with T.
//!
//! Everything not fused stays a node of the plan and runs on the target's
//! library kernels (GEMM, convolution, pooling, channel reductions, loss).

use crate::ir::kernel::{self as kir, Expr, Index, Kernel, Slot, Stmt};
use crate::ir::{scalar, Graph, NodeIndex, Op, Role};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};

/// A group's bodies may differ at most at this many step ranges (first
/// step, steady state, last step, and one spare).
const MAX_RUNS: usize = 4;

/// The largest pooling window fusion absorbs (`absorb_pools`).
const MAX_WINDOW: usize = 2;

/// An executable plan: units in execution order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub units: Vec<Unit>,
    pub kernels: Vec<Fused>,
}

impl Plan {
    /// A plan of one node unit per node, in `order` (no fused kernels).
    pub fn node_by_node(order: Vec<NodeIndex>) -> Plan {
        Plan {
            units: order.into_iter().map(Unit::Node).collect(),
            kernels: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// One graph node, run by the target's kernel for its op.
    Node(NodeIndex),
    /// `kernels[k]`.
    Kernel(usize),
    /// Step `t` of `kernels[k]` alone (time-major plans; `passes/fuse_time`).
    Step(usize, usize),
}

#[derive(Clone, Debug)]
pub struct Fused {
    pub kernel: Kernel,
    /// The tensor behind each pointer-table slot (`None`: a step the stream
    /// does not have; never touched).
    pub table: Vec<Option<NodeIndex>>,
    /// Which slots the kernel writes (the rest it reads).
    pub writes: Vec<bool>,
    /// Every node the kernel computes, stored or not.
    pub nodes: Vec<NodeIndex>,
}

impl Fused {
    /// The graph values the kernel reads.
    pub fn reads(&self) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self
            .table
            .iter()
            .zip(&self.writes)
            .filter_map(|(n, w)| if *w { None } else { *n })
            .collect();
        v.sort();
        v.dedup();
        v
    }
    /// The graph values the kernel writes.
    pub fn outputs(&self) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self
            .table
            .iter()
            .zip(&self.writes)
            .filter_map(|(n, w)| if *w { *n } else { None })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Statistics for `snnc graph --format stats` and the pass's tests.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FuseStats {
    pub kernels: usize,
    pub fused_nodes: usize,
    pub node_units: usize,
    /// Groups left unfused because their steps did not re-roll.
    pub not_rerolled: usize,
}

impl Plan {
    pub fn stats(&self) -> FuseStats {
        FuseStats {
            kernels: self.kernels.len(),
            fused_nodes: self.kernels.iter().map(|k| k.nodes.len()).sum(),
            node_units: self
                .units
                .iter()
                .filter(|u| matches!(u, Unit::Node(_)))
                .count(),
            not_rerolled: 0,
        }
    }
}

fn backward(role: Role) -> bool {
    matches!(role, Role::Backward | Role::Gradient)
}

/// What kind of fusible node `n` is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    No,
    /// Elementwise on one step (or on step-free values).
    Elem,
    /// A step-free time reduction of per-step operands.
    Reducer,
}

fn kind(g: &Graph, n: NodeIndex) -> Kind {
    let node = &g.g[n];
    if !node.op.elementwise() {
        return Kind::No;
    }
    let ops = g.operands(n);
    let timed = ops.iter().filter(|&&a| g.g[a].t.is_some()).count();
    match node.t {
        Some(_) => Kind::Elem,
        None if timed == 0 => Kind::Elem,
        None if timed == ops.len() && matches!(node.op, Op::Sum | Op::TimeMean) => Kind::Reducer,
        None => Kind::No,
    }
}

struct Groups {
    parent: Vec<usize>,
    members: Vec<Vec<NodeIndex>>,
    /// +1 forward recurrence, −1 reverse time, 0 none yet.
    dir: Vec<i32>,
    maxpos: Vec<usize>,
}

impl Groups {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.parent[r] != r {
            r = self.parent[r];
        }
        let mut y = x;
        while self.parent[y] != r {
            let next = self.parent[y];
            self.parent[y] = r;
            y = next;
        }
        r
    }
}

/// Builds the plan: fused kernels plus the nodes left to library kernels.
pub fn fuse(g: &Graph) -> Plan {
    fuse_keeping(g, &[])
}

/// As `fuse`; the values of `keep` are stored even when only the kernel
/// uses them (callers read them back, e.g. spikes for firing rates).
pub fn fuse_keeping(g: &Graph, keep: &[NodeIndex]) -> Plan {
    let order = g.topo_order().expect("a verified graph is acyclic");
    let bound = g.g.node_bound();
    let mut pos = vec![usize::MAX; bound];
    for (i, n) in order.iter().enumerate() {
        pos[n.index()] = i;
    }
    let kinds: Vec<Kind> = (0..bound)
        .map(|i| {
            let n = NodeIndex::new(i);
            if g.g.contains_node(n) {
                kind(g, n)
            } else {
                Kind::No
            }
        })
        .collect();
    let mut gr = Groups {
        parent: (0..bound).collect(),
        members: (0..bound)
            .map(|i| {
                if kinds[i] == Kind::Elem {
                    vec![NodeIndex::new(i)]
                } else {
                    vec![]
                }
            })
            .collect(),
        dir: vec![0; bound],
        maxpos: pos.clone(),
    };
    let mut stamp = vec![0u32; bound];
    let mut gen = 0u32;
    let reenter = reentrant(g, &kinds, &mut stamp, &mut gen);

    // 1. Greedy merging along same-shape edges, in topological order.
    for &v in &order {
        if kinds[v.index()] != Kind::Elem {
            continue;
        }
        let vn = &g.g[v];
        for e in g.g.edges_directed(v, Direction::Incoming) {
            let (u, p) = (e.source(), *e.weight());
            let un = &g.g[u];
            if kinds[u.index()] != Kind::Elem
                || reenter[u.index()]
                || vn.op.chan_operand(p)
                || un.shape != vn.shape
                || backward(un.role) != backward(vn.role)
                || un.t.is_some() != vn.t.is_some()
            {
                continue;
            }
            let dt = match (vn.t, un.t) {
                (Some(a), Some(b)) => a as i64 - b as i64,
                _ => 0,
            };
            if dt.abs() > 1 {
                continue;
            }
            let (a, b) = (gr.find(u.index()), gr.find(v.index()));
            if a == b {
                continue;
            }
            let d = dt.signum() as i32;
            let dirs = [gr.dir[a], gr.dir[b], d];
            let fwd = dirs.contains(&1);
            let rev = dirs.contains(&-1);
            if fwd && rev {
                continue;
            }
            gen += 1;
            if !convex_union(g, &gr, a, b, &mut stamp, gen, &pos) {
                continue;
            }
            // Union: a becomes the root.
            let mb = std::mem::take(&mut gr.members[b]);
            gr.members[a].extend(mb);
            gr.parent[b] = a;
            gr.dir[a] = if fwd {
                1
            } else if rev {
                -1
            } else {
                0
            };
            gr.maxpos[a] = gr.maxpos[a].max(gr.maxpos[b]);
        }
    }

    // 1b. Re-rolling independent steps: groups that live in one step each
    // and compute the same thing (equal colour multisets) at different
    // steps merge into one group, whose kernel loops over those steps.
    let mut buckets: HashMap<(u64, bool), Vec<(usize, usize)>> = HashMap::new();
    for (i, k) in kinds.iter().enumerate() {
        if *k != Kind::Elem || gr.find(i) != i {
            continue;
        }
        let members = gr.members[i].clone();
        let t0 = g.g[members[0]].t;
        if t0.is_none() || members.iter().any(|m| g.g[*m].t != t0) {
            continue;
        }
        let mut ms = members.clone();
        ms.sort_by_key(|n| pos[n.index()]);
        let inside: std::collections::HashSet<NodeIndex> = ms.iter().copied().collect();
        let cs = colours(g, &ms, &inside);
        let mut sig: Vec<u64> = cs.values().copied().collect();
        sig.sort();
        let phase = backward(g.g[ms[0]].role);
        buckets
            .entry((hash_of((sig, &g.g[ms[0]].shape)), phase))
            .or_default()
            .push((t0.unwrap_or(0), i));
    }
    let mut bucket_list: Vec<Vec<(usize, usize)>> = buckets.into_values().collect();
    bucket_list.sort();
    for mut b in bucket_list {
        b.sort();
        let mut root = b[0].1;
        for &(_, other) in &b[1..] {
            let (a, o) = (gr.find(root), gr.find(other));
            if a == o {
                continue;
            }
            gen += 1;
            if !convex_union(g, &gr, a, o, &mut stamp, gen, &pos) {
                continue;
            }
            let mb = std::mem::take(&mut gr.members[o]);
            gr.members[a].extend(mb);
            gr.parent[o] = a;
            gr.maxpos[a] = gr.maxpos[a].max(gr.maxpos[o]);
            root = a;
        }
    }

    // Group of each member.
    let mut group_of: Vec<Option<usize>> = vec![None; bound];
    for i in 0..bound {
        if kinds[i] == Kind::Elem {
            let r = gr.find(i);
            if gr.members[r].len() > 1 {
                group_of[i] = Some(r);
            }
        }
    }

    // 2. Reducers join the group all their operands belong to. An operand
    // left alone in step 1 joins that group first when it can: the rate
    // pass's step-0 surrogate σ'(x) of a step-free input x shares no edge
    // with the step's other neuron work (both only read x), and without it
    // the whole mean g = mean_t ρ_t σ'(u_t) would be written out step by
    // step and summed by a separate pass.
    let mut reducers: HashMap<usize, Vec<NodeIndex>> = HashMap::new();
    for &r in &order {
        if kinds[r.index()] != Kind::Reducer {
            continue;
        }
        let ops = g.operands(r);
        let Some(grp) = ops.iter().find_map(|a| group_of[a.index()]) else {
            continue;
        };
        let grp = gr.find(grp);
        for &a in &ops {
            let ai = a.index();
            let lone = kinds[ai] == Kind::Elem
                && group_of[ai].is_none()
                && g.g[a].t.is_some()
                && g.g[a].shape == g.g[r].shape
                && backward(g.g[a].role) == backward(g.g[gr.members[grp][0]].role);
            if !lone {
                continue;
            }
            let b = gr.find(ai);
            gen += 1;
            if b == grp || !convex_union(g, &gr, grp, b, &mut stamp, gen, &pos) {
                continue;
            }
            let mb = std::mem::take(&mut gr.members[b]);
            gr.members[grp].extend(mb);
            gr.parent[b] = grp;
            gr.maxpos[grp] = gr.maxpos[grp].max(gr.maxpos[b]);
            group_of[ai] = Some(grp);
        }
        if ops
            .iter()
            .any(|a| group_of[a.index()] != Some(grp) || g.g[*a].shape != g.g[r].shape)
        {
            continue;
        }
        gen += 1;
        if reaches_group(
            g,
            &[r],
            &group_of,
            grp,
            gr.maxpos[grp],
            &mut stamp,
            gen,
            &pos,
        ) {
            continue;
        }
        reducers.entry(grp).or_default().push(r);
    }

    // 3. Kernels.
    let mut kernels = Vec::new();
    let mut unit_of: Vec<Option<usize>> = vec![None; bound];
    let mut roots: Vec<usize> = (0..bound).filter(|&i| group_of[i] == Some(i)).collect();
    roots.sort_by_key(|&r| gr.members[r].iter().map(|n| pos[n.index()]).min());
    for root in roots {
        let mut members = gr.members[root].clone();
        members.sort_by_key(|n| pos[n.index()]);
        let reds = reducers.remove(&root).unwrap_or_default();
        let name = kernel_name(g, kernels.len(), members[0]);
        if let Some(mut f) = build(g, &members, &reds, gr.dir[root] < 0, name, keep) {
            let k = kernels.len();
            for n in members.iter().chain(&reds) {
                unit_of[n.index()] = Some(k);
            }
            for p in absorb_pools(g, &mut f, keep) {
                unit_of[p.index()] = Some(k);
            }
            kernels.push(f);
        }
    }

    // 4. Units in a topological order of the condensed graph. Groups that
    // are convex one by one can still form a cycle together (A feeds B
    // through a GEMM while B feeds A through another): dissolve the
    // smallest kernel on such a cycle until none is left.
    let mut alive = vec![true; kernels.len()];
    let units = loop {
        match order_units(g, &order, &pos, &unit_of) {
            Ok(units) => break units,
            Err(cycle) => {
                let k = cycle
                    .iter()
                    .filter_map(|u| match u {
                        Unit::Kernel(k) | Unit::Step(k, _) => Some(*k),
                        Unit::Node(_) => None,
                    })
                    .min_by_key(|&k| kernels[k].nodes.len())
                    .expect("a cycle of single nodes cannot exist in a verified graph");
                alive[k] = false;
                for n in &kernels[k].nodes {
                    unit_of[n.index()] = None;
                }
            }
        }
    };
    // Renumber the surviving kernels.
    let mut new_index = vec![usize::MAX; kernels.len()];
    let mut kept = Vec::new();
    for (k, f) in kernels.into_iter().enumerate() {
        if alive[k] {
            new_index[k] = kept.len();
            let mut f: Fused = f;
            let suffix = f
                .kernel
                .name
                .split_once('_')
                .map(|(_, s)| s.to_string())
                .unwrap_or_default();
            f.kernel.name = format!("k{}_{suffix}", kept.len());
            kept.push(f);
        }
    }
    let units = units
        .into_iter()
        .map(|u| match u {
            Unit::Kernel(k) => Unit::Kernel(new_index[k]),
            Unit::Step(k, t) => Unit::Step(new_index[k], t),
            u => u,
        })
        .collect();
    Plan {
        units,
        kernels: kept,
    }
}

/// Kahn's algorithm over the graph condensed by `unit_of`; ties go to the
/// unit whose first node comes first in the graph's own order. On a cycle,
/// returns one cycle's units.
fn order_units(
    g: &Graph,
    order: &[NodeIndex],
    pos: &[usize],
    unit_of: &[Option<usize>],
) -> Result<Vec<Unit>, Vec<Unit>> {
    let unit_key = |n: NodeIndex| match unit_of[n.index()] {
        Some(k) => Unit::Kernel(k),
        None => Unit::Node(n),
    };
    let mut first: HashMap<Unit, usize> = HashMap::new();
    let mut indeg: HashMap<Unit, usize> = HashMap::new();
    let mut succ: HashMap<Unit, Vec<Unit>> = HashMap::new();
    for &n in order {
        let u = unit_key(n);
        first.entry(u).or_insert(pos[n.index()]);
        indeg.entry(u).or_insert(0);
        for m in g.g.neighbors_directed(n, Direction::Outgoing) {
            let w = unit_key(m);
            if w != u {
                succ.entry(u).or_default().push(w);
                *indeg.entry(w).or_insert(0) += 1;
            }
        }
    }
    let total = indeg.len();
    let mut ready: BinaryHeap<std::cmp::Reverse<(usize, UnitKey)>> = indeg
        .iter()
        .filter(|(_, &d)| d == 0)
        .map(|(u, _)| std::cmp::Reverse((first[u], UnitKey(*u))))
        .collect();
    let mut units = Vec::new();
    while let Some(std::cmp::Reverse((_, UnitKey(u)))) = ready.pop() {
        units.push(u);
        for w in succ.get(&u).cloned().unwrap_or_default() {
            let d = indeg.get_mut(&w).expect("counted");
            *d -= 1;
            if *d == 0 {
                ready.push(std::cmp::Reverse((first[&w], UnitKey(w))));
            }
        }
    }
    if units.len() == total {
        return Ok(units);
    }
    // Walk backwards along stuck predecessors until a unit repeats: every
    // stuck unit has a stuck predecessor, so this finds a cycle.
    let mut pred: HashMap<Unit, Unit> = HashMap::new();
    for (u, ws) in &succ {
        if indeg[u] > 0 {
            for w in ws {
                if indeg[w] > 0 {
                    pred.entry(*w).or_insert(*u);
                }
            }
        }
    }
    let start = *indeg
        .iter()
        .find(|(_, &d)| d > 0)
        .map(|(u, _)| u)
        .expect("stuck units exist");
    let mut seen: Vec<Unit> = vec![start];
    let mut u = start;
    loop {
        u = pred[&u];
        if let Some(i) = seen.iter().position(|&x| x == u) {
            return Err(seen[i..].to_vec());
        }
        seen.push(u);
    }
}

impl std::hash::Hash for Unit {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Unit::Node(n) => (0u8, n.index(), 0).hash(h),
            Unit::Kernel(k) => (1u8, *k, 0).hash(h),
            Unit::Step(k, t) => (2u8, *k, *t).hash(h),
        }
    }
}

/// Orders units in the ready heap (ties on position cannot happen, but the
/// heap needs a total order).
#[derive(Clone, Copy, PartialEq, Eq)]
struct UnitKey(Unit);
impl PartialOrd for UnitKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for UnitKey {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        let k = |u: &Unit| match u {
            Unit::Node(n) => (0, n.index(), 0),
            Unit::Kernel(k) => (1, *k, 0),
            Unit::Step(k, t) => (2, *k, *t),
        };
        k(&self.0).cmp(&k(&o.0))
    }
}

fn kernel_name(g: &Graph, k: usize, first: NodeIndex) -> String {
    let node = &g.g[first];
    let layer = node
        .layer
        .map(|l| {
            let li = &g.layers[l];
            format!("{}_{}", li.keyword, li.path)
        })
        .unwrap_or_else(|| "graph".into());
    let phase = if backward(node.role) { "bwd" } else { "fwd" };
    let clean: String = layer
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("k{k}_{clean}_{phase}")
}

/// Would merging groups `a` and `b` keep the union convex? A path from the
/// union back into it through outside nodes would make it unschedulable as
/// one kernel.
fn convex_union(
    g: &Graph,
    gr: &Groups,
    a: usize,
    b: usize,
    stamp: &mut [u32],
    gen: u32,
    pos: &[usize],
) -> bool {
    let limit = gr.maxpos[a].max(gr.maxpos[b]);
    let inside = |gr: &Groups, n: NodeIndex| {
        // Membership without path compression (read-only).
        let mut r = n.index();
        while gr.parent[r] != r {
            r = gr.parent[r];
        }
        r == a || r == b
    };
    let mut stack = Vec::new();
    for &m in gr.members[a].iter().chain(&gr.members[b]) {
        for u in g.g.neighbors_directed(m, Direction::Outgoing) {
            if !inside(gr, u) && pos[u.index()] < limit && stamp[u.index()] != gen {
                stamp[u.index()] = gen;
                stack.push(u);
            }
        }
    }
    while let Some(x) = stack.pop() {
        for u in g.g.neighbors_directed(x, Direction::Outgoing) {
            if pos[u.index()] > limit || stamp[u.index()] == gen {
                continue;
            }
            if inside(gr, u) {
                return false;
            }
            stamp[u.index()] = gen;
            stack.push(u);
        }
    }
    true
}

/// Elementwise nodes whose channel reduction flows back into their own
/// elementwise descendants: batch norm's backward sums g = δ·σ' per
/// channel, and the input gradient computed from g also reads those sums.
/// g is stored for the sums anyway; merging g's users into g's kernel
/// would only strand them there (the group cannot reach past the sums
/// without leaving and re-entering), so they are left to join the kernel
/// downstream of the sums, which then reads g instead of storing them.
fn reentrant(g: &Graph, kinds: &[Kind], stamp: &mut [u32], gen: &mut u32) -> Vec<bool> {
    let mut out = vec![false; kinds.len()];
    for u in g.g.node_indices() {
        if kinds[u.index()] != Kind::Elem {
            continue;
        }
        let sums: Vec<NodeIndex> = g
            .users(u)
            .into_iter()
            .filter(|&r| matches!(g.g[r].op, Op::ChannelSum | Op::ChannelDot))
            .collect();
        if sums.is_empty() {
            continue;
        }
        // Mark u's elementwise descendants of its shape.
        *gen += 1;
        let own = *gen;
        let mut stack = vec![u];
        while let Some(x) = stack.pop() {
            for y in g.g.neighbors_directed(x, Direction::Outgoing) {
                let elem = kinds[y.index()] == Kind::Elem && g.g[y].shape == g.g[u].shape;
                if elem && stamp[y.index()] != own {
                    stamp[y.index()] = own;
                    stack.push(y);
                }
            }
        }
        // Does anything downstream of the sums carry one of those marks?
        *gen += 1;
        let seen = *gen;
        let mut stack = sums;
        while let Some(x) = stack.pop() {
            for y in g.g.neighbors_directed(x, Direction::Outgoing) {
                match stamp[y.index()] {
                    s if s == own => {
                        out[u.index()] = true;
                        stack.clear();
                        break;
                    }
                    s if s == seen => {}
                    _ => {
                        stamp[y.index()] = seen;
                        stack.push(y);
                    }
                }
            }
        }
    }
    out
}

/// Does any path from `from` reach a member of `grp`?
#[allow(clippy::too_many_arguments)]
fn reaches_group(
    g: &Graph,
    from: &[NodeIndex],
    group_of: &[Option<usize>],
    grp: usize,
    limit: usize,
    stamp: &mut [u32],
    gen: u32,
    pos: &[usize],
) -> bool {
    let mut stack: Vec<NodeIndex> = from.to_vec();
    while let Some(x) = stack.pop() {
        for u in g.g.neighbors_directed(x, Direction::Outgoing) {
            if pos[u.index()] > limit || stamp[u.index()] == gen {
                continue;
            }
            if group_of[u.index()] == Some(grp) {
                return true;
            }
            stamp[u.index()] = gen;
            stack.push(u);
        }
    }
    false
}

/// A hashable description of an op, without the per-step stream ids and
/// slice indices (the same computation at another step).
fn op_key(op: &Op) -> String {
    match op {
        Op::Poisson { .. } => "poisson".into(),
        Op::TimeSlice { .. } => "time_slice".into(),
        Op::DropoutMask { p, .. } => format!("dropout {p}"),
        // Constants may differ by step (the rate pass's ρ_t): they become
        // per-step constant tables when the bodies are otherwise equal.
        Op::Scale(_) => "scale".into(),
        Op::AddScalar(_) => "add_scalar".into(),
        op => format!("{op:?}"),
    }
}

fn hash_of(x: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// Table slots by key, allocated in first-use order.
#[derive(Default)]
struct Slots {
    keys: HashMap<(u8, u64, usize, usize), usize>,
    len: usize,
    table: Vec<Option<NodeIndex>>,
    writes: Vec<bool>,
}

impl Slots {
    /// The base slot of the stream (or tensor) with this key.
    fn get(&mut self, key: (u8, u64, usize, usize), width: usize, write: bool) -> usize {
        if let Some(&s) = self.keys.get(&key) {
            return s;
        }
        let s = self.len;
        self.len += width;
        self.table.resize(self.len, None);
        self.writes.resize(self.len, write);
        self.keys.insert(key, s);
        s
    }
    /// Records that slot `s` holds `n`; false on a conflict.
    fn bind(&mut self, s: usize, n: NodeIndex) -> bool {
        match self.table[s] {
            Some(m) => m == n,
            None => {
                self.table[s] = Some(n);
                true
            }
        }
    }
}

/// The values a kernel must store whatever reads them inside it: the
/// graph's outputs and the values callers keep.
fn read_after(g: &Graph, keep: &[NodeIndex]) -> std::collections::HashSet<NodeIndex> {
    g.outputs
        .iter()
        .map(|&(_, n)| n)
        .chain(keep.iter().copied())
        .collect()
}

/// One group's kernel, or None when its steps do not re-roll.
fn build(
    g: &Graph,
    members: &[NodeIndex],
    reducers: &[NodeIndex],
    reverse: bool,
    name: String,
    keep: &[NodeIndex],
) -> Option<Fused> {
    let timed = g.g[members[0]].t.is_some();
    let steps = if timed { g.steps } else { 1 };
    let time = |n: NodeIndex| g.g[n].t.unwrap_or(0);
    let inside: std::collections::HashSet<NodeIndex> = members.iter().copied().collect();
    let red_ix: HashMap<NodeIndex, usize> =
        reducers.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let shape = g.g[members[0]].shape.clone();
    let n: usize = shape.iter().product();
    let chan = if shape.len() >= 2 {
        (shape[1], shape[2..].iter().product())
    } else {
        (1, 1)
    };
    let output_nodes = read_after(g, keep);

    // Every edge inside the group goes forward one step, back one step
    // (reverse time), or stays within its step: one register carries it.
    for &m in members {
        for (p, a) in g.operands(m).into_iter().enumerate() {
            if inside.contains(&a) {
                let dt = time(m) as i64 - time(a) as i64;
                let ok = dt == 0 || (dt == 1 && !reverse) || (dt == -1 && reverse);
                if !ok || g.g[m].op.chan_operand(p) {
                    return None;
                }
            }
        }
    }

    let colour = colours(g, members, &inside);

    // Each step's nodes in canonical order; ordinal among equal colours.
    let mut by_step: Vec<Vec<NodeIndex>> = vec![Vec::new(); steps];
    for &m in members {
        by_step[time(m)].push(m);
    }
    let mut local: HashMap<NodeIndex, usize> = HashMap::new();
    let mut key_of: HashMap<NodeIndex, (u64, usize)> = HashMap::new();
    for nodes in &mut by_step {
        let order = canonical_order(g, nodes, &colour);
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for (i, &m) in order.iter().enumerate() {
            local.insert(m, i);
            let c = colour[&m];
            let o = seen.entry(c).or_insert(0);
            key_of.insert(m, (c, *o));
            *o += 1;
        }
        *nodes = order;
    }

    let mut slots = Slots::default();
    let mut regs: HashMap<(u64, usize, usize), usize> = HashMap::new();
    let mut bodies: Vec<(usize, Vec<Stmt>)> = Vec::new();
    let step_list: Vec<usize> = if reverse {
        (0..steps).rev().collect()
    } else {
        (0..steps).collect()
    };
    for &t in &step_list {
        let nodes = &by_step[t];
        if nodes.is_empty() {
            bodies.push((t, Vec::new()));
            continue;
        }
        let mut stmts = Vec::new();
        let mut late = Vec::new();
        for &m in nodes {
            let mn = &g.g[m];
            let (c, o) = key_of[&m];
            let mut args = Vec::new();
            for (p, a) in g.operands(m).into_iter().enumerate() {
                let an = &g.g[a];
                let ix = if mn.op.chan_operand(p) {
                    Index::Chan
                } else {
                    if an.shape != mn.shape {
                        return None;
                    }
                    Index::Elem
                };
                let e = if inside.contains(&a) && time(a) == t {
                    Expr::Local(local[&a])
                } else if inside.contains(&a) {
                    let next = regs.len();
                    Expr::Reg(*regs.entry((c, o, p)).or_insert(next))
                } else if let (Some(ta), true) = (an.t, timed) {
                    let s = slots.get((0, c, o, p), steps, false);
                    if !slots.bind(s + ta, a) {
                        return None;
                    }
                    Expr::Load(Slot::Step(s, ta as i32 - t as i32), ix)
                } else {
                    let s = slots.get((1, c, o, p), 1, false);
                    if !slots.bind(s, a) {
                        return None;
                    }
                    Expr::Load(Slot::Fixed(s), ix)
                };
                args.push(e);
            }
            let k = local[&m];
            // The op's one scalar definition, its constants rounded to f32.
            let e = scalar::define_const(&mn.op, args)?.into_f32();
            stmts.push(Stmt::Let(k, e));
            let mut stored = output_nodes.contains(&m);
            for e in g.g.edges_directed(m, Direction::Outgoing) {
                let (u, p) = (e.target(), *e.weight());
                if let Some(&r) = red_ix.get(&u) {
                    stmts.push(Stmt::Accumulate(r, Expr::Local(k)));
                } else if inside.contains(&u) && time(u) != t {
                    let (uc, uo) = key_of[&u];
                    let next = regs.len();
                    let r = *regs.entry((uc, uo, p)).or_insert(next);
                    late.push(Stmt::SetReg(r, Expr::Local(k)));
                } else if !inside.contains(&u) {
                    stored = true;
                }
            }
            if stored {
                let s = slots.get((2, c, o, 0), steps, true);
                if !slots.bind(s + t, m) {
                    return None;
                }
                stmts.push(Stmt::Store(Slot::Step(s, 0), Index::Elem, Expr::Local(k)));
            }
        }
        stmts.extend(late);
        bodies.push((t, stmts));
    }

    // Runs of bodies equal up to their constants, over the steps that have
    // any; constants that vary within a run move to per-step tables.
    let skeleton = |b: &[Stmt]| {
        let mut b = b.to_vec();
        kir::visit_consts(&mut b, &mut |e| *e = Expr::Const(0.0));
        b
    };
    let mut runs: Vec<(usize, usize, Vec<Stmt>)> = Vec::new();
    let mut run_bodies: Vec<Vec<(usize, Vec<Stmt>)>> = Vec::new();
    for (t, b) in bodies {
        if b.is_empty() {
            continue;
        }
        let sk = skeleton(&b);
        match runs.last_mut() {
            Some((lo, hi, last)) if *last == sk && (*hi == t || *lo == t + 1) => {
                if reverse {
                    *lo = t;
                } else {
                    *hi = t + 1;
                }
                run_bodies.last_mut().expect("paired").push((t, b));
            }
            _ => {
                runs.push((t, t + 1, sk));
                run_bodies.push(vec![(t, b)]);
            }
        }
    }
    if runs.len() > MAX_RUNS {
        return None;
    }
    let mut step_consts: Vec<Vec<f32>> = Vec::new();
    for (run, bodies) in runs.iter_mut().zip(run_bodies) {
        let per_body: Vec<Vec<f32>> = bodies
            .iter()
            .map(|(_, b)| {
                let mut b = b.clone();
                let mut v = Vec::new();
                kir::visit_consts(&mut b, &mut |e| {
                    if let Expr::Const(c) = e {
                        v.push(*c)
                    }
                });
                v
            })
            .collect();
        let mut body = bodies[0].1.clone();
        let mut j = 0;
        kir::visit_consts(&mut body, &mut |e| {
            let first = per_body[0][j];
            if per_body.iter().any(|v| v[j].to_bits() != first.to_bits()) {
                let mut table = vec![0.0f32; steps];
                for ((t, _), v) in bodies.iter().zip(&per_body) {
                    table[*t] = v[j];
                }
                *e = Expr::StepConst(step_consts.len());
                step_consts.push(table);
            }
            j += 1;
        });
        run.2 = body;
    }

    let mut epilogue = Vec::new();
    for (i, &r) in reducers.iter().enumerate() {
        let s = slots.get((3, i as u64, 0, 0), 1, true);
        slots.bind(s, r);
        let count = g.operands(r).len() as f32;
        let divisor = match g.g[r].op {
            Op::TimeMean => count,
            _ => 1.0,
        };
        epilogue.push(Stmt::StoreAcc(s, i, divisor, Index::Elem));
    }
    let mut all: Vec<NodeIndex> = members.to_vec();
    all.extend_from_slice(reducers);
    Some(Fused {
        kernel: Kernel {
            name,
            n,
            chan,
            steps,
            reverse,
            regs: regs.len(),
            accs: reducers.len(),
            slots: slots.len,
            runs,
            epilogue,
            step_consts,
            window: None,
        },
        table: slots.table,
        writes: slots.writes,
        nodes: all,
    })
}

/// 2-D average poolings a kernel can absorb: each value of a stored
/// stream whose only user outside the kernel is one `AvgPool` whose
/// windows tile it (`Op::tiling_window`; the LIF layer's spikes before
/// `avgpool 2`), of at most `MAX_WINDOW`. The kernel then runs one element
/// per pooling window (`Window`): its statements run once per window
/// element and the stream's stores become window averages
/// (`Index::Pool`), so the full-size tensor is neither written nor read
/// back. Every pooled stream must have the same window; returns the
/// pooling nodes absorbed.
fn absorb_pools(g: &Graph, f: &mut Fused, keep: &[NodeIndex]) -> Vec<NodeIndex> {
    let kernel = &f.kernel;
    if kernel.window.is_some() {
        return Vec::new();
    }
    let outputs = read_after(g, keep);
    let inside: std::collections::HashSet<NodeIndex> = f.nodes.iter().copied().collect();
    // The pooling of stored value `m` and its window, when it is m's only
    // outside user. A CUDA thread runs its window's k² elements: 2×2 keeps
    // the registers of four LIF updates; a global pool (resnet19's 8×8)
    // would spill, and pools of few outputs gain little.
    let pool_of = |m: NodeIndex| -> Option<(NodeIndex, usize)> {
        if outputs.contains(&m) {
            return None;
        }
        let mut outside =
            g.g.edges_directed(m, Direction::Outgoing)
                .filter(|e| !inside.contains(&e.target()));
        let p = outside.next()?.target();
        if outside.next().is_some() {
            return None;
        }
        let k = g.g[p].op.tiling_window(&g.g[m].shape)?;
        (2..=MAX_WINDOW).contains(&k).then_some((p, k))
    };
    // Stored streams (base slots) and the pooling of each of their steps.
    let mut stored: Vec<usize> = Vec::new();
    for (_, _, body) in &kernel.runs {
        for st in body {
            if let Stmt::Store(Slot::Step(s, 0), Index::Elem, _) = st {
                if !stored.contains(s) {
                    stored.push(*s);
                }
            }
        }
    }
    let mut window_k = None;
    let mut pooled: Vec<(usize, Vec<(usize, NodeIndex)>)> = Vec::new();
    'streams: for s in stored {
        let (mut pools, mut stream_k) = (Vec::new(), None);
        for t in 0..kernel.steps {
            let Some(m) = f.table[s + t] else { continue };
            match pool_of(m) {
                Some((p, k)) if *stream_k.get_or_insert(k) == k => pools.push((s + t, p)),
                _ => continue 'streams,
            }
        }
        if let Some(k) = stream_k {
            if *window_k.get_or_insert(k) == k {
                pooled.push((s, pools));
            }
        }
    }
    let Some(k) = window_k else {
        return Vec::new();
    };
    // Every stored value has the kernel's shape.
    let (_, p) = pooled[0].1[0];
    let w = g.g[g.operands(p)[0]].shape[3];
    let window = kir::Window { k, wo: w / k, w };
    let pooled_slots: Vec<usize> = pooled.iter().map(|(s, _)| *s).collect();
    let kernel = &mut f.kernel;
    for (_, _, body) in &mut kernel.runs {
        for st in body {
            if let Stmt::Store(Slot::Step(s, 0), ix, _) = st {
                if pooled_slots.contains(s) {
                    *ix = Index::Pool;
                }
            }
        }
    }
    let k2 = k * k;
    kernel.n /= k2;
    kernel.chan.1 /= k2;
    kernel.window = Some(window);
    let mut absorbed = Vec::new();
    for (_, pools) in pooled {
        for (slot, p) in pools {
            f.table[slot] = Some(p);
            f.nodes.push(p);
            absorbed.push(p);
        }
    }
    absorbed
}

/// Local colours of a group's members (in topological order): a hash of
/// the op, its same-step operands' colours, and of what other operands are
/// (op, layer, role, shape, step offset) without looking further.
fn colours(
    g: &Graph,
    members: &[NodeIndex],
    inside: &std::collections::HashSet<NodeIndex>,
) -> HashMap<NodeIndex, u64> {
    let time = |n: NodeIndex| g.g[n].t.unwrap_or(0);
    let shallow = |a: NodeIndex| {
        let an = &g.g[a];
        hash_of((op_key(&an.op), an.layer, an.role.short(), &an.shape))
    };
    let mut colour: HashMap<NodeIndex, u64> = HashMap::new();
    for &m in members {
        let mn = &g.g[m];
        let mut parts: Vec<(u8, u64, i64)> = Vec::new();
        for (p, a) in g.operands(m).into_iter().enumerate() {
            let dt = match (g.g[a].t, mn.t) {
                (Some(x), Some(y)) => x as i64 - y as i64,
                _ => i64::MIN,
            };
            let part = if inside.contains(&a) && time(a) == time(m) {
                (0, colour[&a], p as i64)
            } else if inside.contains(&a) {
                (1, shallow(a), dt)
            } else {
                (2, shallow(a), dt)
            };
            parts.push(part);
        }
        colour.insert(
            m,
            hash_of((op_key(&mn.op), mn.layer, mn.role.short(), parts)),
        );
    }
    colour
}

/// Kahn's algorithm over the step's same-step edges, taking the ready node
/// of smallest colour first: equal bodies come out in equal order.
fn canonical_order(
    g: &Graph,
    nodes: &[NodeIndex],
    colour: &HashMap<NodeIndex, u64>,
) -> Vec<NodeIndex> {
    let set: std::collections::HashSet<NodeIndex> = nodes.iter().copied().collect();
    let mut indeg: HashMap<NodeIndex, usize> = nodes
        .iter()
        .map(|&m| {
            let d = g.operands(m).iter().filter(|a| set.contains(a)).count();
            (m, d)
        })
        .collect();
    let mut ready: BinaryHeap<std::cmp::Reverse<(u64, usize)>> = nodes
        .iter()
        .filter(|m| indeg[m] == 0)
        .map(|&m| std::cmp::Reverse((colour[&m], m.index())))
        .collect();
    let mut out = Vec::new();
    while let Some(std::cmp::Reverse((_, i))) = ready.pop() {
        let m = NodeIndex::new(i);
        out.push(m);
        for e in g.g.edges_directed(m, Direction::Outgoing) {
            let u = e.target();
            if let Some(d) = indeg.get_mut(&u) {
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse((colour[&u], u.index())));
                }
            }
        }
    }
    out
}

impl Plan {
    /// A readable listing: one line per launch; a kernel lists the ops it
    /// fused and its steps, a node its op and shape.
    pub fn text(&self, g: &Graph) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        for u in &self.units {
            match u {
                Unit::Node(n) => {
                    let node = &g.g[*n];
                    let _ = writeln!(
                        o,
                        "node   %{:<5} {:<20} {}",
                        n.index(),
                        node.op.name(),
                        crate::shape::list(&node.shape)
                    );
                }
                Unit::Kernel(k) => {
                    let f = &self.kernels[*k];
                    let mut ops: Vec<&str> = f.nodes.iter().map(|n| g.g[*n].op.name()).collect();
                    ops.sort();
                    let mut counted: Vec<String> = Vec::new();
                    for op in ops {
                        match counted.last_mut() {
                            Some(last) if last.split('×').next() == Some(op) => {
                                let c: usize = last
                                    .split('×')
                                    .nth(1)
                                    .and_then(|c| c.parse().ok())
                                    .unwrap_or(1);
                                *last = format!("{op}×{}", c + 1);
                            }
                            _ => counted.push(op.to_string()),
                        }
                    }
                    let kk = &f.kernel;
                    let _ = writeln!(
                        o,
                        "kernel {} n={}{} steps={}{} runs=[{}] regs={} accs={} reads={} writes={} [{}]",
                        kk.name,
                        kk.n,
                        kk.window
                            .map(|w| format!(" window={}×{}", w.k, w.k))
                            .unwrap_or_default(),
                        kk.steps,
                        if kk.reverse { " reverse" } else { "" },
                        kk.runs
                            .iter()
                            .map(|r| format!("({}, {})", r.0, r.1))
                            .collect::<Vec<_>>()
                            .join(", "),
                        kk.regs,
                        kk.accs,
                        f.reads().len(),
                        f.outputs().len(),
                        counted.join(" ")
                    );
                }
                Unit::Step(k, t) => {
                    let _ = writeln!(o, "step   {} t={t}", self.kernels[*k].kernel.name);
                }
            }
        }
        o
    }
}
