//! `snnc grad-check`: rate vs BPTT gradients per parameter, or (with given
//! weights, batch or `--dump`) every gradient of one step written out.

use clap::Args;
use std::path::PathBuf;

use super::args::{modes, ModeArg};
use super::CliError;
use crate::interop::grad::{self, GradRequest};
use crate::shape::dims;

#[derive(Args)]
pub struct GradCheckArgs {
    file: PathBuf,
    #[arg(short = 'T', long = "steps", default_value_t = 4)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Weights (parameter file, checkpoint or run folder) instead of a
    /// random initialisation.
    #[arg(long)]
    params: Option<PathBuf>,
    /// The batch: a safetensors file with `x` and `labels` (class
    /// indices [B] or one-hot [B, classes]).
    #[arg(long)]
    batch_file: Option<PathBuf>,
    /// With --params/--batch-file/--dump: the modes whose gradients
    /// are computed.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bptt,rate")]
    mode: Vec<ModeArg>,
    /// Compute in f64 (with --params/--batch-file/--dump).
    #[arg(long)]
    f64: bool,
    /// Divide rate-mode gradients by T, like the paper's official code.
    #[arg(long)]
    paper_grad_scale: bool,
    /// Write loss, logits, batch-norm statistics and every gradient to
    /// this safetensors file.
    #[arg(long)]
    dump: Option<PathBuf>,
}

pub fn run(a: GradCheckArgs) -> Result<(), CliError> {
    if a.params.is_some()
        || a.batch_file.is_some()
        || a.dump.is_some()
        || a.f64
        || a.paper_grad_scale
    {
        dump(&a)
    } else {
        check(&a)
    }
}

/// Cosine and norm ratio of rate vs BPTT gradients, random weights and batch.
fn check(a: &GradCheckArgs) -> Result<(), CliError> {
    let (steps, batch, seed) = (a.steps, a.batch, a.seed);
    let (model, an) = crate::frontend::load(&a.file)?;
    let rows = grad::check_rows(&model, &an, steps, batch, seed)?;
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("serialisable"));
        }
        return Ok(());
    }
    println!("{}: rate vs BPTT gradients, T={steps}, batch {batch}, seed {seed} (random init, random batch)", model.name);
    println!(
        "{:<24} {:>18} {:>10} {:>12}",
        "parameter", "shape", "cosine", "|rate|/|bptt|"
    );
    for r in &rows {
        println!(
            "{:<24} {:>18} {:>10.4} {:>12.4}",
            r.param,
            dims(&r.shape),
            r.cosine,
            r.norm_ratio
        );
    }
    Ok(())
}

/// One step's loss, logits, statistics and gradients on given or random
/// weights and batch, printed and (with `--dump`) written.
fn dump(a: &GradCheckArgs) -> Result<(), CliError> {
    if a.mode.is_empty() {
        return Err(CliError::usage("--mode needs at least one of bptt, rate"));
    }
    let req = GradRequest {
        file: &a.file,
        params: a.params.as_deref(),
        batch_file: a.batch_file.as_deref(),
        steps: a.steps,
        batch: a.batch,
        seed: a.seed,
        modes: modes(&a.mode),
        wide: a.f64,
        paper_grad_scale: a.paper_grad_scale,
        dump: a.dump.as_deref(),
    };
    let r = grad::grad_dump(&req)?;
    if a.json {
        let grads: Vec<serde_json::Value> = r
            .grads
            .iter()
            .map(|((m, p), g)| {
                serde_json::json!({"mode": m, "param": p, "shape": g.shape,
                    "norm": g.data.iter().map(|x| x * x).sum::<f64>().sqrt()})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"loss": r.loss, "batch": r.x.shape[0], "steps": req.steps,
                "grads": grads, "dump": req.dump.map(|d| d.display().to_string())})
        );
        return Ok(());
    }
    println!(
        "{}: T={}, batch {}, {} ({}), loss {:.6}",
        req.file.display(),
        req.steps,
        r.x.shape[0],
        if req.wide { "f64" } else { "f32" },
        match (req.params, req.batch_file) {
            (Some(_), Some(_)) => "given weights and batch",
            (Some(_), None) => "given weights, random batch",
            (None, Some(_)) => "random weights, given batch",
            (None, None) => "random weights and batch",
        },
        r.loss
    );
    println!(
        "{:<28} {:>16} {:>6} {:>14}",
        "parameter", "shape", "mode", "|grad|"
    );
    for ((m, p), g) in &r.grads {
        println!(
            "{:<28} {:>16} {:>6} {:>14.6e}",
            p,
            dims(&g.shape),
            m,
            g.data.iter().map(|x| x * x).sum::<f64>().sqrt()
        );
    }
    if let Some(out) = req.dump {
        println!(
            "wrote {} (loss, logits, {} batch-norm statistics, {} gradients)",
            out.display(),
            r.bn.len(),
            r.grads.len()
        );
    }
    Ok(())
}
