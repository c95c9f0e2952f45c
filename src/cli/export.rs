//! `snnc export SOURCE --format nir -o OUT [--dt DT]`.

use clap::Args;
use std::path::PathBuf;

use super::CliError;
use crate::interop::model_and_params;

#[derive(Args)]
pub struct ExportArgs {
    /// A run folder, a checkpoint, or a .snn file with --params.
    source: PathBuf,
    /// Weights for a .snn source (parameter file, checkpoint or run folder).
    #[arg(long)]
    params: Option<PathBuf>,
    #[arg(long, default_value = "nir")]
    format: String,
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// The time step of the discrete-to-continuous neuron mapping
    /// (τ = dt/(1 − λ), R = τ/dt).
    #[arg(long, default_value_t = crate::nir::DEFAULT_DT)]
    dt: f64,
    /// Write weights as f64 instead of f32 (a folded batch norm kept
    /// exactly).
    #[arg(long)]
    f64: bool,
}

pub fn run(a: ExportArgs) -> Result<(), CliError> {
    let (format, out, dt, wide) = (&a.format, &a.out, a.dt, a.f64);
    if format != "nir" {
        return Err(CliError::usage(format!(
            "unknown export format `{format}` (snnc exports `nir`)"
        )));
    }
    let (model, an, params, _) = model_and_params(&a.source, a.params.as_deref())?;
    let ex = crate::nir::export::export(&model, &an, &params, dt)?;
    crate::nir::hdf5::write(out, &ex.graph, wide)?;
    println!(
        "exported `{}` to NIR: {} nodes, {} edges → {} ({} weights; LIF/IF at dt = {dt:e}: \
         τ = dt/(1 − λ), R = τ/dt, v_leak = 0, v_threshold = θ)",
        model.name,
        ex.graph.nodes.len(),
        ex.graph.edges.len(),
        out.display(),
        if wide { "f64" } else { "f32" }
    );
    for n in &ex.notes {
        println!("  note: {n}");
    }
    Ok(())
}
