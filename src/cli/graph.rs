//! `snnc graph`: the program after a pass of the pipeline, as text, DOT or
//! stats; `--list-passes` lists the pipeline.

use clap::{Args, ValueEnum};
use std::fmt::Write;

use super::args::{ModeArg, OutputArg};
use super::plan::fused_plan_text;
use super::{CliError, MIB};
use crate::compile;
use crate::ir;
use crate::passes::cost::graph_cost;
use crate::passes::rate::RegionStats;
use crate::passes::{self, schedule};
use std::path::PathBuf;

#[derive(Args)]
pub struct GraphArgs {
    #[arg(required_unless_present = "list_passes")]
    file: Option<PathBuf>,
    /// Timesteps to unroll.
    #[arg(short = 'T', long = "steps", default_value_t = 4)]
    steps: usize,
    /// bptt: exact rewrites only; rate: rate-based backpropagation.
    #[arg(long, value_enum, default_value_t = ModeArg::Rate)]
    mode: ModeArg,
    /// Batch size the shapes are given for.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The pass whose result is printed (`--list-passes` lists them;
    /// `unrolled` is the pipeline's input).
    #[arg(long, alias = "stage", default_value = "unrolled")]
    after: String,
    /// List the pipeline's passes (for the given --mode, --eval and
    /// --schedule), one line each, and exit.
    #[arg(long)]
    list_passes: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Unroll for evaluation (running BN statistics, no dropout).
    #[arg(long)]
    eval: bool,
    /// The executor the pipeline lowers for, and whose memory plan
    /// `--format stats` reports: layer-major, time-major or
    /// time-major-recompute (one node per unit), or fused,
    /// fused-time-major, fused-time-major-recompute (the fused plan).
    #[arg(long, default_value = "layer-major")]
    schedule: compile::Target,
    #[command(flatten)]
    output: OutputArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Dot,
    /// Node/edge counts and build and verify times.
    Stats,
}

pub fn run(a: GraphArgs) -> Result<(), CliError> {
    let opts = compile::Options {
        eval: a.eval,
        ..compile::Options::new(a.steps, a.batch, a.mode.into())
    };
    let text = match &a.file {
        Some(file) if !a.list_passes => graph(file, &opts, &a.after, a.format, a.schedule)?,
        _ => list_passes(&opts, a.schedule),
    };
    a.output.write(&text)
}

/// The pipeline `snnc graph` runs: the front passes for `opts`, then the
/// lowering for `target` on the CPU backend's scratch model.
fn graph_pipeline(opts: &compile::Options, target: compile::Target) -> passes::Pipeline {
    compile::pipeline(
        opts,
        Some(compile::Lowering {
            target,
            workspace: &crate::codegen::cpu::WORKSPACE,
        }),
    )
}

/// `snnc graph --list-passes`: the pipeline's input and passes, one line
/// each with what it does.
fn list_passes(opts: &compile::Options, target: compile::Target) -> String {
    let mut out = String::new();
    for (name, about) in graph_pipeline(opts, target).listing() {
        let _ = writeln!(out, "{name:<22} {about}");
    }
    out
}

/// The program after the pass `after` of the pipeline for `opts` and
/// `target`: a graph (text, DOT or stats), or after a plan-level pass its
/// order, fusion plan or memory plan (text).
fn graph(
    file: &std::path::Path,
    opts: &compile::Options,
    after: &str,
    format: Format,
    target: compile::Target,
) -> Result<String, CliError> {
    let pipeline = graph_pipeline(opts, target);
    let n = compile::passes_until(opts, &pipeline, Some(after)).map_err(|e| match e {
        compile::CompileError::Pass(passes::PassError::Unknown { .. }) => CliError::Hinted {
            source: Box::new(e.into()),
            hint: "the lowering passes depend on --schedule; \
                   `snnc graph --list-passes --schedule S` lists them",
        },
        e => e.into(),
    })?;
    let (model, _) = crate::frontend::load(file)?;
    let c = compile::run(&model, opts, &pipeline, Some(after))?;
    let p = &c.program;
    let g = &p.graph;
    Ok(match format {
        Format::Text => match (&p.plan, &p.order, &p.mem) {
            (Some(plan), _, Some(mem)) => fused_plan_text(g, plan, mem),
            (None, _, Some(mem)) => mem.to_text(g),
            (Some(plan), _, None) => format!(
                "fusion plan {} steps={} batch={}: {} units ({} kernels)\n{}",
                g.name,
                g.steps,
                g.batch,
                plan.units.len(),
                plan.kernels.len(),
                plan.text(g)
            ),
            (None, Some(order), None) => schedule::order_text(g, order),
            (None, None, None) => ir::to_text(g),
        },
        Format::Dot => ir::to_dot(g),
        Format::Stats => {
            let started = std::time::Instant::now();
            ir::verify(g)?;
            let verify = started.elapsed().as_secs_f64();
            let mut out = format!(
                "graph {} steps={} batch={} after {}: {} nodes, {} edges\n",
                g.name,
                opts.steps,
                opts.batch,
                after,
                g.node_count(),
                g.edge_count()
            );
            for (stage, secs) in &c.timings {
                let _ = writeln!(out, "  {:<10} {:>9.2} ms", stage, secs * 1e3);
            }
            let _ = writeln!(out, "  {:<10} {:>9.2} ms", "verify", verify * 1e3);
            if !p.regions.is_empty() {
                let sum = |f: fn(&RegionStats) -> f64| p.regions.iter().map(f).sum::<f64>();
                let max = p.regions.iter().map(|r| r.enodes_after).max().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "  rate pass ({}): {} regions, e-nodes {} before / {} after rewriting (largest region {}), {} e-classes, {:.1} ms in egg",
                    opts.mode,
                    p.regions.len(),
                    sum(|r| r.enodes_before as f64),
                    sum(|r| r.enodes_after as f64),
                    max,
                    sum(|r| r.eclasses as f64),
                    sum(|r| r.seconds) * 1e3
                );
            }
            let cost = graph_cost(g);
            let _ = writeln!(
                out,
                "  kept for the backward {:.2} MiB; forward {:.3} GFLOP, backward {:.3} GFLOP",
                cost.kept_bytes / MIB,
                cost.forward_flops / 1e9,
                cost.backward_flops / 1e9
            );
            // The memory plan: the program's, or the rest of the lowering
            // run on a copy.
            let started = std::time::Instant::now();
            let planned;
            let mem = match &p.mem {
                Some(mem) => mem,
                None => {
                    let lowering_start = compile::front(opts).len();
                    let done = n.saturating_sub(lowering_start);
                    let rest = graph_pipeline(opts, target)
                        .passes
                        .into_iter()
                        .skip(lowering_start + done)
                        .collect();
                    let mut q = p.clone();
                    passes::Pipeline::new(rest).run(&mut q)?;
                    planned = q.mem.expect("the lowering ends with the memory plan");
                    &planned
                }
            };
            let _ = writeln!(
                out,
                "  memory plan ({target}, {:.2} ms): peak {:.2} MiB, arena {:.2} MiB, resident (inputs, params) {:.2} MiB; {} buffers, {} nodes in place",
                started.elapsed().as_secs_f64() * 1e3,
                mem.peak_bytes as f64 / MIB,
                mem.arena_bytes as f64 / MIB,
                mem.resident_bytes as f64 / MIB,
                mem.buffers.len(),
                mem.in_place
            );
            out
        }
    })
}
