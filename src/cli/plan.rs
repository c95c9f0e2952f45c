//! `snnc plan`: a schedule's execution order and memory plan.

use clap::Args;
use std::fmt::Write;

use super::args::{OutputArg, UnrollArgs};
use super::bench::BenchPlan;
use super::CliError;
use crate::compile::{self, Stage};
use crate::passes::fuse::{Plan, Unit};
use crate::passes::{fuse_time, memplan};

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    unroll: UnrollArgs,
    /// The stage whose graph is planned.
    #[arg(long, alias = "stage", default_value_t = Stage::Cse)]
    after: Stage,
    /// layer-major, time-major or time-major-recompute (one node per
    /// unit), or fused, fused-time-major, fused-time-major-recompute
    /// (the fusion plan: one line per kernel, kernel step or node).
    #[arg(long, default_value = "layer-major")]
    schedule: BenchPlan,
    /// The plan's totals and buffers as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    output: OutputArg,
}

pub fn run(a: PlanArgs) -> Result<(), CliError> {
    let opts = a.unroll.options(a.after, false);
    let text = plan(&a.unroll, &opts, a.schedule, a.json)?;
    a.output.write(&text)
}

/// The execution order and buffer table of a schedule (text), or the
/// plan's totals and buffers (JSON).
fn plan(
    u: &UnrollArgs,
    opts: &compile::Options,
    sched: BenchPlan,
    json: bool,
) -> Result<String, CliError> {
    let (model, _) = crate::frontend::load(&u.file)?;
    let c = compile::compile(&model, opts)?;
    let sched = match sched {
        BenchPlan::Graph(s) => s,
        BenchPlan::Fused(s) => {
            let g = fuse_time::lower(&c.graph, s);
            let plan = fuse_time::plan(&g, &[], s);
            let mem = memplan::plan_fused(&g, &plan, &crate::codegen::cpu::WORKSPACE);
            mem.check_arena()
                .map_err(|e| CliError::Internal(e.to_string()))?;
            if json {
                let mut v = serde_json::to_value(&mem).expect("serialisable");
                v["schedule"] = serde_json::json!(sched.to_string());
                v["units"] = serde_json::json!(plan.units.len());
                return Ok(format!("{v}\n"));
            }
            return Ok(format!(
                "schedule {sched}\n{}",
                fused_plan_text(&g, &plan, &mem)
            ));
        }
    };
    let p = memplan::build(&c.graph, sched, &crate::codegen::cpu::WORKSPACE);
    p.mem
        .check_arena()
        .map_err(|e| CliError::Internal(e.to_string()))?;
    if json {
        let mut v = serde_json::to_value(&p.mem).expect("serialisable");
        v["schedule"] = serde_json::json!(sched.to_string());
        v["nodes"] = serde_json::json!(p.mem.order.len());
        return Ok(format!("{v}\n"));
    }
    Ok(format!("schedule {sched}\n{}", p.mem.to_text(&p.graph)))
}

/// A fused plan's units with the bytes live while each runs, then its
/// buffers.
pub(super) fn fused_plan_text(g: &crate::ir::Graph, plan: &Plan, mem: &memplan::MemPlan) -> String {
    let live = mem.live_bytes();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "plan {} steps={} batch={}: {} units ({} kernels), peak {} B at unit {}, resident {} B",
        g.name,
        g.steps,
        g.batch,
        plan.units.len(),
        plan.kernels.len(),
        mem.peak_bytes,
        mem.peak_at,
        mem.resident_bytes
    );
    for (i, u) in plan.units.iter().enumerate() {
        let what = match *u {
            Unit::Node(n) => format!(
                "%{:<5} {} {}",
                n.index(),
                g.g[n].op.name(),
                crate::shape::list(&g.g[n].shape)
            ),
            Unit::Kernel(k) => format!("kernel {}", plan.kernels[k].kernel.name),
            Unit::Step(k, t) => format!("kernel {} t={t}", plan.kernels[k].kernel.name),
        };
        let _ = writeln!(o, "  {i:<4} {what:<56} live {}", live[i]);
    }
    let _ = writeln!(o, "buffers:");
    for (i, b) in mem.buffers.iter().enumerate() {
        let _ = writeln!(
            o,
            "  b{i:<3} {:<9} {:>10} B  live [{}, {}]",
            serde_json::to_value(b.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            b.bytes,
            b.start,
            b.end
        );
    }
    o
}
