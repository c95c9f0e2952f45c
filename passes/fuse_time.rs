//! Time-major fused plans.
//!
//! A fused kernel of the layer-major plan runs all T steps of its layer in
//! one call: its per-step outputs for every step exist at once. A
//! time-major plan runs each multi-step kernel one step per unit
//! (`Unit::Step`), with its registers and accumulators kept in a state
//! buffer between calls, and orders all units by a time-major order of the
//! graph (`schedule::order`): step t of every layer, then step t + 1, so a
//! step's outputs die once the next layer has read them.
//!
//! The graph is lowered first ([`lowering`], one pass per rewrite):
//! per-channel scales move out of channel sums (`passes/factor`),
//! `channel_sum(mul)` becomes `channel_dot`, means of one repeated value
//! that value, batch norm's affine output per step; for time-major,
//! batch-norm statistics may be recomputed (`schedule::RecomputeBn`), and
//! time reductions that no kernel can absorb as an accumulator (means over
//! GEMM or pooling outputs) become running sums ([`ChainUnfused`]), so
//! their operands die one step at a time. Reductions over elementwise
//! values stay n-ary: fusion turns them into accumulators. Then
//! [`planning`]: fusion ([`Fuse`]) and, time-major, the time-major order
//! and the split into steps ([`SplitSteps`]).

use crate::ir::{Graph, NodeIndex};
use crate::passes::factor::FactorScales;
use crate::passes::fuse::{self, Fused, Plan, Unit};
use crate::passes::schedule::{self, SchedOpts, Schedule};
use crate::passes::{Pass, PassError, Pipeline, Program};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The lowering passes of a fusion plan for `opts`: per-channel scales
/// out of channel sums (`passes/factor`),
/// `channel_sum(mul(a, b))` as `channel_dot(a, b)` ([`ChannelDots`]),
/// `mul(avgpool_grad(d), s)` as one op ([`PoolGradProducts`]),
/// means of one repeated value as that value ([`ConstantMeans`]), batch
/// norm's affine output recomputed per step inside the neuron's kernel
/// instead of stored ([`RematerialiseAffine`]); for time-major, batch-norm
/// statistics recomputed when asked and non-absorbable time reductions
/// chained.
pub fn lowering(opts: SchedOpts) -> Vec<Box<dyn Pass>> {
    let mut passes: Vec<Box<dyn Pass>> = vec![
        Box::new(FactorScales),
        Box::new(ChannelDots),
        Box::new(PoolGradProducts),
        Box::new(ConstantMeans),
        Box::new(RematerialiseAffine),
    ];
    if opts.schedule == Schedule::TimeMajor {
        if opts.recompute_bn {
            passes.push(Box::new(schedule::RecomputeBn));
        }
        passes.push(Box::new(ChainUnfused));
    }
    passes
}

/// The plan-level passes of a fused plan for `opts` after [`lowering`]:
/// fusion, then for time-major the time-major order and the split of every
/// multi-step kernel into steps.
pub fn planning(opts: SchedOpts) -> Vec<Box<dyn Pass>> {
    let mut passes: Vec<Box<dyn Pass>> = vec![Box::new(Fuse)];
    if opts.schedule == Schedule::TimeMajor {
        passes.push(Box::new(schedule::Order(Schedule::TimeMajor)));
        passes.push(Box::new(SplitSteps));
    }
    passes
}

/// Runs `passes` on `p`; they only rewrite checked programs into checked
/// programs, so an error is a compiler bug.
fn run_internal(passes: Vec<Box<dyn Pass>>, p: &mut Program) {
    if let Err(e) = Pipeline::new(passes).run(p) {
        panic!("internal: {e}");
    }
}

/// The graph a fusion plan for `opts` runs: `g` after the passes of
/// [`lowering`], each checked.
pub fn lower(g: &Graph, opts: SchedOpts) -> Graph {
    let mut p = Program::new(g.clone());
    run_internal(lowering(opts), &mut p);
    p.graph
}

/// The fused plan of `g` for `opts` (the passes of [`planning`]), keeping
/// the values of `keep` stored; `g` must come from [`lower`].
pub fn plan(g: &Graph, keep: &[NodeIndex], opts: SchedOpts) -> Plan {
    let mut p = Program::new(g.clone());
    p.keep = keep.to_vec();
    run_internal(planning(opts), &mut p);
    p.plan.expect("the fuse pass sets the plan")
}

/// `channel_sum(mul(a, b))` as `channel_dot(a, b)` ([`channel_dots`]).
pub struct ChannelDots;

impl Pass for ChannelDots {
    fn name(&self) -> &'static str {
        "channel-dots"
    }
    fn about(&self) -> &'static str {
        "channel_sum(mul(a, b)) as channel_dot(a, b): no stored product"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        channel_dots(&mut p.graph);
        Ok(())
    }
}

/// `mul(avgpool_grad(d), s)` as `avgpool_grad_mul(d, s)`
/// ([`pool_grad_products`]).
pub struct PoolGradProducts;

impl Pass for PoolGradProducts {
    fn name(&self) -> &'static str {
        "pool-grad-products"
    }
    fn about(&self) -> &'static str {
        "mul(avgpool_grad(d), s) as avgpool_grad_mul(d, s): no stored full-size gradient"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        pool_grad_products(&mut p.graph);
        Ok(())
    }
}

/// `time_mean(x, …, x)` as `x` ([`constant_means`]).
pub struct ConstantMeans;

impl Pass for ConstantMeans {
    fn name(&self) -> &'static str {
        "constant-means"
    }
    fn about(&self) -> &'static str {
        "time means of one repeated value become that value"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        constant_means(&mut p.graph);
        Ok(())
    }
}

/// Per-step copies of hoisted channel affines ([`rematerialise_affine`]).
pub struct RematerialiseAffine;

impl Pass for RematerialiseAffine {
    fn name(&self) -> &'static str {
        "rematerialise-affine"
    }
    fn about(&self) -> &'static str {
        "per-step copies of hoisted batch-norm affines, computed inside the neuron's kernel"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        rematerialise_affine(&mut p.graph);
        Ok(())
    }
}

/// Running accumulators for the time reductions no kernel absorbs (some
/// operand is not elementwise: a GEMM or pooling output).
pub struct ChainUnfused;

impl Pass for ChainUnfused {
    fn name(&self) -> &'static str {
        "chain"
    }
    fn about(&self) -> &'static str {
        "running accumulators for time reductions no kernel absorbs (time-major)"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        schedule::chain_reductions_where(&mut p.graph, |g, n| {
            g.operands(n).iter().any(|&a| !g.g[a].op.elementwise())
        });
        Ok(())
    }
}

/// Fusion (`fuse::fuse_keeping`): sets the program's plan.
pub struct Fuse;

impl Pass for Fuse {
    fn name(&self) -> &'static str {
        "fuse"
    }
    fn about(&self) -> &'static str {
        "fusion: elementwise groups re-rolled into kernels with a time loop; the plan"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        p.plan = Some(fuse::fuse_keeping(&p.graph, &p.keep));
        Ok(())
    }
}

/// Every multi-step kernel of the plan run one step per unit, units in the
/// program's order ([`split_steps`]).
pub struct SplitSteps;

impl Pass for SplitSteps {
    fn name(&self) -> &'static str {
        "split-steps"
    }
    fn about(&self) -> &'static str {
        "one unit per kernel step, units in the time-major order"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        let missing = |needs| PassError::Missing {
            pass: "split-steps",
            needs,
            after: "fuse and schedule",
        };
        let plan = p.plan.as_ref().ok_or(missing("a fusion plan"))?;
        let order = p.order.as_ref().ok_or(missing("an execution order"))?;
        p.plan = Some(split_steps(&p.graph, plan, order));
        Ok(())
    }
}

/// Rewrites `channel_sum(mul(a, b))`, where the product has no other
/// user, as `channel_dot(a, b)`: batch norm's backward (Σ δy·x̂ for γ, and
/// the channel-scale gradients) would otherwise store a full-size product
/// only for a library reduction to read it once. Returns the count.
pub fn channel_dots(g: &mut Graph) -> usize {
    use crate::ir::Op;
    let sums: Vec<(NodeIndex, NodeIndex)> =
        g.g.node_indices()
            .filter(|&n| g.g[n].op == Op::ChannelSum)
            .filter_map(|n| {
                let m = g.operands(n)[0];
                let alone = g.g[m].op == Op::Mul
                    && g.users(m).len() == 1
                    && !g.outputs.iter().any(|&(_, o)| o == m);
                alone.then_some((n, m))
            })
            .collect();
    for &(n, m) in &sums {
        let (a, b) = (g.operands(m)[0], g.operands(m)[1]);
        let node = g.g[n].clone();
        let d = g.add_op(
            "lower",
            Op::ChannelDot,
            node.layer,
            node.t,
            node.role,
            &[a, b],
        );
        schedule::redirect(g, n, d);
        g.g.remove_node(m);
    }
    if !sums.is_empty() {
        g.ad = None;
    }
    sums.len()
}

/// Rewrites `mul(avgpool_grad(d), s)` (either operand order), where the
/// pooling's gradient has no other user and `s` is stored anyway (a value
/// of another phase, or not elementwise), as `avgpool_grad_mul(d, s)`: a
/// spiking layer's backward multiplies the upsampled gradient by its
/// surrogate, and the full-size gradient was stored only to be read once
/// (`fmnist_csnn`'s first layer: 12.8 MB written and read back per step at
/// batch 128). Same roundings: the pooling's gradient, then one product
/// (IEEE products commute). Returns the count.
pub fn pool_grad_products(g: &mut Graph) -> usize {
    use crate::ir::Op;
    let found: Vec<(NodeIndex, NodeIndex, NodeIndex)> =
        g.g.node_indices()
            .filter(|&m| g.g[m].op == Op::Mul)
            .filter_map(|m| {
                let ops = g.operands(m);
                let (a, s) = match (&g.g[ops[0]].op, &g.g[ops[1]].op) {
                    (Op::AvgPoolGrad { .. }, _) => (ops[0], ops[1]),
                    (_, Op::AvgPoolGrad { .. }) => (ops[1], ops[0]),
                    _ => return None,
                };
                // An elementwise multiplier of the product's own phase (BPTT's
                // per-step surrogate) is computed inside the fused kernel that
                // takes the product; this op would have to store it (BPTT
                // steps 15 % slower). One from another phase (rate mode's
                // time-averaged surrogate, kept from the forward) is stored
                // anyway.
                let kept = g.g[s].role != g.g[m].role || !g.g[s].op.elementwise();
                let alone = a != s
                    && kept
                    && g.users(a).len() == 1
                    && !g.outputs.iter().any(|&(_, o)| o == a)
                    && g.g[s].shape == g.g[m].shape;
                alone.then_some((m, a, s))
            })
            .collect();
    for &(m, a, s) in &found {
        let Op::AvgPoolGrad {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
        } = g.g[a].op
        else {
            unreachable!("matched above")
        };
        let d = g.operands(a)[0];
        let node = g.g[m].clone();
        let op = Op::AvgPoolGradMul {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
        };
        let fused = g.add_op("lower", op, node.layer, node.t, node.role, &[d, s]);
        schedule::redirect(g, m, fused);
        g.g.remove_node(a);
    }
    if !found.is_empty() {
        g.ad = None;
    }
    found.len()
}

/// Replaces `time_mean(x, x, …, x)` by `x`. CSE produces it under direct
/// encoding: the rate pass's mean of the first batch norm's per-step x̂ₜ
/// becomes a mean of T copies of one hoisted x̂. Equal in exact
/// arithmetic; in floating point `(x + … + x)/T` can differ from `x` in
/// the last bit. Returns the count.
pub fn constant_means(g: &mut Graph) -> usize {
    use crate::ir::Op;
    let means: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|&n| g.g[n].op == Op::TimeMean)
            .filter(|&n| {
                let ops = g.operands(n);
                ops.len() > 1 && ops.iter().all(|&o| o == ops[0])
            })
            .collect();
    for &n in &means {
        let x = g.operands(n)[0];
        schedule::redirect(g, n, x);
    }
    if !means.is_empty() {
        g.ad = None;
    }
    means.len()
}

/// Gives every step its own copy of a step-free per-channel affine node
/// (`channel_scale`, `bias_add`: batch norm's γ·x̂ + β) whose users are all
/// per-step nodes: under direct encoding CSE hoists the first batch norm
/// out of the steps, and its output would be stored for the whole step
/// loop only to be read by each step's neuron update. Per-step copies fuse
/// into the neuron's kernel, which then reads x̂ (kept anyway for the
/// backward) and computes the affine in registers, so one full-size value
/// fewer is stored. Exact (same ops on the same operands). Returns how many
/// nodes were copied.
pub fn rematerialise_affine(g: &mut Graph) -> usize {
    use crate::ir::Op;
    let mut copied = 0;
    loop {
        let pick = g.g.node_indices().find(|&n| {
            let node = &g.g[n];
            let users = g.users(n);
            matches!(node.op, Op::ChannelScale | Op::BiasAdd)
                && node.t.is_none()
                && g.operands(n).iter().all(|&a| g.g[a].t.is_none())
                && !users.is_empty()
                && users.iter().all(|&u| g.g[u].t.is_some())
                && !g.outputs.iter().any(|&(_, o)| o == n)
        });
        let Some(n) = pick else { break };
        let node = g.g[n].clone();
        let ops = g.operands(n);
        let uses: Vec<(NodeIndex, usize)> =
            g.g.edges_directed(n, petgraph::Direction::Outgoing)
                .map(|e| (petgraph::visit::EdgeRef::target(&e), *e.weight()))
                .collect();
        let mut per_step: HashMap<usize, NodeIndex> = HashMap::new();
        for (u, w) in uses {
            let t = g.g[u].t.expect("per-step user");
            let c = *per_step.entry(t).or_insert_with(|| {
                g.add_op(
                    "lower",
                    node.op.clone(),
                    node.layer,
                    Some(t),
                    node.role,
                    &ops,
                )
            });
            g.g.add_edge(c, u, w);
        }
        copied += per_step.len();
        g.g.remove_node(n);
        g.ad = None;
    }
    copied
}

impl Fused {
    /// Steps in the order the kernel's time loop runs them.
    pub fn loop_steps(&self) -> Vec<usize> {
        let s = self.kernel.steps;
        if self.kernel.reverse {
            (0..s).rev().collect()
        } else {
            (0..s).collect()
        }
    }

    /// The values step `t` reads and writes (the epilogue's writes belong
    /// to the loop's last step).
    pub fn step_access(&self, t: usize) -> (Vec<NodeIndex>, Vec<NodeIndex>) {
        use crate::ir::kernel::{slots_of, Slot};
        let mut slots = Vec::new();
        for (lo, hi, body) in &self.kernel.runs {
            if (*lo..*hi).contains(&t) {
                slots.extend(slots_of(body).into_iter().map(|s| (s, t)));
            }
        }
        if self.loop_steps().last() == Some(&t) {
            slots.extend(slots_of(&self.kernel.epilogue).into_iter().map(|s| (s, t)));
        }
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        for (slot, t) in slots {
            let i = match slot {
                Slot::Fixed(s) => s,
                Slot::Step(s, dt) => (s as i64 + t as i64 + i64::from(dt)) as usize,
            };
            if let Some(n) = self.table[i] {
                if self.writes[i] {
                    writes.push(n)
                } else {
                    reads.push(n)
                }
            }
        }
        for v in [&mut reads, &mut writes] {
            v.sort();
            v.dedup();
        }
        (reads, writes)
    }

    /// Floats of state a step-at-a-time run keeps between calls.
    pub fn state_floats(&self) -> usize {
        (self.kernel.regs + self.kernel.accs) * self.kernel.elements()
    }
}

/// Replaces every multi-step kernel unit by one unit per step and orders
/// all units so that each runs where `order` puts its latest node.
pub fn split_steps(g: &Graph, plan: &Plan, order: &[NodeIndex]) -> Plan {
    let mut pos: HashMap<NodeIndex, usize> = HashMap::new();
    for (i, n) in order.iter().enumerate() {
        pos.insert(*n, i);
    }
    let at = |n: &NodeIndex| pos.get(n).copied().unwrap_or(usize::MAX);
    // Units, their sort keys, reads and writes.
    let mut units: Vec<(Unit, usize, Vec<NodeIndex>, Vec<NodeIndex>)> = Vec::new();
    let mut chain: Vec<(usize, usize)> = Vec::new();
    for u in &plan.units {
        match *u {
            Unit::Node(n) => {
                let mut reads = g.operands(n);
                reads.sort();
                reads.dedup();
                units.push((*u, at(&n), reads, vec![n]));
            }
            Unit::Kernel(k) | Unit::Step(k, _) => {
                let f = &plan.kernels[k];
                let steps = f.loop_steps();
                if steps.len() < 2 {
                    let key = f.nodes.iter().map(at).min().unwrap_or(usize::MAX);
                    units.push((Unit::Kernel(k), key, f.reads(), f.outputs()));
                    continue;
                }
                let (first, last) = (steps[0], steps[steps.len() - 1]);
                let mut prev = None;
                for &t in &steps {
                    // Step-free members run with the first step, the
                    // accumulators' results come with the last. The unit
                    // goes where its *latest* node would: a step's side
                    // branches (the rate pass's surrogate terms) come early
                    // in the node order, and placing the whole step there
                    // would start its state long before it is needed.
                    let key = f
                        .nodes
                        .iter()
                        .filter(|n| match g.g[**n].t {
                            Some(s) => s == t,
                            // A reduction over steps (it reads per-step
                            // values) completes with the last step.
                            None if g.operands(**n).iter().any(|a| g.g[*a].t.is_some()) => {
                                t == last
                            }
                            None => t == first,
                        })
                        .map(at)
                        .max()
                        .unwrap_or(usize::MAX);
                    let (reads, writes) = f.step_access(t);
                    let id = units.len();
                    units.push((Unit::Step(k, t), key, reads, writes));
                    if let Some(p) = prev {
                        chain.push((p, id));
                    }
                    prev = Some(id);
                }
            }
        }
    }
    // Dependencies: on the first unit writing each value read, and each
    // step on the previous one of its kernel.
    let mut producer: HashMap<NodeIndex, usize> = HashMap::new();
    for (i, (_, _, _, writes)) in units.iter().enumerate() {
        for w in writes {
            producer.entry(*w).or_insert(i);
        }
    }
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); units.len()];
    let mut indeg = vec![0usize; units.len()];
    let mut edge = |a: usize, b: usize, succ: &mut Vec<Vec<usize>>| {
        if a != b && !succ[a].contains(&b) {
            succ[a].push(b);
            indeg[b] += 1;
        }
    };
    for (i, (_, _, reads, _)) in units.iter().enumerate() {
        for r in reads {
            if let Some(&p) = producer.get(r) {
                edge(p, i, &mut succ);
            }
        }
    }
    for (a, b) in chain {
        edge(a, b, &mut succ);
    }
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = indeg
        .iter()
        .enumerate()
        .filter(|(_, d)| **d == 0)
        .map(|(i, _)| Reverse((units[i].1, i)))
        .collect();
    let mut out = Vec::with_capacity(units.len());
    while let Some(Reverse((_, i))) = ready.pop() {
        out.push(units[i].0);
        for &s in &succ[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.push(Reverse((units[s].1, s)));
            }
        }
    }
    assert_eq!(
        out.len(),
        units.len(),
        "splitting a layer-major plan into steps cannot create a cycle"
    );
    Plan {
        units: out,
        kernels: plan.kernels.clone(),
    }
}
