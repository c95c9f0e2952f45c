//! `snnc report`: bytes kept for the backward and FLOPs, per mode and T.

use clap::Args;

use super::args::{modes, SweepArgs};
use super::{CliError, MIB};
use crate::compile;
use crate::model::Model;
use crate::passes::cost::graph_cost;
use crate::passes::rate::Mode;

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    #[arg(long)]
    json: bool,
}

pub fn run(a: ReportArgs) -> Result<(), CliError> {
    let SweepArgs {
        file,
        steps,
        mode,
        batch,
    } = a.sweep;
    let modes = modes(&mode);
    let (model, _) = crate::frontend::load(&file)?;
    let rows = report_rows(&model, &steps, &modes, batch)?;
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("serialisable"));
        }
        return Ok(());
    }
    println!("{}: batch {batch}; kept = forward values the backward reads (f32); FLOPs per step of training", model.name);
    println!(
        "{:<6} {:>4} {:>14} {:>14} {:>14} {:>8} {:>10}",
        "mode", "T", "kept (MiB)", "fwd GFLOP", "bwd GFLOP", "nodes", "compile s"
    );
    for r in &rows {
        println!(
            "{:<6} {:>4} {:>14.2} {:>14.3} {:>14.3} {:>8} {:>10.3}",
            r.mode.to_string(),
            r.steps,
            r.kept_bytes / MIB,
            r.forward_flops / 1e9,
            r.backward_flops / 1e9,
            r.nodes,
            r.compile_seconds
        );
    }
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize)]
struct ReportRow {
    mode: Mode,
    steps: usize,
    batch: usize,
    kept_bytes: f64,
    forward_flops: f64,
    backward_flops: f64,
    nodes: usize,
    compile_seconds: f64,
}

/// Compiles `model` for every mode and T and measures the result.
fn report_rows(
    model: &Model,
    steps: &[usize],
    modes: &[Mode],
    batch: usize,
) -> Result<Vec<ReportRow>, CliError> {
    let mut rows = Vec::new();
    for &mode in modes {
        for &t in steps {
            let started = std::time::Instant::now();
            let c = compile::compile(model, &compile::Options::new(t, batch, mode))?;
            let cost = graph_cost(&c.graph);
            rows.push(ReportRow {
                mode,
                steps: t,
                batch,
                kept_bytes: cost.kept_bytes,
                forward_flops: cost.forward_flops,
                backward_flops: cost.backward_flops,
                nodes: c.graph.node_count(),
                compile_seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    Ok(rows)
}
