//! `snnc train`: a new run, or a saved run continued (`--resume`).

use clap::parser::ValueSource;
use clap::Args;
use std::path::{Path, PathBuf};

use super::args::{Device, ModeArg, OptimizerArg, ScheduleArg};
use super::CliError;
use crate::passes::schedule::SchedOpts;
use crate::runtime::checkpoint::Checkpoint;
use crate::runtime::optim::OptimConfig;
use crate::runtime::train::TrainConfig;

#[derive(Args)]
pub struct TrainArgs {
    /// The model (default: the embedded examples/models/digits_mlp.snn).
    file: Option<PathBuf>,
    /// digits (embedded), fashion-mnist, mnist, cifar10, cifar100 (fine
    /// labels), cifar100-coarse (20 superclasses), events:DIR (event files in
    /// DIR/Train/<label>/ and DIR/Test/<label>/, binned into T frames), or
    /// images:DIR (DIR/train/<class>/*.jpg|png and DIR/val/<class>/…, cropped
    /// to the model's input).
    #[arg(long, default_value = "digits")]
    data: String,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModeArg::Rate)]
    mode: ModeArg,
    #[arg(short = 'T', long = "steps", default_value_t = 4)]
    steps: usize,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Applied to conv/linear weights only.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// Execution order of the fusion plan: layer-major (the default: the
    /// fastest on the CPU, and one launch per kernel on a GPU), time-major
    /// (one kernel step at a time: 0.5–1× the memory at 1.1–1.2× the time
    /// on the CPU) or time-major-recompute (memory flat in T, slower); see
    /// `snnc bench --schedule fused-…`.
    #[arg(long)]
    order: Option<SchedOpts>,
    /// What linear layers and convolutions round their operands to: fp32,
    /// tf32 or bf16 (products accumulate in f32; weights, optimizer and
    /// neuron state stay f32). On the CPU the rounding is emulated (for
    /// checking accuracy); on a GPU it selects the tensor-core GEMMs.
    #[arg(long, default_value = "fp32")]
    precision: crate::precision::Precision,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder (config.json, checkpoint.safetensors, metrics.jsonl); must
    /// not hold a run already. Default: runs/MODEL-MODE-TN, or the first
    /// free runs/MODEL-MODE-TN-2, -3, … when that one is taken.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this folder, with its settings (flags that
    /// contradict them are an error; --epochs N extends it).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Divide rate-mode gradients by T, like the paper's official code.
    #[arg(long)]
    paper_grad_scale: bool,
    /// Start from these weights (a parameter file from `snnc import`, a
    /// checkpoint or a run folder) instead of the seeded initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// One JSON object per epoch, no progress bar.
    #[arg(long)]
    json: bool,
    /// Where the executor runs the fusion plan: cpu, or cuda (GPU 0;
    /// optimizer on the host). Checkpoints are the same either way,
    /// so a run can resume on the other device.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

/// The flags given on the command line, by clap id (with --resume, these
/// must agree with the run's settings).
pub fn explicit_flags(sub: &clap::ArgMatches) -> Vec<String> {
    sub.ids()
        .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}

/// `snnc train`; `Ok(true)` when interrupted (exit code 130).
pub fn run(a: TrainArgs, explicit: Vec<String>) -> Result<bool, CliError> {
    let (model_file, model_source) = match &a.file {
        Some(f) => (
            f.display().to_string(),
            std::fs::read_to_string(f).map_err(|e| CliError::Read {
                path: f.clone(),
                source: e,
            })?,
        ),
        None => (DEFAULT_MODEL.0.to_string(), DEFAULT_MODEL.1.to_string()),
    };
    let cfg = TrainConfig {
        model_source,
        model_file,
        data: a.data,
        data_dir: a.data_dir,
        mode: a.mode.into(),
        steps: a.steps,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        optim: OptimConfig {
            kind: a.optimizer.into(),
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: a.schedule.into(),
        seed: a.seed,
        paper_grad_scale: a.paper_grad_scale,
        order: a.order.unwrap_or(SchedOpts::LAYER_MAJOR),
        precision: a.precision,
        init: a.init,
    };
    train(TrainRequest {
        cfg,
        explicit,
        out: a.out,
        resume: a.resume,
        json: a.json,
        cuda: a.device == Device::Cuda,
    })
}

/// The model `snnc train` uses when no file is given.
pub const DEFAULT_MODEL: (&str, &str) = (
    "examples/models/digits_mlp.snn",
    include_str!("../../examples/models/digits_mlp.snn"),
);

/// What `snnc train` was asked to do.
struct TrainRequest {
    /// The settings from the command line (defaults where a flag is not
    /// given).
    pub cfg: TrainConfig,
    /// The flags given on the command line, by clap id (`lr`, `steps`,
    /// `file`, `data_dir`, …): with `--resume`, these must agree with the
    /// run's settings.
    pub explicit: Vec<String>,
    /// `--out`.
    pub out: Option<PathBuf>,
    /// `--resume`.
    pub resume: Option<PathBuf>,
    pub json: bool,
    pub cuda: bool,
}

impl TrainRequest {
    fn given(&self, id: &str) -> bool {
        self.explicit.iter().any(|e| e == id)
    }
}

/// The folder a run without `--out` would like: `runs/MODEL-MODE-TN`.
pub fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    let stem = Path::new(&cfg.model_file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    PathBuf::from("runs").join(format!("{stem}-{}-T{}", cfg.mode, cfg.steps))
}

/// Informational lines: standard output, or standard error under `--json`
/// (whose standard output is only the epochs' JSON).
fn note(json: bool, msg: &str) {
    if json {
        eprintln!("{msg}");
    } else {
        say(msg);
    }
}

/// A line on standard output; a closed pipe does not stop (or crash) a
/// training run.
fn say(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{msg}");
}

/// The settings of a run in words.
fn describe_config(cfg: &TrainConfig) -> String {
    format!(
        "{} on {}{}, {} mode, T={}, batch {}, {} lr {} ({}), momentum {}, weight decay {}, \
         seed {}, order {}{}{}",
        cfg.model_file,
        cfg.data,
        cfg.data_dir
            .as_ref()
            .map(|d| format!(" ({})", d.display()))
            .unwrap_or_default(),
        cfg.mode,
        cfg.steps,
        cfg.batch,
        cfg.optim.kind.name(),
        cfg.lr,
        cfg.schedule.name(),
        cfg.optim.momentum,
        cfg.optim.weight_decay,
        cfg.seed,
        cfg.order,
        match cfg.precision {
            crate::precision::Precision::Fp32 => String::new(),
            p => format!(", {p} products"),
        },
        if cfg.paper_grad_scale {
            ", paper grad scale"
        } else {
            ""
        }
    )
}

/// The settings a flag sets: (clap id, flag as typed, value in a config).
type Setting = (&'static str, &'static str, fn(&TrainConfig) -> String);

/// Every setting of a run a `snnc train` flag gives (besides the model
/// file, `--data-dir` and `--epochs`, which resume treats on their own).
const SETTINGS: [Setting; 13] = [
    ("data", "--data", |c| c.data.clone()),
    ("mode", "--mode", |c| c.mode.to_string()),
    ("steps", "-T", |c| c.steps.to_string()),
    ("batch", "--batch", |c| c.batch.to_string()),
    ("lr", "--lr", |c| c.lr.to_string()),
    ("optimizer", "--optimizer", |c| {
        c.optim.kind.name().to_string()
    }),
    ("momentum", "--momentum", |c| c.optim.momentum.to_string()),
    ("weight_decay", "--weight-decay", |c| {
        c.optim.weight_decay.to_string()
    }),
    ("schedule", "--schedule", |c| c.schedule.name().to_string()),
    ("order", "--order", |c| c.order.to_string()),
    ("precision", "--precision", |c| c.precision.to_string()),
    ("seed", "--seed", |c| c.seed.to_string()),
    ("paper_grad_scale", "--paper-grad-scale", |c| {
        c.paper_grad_scale.to_string()
    }),
];

/// The flags given with `--resume` that contradict the run's settings,
/// one line each with both values.
fn contradictions(req: &TrainRequest, run: &TrainConfig, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if req.given("file") && req.cfg.model_source != run.model_source {
        out.push(format!(
            "FILE `{}` is not the model the run trains (`{}`, kept in its checkpoint)",
            req.cfg.model_file, run.model_file
        ));
    }
    for (id, flag, value) in SETTINGS {
        if req.given(id) {
            let (given, has) = (value(&req.cfg), value(run));
            if given != has {
                out.push(format!("{flag} {given} (the run has {has})"));
            }
        }
    }
    if let Some(o) = &req.out {
        let same = match (o.canonicalize(), dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => o == dir,
        };
        if !same {
            out.push(format!(
                "--out {} (a resumed run stays in its folder, `{}`)",
                o.display(),
                dir.display()
            ));
        }
    }
    out
}

/// The run in `dir` to resume: its checkpoint, or, for a run that stopped
/// before its first checkpoint, its `config.json` and a fresh start.
fn run_to_resume(dir: &Path) -> Result<(TrainConfig, Checkpoint), CliError> {
    let file = crate::runtime::checkpoint::file_of(dir);
    if file.exists() {
        let ck = crate::runtime::checkpoint::load(dir)?;
        let cfg: TrainConfig =
            serde_json::from_str(&ck.config).map_err(|e| CliError::BadRunConfig {
                what: format!("the checkpoint `{}` has a bad config", file.display()),
                source: e,
            })?;
        return Ok((cfg, ck));
    }
    let config = dir.join(crate::runtime::rundir::CONFIG);
    let text = std::fs::read_to_string(&config).map_err(|_| CliError::NoRun(dir.to_path_buf()))?;
    let cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| CliError::BadRunConfig {
        what: format!("`{}` is not a run config", config.display()),
        source: e,
    })?;
    let (_, a) = crate::frontend::check_source(&cfg.model_source, &cfg.model_file)?;
    let ck = Checkpoint {
        params: crate::runtime::train::initial_params(&a, cfg.seed),
        optim: Default::default(),
        epoch: 0,
        batch_in_epoch: 0,
        config: serde_json::to_string(&cfg).expect("config serialises"),
        epoch_sums: None,
        metrics: Some(String::new()),
    };
    Ok((cfg, ck))
}

/// `snnc train`: a new run, or the run in `--resume DIR` continued.
/// `Ok(true)`: interrupted by Ctrl-C (the checkpoint saved, the message
/// printed; the binary exits with 130).
fn train(req: TrainRequest) -> Result<bool, CliError> {
    crate::runtime::train::install_interrupt_handler();
    match train_inner(&req) {
        Err(e) if crate::runtime::train::interrupted() => {
            eprintln!("{}", super::render(&e));
            eprintln!("interrupted (Ctrl-C) before a checkpoint could be saved");
            Ok(true)
        }
        r => r,
    }
}

fn train_inner(req: &TrainRequest) -> Result<bool, CliError> {
    let json = req.json;
    // The device first: without one, say so before any work.
    let mut gpu = if req.cuda {
        let c = crate::codegen::cuda::Cuda::new()
            .map_err(|e| CliError::Msg(format!("train --device cuda: {e}")))?;
        note(
            json,
            &format!("on {}", crate::codegen::cuda::Backend::describe(&c)),
        );
        Some(c)
    } else {
        None
    };
    let (cfg, out, ck) = match &req.resume {
        Some(path) => {
            // The run folder, also when given as its checkpoint file.
            let dir = &match path.parent() {
                Some(p) if path.is_file() => {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                }
                _ => path.clone(),
            };
            let (mut cfg, ck) = run_to_resume(dir)?;
            let bad = contradictions(req, &cfg, dir);
            if !bad.is_empty() {
                return Err(CliError::usage(format!(
                    "--resume continues the run in `{}` with its own settings, and \
                     these flags contradict them:\n{}\n  drop them to continue the run, or \
                     start a new run (another --out)",
                    dir.display(),
                    bad.iter()
                        .map(|b| format!("  {b}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )));
            }
            let done = ck.epoch;
            if req.given("epochs") {
                let n = req.cfg.epochs;
                if n <= done {
                    return Err(CliError::usage(format!(
                        "--epochs {n}: the run in `{}` has already trained {done} \
                         epoch(s); pass --epochs N with N > {done} to train further",
                        dir.display()
                    )));
                }
                if n != cfg.epochs {
                    note(
                        json,
                        &format!(
                            "epochs: {n} (--epochs; the run was set to {}{})",
                            cfg.epochs,
                            if cfg.schedule == crate::runtime::optim::Schedule::Const {
                                String::new()
                            } else {
                                format!(
                                    "; the {} schedule now spans {n} epochs",
                                    cfg.schedule.name()
                                )
                            }
                        ),
                    );
                }
                cfg.epochs = n;
            } else if done >= cfg.epochs {
                return Err(CliError::usage(format!(
                    "run already finished ({done}/{} epochs) in `{}`; pass --epochs N \
                     to train further",
                    cfg.epochs,
                    dir.display()
                )));
            }
            if req.given("data_dir") && req.cfg.data_dir != cfg.data_dir {
                note(
                    json,
                    &format!(
                        "data dir: {} (--data-dir; the run used {})",
                        req.cfg
                            .data_dir
                            .as_ref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|| "the default".into()),
                        cfg.data_dir
                            .as_ref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|| "the default".into()),
                    ),
                );
                cfg.data_dir = req.cfg.data_dir.clone();
            }
            note(
                json,
                &format!(
                    "resuming `{}` at epoch {}/{}{}, with the run's settings: {}",
                    dir.display(),
                    done + 1,
                    cfg.epochs,
                    if ck.batch_in_epoch > 0 {
                        format!(" (batches 1–{} of it done)", ck.batch_in_epoch)
                    } else {
                        String::new()
                    },
                    describe_config(&cfg)
                ),
            );
            (cfg, dir.clone(), Some(ck))
        }
        None => {
            let cfg = req.cfg.clone();
            if cfg.epochs == 0 {
                return Err(CliError::usage("--epochs must be at least 1"));
            }
            let out = match &req.out {
                Some(o) => {
                    // Fail before loading data; the claim itself is in the
                    // training loop.
                    if let Some(f) = crate::runtime::rundir::run_file(o) {
                        return Err(crate::runtime::rundir::taken_error(o, f).into());
                    }
                    o.clone()
                }
                None => {
                    let base = default_run_dir(&cfg);
                    let out = crate::runtime::rundir::fresh_dir(&base);
                    if out != base {
                        note(
                            json,
                            &format!(
                                "`{}` holds an earlier run; this run goes to `{}`",
                                base.display(),
                                out.display()
                            ),
                        );
                    }
                    out
                }
            };
            note(
                json,
                &format!(
                    "training {}, {} epochs → {}",
                    describe_config(&cfg),
                    cfg.epochs,
                    out.display()
                ),
            );
            (cfg, out, None)
        }
    };
    let opts = crate::runtime::train::TrainOptions {
        quiet: json,
        json,
        ..Default::default()
    };
    let s = match gpu.as_mut() {
        Some(c) => crate::runtime::train::train_on_with(&cfg, &out, ck, &opts, c)?,
        None => crate::runtime::train::train_with(&cfg, &out, ck, &opts)?,
    };
    if let Some((epoch, batch)) = s.interrupted {
        eprintln!(
            "{}",
            crate::runtime::train::interrupted_message(&out, epoch, batch)
        );
        return Ok(true);
    }
    if let (false, Some(last)) = (json, s.epochs.last()) {
        say(&format!(
            "test accuracy {:.2}% after {} epochs (checkpoint and metrics.jsonl in {})",
            100.0 * last.test_acc,
            last.epoch,
            out.display()
        ));
    }
    Ok(false)
}
