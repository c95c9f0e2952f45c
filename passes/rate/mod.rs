//! The rate pass: collapses the temporal backward of BPTT with egg.
//!
//! The backward built by autodiff is cut into one region per model layer:
//! the backward nodes that carry the gradient from the layer's outputs
//! (a family of per-step gradients, one per step) to its parameters and to
//! the layers below. Each region becomes an e-graph whose roots are
//!
//! - the layer's parameter gradients (already time sums), and
//! - in `rate` mode, the time sum of what the layer sends to each layer
//!   below (`tsum` over steps of its contributions).
//!
//! Regions are processed from the loss down. In `rate` mode the region of
//! a layer also learns that the time sum of its incoming gradients is a
//! node the regions above have already built (a `summed` leaf), so once
//! `decorrelate` has factored `Σ_t p_t·δ_t` into `mean(p)·Σ_t δ_t`, nothing
//! per-step is left to read. Extraction minimises the bytes the backward
//! keeps, then FLOPs; forward-only parts of the result (r, g, x̄, ρ_t)
//! become forward nodes, so the forward computes the accumulators.

pub mod cost;
pub mod lang;
pub mod rules;

use super::{Pass, PassError, Program};
use crate::ir::{self, AdInfo, Graph, LayerId, MaxPoolRule, NodeIndex, Op, Role};
use egg::{Extractor, Id, Runner, SimpleScheduler, StopReason};
use lang::{Head, Leaf, RGraph, RNode, RatesLeaf, RegionAnalysis};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Exact rules only: the result computes BPTT's gradients.
    Bptt,
    /// Exact rules and `decorrelate`: rate-based backpropagation.
    Rate,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Bptt => "bptt",
            Mode::Rate => "rate",
        })
    }
}

/// Per-region limits; exceeding one is an error naming the region.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub nodes: usize,
    pub iterations: usize,
    pub time: Duration,
}

impl Limits {
    /// The built-in limits, before `--egraph-node-limit` and
    /// `--egraph-time-limit`.
    pub const BUILT_IN: Limits = Limits {
        nodes: 200_000,
        iterations: 100,
        time: Duration::from_secs(30),
    };
}

/// Process-wide overrides of the default limits (the `snnc` flags
/// `--egraph-node-limit` and `--egraph-time-limit`); 0 = not set.
static NODE_LIMIT: AtomicUsize = AtomicUsize::new(0);
static TIME_LIMIT_MS: AtomicU64 = AtomicU64::new(0);

/// Changes what [`Limits::default`] gives from now on: the e-node limit per
/// region and the rewriting time per region (`None` keeps the current one).
pub fn set_default_limits(nodes: Option<usize>, time: Option<Duration>) {
    if let Some(n) = nodes {
        NODE_LIMIT.store(n.max(1), AtomicOrdering::Relaxed);
    }
    if let Some(t) = time {
        let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
        TIME_LIMIT_MS.store(ms, AtomicOrdering::Relaxed);
    }
}

impl Default for Limits {
    /// [`Limits::BUILT_IN`], with the overrides of [`set_default_limits`].
    fn default() -> Limits {
        let mut l = Limits::BUILT_IN;
        match NODE_LIMIT.load(AtomicOrdering::Relaxed) {
            0 => {}
            n => l.nodes = n,
        }
        match TIME_LIMIT_MS.load(AtomicOrdering::Relaxed) {
            0 => {}
            ms => l.time = Duration::from_millis(ms),
        }
        l
    }
}

/// What one region's e-graph did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegionStats {
    pub layer: String,
    pub roots: usize,
    pub enodes_before: usize,
    pub enodes_after: usize,
    pub eclasses: usize,
    pub iterations: usize,
    pub seconds: f64,
}

/// Why the rate pass refused a graph. Each message names the region (the
/// layer) and, where one exists, the flag that helps.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    #[error("the rate pass needs the graph autodiff built (run autodiff first)")]
    NoAutodiff,
    #[error("region {region}: rewriting did not saturate: {why} ({enodes} e-nodes after {iterations} iterations)")]
    Unsaturated {
        region: String,
        why: String,
        enodes: usize,
        iterations: usize,
    },
    #[error("region {0}: extraction produced a cycle")]
    Cycle(String),
    #[error("region {0}: extraction chose a bare constant")]
    BareConstant(String),
    #[error("region {region}: the rate backward still reads a per-step value ({op} at step {t} read by {user}); this layer cannot be collapsed to rates")]
    NotCollapsed {
        region: String,
        op: &'static str,
        t: String,
        user: &'static str,
    },
    #[error("empty expression")]
    EmptyExpression,
    #[error("did not saturate: {0}")]
    NotSaturated(String),
}

/// The rate pass with its mode and e-graph limits.
pub struct Rate {
    pub mode: Mode,
    pub limits: Limits,
}

impl Pass for Rate {
    fn name(&self) -> &'static str {
        "rate"
    }
    fn about(&self) -> &'static str {
        match self.mode {
            Mode::Bptt => "the rate pass's exact rules on the backward (bptt mode)",
            Mode::Rate => "rate-based backward: exact rules and decorrelate (rate mode)",
        }
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        let (g, regions) = rate_pass(p.take_graph(), self.mode, &self.limits)?;
        p.graph = g;
        p.regions = regions;
        Ok(())
    }
}

/// Runs the rate pass on an autodiff graph.
pub fn rate_pass(
    mut g: Graph,
    mode: Mode,
    limits: &Limits,
) -> Result<(Graph, Vec<RegionStats>), PassError> {
    let ad = g.ad.take().ok_or_else(|| fail(RateError::NoAutodiff))?;
    let steps = g.steps;
    let fam = Families::new(&g, &ad);
    let order = region_order(&g);
    let mut stats = Vec::new();
    let mut summed: HashMap<LayerId, Vec<NodeIndex>> = HashMap::new();
    let mut new_nodes: Vec<NodeIndex> = Vec::new();
    // Forward accumulators by operands, shared by every region (the two
    // branches of a residual block both average the block's input).
    let mut reductions = HashMap::new();
    for layer in order {
        // The time sum of this layer's incoming gradients, if the regions
        // above built it.
        let s_node = match summed.remove(&layer) {
            Some(parts) if mode == Mode::Rate => Some(if parts.len() == 1 {
                parts[0]
            } else {
                let n = add_node(&mut g, Op::Sum, Some(layer), None, Role::Backward, &parts);
                new_nodes.push(n);
                n
            }),
            _ => None,
        };
        let mut region = Region::new(&g, &fam, layer, steps);
        let mut roots: Vec<(Root, Id)> = Vec::new();
        for (name, p) in params_of(&g, layer) {
            let gnode = ad.grad_of[&p];
            let id = region.expr(gnode);
            roots.push((Root::Param(name), id));
        }
        if mode == Mode::Rate {
            for (target, per_t) in fam
                .cross
                .range((layer, 0)..(layer + 1, 0))
                .map(|((_, m), v)| (*m, v))
            {
                if per_t.len() != steps || per_t.keys().copied().ne(0..steps) {
                    continue;
                }
                let per_t: Vec<Vec<NodeIndex>> = per_t.values().cloned().collect();
                let id = region.time_sum(&per_t);
                roots.push((Root::Sent(target), id));
            }
            if let (Some(s), Some(per_t)) = (s_node, fam.incoming(layer, steps)) {
                // Σ_t of what the layers above send equals the node they
                // built; what the layer sends itself (a reset that is not
                // detached feeds its own spikes) stays outside this sum.
                let leaf = region.leaf(Leaf::Summed, s);
                let t = region.time_sum(&per_t);
                region.eg.union(leaf, t);
                region.eg.rebuild();
            }
        }
        if roots.is_empty() {
            continue;
        }
        let name = {
            let l = &g.layers[layer];
            format!("{}:{}", l.path, l.keyword)
        };
        let before = region.eg.total_number_of_nodes();
        let started = Instant::now();
        let runner = Runner::default()
            .with_egraph(std::mem::take(&mut region.eg))
            .with_scheduler(SimpleScheduler)
            .with_node_limit(limits.nodes)
            .with_iter_limit(limits.iterations)
            .with_time_limit(limits.time)
            .run(&rules::rewrites(mode == Mode::Rate));
        if let Some(why) = unsaturated(&runner.stop_reason, limits) {
            return Err(fail(RateError::Unsaturated {
                region: name.clone(),
                why,
                enodes: runner.egraph.total_number_of_nodes(),
                iterations: runner.iterations.len(),
            }));
        }
        let eg = runner.egraph;
        stats.push(RegionStats {
            layer: name.clone(),
            roots: roots.len(),
            enodes_before: before,
            enodes_after: eg.total_number_of_nodes(),
            eclasses: eg.number_of_classes(),
            iterations: runner.iterations.len(),
            seconds: started.elapsed().as_secs_f64(),
        });
        let extractor = Extractor::new(
            &eg,
            cost::KeptThenFlops {
                egraph: &eg,
                collapse: mode == Mode::Rate,
            },
        );
        let mut rebuild = Rebuild {
            g: &mut g,
            eg: &eg,
            ex: &extractor,
            layer,
            memo: HashMap::new(),
            visiting: HashSet::new(),
            new_nodes: &mut new_nodes,
            region: &name,
            reductions: &mut reductions,
        };
        for (root, id) in roots {
            let mut n = rebuild.build(id)?;
            // A root must be a fresh node shared by all steps.
            let role = match root {
                Root::Param(_) => Role::Gradient,
                Root::Sent(_) => Role::Backward,
            };
            if rebuild.g.g[n].t.is_some() || !rebuild.new_nodes.contains(&n) {
                n = add_node(rebuild.g, Op::Sum, Some(layer), None, role, &[n]);
                rebuild.new_nodes.push(n);
            } else if role == Role::Gradient {
                rebuild.g.g[n].role = role;
            }
            match root {
                Root::Param(name) => {
                    let out = ad::grad_name(&name);
                    for o in rebuild.g.outputs.iter_mut().filter(|o| o.0 == out) {
                        o.1 = n;
                    }
                }
                Root::Sent(target) => summed.entry(target).or_default().push(n),
            }
        }
    }
    mark_state(&mut g, &new_nodes);
    g.remove_dead();
    ir::verify(&g).map_err(|err| PassError::Invalid { pass: "rate", err })?;
    // With one step every value is its own time mean.
    if mode == Mode::Rate && steps > 1 {
        if let Some(path) = std::env::var_os("SNNC_DUMP_RATE") {
            let _ = std::fs::write(path, ir::to_text(&g));
        }
        check_collapsed(&g)?;
    }
    Ok((g, stats))
}

use crate::autodiff as ad;

/// Why rewriting stopped short of saturation, with what to do about it
/// (`None` when it saturated). Every flag named here is an `snnc` flag
/// (tests/dsl_hardening.rs checks hints against the CLI).
fn unsaturated(reason: &Option<StopReason>, limits: &Limits) -> Option<String> {
    Some(match reason {
        Some(StopReason::Saturated) => return None,
        Some(StopReason::NodeLimit(_)) => format!(
            "the e-graph reached its limit of {} e-nodes; raise it with --egraph-node-limit \
             (e-graphs grow with T), or use a smaller -T",
            limits.nodes
        ),
        Some(StopReason::TimeLimit(_)) => format!(
            "it ran out of its {} s; raise the limit with --egraph-time-limit, or use a smaller -T",
            limits.time.as_secs_f64()
        ),
        Some(StopReason::IterationLimit(n)) => format!(
            "it reached the limit of {n} iterations (the rules should saturate long before: \
             please report the model)"
        ),
        Some(StopReason::Other(why)) => format!("egg stopped it: {why}"),
        None => "egg did not run".to_string(),
    })
}

fn fail(err: RateError) -> PassError {
    PassError::failed("rate", err)
}

enum Root {
    Param(String),
    /// The time sum of what the region sends to this layer's outputs.
    Sent(LayerId),
}

fn add_node(
    g: &mut Graph,
    op: Op,
    layer: Option<LayerId>,
    t: Option<usize>,
    role: Role,
    args: &[NodeIndex],
) -> NodeIndex {
    g.add_op("the rate pass", op, layer, t, role, args)
}

fn params_of(g: &Graph, layer: LayerId) -> Vec<(String, NodeIndex)> {
    let mut ps: Vec<(String, NodeIndex)> =
        g.g.node_indices()
            .filter_map(|n| match &g.g[n].op {
                Op::Param { name } if g.g[n].layer == Some(layer) => Some((name.clone(), n)),
                _ => None,
            })
            .collect();
    ps.sort();
    ps
}

/// Layers that receive gradients, from the loss down: a reverse
/// topological order of the layer graph induced by forward edges.
fn region_order(g: &Graph) -> Vec<LayerId> {
    let mut deps: petgraph::graph::DiGraph<LayerId, ()> = petgraph::graph::DiGraph::new();
    let ids: Vec<petgraph::graph::NodeIndex> =
        (0..g.layers.len()).map(|l| deps.add_node(l)).collect();
    let mut seen = HashSet::new();
    for e in g.g.edge_indices() {
        let (a, b) = g.g.edge_endpoints(e).expect("edge");
        let (na, nb) = (&g.g[a], &g.g[b]);
        let fwd = |r: Role| !matches!(r, Role::Backward | Role::Gradient);
        if let (Some(la), Some(lb)) = (na.layer, nb.layer) {
            if la != lb && fwd(na.role) && fwd(nb.role) && seen.insert((la, lb)) {
                deps.add_edge(ids[la], ids[lb], ());
            }
        }
    }
    let order = petgraph::algo::toposort(&deps, None).expect("layers form a DAG");
    order.into_iter().rev().map(|n| deps[n]).collect()
}

/// Which per-step gradients cross from one layer to another.
struct Families {
    /// (rule layer, target layer) → step → contributions.
    cross: BTreeMap<(LayerId, LayerId), BTreeMap<usize, Vec<NodeIndex>>>,
    /// target layer → step → contributions from every other layer.
    into: HashMap<LayerId, BTreeMap<usize, Vec<NodeIndex>>>,
    /// Every contribution into some layer: the regions' gradient leaves.
    received: HashMap<NodeIndex, HashSet<LayerId>>,
}

impl Families {
    fn new(g: &Graph, ad: &AdInfo) -> Families {
        let mut cross: BTreeMap<(LayerId, LayerId), BTreeMap<usize, Vec<NodeIndex>>> =
            BTreeMap::new();
        let mut into: HashMap<LayerId, BTreeMap<usize, Vec<NodeIndex>>> = HashMap::new();
        let mut received: HashMap<NodeIndex, HashSet<LayerId>> = HashMap::new();
        for &(rule_layer, target, c) in &ad.contributions {
            let (Some(rl), Some(tl), Some(t)) = (rule_layer, g.g[target].layer, g.g[target].t)
            else {
                continue;
            };
            if rl == tl || matches!(g.g[target].op, Op::Param { .. }) {
                continue;
            }
            cross
                .entry((rl, tl))
                .or_default()
                .entry(t)
                .or_default()
                .push(c);
            into.entry(tl).or_default().entry(t).or_default().push(c);
            received.entry(c).or_default().insert(tl);
        }
        Families {
            cross,
            into,
            received,
        }
    }

    /// What other layers send this layer, per step, when every step gets
    /// something.
    fn incoming(&self, layer: LayerId, steps: usize) -> Option<Vec<Vec<NodeIndex>>> {
        let per_t = self.into.get(&layer)?;
        if per_t.len() != steps || per_t.keys().copied().ne(0..steps) {
            return None;
        }
        Some(per_t.values().cloned().collect())
    }

    /// `n` is a gradient another layer sends to `layer`.
    fn is_incoming(&self, layer: LayerId, n: NodeIndex) -> bool {
        self.received.get(&n).is_some_and(|ls| ls.contains(&layer))
    }
}

/// Builds one region's e-graph from graph nodes.
struct Region<'a> {
    g: &'a Graph,
    fam: &'a Families,
    layer: LayerId,
    steps: usize,
    eg: RGraph,
    memo: HashMap<NodeIndex, Id>,
}

impl<'a> Region<'a> {
    fn new(g: &'a Graph, fam: &'a Families, layer: LayerId, steps: usize) -> Region<'a> {
        Region {
            g,
            fam,
            layer,
            steps,
            eg: RGraph::new(RegionAnalysis::default()),
            memo: HashMap::new(),
        }
    }

    fn add(&mut self, n: RNode) -> Id {
        lang::add_node(&mut self.eg, n)
    }

    fn leaf(&mut self, kind: Leaf, n: NodeIndex) -> Id {
        let node = &self.g.g[n];
        let param = matches!(node.op, Op::Param { .. });
        self.eg.analysis.leaves.insert(
            n.index() as u32,
            (node.shape.clone(), node.t.is_some(), param),
        );
        // Only a weight layer reads a pool's output as a rate: a neuron or
        // a batch norm above the pool keeps its per-step values.
        let weights = matches!(
            self.g.layers[self.layer].keyword.as_str(),
            "conv2d" | "linear"
        );
        if kind == Leaf::Fwd && weights {
            if let Some(r) = self.rates_leaf(n) {
                self.eg.analysis.rates.insert(n.index() as u32, r);
            }
        }
        self.add(RNode::leaf(kind, n.index() as u32))
    }

    /// What `maxpool-rates` needs to know of a forward leaf that is a step
    /// of a `rate_rule=rates` max pool (the pool's input at every step,
    /// as leaves), or a reshape of one.
    fn rates_leaf(&mut self, n: NodeIndex) -> Option<RatesLeaf> {
        let node = &self.g.g[n];
        node.t?;
        match &node.op {
            op @ Op::MaxPool {
                rule: MaxPoolRule::Rates,
                ..
            } => {
                let op = op.clone();
                let layer = node.layer;
                let mut steps: Vec<(usize, NodeIndex)> = self
                    .g
                    .g
                    .node_indices()
                    .filter(|&m| {
                        let s = &self.g.g[m];
                        s.layer == layer && s.op == op && s.t.is_some()
                    })
                    .map(|m| (self.g.g[m].t.unwrap_or(0), self.g.operands(m)[0]))
                    .collect();
                steps.sort();
                let inputs = steps
                    .into_iter()
                    .map(|(_, x)| {
                        self.leaf(Leaf::Fwd, x);
                        x.index() as u32
                    })
                    .collect();
                Some(RatesLeaf::Pool { op, inputs })
            }
            op @ Op::Reshape { .. } => {
                let op = op.clone();
                let x = self.g.operands(n)[0];
                self.rates_leaf(x)?;
                self.leaf(Leaf::Fwd, x);
                Some(RatesLeaf::View {
                    op,
                    operand: x.index() as u32,
                })
            }
            _ => None,
        }
    }

    /// `tsum` over steps of the sum of each step's gradients.
    fn time_sum(&mut self, per_t: &[Vec<NodeIndex>]) -> Id {
        let kids: Vec<Id> = per_t
            .iter()
            .map(|cs| {
                let ids: Vec<Id> = cs.iter().map(|&c| self.expr(c)).collect();
                if ids.len() == 1 {
                    ids[0]
                } else {
                    self.add(RNode::op(Op::Sum, ids))
                }
            })
            .collect();
        self.add(RNode::tsum(kids))
    }

    /// The e-class of a graph node's value. Iterative (an explicit stack,
    /// operands in order, as a recursion would visit them): the membrane
    /// chain makes the backward T nodes deep, too deep to recurse at large T.
    fn expr(&mut self, root: NodeIndex) -> Id {
        let mut stack = vec![(root, false)];
        while let Some((n, operands_done)) = stack.pop() {
            if self.memo.contains_key(&n) {
                continue;
            }
            let node = &self.g.g[n];
            let id = if !matches!(node.role, Role::Backward | Role::Gradient) {
                self.leaf(Leaf::Fwd, n)
            } else if self.fam.is_incoming(self.layer, n) || node.op == Op::SoftmaxCrossEntropyGrad
            {
                // The loss gradient is where the backward starts: a gradient,
                // although only forward values go into it.
                self.leaf(Leaf::Bnd, n)
            } else {
                let args = self.g.operands(n);
                if !operands_done {
                    stack.push((n, true));
                    stack.extend(args.iter().rev().map(|&a| (a, false)));
                    continue;
                }
                let kids: Vec<Id> = args.iter().map(|a| self.memo[a]).collect();
                match &node.op {
                    // A one-operand sum (autodiff's relabelling of a gradient
                    // to its node's step) is its operand.
                    Op::Sum if kids.len() == 1 => kids[0],
                    Op::Sum if node.t.is_none() => self.sum_over_time(&args, kids),
                    op => self.add(RNode::op(op.clone(), kids)),
                }
            };
            self.memo.insert(n, id);
        }
        self.memo[&root]
    }

    /// A shared `sum` whose operands include one per step is a time sum
    /// (plus whatever else it adds).
    fn sum_over_time(&mut self, args: &[NodeIndex], kids: Vec<Id>) -> Id {
        let mut per: BTreeMap<usize, Id> = BTreeMap::new();
        let mut others = Vec::new();
        for (&a, &k) in args.iter().zip(&kids) {
            match self.g.g[a].t {
                Some(t) if !per.contains_key(&t) => {
                    per.insert(t, k);
                }
                _ => others.push(k),
            }
        }
        if per.len() != self.steps {
            return self.add(RNode::op(Op::Sum, kids));
        }
        let ts = self.add(RNode::tsum(per.into_values().collect()));
        if others.is_empty() {
            ts
        } else {
            others.insert(0, ts);
            self.add(RNode::op(Op::Sum, others))
        }
    }
}

/// Turns extracted e-classes back into graph nodes.
struct Rebuild<'a, 'e, 'x> {
    g: &'a mut Graph,
    eg: &'e RGraph,
    ex: &'x Extractor<'e, cost::KeptThenFlops<'e>, RNode, RegionAnalysis>,
    layer: LayerId,
    memo: HashMap<Id, NodeIndex>,
    visiting: HashSet<Id>,
    new_nodes: &'a mut Vec<NodeIndex>,
    region: &'a str,
    /// Forward time reductions built so far, by operands: a sum and a mean
    /// of the same values share one accumulator (extraction costs trees,
    /// so it cannot see that sharing itself).
    reductions: &'a mut HashMap<Vec<NodeIndex>, (bool, NodeIndex)>,
}

impl Rebuild<'_, '_, '_> {
    fn build(&mut self, id: Id) -> Result<NodeIndex, PassError> {
        let id = self.eg.find(id);
        if let Some(&n) = self.memo.get(&id) {
            return Ok(n);
        }
        if !self.visiting.insert(id) {
            return Err(fail(RateError::Cycle(self.region.to_string())));
        }
        let mut best = self.ex.find_best_node(id).clone();
        // `(scale k x)` is the IR's `scale[k](x)`.
        if best.head == Head::Scale {
            let k = self.eg[best.children[0]]
                .data
                .constant
                .expect("a scale's factor is a constant");
            best = RNode::op(Op::Scale(k), vec![best.children[1]]);
        }
        let n = match &best.head {
            Head::Leaf(_, ix) => NodeIndex::new(*ix as usize),
            Head::Num(_) | Head::Scale => {
                return Err(fail(RateError::BareConstant(self.region.to_string())))
            }
            head => {
                let mut args = Vec::with_capacity(best.children.len());
                for &c in &best.children {
                    args.push(self.build(c)?);
                }
                let is_sum = matches!(head, Head::TSum);
                let time_reduction = matches!(head, Head::TSum | Head::TMean);
                // A time reduction of one value that is no step's (a class
                // whose extracted node reads accumulators only: with one
                // step, `mean_t x` and `x` may share a class) is that value;
                // it is not a forward accumulator, which would then read a
                // node of the backward.
                if time_reduction && args.len() == 1 && self.g.g[args[0]].t.is_none() {
                    self.visiting.remove(&id);
                    self.memo.insert(id, args[0]);
                    return Ok(args[0]);
                }
                let fwd = self.eg[id].data.fwd_only
                    && !(time_reduction && args.iter().all(|&a| self.g.g[a].t.is_none()));
                let per_step = args.iter().any(|&a| self.g.g[a].t.is_some())
                    && !matches!(head, Head::TSum | Head::TMean);
                // The forward computes what needs its steps: per-step values
                // and the time reductions (accumulators). Whatever follows
                // from accumulators alone is the backward's to compute, so
                // the backward keeps only the accumulators.
                let role = if fwd && (per_step || matches!(head, Head::TSum | Head::TMean)) {
                    Role::Forward
                } else {
                    Role::Backward
                };
                if fwd && matches!(head, Head::TSum | Head::TMean) {
                    if let Some(&(other_is_sum, acc)) = self.reductions.get(&args) {
                        if other_is_sum == is_sum {
                            self.visiting.remove(&id);
                            self.memo.insert(id, acc);
                            return Ok(acc);
                        } else {
                            let steps = args.len() as f64;
                            let k = if is_sum { steps } else { 1.0 / steps };
                            let n = add_node(
                                self.g,
                                Op::Scale(k),
                                Some(self.layer),
                                None,
                                Role::Backward,
                                &[acc],
                            );
                            self.new_nodes.push(n);
                            self.visiting.remove(&id);
                            self.memo.insert(id, n);
                            return Ok(n);
                        }
                    }
                }
                let (op, t) = match head {
                    Head::TSum => (Op::Sum, None),
                    Head::TMean => (Op::TimeMean, None),
                    Head::Op(k) => (
                        k.op.clone(),
                        args.iter().filter_map(|&a| self.g.g[a].t).max(),
                    ),
                    Head::Leaf(..) | Head::Num(_) | Head::Scale => unreachable!(),
                };
                let reduction = fwd && matches!(head, Head::TSum | Head::TMean);
                let n = add_node(self.g, op, Some(self.layer), t, role, &args);
                self.new_nodes.push(n);
                if reduction {
                    self.reductions.entry(args).or_insert((is_sum, n));
                }
                n
            }
        };
        self.visiting.remove(&id);
        self.memo.insert(id, n);
        Ok(n)
    }
}

/// New forward nodes whose value a later step reads carry state.
fn mark_state(g: &mut Graph, new_nodes: &[NodeIndex]) {
    for &n in new_nodes {
        if !g.g.contains_node(n) || g.g[n].role != Role::Forward {
            continue;
        }
        let Some(t) = g.g[n].t else { continue };
        if g.users(n)
            .iter()
            .any(|&u| g.g[u].t.is_some_and(|ut| ut > t))
        {
            g.g[n].role = Role::State;
        }
    }
}

/// In rate mode no backward node may read a per-step value.
fn check_collapsed(g: &Graph) -> Result<(), PassError> {
    for n in g.g.node_indices() {
        let node = &g.g[n];
        if !matches!(node.role, Role::Backward | Role::Gradient) {
            continue;
        }
        if let Some(&o) = g.operands(n).iter().find(|&&o| g.g[o].t.is_some()) {
            let l = node
                .layer
                .map(|l| format!("{}:{}", g.layers[l].path, g.layers[l].keyword))
                .unwrap_or_default();
            return Err(fail(RateError::NotCollapsed {
                region: l,
                op: g.g[o].op.name(),
                t: g.g[o].t.map_or("-".to_string(), |t| t.to_string()),
                user: node.op.name(),
            }));
        }
    }
    Ok(())
}

/// Rewrites one expression with the named rules to saturation; returns
/// every form of the root (one per e-node of its e-class, operands in
/// their cheapest form, sorted) and the form extraction picks. This is how
/// each rule is shown on a hand-built region (tests, docs). `facts` gives
/// each leaf's (shape, per-step?, parameter?) and the `maxpool-rates`
/// leaves.
pub fn rewrite_forms(
    expr: &egg::RecExpr<RNode>,
    facts: RegionAnalysis,
    rule_names: &[&str],
) -> Result<(Vec<String>, String), RateError> {
    let mut eg = RGraph::new(facts);
    if expr.as_ref().is_empty() {
        return Err(RateError::EmptyExpression);
    }
    let root = lang::add_term(&mut eg, expr);
    let rules: Vec<_> = rules::rewrites(true)
        .into_iter()
        .filter(|r| rule_names.contains(&r.name.as_str()))
        .collect();
    let runner = Runner::default()
        .with_egraph(eg)
        .with_scheduler(SimpleScheduler)
        .with_iter_limit(50)
        .run(&rules);
    if let Some(why) = unsaturated(&runner.stop_reason, &Limits::BUILT_IN) {
        return Err(RateError::NotSaturated(why));
    }
    let eg = runner.egraph;
    let ex = Extractor::new(
        &eg,
        cost::KeptThenFlops {
            egraph: &eg,
            collapse: true,
        },
    );
    let root = eg.find(root);
    let best = |c: Id| lang::raise(&ex.find_best(c).1);
    let mut forms: Vec<String> = eg[root]
        .nodes
        .iter()
        .map(|n| {
            // The root's form in IR notation, operands in their cheapest form.
            let n = match (
                &n.head,
                eg[n.children.first().copied().unwrap_or(root)]
                    .data
                    .constant,
            ) {
                (Head::Scale, Some(k)) => RNode::op(Op::Scale(k), vec![n.children[1]]),
                _ => n.clone(),
            };
            let kids: Vec<String> = n.children.iter().map(|&c| best(c).to_string()).collect();
            if kids.is_empty() {
                n.to_string()
            } else {
                format!("({} {})", n, kids.join(" "))
            }
        })
        .collect();
    forms.sort();
    Ok((forms, best(root).to_string()))
}
