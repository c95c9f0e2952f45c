//! The pipeline, as data: the unrolled graph, then a list of passes
//! (`passes::Pipeline`) built from options — autodiff → rate → dce → cse
//! ([`front`]), then the lowering of one executor to its plan ([`lowering`]:
//! a node-by-node plan's rewrites, order and memory plan, or the fused
//! plan's rewrites, fusion, steps and memory plan). The driver checks the
//! program after every pass and can stop after any, so each intermediate
//! result can be printed (`snnc graph --after NAME`, `--list-passes`) and
//! tested.

use crate::autodiff::Autodiff;
use crate::ir::Graph;
use crate::model::Model;
use crate::passes::memplan::Workspace;
use crate::passes::rate::{self, Limits, Mode, RegionStats};
use crate::passes::schedule::{self, SchedOpts};
use crate::passes::{self, cse::Cse, dce::Dce, fuse_time, Pass, PassError, Pipeline, Program};
use crate::unroll::{self, Phase, UnrollConfig, UnrollError};
use std::time::Instant;

/// Where [`compile`] stops: the input or one of the [`front`] passes.
/// `name` is the pass name (`--after` takes the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The time-unrolled forward graph.
    Unrolled,
    /// Forward + loss + BPTT backward.
    Autodiff,
    /// After the rate pass (exact rules in bptt mode, + decorrelate in rate mode).
    Rate,
    /// After dead-code elimination.
    Dce,
    /// After common-subexpression elimination (time-invariant work hoisted
    /// out of the steps): the graph later stages consume.
    Cse,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Unrolled,
        Stage::Autodiff,
        Stage::Rate,
        Stage::Dce,
        Stage::Cse,
    ];

    /// The pass name: what `--after` and `--list-passes` say.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Unrolled => passes::INPUT,
            Stage::Autodiff => "autodiff",
            Stage::Rate => "rate",
            Stage::Dce => "dce",
            Stage::Cse => "cse",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`Stage`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage `{0}`; expected one of: unrolled, autodiff, rate, dce, cse")]
pub struct UnknownStage(pub String);

impl std::str::FromStr for Stage {
    type Err = UnknownStage;
    fn from_str(s: &str) -> Result<Stage, UnknownStage> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| UnknownStage(s.to_string()))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub steps: usize,
    pub batch: usize,
    /// Evaluation graphs stop after unrolling (no loss, no backward).
    pub eval: bool,
    pub mode: Mode,
    pub after: Stage,
    pub limits: Limits,
}

impl Options {
    pub fn new(steps: usize, batch: usize, mode: Mode) -> Options {
        Options {
            steps,
            batch,
            eval: false,
            mode,
            after: Stage::Cse,
            limits: Limits::default(),
        }
    }
}

/// The plan a pipeline lowers for: one node per unit in a schedule's
/// order, or the fused plan (layer-major, or time-major: one kernel step
/// at a time). Named as `snnc bench --schedule` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Graph(SchedOpts),
    Fused(SchedOpts),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fused(SchedOpts::LAYER_MAJOR) => f.write_str("fused"),
            Target::Fused(s) => write!(f, "fused-{s}"),
            Target::Graph(s) => write!(f, "{s}"),
        }
    }
}

impl Target {
    /// The graph this target runs (lowered for its schedule) and the plan
    /// the executor runs it by: the fused plan (`fuse_time::plan`, storing
    /// the `keep` nodes), or one node unit per node in the schedule's order.
    pub fn plan(
        &self,
        g: &Graph,
        keep: &[crate::ir::NodeIndex],
    ) -> (Graph, crate::passes::fuse::Plan) {
        match *self {
            Target::Fused(opts) => {
                let lowered = fuse_time::lower(g, opts);
                let plan = fuse_time::plan(&lowered, keep, opts);
                (lowered, plan)
            }
            Target::Graph(opts) => {
                let (graph, order) = schedule::schedule(g, opts);
                (graph, crate::passes::fuse::Plan::node_by_node(order))
            }
        }
    }
}

/// A name that is not a [`Target`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown schedule `{0}`; expected one of: fused, fused-time-major, \
     fused-time-major-recompute, {names}",
    names = SchedOpts::NAMES.join(", ")
)]
pub struct UnknownTarget(pub String);

impl std::str::FromStr for Target {
    type Err = UnknownTarget;
    fn from_str(s: &str) -> Result<Target, UnknownTarget> {
        let bad = || UnknownTarget(s.to_string());
        match s {
            "fused" => Ok(Target::Fused(SchedOpts::LAYER_MAJOR)),
            _ => match s.strip_prefix("fused-") {
                Some(rest) => rest.parse().map(Target::Fused).map_err(|_| bad()),
                None => s.parse().map(Target::Graph).map_err(|_| bad()),
            },
        }
    }
}

/// What the lowering part of a pipeline needs: the executor, and its
/// backend's scratch model for the memory plan.
#[derive(Clone, Copy)]
pub struct Lowering {
    pub target: Target,
    pub workspace: &'static dyn Workspace,
}

/// The passes from the unrolled graph to the graph every executor starts
/// from: autodiff, rate, dce, cse for training; none for evaluation (no
/// loss, no backward).
pub fn front(opts: &Options) -> Vec<Box<dyn Pass>> {
    if opts.eval {
        return Vec::new();
    }
    vec![
        Box::new(Autodiff),
        Box::new(rate::Rate {
            mode: opts.mode,
            limits: opts.limits,
        }),
        Box::new(Dce),
        Box::new(Cse),
    ]
}

/// The passes from that graph to an executor's plan: for the graph
/// executor its rewrites (`schedule::lowering`), its order and memory
/// plan; for the fused plan its rewrites (`fuse_time::lowering`), fusion
/// and steps (`fuse_time::planning`) and memory plan.
pub fn lowering(l: Lowering) -> Vec<Box<dyn Pass>> {
    let mut out = match l.target {
        Target::Graph(s) => {
            let mut v = schedule::lowering(s);
            v.push(Box::new(schedule::Order(s.schedule)));
            v
        }
        Target::Fused(s) => {
            let mut v = fuse_time::lowering(s);
            v.extend(fuse_time::planning(s));
            v
        }
    };
    out.push(Box::new(passes::MemPlan {
        workspace: l.workspace,
    }));
    out
}

/// The whole pipeline for `opts`: [`front`], then [`lowering`] when given.
pub fn pipeline(opts: &Options, lower: Option<Lowering>) -> Pipeline {
    let mut v = front(opts);
    if let Some(l) = lower {
        v.extend(lowering(l));
    }
    Pipeline::new(v)
}

/// Why compiling failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Unroll(#[from] UnrollError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error("an evaluation graph has no backward; use --after unrolled")]
    EvalHasNoBackward,
}

/// The program after the pass `after` of `pipeline`, from the unrolled
/// graph of `model`, and the seconds each step took (the unrolling first,
/// as `unrolled`).
pub struct Run {
    pub program: Program,
    pub timings: Vec<(&'static str, f64)>,
}

/// How many passes of `pipeline` run to stop after `after` (all when
/// `None`); an evaluation graph's pipeline has no backward passes, and
/// asking for one says so.
pub fn passes_until(
    opts: &Options,
    pipeline: &Pipeline,
    after: Option<&str>,
) -> Result<usize, CompileError> {
    let Some(a) = after else {
        return Ok(pipeline.passes.len());
    };
    if opts.eval && a.parse::<Stage>().is_ok_and(|s| s > Stage::Unrolled) {
        return Err(CompileError::EvalHasNoBackward);
    }
    Ok(pipeline.position(a)?)
}

/// Unrolls `model` for `opts` and runs `pipeline` up to and including the
/// pass named `after` (all of it when `None`).
pub fn run(
    model: &Model,
    opts: &Options,
    pipeline: &Pipeline,
    after: Option<&str>,
) -> Result<Run, CompileError> {
    passes_until(opts, pipeline, after)?;
    let started = Instant::now();
    let cfg = UnrollConfig {
        steps: opts.steps,
        batch: opts.batch,
        phase: if opts.eval { Phase::Eval } else { Phase::Train },
    };
    let g = unroll::unroll_with(model, &cfg)?;
    let mut timings = vec![(passes::INPUT, started.elapsed().as_secs_f64())];
    let mut program = Program::new(g);
    pipeline.run_observed(&mut program, after, &mut |pass, _, secs| {
        timings.push((pass.name(), secs))
    })?;
    Ok(Run { program, timings })
}

pub struct Compiled {
    pub graph: Graph,
    pub regions: Vec<RegionStats>,
    /// Seconds spent in each stage that ran.
    pub timings: Vec<(&'static str, f64)>,
}

/// The graph after `opts.after`: [`run`] with the [`front`] passes.
pub fn compile(model: &Model, opts: &Options) -> Result<Compiled, CompileError> {
    let r = run(model, opts, &pipeline(opts, None), Some(opts.after.name()))?;
    Ok(Compiled {
        graph: r.program.graph,
        regions: r.program.regions,
        timings: r.timings,
    })
}
