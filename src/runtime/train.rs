//! The training loop: batches, the compiled training graph, the optimizer,
//! per-epoch evaluation, metrics and checkpoints.
//!
//! The step runs on the executor (`codegen::exec`) running the fusion plan
//! on a [`Backend`]: the CPU (generated C kernels, the library kernels,
//! SGEMM) or CUDA (a GPU, or its CPU emulator in tests). The batches,
//! metrics and checkpoints are this one loop on the host, so a run's
//! checkpoints have the same format on either device and a run can resume
//! on the other.
//!
//! The update stays on the backend (`step::DeviceStep`): for an epoch the
//! parameters, the optimizer's state and batch norm's running statistics
//! live in backend memory; after each step's graph the optimizer (one
//! launch over every parameter), the running statistics and the count of
//! right answers run as library kernels (`device_optim`) on the gradients
//! where the step left them, and only the loss and that count come back.
//! The host's copies are brought up to date before a checkpoint and the
//! evaluation. The kernels compute the host update's expressions in the
//! same order, so the result is bit for bit that of
//! [`TrainOptions::host_update`] (the update on the host, every step
//! uploading the parameters and downloading the gradients), which the
//! tests compare it with.

use super::checkpoint::{self, Checkpoint, EpochSums};
pub use super::metrics::EpochMetrics;
use super::optim::{OptimConfig, OptimState, Schedule};
use super::rundir;
use super::step::{correct, DeviceStep, HostStep, StepRule, Stepper};
pub use super::train_error::TrainError;
use crate::codegen::backend::Backend;
use crate::codegen::cpu::Cpu;
use crate::codegen::exec::{ExecError, Executor, LibraryScratch};
use crate::compile::{self, Options, Stage};
use crate::data::{Dataset, Split};
use crate::interp::RunOptions;
use crate::ir::{Graph, NodeIndex, Op};
use crate::model::{LayerKind, Model};
use crate::passes::fuse::{self, Plan};
use crate::passes::mem::{self, Memory};
use crate::passes::rate::Mode;
use crate::rng::{mix64, Rng};
use crate::shape::{self, Analysis};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything that defines a run; saved in every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model's `.snn` text (the run does not depend on the file).
    pub model_source: String,
    pub model_file: String,
    /// `digits`, `fashion-mnist`, `mnist`, `cifar10`, `cifar100`,
    /// `cifar100-coarse`, `events:DIR` or `images:DIR`.
    pub data: String,
    pub data_dir: Option<PathBuf>,
    pub mode: Mode,
    pub steps: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    pub seed: u64,
    /// Divide rate-mode gradients by T, as the paper's official code does.
    pub paper_grad_scale: bool,
    /// The fusion plan's schedule (`--order`): layer-major, or
    /// time-major (one kernel step at a time, less memory at large T).
    /// Checkpoints from before this option read as layer-major.
    #[serde(default)]
    pub order: crate::passes::schedule::SchedOpts,
    /// `--precision`: what the GEMMs round their operands to (training and
    /// evaluation). Checkpoints from before this option read as fp32.
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// `--init`: start from these parameters (a parameter file from `snnc
    /// import`, a checkpoint or a run folder) instead of the seeded
    /// initialisation. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

pub struct Summary {
    /// The epochs this call trained.
    pub epochs: Vec<EpochMetrics>,
    /// Set when the run stopped early (Ctrl-C, or
    /// [`TrainOptions::stop_after_steps`]) after saving its checkpoint:
    /// the epoch (from 1) and how many of its batches were trained.
    pub interrupted: Option<(usize, usize)>,
}

/// How a training call reports and when it stops.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// No progress bar and no per-epoch lines.
    pub quiet: bool,
    /// One JSON object per epoch on standard output, written and flushed as
    /// each epoch ends (no progress bar or text lines).
    pub json: bool,
    /// Stop as Ctrl-C does (save, report [`Summary::interrupted`]) once the
    /// run has trained this many steps in all (for tests).
    pub stop_after_steps: Option<u64>,
    /// Run the optimizer and the running statistics on the host (every
    /// step uploads the parameters and downloads the gradients) instead of
    /// on the backend: the reference the device update is tested against
    /// (the same bits).
    pub host_update: bool,
}

/// Set by Ctrl-C (SIGINT); the loop saves and stops after the step in
/// progress.
static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler (once per process): the first Ctrl-C asks
/// the loop to save and stop after the current step; a second one exits at
/// once with code 130 (the last checkpoint is intact: it is written
/// atomically, and resuming repairs the metrics).
pub fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "interrupted again: exiting without saving (the last checkpoint is intact)"
                );
                std::process::exit(130);
            }
        });
    });
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// What an interrupted run prints: where it saved and how to continue.
pub fn interrupted_message(out: &Path, epoch: usize, batch: usize) -> String {
    format!(
        "interrupted: saved checkpoint at epoch {epoch} batch {batch}; resume with \
         `snnc train --resume {}`",
        out.display()
    )
}

pub fn load_data(cfg: &TrainConfig) -> Result<Split, TrainError> {
    use crate::data;
    let dir = cfg.data_dir.clone();
    if let Some(events_dir) = cfg.data.strip_prefix("events:") {
        return load_events(cfg, events_dir);
    }
    if let Some(images_dir) = cfg.data.strip_prefix("images:") {
        let (_, a) = crate::frontend::check_source(&cfg.model_source, &cfg.model_file)?;
        return Ok(data::images::load_for_input(
            Path::new(images_dir),
            &a.input,
        )?);
    }
    let cifar100 = |labels| {
        let dir = cfg.data_dir.clone();
        data::cifar100_split(
            &dir.unwrap_or_else(|| PathBuf::from("data/cifar-100-binary")),
            labels,
        )
    };
    let r = match cfg.data.as_str() {
        "digits" => data::digits(cfg.seed),
        "fashion-mnist" => data::idx_split(
            &dir.unwrap_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist")),
            data::IdxKind::FashionMnist,
        ),
        "mnist" => data::idx_split(
            &dir.unwrap_or_else(|| PathBuf::from("data/mnist")),
            data::IdxKind::Mnist,
        ),
        "cifar10" => {
            data::cifar10_split(&dir.unwrap_or_else(|| PathBuf::from("data/cifar-10-batches-bin")))
        }
        "cifar100" => cifar100(data::Cifar100Labels::Fine),
        "cifar100-coarse" => cifar100(data::Cifar100Labels::Coarse),
        other => return Err(TrainError::UnknownDataset(other.to_string())),
    };
    Ok(r?)
}

/// `--data events:DIR`: event streams binned into the model's input frames
/// (`[T, 2, H, W]` per sample, `T` the run's steps).
fn load_events(cfg: &TrainConfig, dir: &str) -> Result<Split, TrainError> {
    let (_, a) = crate::frontend::check_source(&cfg.model_source, &cfg.model_file)?;
    Ok(crate::data::events::load_for_input(
        std::path::Path::new(dir),
        &a.input,
        cfg.steps,
    )?)
}

/// Batch-norm momentum per layer path.
fn bn_momenta(layers: &[crate::model::Layer], prefix: &str, out: &mut HashMap<String, f64>) {
    for (i, l) in layers.iter().enumerate() {
        let path = format!("{prefix}{i}");
        match &l.kind {
            LayerKind::BatchNorm { momentum, .. } => {
                out.insert(path, *momentum);
            }
            LayerKind::Residual { main, shortcut } => {
                bn_momenta(main, &format!("{path}.main."), out);
                bn_momenta(shortcut, &format!("{path}.shortcut."), out);
            }
            _ => {}
        }
    }
}

struct Batch {
    x: Tensor<f32>,
    labels: Tensor<f32>,
    targets: Vec<crate::data::Label>,
}

/// A batch from a [`Loader`]'s `(values, labels)` of dataset `d`.
fn to_batch(d: &Dataset, (x, targets): (Vec<f32>, Vec<crate::data::Label>)) -> Batch {
    let mut shape = vec![targets.len()];
    shape.extend_from_slice(&d.shape);
    let mut labels = vec![0.0; targets.len() * d.classes];
    for (b, &y) in targets.iter().enumerate() {
        labels[b * d.classes + y as usize] = 1.0;
    }
    Batch {
        x: Tensor::from_vec(&shape, x),
        labels: Tensor::from_vec(&[targets.len(), d.classes], labels),
        targets,
    }
}

/// Batches made ahead of the step (decoding images overlaps training).
const PREFETCH: usize = 2;

/// Mean spikes per neuron and step, per spiking layer, from the tensors
/// [`rate_nodes`] names.
fn firing_rates(g: &Graph, spikes: &HashMap<NodeIndex, Tensor<f32>>) -> BTreeMap<String, f64> {
    let mut acc: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (n, t) in spikes {
        let spike = match g.g[*n].op {
            Op::AvgPool { .. } => g.operands(*n)[0],
            _ => *n,
        };
        let l = &g.layers[g.g[spike].layer.expect("spikes belong to a layer")];
        let e = acc.entry(format!("{}:{}", l.path, l.keyword)).or_default();
        e.0 += t.data.iter().map(|&x| f64::from(x)).sum::<f64>();
        e.1 += t.len();
    }
    acc.into_iter()
        .map(|(k, (s, n))| (k, s / n.max(1) as f64))
        .collect()
}

/// The tensors the firing rates are the means of: each step's spikes, or
/// the average pooling that tiles them (stride = window, no padding,
/// whole windows): every spike lies in exactly one window, so the pooled
/// tensor has the same mean, and keeping it instead leaves fusion free to
/// pool the spikes in the neuron kernel and never store them
/// (`passes/fuse`, windowed kernels).
fn rate_nodes(g: &Graph) -> Vec<NodeIndex> {
    let tiling_pool = |s: NodeIndex| {
        g.users(s)
            .into_iter()
            .find(|&u| g.g[u].op.tiling_window(&g.g[s].shape).is_some())
    };
    g.g.node_indices()
        .filter(|&n| matches!(g.g[n].op, Op::Spike { .. }))
        .map(|s| tiling_pool(s).unwrap_or(s))
        .collect()
}

/// Trainable and running-statistic tensors, initialised from the seed.
pub fn initial_params(a: &Analysis, seed: u64) -> BTreeMap<String, Tensor<f32>> {
    crate::init::init_params(a, seed)
        .into_iter()
        .map(|(k, v)| (k, v.cast::<f32>()))
        .collect()
}

pub struct Evaluator {
    model: Model,
    steps: usize,
    /// Inference graphs by batch size, and their fusion plans.
    graphs: HashMap<usize, Graph>,
    plans: HashMap<usize, Plan>,
    /// The precision of the evaluation's GEMMs (a run evaluates in the
    /// precision it trains in).
    pub precision: crate::precision::Precision,
}

impl Evaluator {
    pub fn new(model: &Model, steps: usize) -> Evaluator {
        Evaluator {
            model: model.clone(),
            steps,
            graphs: HashMap::new(),
            plans: HashMap::new(),
            precision: crate::precision::Precision::Fp32,
        }
    }

    /// The inference graph for batches of `b`.
    fn graph(&mut self, b: usize) -> Result<&Graph, TrainError> {
        if !self.graphs.contains_key(&b) {
            let opts = Options {
                eval: true,
                after: Stage::Unrolled,
                ..Options::new(self.steps, b, Mode::Bptt)
            };
            let mut g = compile::compile(&self.model, &opts)?.graph;
            crate::passes::cse::cse(&mut g);
            self.graphs.insert(b, g);
        }
        Ok(&self.graphs[&b])
    }

    /// Test accuracy with the running batch-norm statistics, on the CPU.
    pub fn accuracy(
        &mut self,
        d: &Dataset,
        params: &HashMap<String, Tensor<f32>>,
        batch: usize,
    ) -> Result<f64, TrainError> {
        let mut cpu = Cpu::new().map_err(ExecError::Backend)?;
        self.accuracy_on(&mut cpu, d, params, batch)
    }

    /// [`Evaluator::accuracy`] on a backend: the fusion plan of each batch
    /// size's graph, one executor per size (the full batches, then the
    /// remainder).
    pub fn accuracy_on<B: Backend>(
        &mut self,
        backend: &mut B,
        d: &Dataset,
        params: &HashMap<String, Tensor<f32>>,
        batch: usize,
    ) -> Result<f64, TrainError> {
        let mut right = 0;
        let batch = batch.max(1);
        let full = d.len() / batch * batch;
        // The full batches, then the remainder: one graph per size.
        let mut parts = vec![(batch, 0..full), (d.len() - full, full..d.len())];
        parts.retain(|(b, r)| *b > 0 && !r.is_empty());
        for (b, range) in parts {
            if !self.plans.contains_key(&b) {
                let plan = fuse::fuse(self.graph(b)?);
                self.plans.insert(b, plan);
            }
            let g = &self.graphs[&b];
            let arena =
                crate::passes::memplan::plan_units(g, &self.plans[&b], &[], &scratch_of(backend))
                    .map_err(ExecError::from)?;
            mem::ensure_plan_fits(
                &format!("evaluation (batch {b}, fusion plan)"),
                &arena,
                0,
                backend.memory(),
            )?;
            let mut ex = Executor::with_plan(backend, g, self.plans[&b].clone(), &[])
                .map_err(TrainError::Exec)?;
            let loader = crate::data::Loader::with_order(d, b, range.collect());
            right += loader.prefetch(PREFETCH, |batches| -> Result<usize, TrainError> {
                let mut right = 0;
                for made in batches {
                    let batch = to_batch(d, made);
                    let inputs = HashMap::from([("x".to_string(), batch.x)]);
                    let v = ex
                        .run(
                            &inputs,
                            params,
                            &RunOptions {
                                precision: self.precision,
                                ..RunOptions::seeded(0)
                            },
                        )
                        .map_err(TrainError::Exec)?;
                    right += correct(&v["logits"], &batch.targets);
                }
                Ok(right)
            })?;
        }
        Ok(right as f64 / d.len().max(1) as f64)
    }
}

/// The executor's library scratch on `backend` (its convolution
/// workspace), for the memory plan.
fn scratch_of<B: Backend>(backend: &B) -> LibraryScratch {
    LibraryScratch {
        conv_workspace: backend.conv_workspace(),
    }
}

/// Where the training step and the test evaluation run.
trait Engine {
    /// Calls `f` with a stepper for one epoch's steps (the CUDA executor's
    /// buffers stay allocated from step to step, and are released before
    /// the evaluation uses the device).
    fn with_stepper(
        &mut self,
        rule: &StepRule,
        f: &mut dyn FnMut(&mut dyn Stepper) -> Result<bool, TrainError>,
    ) -> Result<bool, TrainError>;
    fn accuracy(
        &mut self,
        eval: &mut Evaluator,
        d: &Dataset,
        params: &HashMap<String, Tensor<f32>>,
        batch: usize,
    ) -> Result<f64, TrainError>;
}

/// The fusion plan on the executor.
struct ExecEngine<'d, B: Backend> {
    backend: &'d mut B,
    graph: Graph,
    plan: Plan,
    keep: Vec<NodeIndex>,
    /// Update on the host ([`TrainOptions::host_update`]).
    host_update: bool,
}

impl<B: Backend> Engine for ExecEngine<'_, B> {
    fn with_stepper(
        &mut self,
        rule: &StepRule,
        f: &mut dyn FnMut(&mut dyn Stepper) -> Result<bool, TrainError>,
    ) -> Result<bool, TrainError> {
        let mut ex = Executor::with_plan(
            &mut *self.backend,
            &self.graph,
            self.plan.clone(),
            &self.keep,
        )
        .map_err(TrainError::Exec)?;
        if self.host_update {
            f(&mut HostStep { ex: &mut ex, rule })
        } else {
            f(&mut DeviceStep::new(&mut ex, rule))
        }
    }
    fn accuracy(
        &mut self,
        eval: &mut Evaluator,
        d: &Dataset,
        params: &HashMap<String, Tensor<f32>>,
        batch: usize,
    ) -> Result<f64, TrainError> {
        eval.accuracy_on(&mut *self.backend, d, params, batch)
    }
}

/// Trains on the CPU; writes `metrics.jsonl` and `checkpoint.safetensors`
/// to `out`.
pub fn train(
    cfg: &TrainConfig,
    out: &Path,
    resume: Option<Checkpoint>,
    quiet: bool,
) -> Result<Summary, TrainError> {
    let opts = TrainOptions {
        quiet,
        ..TrainOptions::default()
    };
    train_with(cfg, out, resume, &opts)
}

/// [`train`] with its reporting and stopping options.
pub fn train_with(
    cfg: &TrainConfig,
    out: &Path,
    resume: Option<Checkpoint>,
    opts: &TrainOptions,
) -> Result<Summary, TrainError> {
    let mut cpu = Cpu::new().map_err(ExecError::Backend)?;
    train_on_with(cfg, out, resume, opts, &mut cpu)
}

/// Trains on a backend (the CPU, a GPU, or the CUDA emulator); the same
/// loop, metrics and checkpoints on each.
pub fn train_on<B: Backend>(
    cfg: &TrainConfig,
    out: &Path,
    resume: Option<Checkpoint>,
    quiet: bool,
    backend: &mut B,
) -> Result<Summary, TrainError> {
    let opts = TrainOptions {
        quiet,
        ..TrainOptions::default()
    };
    train_on_with(cfg, out, resume, &opts, backend)
}

/// [`train_on`] with its reporting and stopping options.
pub fn train_on_with<B: Backend>(
    cfg: &TrainConfig,
    out: &Path,
    resume: Option<Checkpoint>,
    opts: &TrainOptions,
    backend: &mut B,
) -> Result<Summary, TrainError> {
    let quiet = opts.quiet || opts.json;
    run(cfg, out, resume, opts, |graph, keep, state_bytes| {
        let graph = crate::passes::fuse_time::lower(graph, cfg.order);
        let plan = crate::passes::fuse_time::plan(&graph, keep, cfg.order);
        // The host keeps its copies of the parameters and the optimizer's
        // state (checkpoints, evaluation).
        mem::ensure_fits(
            "the parameters and the optimizer's state",
            state_bytes.host,
            Memory::Host,
        )?;
        // The arena the executor will allocate, and the optimizer's state
        // beside the resident parameters (the plan counts those).
        let arena = crate::passes::memplan::plan_units(&graph, &plan, keep, &scratch_of(backend))
            .map_err(ExecError::from)?;
        let extra = if opts.host_update {
            0
        } else {
            state_bytes.device
        };
        mem::ensure_plan_fits(
            "a training step (fusion plan)",
            &arena,
            extra,
            backend.memory(),
        )?;
        if !quiet {
            let _ = writeln!(
                std::io::stdout(),
                "step: fusion plan ({}) on {}, {} kernels and {} library nodes, planned peak {:.1} MiB",
                cfg.order,
                backend.describe(),
                plan.kernels.len(),
                plan.stats().node_units,
                arena.peak_bytes as f64 / (1024.0 * 1024.0)
            );
        }
        Ok(Box::new(ExecEngine {
            backend,
            graph,
            plan,
            keep: keep.to_vec(),
            host_update: opts.host_update,
        }))
    })
}

/// Memory a run needs besides its step's plan.
struct StateBytes {
    /// The host's parameters (f64 as made, f32) and optimizer state.
    host: u64,
    /// The device update's state beside the resident parameters.
    device: u64,
}

/// The training loop on the engine `make` builds from the training graph
/// and the nodes to keep (the spikes, for firing rates).
///
/// Crash safety: at each epoch's end the checkpoint (which carries the
/// metrics of every epoch it covers) is written atomically first, then the
/// epoch's line is appended to `metrics.jsonl`; resuming rewrites
/// `metrics.jsonl` from the checkpoint, so the two agree however the
/// process ended.
fn run<'d>(
    cfg: &TrainConfig,
    out: &Path,
    resume: Option<Checkpoint>,
    opts: &TrainOptions,
    make: impl FnOnce(&Graph, &[NodeIndex], &StateBytes) -> Result<Box<dyn Engine + 'd>, TrainError>,
) -> Result<Summary, TrainError> {
    install_interrupt_handler();
    let quiet = opts.quiet || opts.json;
    let model = crate::frontend::parse_source(&cfg.model_source, &cfg.model_file)?;
    let a = shape::analyze(&model)
        .map_err(|e| crate::frontend::shape_error(&e, &cfg.model_file, &cfg.model_source))?;
    let split = load_data(cfg)?;
    // Event frames carry the time axis: [T, C, H, W] per sample.
    let expected: Vec<usize> = match model.input.encoding {
        crate::model::Encoding::Events => [cfg.steps].iter().chain(&a.input).copied().collect(),
        _ => a.input.clone(),
    };
    if split.train.shape != expected {
        return Err(TrainError::InputShape {
            data: cfg.data.clone(),
            has: split.train.shape.clone(),
            model: model.name.clone(),
            expects: expected,
        });
    }
    if split.train.classes != a.output[0] {
        return Err(TrainError::Classes {
            data: cfg.data.clone(),
            classes: split.train.classes,
            model: model.name.clone(),
            outputs: a.output[0],
        });
    }
    if cfg.batch == 0 || cfg.batch > split.train.len() {
        return Err(TrainError::Batch {
            batch: cfg.batch,
            samples: split.train.len(),
        });
    }
    // Host memory beyond the step's plan: the parameters in f64 as they
    // are made and in f32, their gradients' optimizer state (momentum, or
    // AdamW's two moments). Checked before the parameters are made.
    let moments = match cfg.optim.kind {
        crate::runtime::optim::OptimizerKind::Adamw => 2,
        _ => 1,
    };
    let state_bytes = StateBytes {
        host: crate::passes::mem::param_bytes(&a, 12 + 4 * moments),
        // The optimizer's moments and the running statistics (every
        // parameter counted: an upper bound) beside the resident parameters.
        device: crate::passes::mem::param_bytes(&a, 4 * moments),
    };
    mem::ensure_fits(
        "the parameters and the optimizer's state",
        state_bytes.host,
        Memory::Host,
    )?;
    let config_json = serde_json::to_string(cfg).expect("config serialises");
    let config_pretty = serde_json::to_string_pretty(cfg).expect("config serialises") + "\n";
    // The folder: a new run takes a free one (given back if the run fails
    // before its first checkpoint); a resumed run's is brought back to what
    // its checkpoint covers. Either way this process holds its lock until
    // it returns.
    let (mut claim, mut history) = match &resume {
        None => (rundir::start(out, &config_pretty)?, String::new()),
        Some(ck) => rundir::resume(out, ck, &config_pretty)?,
    };
    let (mut params, mut optim, start_epoch, skip, sums) = match resume {
        Some(ck) => {
            if ck.batch_in_epoch > 0 && ck.epoch_sums.is_none() {
                eprintln!(
                    "warning: the checkpoint (an older snnc's) has no running sums for epoch \
                     {}: its train loss and accuracy will cover batches {}.. only",
                    ck.epoch + 1,
                    ck.batch_in_epoch + 1
                );
            }
            let sums = if ck.batch_in_epoch > 0 {
                ck.epoch_sums.unwrap_or_default()
            } else {
                EpochSums::default()
            };
            (ck.params, ck.optim, ck.epoch, ck.batch_in_epoch, sums)
        }
        None => (
            match &cfg.init {
                Some(p) => crate::runtime::params::load_params(p, &a)?
                    .into_iter()
                    .map(|(k, v)| (k, v.cast::<f32>()))
                    .collect(),
                None => initial_params(&a, cfg.seed),
            },
            OptimState::default(),
            0,
            0,
            EpochSums::default(),
        ),
    };
    let graph = compile::compile(&model, &Options::new(cfg.steps, cfg.batch, cfg.mode))?.graph;
    let spike_nodes = rate_nodes(&graph);
    // The engine gets its own copy; this one names the layers of spikes.
    let mut engine = make(&graph, &spike_nodes, &state_bytes)?;
    let mut eval = Evaluator::new(&model, cfg.steps);
    eval.precision = cfg.precision;
    let mut momenta = HashMap::new();
    bn_momenta(&model.layers, "", &mut momenta);
    let bn_count: HashMap<String, f64> = a
        .layers
        .iter()
        .filter(|l| l.keyword == "batchnorm")
        .map(|l| {
            (
                l.path.clone(),
                cfg.steps as f64
                    * cfg.batch as f64
                    * l.input[1..].iter().map(|&d| d as f64).product::<f64>(),
            )
        })
        .collect();
    let trainable: Vec<String> = a
        .params()
        .filter(|p| p.trainable)
        .map(|p| p.name.clone())
        .collect();
    // Running statistics: PyTorch's convention (unbiased variance).
    let mut running: Vec<(String, f32, f32)> = momenta
        .iter()
        .map(|(path, m)| {
            let n = bn_count[path];
            (path.clone(), *m as f32, (n / (n - 1.0).max(1.0)) as f32)
        })
        .collect();
    running.sort_by(|a, b| a.0.cmp(&b.0));
    // Shared with the thread that makes the batches.
    let train = std::sync::Arc::new(split.train);
    let batches_per_epoch = train.len() / cfg.batch;
    let total = cfg.epochs * batches_per_epoch;
    let stop_at = |step: u64| {
        STOP.load(Ordering::SeqCst) || opts.stop_after_steps.is_some_and(|n| step + 1 >= n)
    };
    let metrics_path = out.join(rundir::METRICS);
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|source| TrainError::OpenMetrics {
            path: metrics_path.clone(),
            source,
        })?;
    let mut summary = Summary {
        epochs: Vec::new(),
        interrupted: None,
    };
    let grad_scale = if cfg.paper_grad_scale && cfg.mode == Mode::Rate {
        1.0 / cfg.steps as f32
    } else {
        1.0
    };
    let rule = StepRule {
        optim: cfg.optim,
        trainable,
        running,
        grad_scale,
        classes: train.classes,
        batch: cfg.batch,
    };
    for epoch in start_epoch..cfg.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut r = Rng::new(mix64(cfg.seed ^ mix64(epoch as u64 + 1)));
        for i in (1..order.len()).rev() {
            order.swap(i, r.below(i + 1));
        }
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            let b = indicatif::ProgressBar::new(batches_per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
            b
        };
        let first = if epoch == start_epoch { skip } else { 0 };
        // A resumed epoch continues the sums of the batches before it.
        let before = if first > 0 {
            sums
        } else {
            EpochSums::default()
        };
        let (mut loss_sum, mut right, mut seen) = (before.loss_sum, before.correct, before.seen);
        let mut lr = cfg.lr;
        let mut rates = BTreeMap::new();
        let mut stopped_at = None;
        // The run's own order (the batches are those it always had, so runs
        // and resumes stay bit-identical), made ahead on another thread;
        // training samples (an image folder's random crops) keyed by the
        // run's seed and the epoch.
        let (batch_size, seed) = (cfg.batch, cfg.seed);
        let mut batches = crate::data::Prefetched::spawn(Arc::clone(&train), PREFETCH, move |d| {
            crate::data::Loader::with_order(d, batch_size, order)
                .seeded(seed, epoch as u64)
                .drop_last(true)
                .skip_batches(first)
        });
        let mut epoch_steps = |exe: &mut dyn Stepper| -> Result<bool, TrainError> {
            exe.load(&params, &optim)?;
            for bi in first..batches_per_epoch {
                let made = batches
                    .next()
                    .expect("the loader makes every batch of the epoch");
                let batch = to_batch(&train, made);
                let n_batch = batch.targets.len();
                let inputs = HashMap::from([
                    ("x".to_string(), batch.x),
                    ("labels".to_string(), batch.labels),
                ]);
                let step = (epoch * batches_per_epoch + bi) as u64;
                let last = bi + 1 == batches_per_epoch;
                let progress = cfg
                    .schedule
                    .progress(step as usize, total, epoch, cfg.epochs);
                lr = cfg.schedule.lr(cfg.lr, progress);
                let stepped = exe.step(
                    &inputs,
                    &batch.targets,
                    &RunOptions {
                        seed: mix64(cfg.seed ^ step),
                        precision: cfg.precision,
                    },
                    last,
                    lr,
                    &mut params,
                    &mut optim,
                )?;
                let loss = stepped.loss;
                if !loss.is_finite() {
                    return Err(TrainError::LossNotFinite {
                        loss,
                        epoch: epoch + 1,
                        batch: bi,
                    });
                }
                loss_sum += loss * n_batch as f64;
                right += stepped.correct;
                seen += n_batch;
                if last {
                    rates = firing_rates(&graph, &stepped.spikes);
                }
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                bar.set_position((bi + 1) as u64);
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}% {:.0} img/s",
                    loss_sum / seen as f64,
                    100.0 * right as f64 / seen as f64,
                    seen as f64 / secs
                ));
                if stop_at(step) && bi + 1 < batches_per_epoch {
                    bar.finish_and_clear();
                    exe.store(&mut params, &mut optim)?;
                    checkpoint::save(
                        out,
                        &Checkpoint {
                            params: params.clone(),
                            optim: optim.clone(),
                            epoch,
                            batch_in_epoch: bi + 1,
                            config: config_json.clone(),
                            epoch_sums: Some(EpochSums {
                                loss_sum,
                                correct: right,
                                seen,
                                seconds: before.seconds + started.elapsed().as_secs_f64(),
                            }),
                            metrics: Some(history.clone()),
                        },
                    )?;
                    claim.keep();
                    stopped_at = Some(bi + 1);
                    return Ok(true);
                }
            }
            exe.store(&mut params, &mut optim)?;
            Ok(false)
        };
        if engine.with_stepper(&rule, &mut epoch_steps)? {
            summary.interrupted = stopped_at.map(|b| (epoch + 1, b));
            return Ok(summary);
        }
        bar.finish_and_clear();
        let train_secs = before.seconds + started.elapsed().as_secs_f64();
        let pmap: HashMap<String, Tensor<f32>> =
            params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let test_acc = engine.accuracy(&mut eval, &split.test, &pmap, cfg.batch)?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: right as f64 / seen.max(1) as f64,
            test_acc,
            seconds: train_secs,
            images_per_sec: seen as f64 / train_secs.max(1e-9),
            firing_rates: rates,
        };
        let line = serde_json::to_string(&m).expect("metrics serialise");
        history.push_str(&line);
        history.push('\n');
        // The checkpoint first (atomically, with the metrics it covers),
        // then the line: a crash between the two is repaired on resume.
        checkpoint::save(
            out,
            &Checkpoint {
                params: params.clone(),
                optim: optim.clone(),
                epoch: epoch + 1,
                batch_in_epoch: 0,
                config: config_json.clone(),
                epoch_sums: None,
                metrics: Some(history.clone()),
            },
        )?;
        claim.keep();
        writeln!(metrics_file, "{line}")
            .and_then(|()| metrics_file.sync_data())
            .map_err(|source| TrainError::WriteMetrics {
                path: metrics_path.clone(),
                source,
            })?;
        // Standard output gone (a closed pipe) does not stop the run: the
        // metrics are in the run folder.
        if opts.json {
            let mut so = std::io::stdout().lock();
            let _ = writeln!(so, "{line}").and_then(|()| so.flush());
        }
        if !quiet {
            let _ = writeln!(
                std::io::stdout(),
                "epoch {:>3}/{}: loss {:.4}, train {:.2}%, test {:.2}%, {:.1} s ({:.0} img/s)",
                epoch + 1,
                cfg.epochs,
                m.train_loss,
                100.0 * m.train_acc,
                100.0 * m.test_acc,
                m.seconds,
                m.images_per_sec
            );
        }
        summary.epochs.push(m);
        // Curves over the whole run (earlier sessions included, on resume).
        let curves: Vec<EpochMetrics> = history
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let Err(e) = super::plots::write(out, &curves) {
            eprintln!("warning: {e}");
        }
        let last_step = ((epoch + 1) * batches_per_epoch) as u64 - 1;
        if epoch + 1 < cfg.epochs && stop_at(last_step) {
            summary.interrupted = Some((epoch + 1, batches_per_epoch));
            break;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, Options};
    use crate::passes::rate::Mode;

    /// The firing rates from the tensors `rate_nodes` keeps (fmnist_csnn:
    /// the two convolutional LIF layers' spikes through their `avgpool 2`,
    /// the hidden layer's spikes as they are) equal the rates of the
    /// spikes themselves, and fusion then pools the first two in their
    /// kernels.
    #[test]
    fn rates_from_tiling_pools_equal_the_spikes_rates() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/models/fmnist_csnn.snn"
        );
        let model = crate::dsl::parse_file(std::path::Path::new(path))
            .unwrap()
            .0;
        let a = shape::analyze(&model).unwrap();
        for mode in [Mode::Rate, Mode::Bptt] {
            let g = compile(&model, &Options::new(3, 2, mode)).unwrap().graph;
            let kept = rate_nodes(&g);
            let pooled = kept
                .iter()
                .filter(|&&n| matches!(g.g[n].op, Op::AvgPool { .. }))
                .count();
            assert_eq!((kept.len(), pooled), (9, 6), "{mode}: 3 layers × 3 steps");
            let params = crate::init::init_params(&a, 7);
            let mut x = crate::interp::random_input(&g, false, 7);
            x.data.iter_mut().for_each(|v| *v *= 3.0);
            let labels = crate::interp::random_labels(2, 10, 7);
            let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
            let opts = crate::interp::RunOptions::seeded(7);
            let v = crate::interp::run(&g, &inputs, &params, &opts).unwrap();
            fn values(
                v: &crate::interp::Values<f64>,
                ns: Vec<NodeIndex>,
            ) -> HashMap<NodeIndex, Tensor<f32>> {
                ns.into_iter()
                    .map(|n| (n, v.get(n).unwrap().cast::<f32>()))
                    .collect()
            }
            let spikes: Vec<NodeIndex> =
                g.g.node_indices()
                    .filter(|&n| matches!(g.g[n].op, Op::Spike { .. }))
                    .collect();
            let want = firing_rates(&g, &values(&v, spikes));
            let got = firing_rates(&g, &values(&v, kept.clone()));
            assert_eq!(got, want, "{mode}");
            assert!(
                want.values().all(|&r| r > 0.0),
                "{mode}: no layer fired: {want:?}"
            );
            let plan = crate::passes::fuse::fuse_keeping(&g, &kept);
            let windowed = plan
                .kernels
                .iter()
                .filter(|k| k.kernel.window.is_some())
                .count();
            assert_eq!(windowed, 2, "{mode}: both pooled layers windowed");
        }
    }
}
