//! `snnc graph`: the graph after a compiler stage, as text, DOT or stats.

use clap::{Args, ValueEnum};
use std::fmt::Write;

use super::args::{modes_of, OutputArg, UnrollArgs};
use super::{CliError, MIB};
use crate::compile::{self, load_for, Stage};
use crate::ir;
use crate::passes::cost::graph_cost;
use crate::passes::memplan;
use crate::passes::rate::RegionStats;
use crate::passes::schedule::SchedOpts;

#[derive(Args)]
pub struct GraphArgs {
    #[command(flatten)]
    unroll: UnrollArgs,
    /// The stage whose result is printed.
    #[arg(long, alias = "stage", value_enum, default_value_t = Stage::Unrolled)]
    after: Stage,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Unroll for evaluation (running BN statistics, no dropout).
    #[arg(long)]
    eval: bool,
    /// Schedule whose memory plan `--format stats` reports:
    /// layer-major, time-major or time-major-recompute.
    #[arg(long, default_value = "layer-major")]
    schedule: SchedOpts,
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
    let opts = a.unroll.options(a.after, a.eval);
    let text = graph(&a.unroll, &opts, a.format, a.schedule)?;
    a.output.write(&text)
}

/// The command-line name of a stage (`unrolled`, `cse`).
fn stage_name(s: &Stage) -> String {
    s.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn graph(
    u: &UnrollArgs,
    opts: &compile::Options,
    format: Format,
    sched: SchedOpts,
) -> Result<String, CliError> {
    let (model, _) = load_for(&u.file, &modes_of(opts))?;
    let c = compile::compile(&model, opts)?;
    let g = &c.graph;
    Ok(match format {
        Format::Text => ir::to_text(g),
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
                stage_name(&opts.after),
                g.node_count(),
                g.edge_count()
            );
            for (stage, secs) in &c.timings {
                let _ = writeln!(out, "  {:<10} {:>9.2} ms", stage_name(stage), secs * 1e3);
            }
            let _ = writeln!(out, "  {:<10} {:>9.2} ms", "verify", verify * 1e3);
            if !c.regions.is_empty() {
                let sum = |f: fn(&RegionStats) -> f64| c.regions.iter().map(f).sum::<f64>();
                let max = c.regions.iter().map(|r| r.enodes_after).max().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "  rate pass ({}): {} regions, e-nodes {} before / {} after rewriting (largest region {}), {} e-classes, {:.1} ms in egg",
                    opts.mode,
                    c.regions.len(),
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
            let started = std::time::Instant::now();
            let p = memplan::build(g, sched, &crate::codegen::cpu::WORKSPACE);
            let _ = writeln!(
                out,
                "  memory plan ({sched}, {:.2} ms): peak {:.2} MiB, arena {:.2} MiB, resident (inputs, params) {:.2} MiB; {} buffers, {} nodes in place",
                started.elapsed().as_secs_f64() * 1e3,
                p.mem.peak_bytes as f64 / MIB,
                p.mem.arena_bytes as f64 / MIB,
                p.mem.resident_bytes as f64 / MIB,
                p.mem.buffers.len(),
                p.mem.in_place
            );
            out
        }
    })
}
