//! `snnc run`: the forward pass with the reference interpreter, on random
//! or given weights and input.

use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::CliError;
use crate::frontend::load;
use crate::init;
use crate::interop::{self, load_params, read_tensors};
use crate::interp::{self, random_input, RunOptions};
use crate::model::Encoding;
use crate::passes::mem::{self, Memory};
use crate::runtime::metrics::firing_rates;
use crate::unroll::{self, Phase, UnrollConfig};

#[derive(Args)]
pub struct RunArgs {
    file: PathBuf,
    #[arg(short = 'T', long = "steps", default_value_t = 4)]
    steps: usize,
    /// Seed for the parameters and the input.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Evaluate in f64 instead of f32.
    #[arg(long)]
    f64: bool,
    #[arg(long)]
    json: bool,
    /// Weights to run with (a parameter file, checkpoint or run folder);
    /// runs inference (running batch-norm statistics, no dropout).
    #[arg(long)]
    params: Option<PathBuf>,
    /// The input batch: a safetensors file with `x` [B, …input]
    /// (event frames [B, T, …input]); runs inference.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Inference (running batch-norm statistics, no dropout) on random
    /// weights and input; also implied by --params and --input.
    #[arg(long)]
    eval: bool,
}

pub fn run(a: RunArgs) -> Result<(), CliError> {
    if a.params.is_some() || a.input.is_some() || a.eval {
        given(&a)
    } else {
        random(&a)
    }
}

/// The training-phase forward pass on random weights and input: readout
/// and firing rates.
fn random(a: &RunArgs) -> Result<(), CliError> {
    let (path, steps, batch, seed) = (&a.file, a.steps, a.batch, a.seed);
    let (model, an) = load(path)?;
    let cfg = UnrollConfig {
        steps,
        batch,
        phase: Phase::Train,
    };
    let g = unroll::unroll_with(&model, &cfg)?;
    // The interpreter keeps every value; parameters are made in f64 (and
    // cast to f32 for an f32 run).
    let elem = if a.f64 { 8 } else { 4 };
    mem::ensure_fits(
        "the forward pass (reference interpreter)",
        mem::interpreter_bytes(&g, elem).saturating_add(mem::param_bytes(&an, 8 + elem)),
        Memory::Host,
    )?;
    let params = init::init_params(&an, seed);
    let x = random_input(&g, matches!(model.input.encoding, Encoding::Events), seed);
    let opts = RunOptions::seeded(seed);
    let started = std::time::Instant::now();
    let (logits, rates) = if a.f64 {
        let inputs = HashMap::from([("x".to_string(), x)]);
        let v = interp::run(&g, &inputs, &params, &opts)?;
        let out = g.output("logits").expect("logits");
        (v.get(out).expect("evaluated").clone(), firing_rates(&g, &v))
    } else {
        let inputs = HashMap::from([("x".to_string(), x.cast::<f32>())]);
        let p32 = init::cast_params::<f32>(&params);
        let v = interp::run(&g, &inputs, &p32, &opts)?;
        let out = g.output("logits").expect("logits");
        (
            v.get(out).expect("evaluated").cast::<f64>(),
            firing_rates(&g, &v),
        )
    };
    let secs = started.elapsed().as_secs_f64();
    let classes = logits.shape[1];
    if a.json {
        let rows: Vec<Vec<f64>> = logits.data.chunks(classes).map(|c| c.to_vec()).collect();
        println!(
            "{}",
            serde_json::json!({
                "model": model.name, "steps": steps, "batch": batch, "seed": seed,
                "logits": rows,
                "firing_rates": rates.iter().map(|(l, r)| serde_json::json!({"layer": l, "rate": r})).collect::<Vec<_>>(),
                "nodes": g.node_count(), "seconds": secs,
            })
        );
        return Ok(());
    }
    println!(
        "{}: T={steps}, batch {batch}, seed {seed}, {} nodes, interpreted in {:.3} s ({})",
        model.name,
        g.node_count(),
        secs,
        if a.f64 { "f64" } else { "f32" }
    );
    println!("readout (time-mean of the last layer):");
    for (b, row) in logits.data.chunks(classes).enumerate() {
        let vals: Vec<String> = row.iter().map(|v| format!("{v:8.4}")).collect();
        println!("  sample {b}: [{}]", vals.join(" "));
    }
    println!("firing rates (spikes per neuron per step):");
    for (l, r) in &rates {
        println!("  {l:<24} {r:.4}");
    }
    Ok(())
}

/// `--params P --input X.safetensors [--eval]`: inference, the readout and
/// the spike counts on given (or random) weights and input.
fn given(a: &RunArgs) -> Result<(), CliError> {
    let (steps, batch, seed, wide) = (a.steps, a.batch, a.seed, a.f64);
    let (model, an) = load(&a.file)?;
    let params = match &a.params {
        Some(p) => load_params(p, &an)?,
        None => init::init_params(&an, seed),
    };
    let want = interop::input_shape(&model, &an, steps);
    let x = match a.input.as_deref() {
        Some(p) => given_input(p, &want)?,
        None => {
            let g = unroll::unroll_with(
                &model,
                &UnrollConfig {
                    steps,
                    batch,
                    phase: Phase::Eval,
                },
            )?;
            random_input(&g, matches!(model.input.encoding, Encoding::Events), seed)
        }
    };
    let r = interop::infer(&model, &params, &x, steps, wide)?;
    let classes = r.logits.shape[1];
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": model.name, "steps": steps, "batch": x.shape[0], "phase": "eval",
                "logits": r.logits.data.chunks(classes).map(|c| c.to_vec()).collect::<Vec<_>>(),
                "spike_counts": r.spikes.iter().map(|(l, t)| serde_json::json!({
                    "layer": l,
                    "per_sample": t.data.chunks(t.len() / x.shape[0]).map(|c| c.iter().sum::<f64>()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "near_tie": r.tie,
            })
        );
        return Ok(());
    }
    println!(
        "{}: T={steps}, batch {}, inference (running batch-norm statistics), {}",
        model.name,
        x.shape[0],
        if wide { "f64" } else { "f32" }
    );
    println!("readout (time-mean of the last layer):");
    for (b, row) in r.logits.data.chunks(classes).enumerate() {
        let vals: Vec<String> = row.iter().map(|v| format!("{v:8.4}")).collect();
        println!("  sample {b}: [{}]", vals.join(" "));
    }
    println!("spikes per sample (summed over neurons and steps):");
    for (l, t) in &r.spikes {
        let per: Vec<String> = t
            .data
            .chunks(t.len() / x.shape[0])
            .map(|c| format!("{}", c.iter().sum::<f64>()))
            .collect();
        println!("  {l:<24} {}", per.join(" "));
    }
    if let Some(d) = r.tie {
        println!(
            "note: a membrane potential came within {d:e} of its threshold: another framework \
             may decide that spike differently"
        );
    }
    Ok(())
}

/// The batch `x` of an input file, checked against the model's input.
fn given_input(p: &Path, want: &[usize]) -> Result<crate::tensor::Tensor<f64>, CliError> {
    let (t, _) = read_tensors(p)?;
    Ok(interop::batch_input(p, &t, want)?)
}
