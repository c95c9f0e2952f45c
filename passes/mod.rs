//! The middle-end: passes from the unrolled graph to an executable plan.
//!
//! A pass ([`Pass`]) is a named value holding its options; it transforms a
//! [`Program`]: the graph, and what the plan-level passes add to it (an
//! execution order, a fusion plan, a memory plan). A [`Pipeline`] is data —
//! a list of passes, built from options by `compile::pipeline` — and its
//! driver verifies the program after every pass, names the pass that broke
//! it, can hand each intermediate program to an observer (timings,
//! printing), and can stop after any pass, so that `snnc graph --after NAME`
//! shows that pass's result and `snnc graph --list-passes` lists the names.

pub mod cost;
pub mod cse;
pub mod dce;
pub mod factor;
pub mod fuse;
pub mod fuse_time;
pub mod mem;
pub mod memplan;
pub mod rate;
pub mod schedule;

use crate::ir::{self, Graph, NodeIndex};
use petgraph::visit::NodeIndexable;
use std::time::Instant;

/// The name of the pipeline's input, the unrolled graph: `--after` accepts
/// it to stop before the first pass.
pub const INPUT: &str = "unrolled";

/// What the pipeline carries from pass to pass.
#[derive(Clone, Debug)]
pub struct Program {
    pub graph: Graph,
    /// Nodes whose values must stay readable after a run besides the
    /// outputs (fusion keeps them stored; the memory planner keeps them
    /// alive).
    pub keep: Vec<NodeIndex>,
    /// What the rate pass's e-graphs did, one entry per region.
    pub regions: Vec<rate::RegionStats>,
    /// The execution order of the graph's nodes (the `schedule` pass).
    pub order: Option<Vec<NodeIndex>>,
    /// The fusion plan (the `fuse` pass; `split-steps` refines it).
    pub plan: Option<fuse::Plan>,
    /// The memory plan of the order or of the fusion plan (`memplan`).
    pub mem: Option<memplan::MemPlan>,
}

impl Program {
    pub fn new(graph: Graph) -> Program {
        Program {
            graph,
            keep: Vec::new(),
            regions: Vec::new(),
            order: None,
            plan: None,
            mem: None,
        }
    }

    /// The graph, leaving an empty one in its place: for passes that build
    /// a new graph from the old one by value.
    pub fn take_graph(&mut self) -> Graph {
        let g = &self.graph;
        let empty = Graph::new(&g.name, g.steps, g.batch);
        std::mem::replace(&mut self.graph, empty)
    }

    /// Whether a plan-level pass has run (the program is more than a graph).
    pub fn is_planned(&self) -> bool {
        self.order.is_some() || self.plan.is_some() || self.mem.is_some()
    }
}

/// A transformation of the program: graph → graph, or one step from the
/// graph towards the plan. Implementations hold their options.
pub trait Pass {
    /// The name `--after` and `--list-passes` use (kebab-case, unique in a
    /// pipeline).
    fn name(&self) -> &'static str;
    /// One line for `--list-passes`.
    fn about(&self) -> &'static str;
    fn run(&self, p: &mut Program) -> Result<(), PassError>;
}

/// Why a plan-level result is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the execution order is not a schedule of the graph: {0}")]
    Order(#[from] schedule::OrderError),
    #[error("the fusion plan runs node {0}, which is not in the graph")]
    MissingNode(usize),
    #[error("the fusion plan runs node {0} more than once")]
    Twice(usize),
    #[error("the fusion plan never runs node {node} ({op})")]
    NotRun { node: usize, op: &'static str },
    #[error("the fusion plan names kernel {0}, which it does not have")]
    MissingKernel(usize),
    #[error("the memory plan's arena is inconsistent: {0}")]
    Arena(#[from] memplan::ArenaError),
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("pass `{pass}` produced an invalid graph: {err}")]
    Invalid {
        pass: &'static str,
        err: ir::VerifyError,
    },
    #[error("pass `{pass}` produced an invalid plan: {err}")]
    InvalidPlan { pass: &'static str, err: PlanError },
    /// The pass refused or failed; `err` says why.
    #[error("pass `{pass}`: {err}")]
    Failed {
        pass: &'static str,
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pass `{pass}` needs {needs} (run {after} first)")]
    Missing {
        pass: &'static str,
        needs: &'static str,
        after: &'static str,
    },
    #[error("no pass `{name}` in this pipeline; its passes are: {}", .known.join(", "))]
    Unknown {
        name: String,
        known: Vec<&'static str>,
    },
}

impl PassError {
    /// A failure of `pass` for the reason `err`.
    pub fn failed(pass: &'static str, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        PassError::Failed {
            pass,
            err: Box::new(err),
        }
    }
}

/// Checks what a pass left: the graph verifies, an order is a schedule of
/// it, a fusion plan runs each of its non-leaf nodes exactly once, and a
/// memory plan's arena is consistent.
pub fn check(p: &Program, pass: &'static str) -> Result<(), PassError> {
    if let Err(err) = ir::verify(&p.graph) {
        return Err(PassError::Invalid { pass, err });
    }
    if let Err(err) = check_plans(p) {
        return Err(PassError::InvalidPlan { pass, err });
    }
    Ok(())
}

/// The plan-level part of [`check`].
fn check_plans(p: &Program) -> Result<(), PlanError> {
    if let Some(order) = &p.order {
        schedule::is_topological(&p.graph, order)?;
    }
    if let Some(plan) = &p.plan {
        check_plan(&p.graph, plan)?;
    }
    if let Some(mem) = &p.mem {
        mem.check_arena()?;
    }
    Ok(())
}

/// Every node a fusion plan runs is in the graph and runs once (a kernel
/// split into steps counts once), and every computed node is run.
fn check_plan(g: &Graph, plan: &fuse::Plan) -> Result<(), PlanError> {
    use fuse::Unit;
    let mut ran = vec![false; g.g.node_bound()];
    let mut kernels = vec![false; plan.kernels.len()];
    let mark = |n: NodeIndex, ran: &mut [bool]| {
        if !g.g.contains_node(n) {
            return Err(PlanError::MissingNode(n.index()));
        }
        if std::mem::replace(&mut ran[n.index()], true) {
            return Err(PlanError::Twice(n.index()));
        }
        Ok(())
    };
    for u in &plan.units {
        match *u {
            Unit::Node(n) => mark(n, &mut ran)?,
            Unit::Kernel(k) | Unit::Step(k, _) => {
                let seen = kernels.get_mut(k).ok_or(PlanError::MissingKernel(k))?;
                if !std::mem::replace(seen, true) {
                    for &n in &plan.kernels[k].nodes {
                        mark(n, &mut ran)?;
                    }
                }
            }
        }
    }
    for n in g.g.node_indices() {
        if !ran[n.index()] && !g.g[n].op.is_leaf() {
            return Err(PlanError::NotRun {
                node: n.index(),
                op: g.g[n].op.name(),
            });
        }
    }
    Ok(())
}

/// A list of passes, run in order with a check after each.
pub struct Pipeline {
    pub passes: Vec<Box<dyn Pass>>,
}

impl Pipeline {
    pub fn new(passes: Vec<Box<dyn Pass>>) -> Pipeline {
        Pipeline { passes }
    }

    /// The names `--after` accepts: the input, then every pass.
    pub fn names(&self) -> Vec<&'static str> {
        std::iter::once(INPUT)
            .chain(self.passes.iter().map(|p| p.name()))
            .collect()
    }

    /// `(name, about)` of the input and of every pass, for `--list-passes`.
    pub fn listing(&self) -> Vec<(&'static str, &'static str)> {
        std::iter::once((
            INPUT,
            "the time-unrolled forward graph (the pipeline's input)",
        ))
        .chain(self.passes.iter().map(|p| (p.name(), p.about())))
        .collect()
    }

    /// How many passes run to stop after `name` (0 for the input).
    pub fn position(&self, name: &str) -> Result<usize, PassError> {
        if name == INPUT {
            return Ok(0);
        }
        self.passes
            .iter()
            .position(|p| p.name() == name)
            .map(|i| i + 1)
            .ok_or_else(|| PassError::Unknown {
                name: name.to_string(),
                known: self.names(),
            })
    }

    /// Runs every pass.
    pub fn run(&self, p: &mut Program) -> Result<(), PassError> {
        self.run_observed(p, None, &mut |_, _, _| {})
    }

    /// Runs the passes up to and including the one named `after` (all of
    /// them when `None`), checking the program after each, and calls
    /// `each(pass, program, seconds)` after each check.
    pub fn run_observed(
        &self,
        p: &mut Program,
        after: Option<&str>,
        each: &mut dyn FnMut(&dyn Pass, &Program, f64),
    ) -> Result<(), PassError> {
        let n = match after {
            Some(name) => self.position(name)?,
            None => self.passes.len(),
        };
        for pass in &self.passes[..n] {
            let started = Instant::now();
            pass.run(p)?;
            let secs = started.elapsed().as_secs_f64();
            check(p, pass.name())?;
            each(pass.as_ref(), p, secs);
        }
        Ok(())
    }
}

/// The memory planner as a pass: plans the fusion plan when there is one
/// (`memplan::plan_fused`), else the execution order (`memplan::plan`).
/// Holds the backend's scratch model (`memplan::Workspace`).
pub struct MemPlan {
    pub workspace: &'static dyn memplan::Workspace,
}

impl Pass for MemPlan {
    fn name(&self) -> &'static str {
        "memplan"
    }
    fn about(&self) -> &'static str {
        "memory plan: liveness, in-place reuse, workspaces, peak and arena offsets"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        let mem = match (&p.plan, &p.order) {
            (Some(plan), _) => memplan::plan_fused(&p.graph, plan, self.workspace),
            (None, Some(order)) => memplan::plan(&p.graph, order, &p.keep, self.workspace),
            (None, None) => {
                return Err(PassError::Missing {
                    pass: "memplan",
                    needs: "an execution order or a fusion plan",
                    after: "schedule or fuse",
                })
            }
        };
        p.mem = Some(mem);
        Ok(())
    }
}
