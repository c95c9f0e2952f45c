//! `snnc eval`: test accuracy of a checkpoint, or of a `.snn` model with
//! given weights.

use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::args::Device;
use super::CliError;
use crate::interop::load_params;
use crate::passes::rate::Mode;
use crate::runtime::optim::{OptimConfig, OptimizerKind, Schedule};
use crate::runtime::train::{load_data, Evaluator, TrainConfig};
use crate::tensor::Tensor;

#[derive(Args)]
pub struct EvalArgs {
    checkpoint: PathBuf,
    /// Override the checkpoint's dataset.
    #[arg(long)]
    data: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Batch size (default: the run's; with Poisson encoding the
    /// accuracy depends on it).
    #[arg(long)]
    batch: Option<usize>,
    /// Where the executor runs the fusion plan: cpu, or cuda (GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// With a .snn file instead of a checkpoint: the weights (parameter
    /// file, checkpoint or run folder).
    #[arg(long)]
    params: Option<PathBuf>,
    /// With a .snn file: timesteps (default 4).
    #[arg(short = 'T', long = "steps")]
    steps: Option<usize>,
}

pub fn run(a: EvalArgs) -> Result<(), CliError> {
    match &a.params {
        Some(p) => with_params(
            &a.checkpoint,
            p,
            a.data,
            a.data_dir,
            a.steps.unwrap_or(4),
            a.batch.unwrap_or(32),
        ),
        None if a.checkpoint.extension().is_some_and(|e| e == "snn") => {
            Err(CliError::usage(format!(
                "`{}` is a model without weights: add --params PARAMS.safetensors",
                a.checkpoint.display()
            )))
        }
        None => checkpoint(
            &a.checkpoint,
            a.data,
            a.data_dir,
            a.batch,
            a.device == Device::Cuda,
        ),
    }
}

/// Test accuracy with the checkpoint's weights and the run's settings
/// (batch, T, data, seed: what the result depends on), `data`, `data_dir`
/// and `batch` overriding them.
fn checkpoint(
    checkpoint: &Path,
    data: Option<String>,
    data_dir: Option<PathBuf>,
    batch: Option<usize>,
    cuda: bool,
) -> Result<(), CliError> {
    let mut gpu = if cuda {
        Some(
            crate::codegen::cuda::Cuda::new()
                .map_err(|e| CliError::Msg(format!("eval --device cuda: {e}")))?,
        )
    } else {
        None
    };
    let ck = crate::runtime::checkpoint::load(checkpoint)?;
    let mut cfg: TrainConfig = serde_json::from_str(&ck.config).map_err(CliError::BadConfig)?;
    let mut taken = vec![format!("T={}", cfg.steps), format!("seed {}", cfg.seed)];
    let mut overridden = Vec::new();
    let mut setting = |name: &str, run: &str, given: Option<&str>| match given {
        Some(g) if g != run => overridden.push(format!("{name} {g} (the run used {run})")),
        _ => taken.push(format!("{name} {run}")),
    };
    setting(
        "batch",
        &cfg.batch.to_string(),
        batch.map(|b| b.to_string()).as_deref(),
    );
    setting("data", &cfg.data, data.as_deref());
    let show = |d: &Option<PathBuf>| {
        d.as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "default".into())
    };
    if data_dir.is_some() {
        setting("data dir", &show(&cfg.data_dir), Some(&show(&data_dir)));
    }
    if let Some(b) = batch {
        if b == 0 {
            return Err(CliError::usage("--batch must be at least 1"));
        }
        cfg.batch = b;
    }
    if let Some(d) = data {
        cfg.data = d;
    }
    if data_dir.is_some() {
        cfg.data_dir = data_dir;
    }
    println!(
        "eval: {} from the run{}",
        taken.join(", "),
        if overridden.is_empty() {
            String::new()
        } else {
            format!("; {}", overridden.join(", "))
        }
    );
    let model = crate::frontend::parse_source(&cfg.model_source, &cfg.model_file)?;
    let split = load_data(&cfg)?;
    let params: HashMap<String, Tensor<f32>> = ck.params.into_iter().collect();
    let mut ev = Evaluator::new(&model, cfg.steps);
    ev.precision = cfg.precision;
    let acc = match gpu.as_mut() {
        Some(c) => ev.accuracy_on(c, &split.test, &params, cfg.batch)?,
        None => ev.accuracy(&split.test, &params, cfg.batch)?,
    };
    println!(
        "{}: test accuracy {:.2}% on {} ({} samples), T={}",
        model.name,
        100.0 * acc,
        cfg.data,
        split.test.len(),
        cfg.steps
    );
    Ok(())
}

/// `snnc eval MODEL.snn --params P --data D -T N`: test accuracy of given
/// weights (e.g. from `snnc import`).
fn with_params(
    file: &Path,
    params: &Path,
    data: Option<String>,
    data_dir: Option<PathBuf>,
    steps: usize,
    batch: usize,
) -> Result<(), CliError> {
    let (model, a, source) = crate::frontend::load_with_source(file)?;
    let params_path = params;
    let params = load_params(params, &a)?;
    let cfg = TrainConfig {
        model_source: source,
        model_file: file.display().to_string(),
        data: data.unwrap_or_else(|| "digits".into()),
        data_dir,
        mode: Mode::Rate,
        steps,
        epochs: 1,
        batch,
        lr: 0.0,
        optim: OptimConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.0,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: Schedule::Const,
        seed: 0,
        paper_grad_scale: false,
        order: Default::default(),
        precision: Default::default(),
        init: None,
    };
    let split = load_data(&cfg)?;
    let p32: HashMap<String, Tensor<f32>> =
        params.iter().map(|(k, v)| (k.clone(), v.cast())).collect();
    let mut ev = Evaluator::new(&model, steps);
    let acc = ev.accuracy(&split.test, &p32, batch)?;
    println!(
        "{}: test accuracy {:.2}% on {} ({} samples), T={steps}, weights from {}",
        model.name,
        100.0 * acc,
        cfg.data,
        split.test.len(),
        params_path.display()
    );
    Ok(())
}
