//! The `snnc` command line.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use snnc::cli;
use snnc::codegen::cuda;
use snnc::compile::{Options, Stage};
use snnc::interop;
use snnc::passes::rate::Mode;
use snnc::passes::schedule::SchedOpts;
use snnc::runtime::optim::{OptimConfig, OptimizerKind, Schedule};
use snnc::runtime::train::TrainConfig;

/// Counts allocated bytes, for `snnc bench`'s measured peak.
#[global_allocator]
static ALLOC: snnc::runtime::alloc::Counting = snnc::runtime::alloc::Counting;

#[derive(Parser)]
#[command(
    name = "snnc",
    version,
    about = "Compile and train deep spiking neural networks",
    long_about = "snnc compiles a spiking network written in the .snn DSL: it unrolls the model \
over T timesteps, differentiates it, and (in rate mode) collapses the temporal backward \
into rate-based derivatives.\n\nRun `snnc check FILE` to see a model's layers and sizes."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// The rate pass's limit on e-nodes per region (default 200000). Its
    /// e-graphs grow with T: raise it when a large -T stops at the limit.
    #[arg(long, global = true, value_name = "N")]
    egraph_node_limit: Option<usize>,
    /// Seconds the rate pass may rewrite one region (default 30).
    #[arg(long, global = true, value_name = "SECS")]
    egraph_time_limit: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse a model, infer its shapes and print a layer table.
    Check {
        file: PathBuf,
        /// One JSON object per layer instead of the table.
        #[arg(long)]
        json: bool,
        /// Also check that this mode can compile the model (rate mode
        /// supports max pooling only with stride = kernel).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// List every parameter instead: name, shape, layer, trained or
        /// statistic (the names parameter files and grad dumps use).
        #[arg(long)]
        params: bool,
    },
    /// Print the graph after a compiler pass, as text, Graphviz DOT or stats
    /// (after a plan-level pass: its order, fusion plan or memory plan).
    Graph {
        #[arg(required_unless_present = "list_passes")]
        file: Option<PathBuf>,
        /// Timesteps to unroll.
        #[arg(short = 'T', long = "steps", default_value_t = 4)]
        steps: usize,
        /// The pass whose result is printed (`--list-passes` lists them;
        /// `unrolled` is the pipeline's input).
        #[arg(long, alias = "stage", default_value = "unrolled")]
        after: String,
        /// List the pipeline's passes (for the given --mode, --eval and
        /// --schedule), one line each, and exit.
        #[arg(long)]
        list_passes: bool,
        /// bptt: exact rewrites only; rate: rate-based backpropagation.
        #[arg(long, value_enum, default_value_t = ModeArg::Rate)]
        mode: ModeArg,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Batch size the shapes are given for.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Unroll for evaluation (running BN statistics, no dropout).
        #[arg(long)]
        eval: bool,
        /// The executor the pipeline lowers for, and whose memory plan
        /// `--format stats` reports: layer-major, time-major or
        /// time-major-recompute (the graph executor), or fused,
        /// fused-time-major, fused-time-major-recompute (the fused plan).
        #[arg(long, default_value = "layer-major")]
        schedule: snnc::compile::Target,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print a schedule's execution order and memory plan: every node with
    /// the bytes live while it runs, then every buffer with its size, arena
    /// offset and lifetime.
    Plan {
        file: PathBuf,
        #[arg(short = 'T', long = "steps", default_value_t = 4)]
        steps: usize,
        /// The stage whose graph is planned.
        #[arg(long, alias = "stage", default_value_t = Stage::Cse)]
        after: Stage,
        #[arg(long, value_enum, default_value_t = ModeArg::Rate)]
        mode: ModeArg,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// layer-major, time-major or time-major-recompute (the graph
        /// executor), or fused, fused-time-major, fused-time-major-recompute
        /// (the fused CPU plan: one line per kernel, kernel step or node).
        #[arg(long, default_value = "layer-major")]
        schedule: cli::BenchPlan,
        /// The plan's totals and buffers as one JSON object.
        #[arg(long)]
        json: bool,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run the forward pass on a random input with the reference interpreter
    /// and print the outputs and per-layer firing rates.
    Run {
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
    },
    /// Write a trained network as a NIR graph (batch norm folded into the
    /// layer before it).
    Export {
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
        #[arg(long, default_value_t = snnc::nir::DEFAULT_DT)]
        dt: f64,
        /// Write weights as f64 instead of f32 (a folded batch norm kept
        /// exactly).
        #[arg(long)]
        f64: bool,
    },
    /// Read a NIR graph as a .snn model and a parameter file.
    Import {
        file: PathBuf,
        /// The .snn file to write.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// Where the weights go (default: OUT with extension .params.safetensors).
        #[arg(long)]
        params_out: Option<PathBuf>,
        /// The time step the graph's neurons are simulated at (λ = 1 − dt/τ);
        /// a graph written by snnc says its own.
        #[arg(long, default_value_t = snnc::nir::DEFAULT_DT)]
        dt: f64,
    },
    /// Train a model (default: the 8×8-digits MLP on the embedded digits set).
    Train(Box<TrainArgs>),
    /// Test accuracy of a checkpoint (a run folder or its .safetensors file).
    Eval {
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
        /// cpu: the fused CPU plan; cuda: the fusion plan on the CUDA
        /// executor (GPU 0).
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
        /// With a .snn file instead of a checkpoint: the weights (parameter
        /// file, checkpoint or run folder).
        #[arg(long)]
        params: Option<PathBuf>,
        /// With a .snn file: timesteps (default 4).
        #[arg(short = 'T', long = "steps")]
        steps: Option<usize>,
    },
    /// List the rate pass's rewrite rules: name, exact or approximate, identity.
    Rules {
        #[arg(long)]
        json: bool,
    },
    /// Per parameter, cosine similarity and norm ratio of rate vs BPTT
    /// gradients on a random batch (random initialisation).
    GradCheck {
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
    },
    /// Median training-step time of the CPU executor, per mode and T.
    Bench {
        file: PathBuf,
        #[arg(
            short = 'T',
            long = "steps",
            value_delimiter = ',',
            default_value = "1,2,4,8"
        )]
        steps: Vec<usize>,
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bptt,rate")]
        mode: Vec<ModeArg>,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Timed steps per row (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Comma-separated: fused (the fused CPU plan, generated C), or the
        /// graph executor in a schedule: layer-major, time-major,
        /// time-major-recompute (time-major with batch-norm recompute).
        /// With --device cuda: fused, fused-time-major,
        /// fused-time-major-recompute (the fusion plan, kernels run one
        /// step per launch in a time-major order).
        #[arg(long, value_delimiter = ',', default_value = "fused")]
        schedule: Vec<cli::BenchPlan>,
        /// cpu: the CPU executor; cuda: the CUDA executor (GPU 0) running
        /// the fusion plan.
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
        /// With --device cuda: every node on its own kernel instead of the
        /// fusion plan.
        #[arg(long)]
        no_fuse: bool,
        /// Also measure the FLOP floor (the gemm crate's SGEMM on 2048³,
        /// median of 3) and give each row's GFLOP/s as a fraction of it.
        #[arg(long)]
        floor: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the example models on the GPU and on the CPU executor and compare
    /// every output and every node (exits non-zero on a mismatch; without a
    /// GPU it says why and skips, unless --require-gpu).
    CudaCheck {
        /// Model names in examples/models or .snn paths (default: all examples).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(
            short = 'T',
            long = "steps",
            value_delimiter = ',',
            default_value = "1,3"
        )]
        steps: Vec<usize>,
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bptt,rate")]
        mode: Vec<ModeArg>,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Run on the CPU emulator of the CUDA backend instead of a GPU
        /// (the same kernels compiled as C++ by the host compiler).
        #[arg(long)]
        emulate: bool,
        /// A missing GPU or CUDA library is an error, not a skip.
        #[arg(long)]
        require_gpu: bool,
        /// Only compare outputs, not every node in isolation (faster).
        #[arg(long)]
        outputs_only: bool,
        /// Every node on its own kernel instead of the fusion plan (fused
        /// kernels from the generated module, other nodes on kernels.cu).
        #[arg(long)]
        no_fuse: bool,
        /// The fusion plan's schedule: fused (layer-major: a kernel's steps
        /// in one launch), fused-time-major or fused-time-major-recompute
        /// (one step per launch, in a time-major order).
        #[arg(long, default_value = "fused")]
        schedule: cli::BenchPlan,
        /// Instead of the models: time device-to-device copies of this many
        /// MiB (copy engine and copy kernel).
        #[arg(long, num_args = 0..=1, default_missing_value = "2048")]
        bandwidth: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Write the generated kernels (one file per kernel) and a manifest of
    /// launches and buffers.
    Emit {
        file: PathBuf,
        #[arg(short = 'T', long = "steps", default_value_t = 4)]
        steps: usize,
        #[arg(long, value_enum, default_value = "rate")]
        mode: ModeArg,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// `c` (the CPU path) or `cuda` (NVRTC).
        #[arg(long, default_value = "c")]
        target: String,
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Datasets: make the synthetic event set, inspect event files.
    #[command(subcommand)]
    Data(DataCmd),
    /// Bytes kept for the backward and FLOPs, per mode and T.
    Report {
        file: PathBuf,
        /// Comma-separated list of T.
        #[arg(
            short = 'T',
            long = "steps",
            value_delimiter = ',',
            default_value = "1,2,4,8"
        )]
        steps: Vec<usize>,
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bptt,rate")]
        mode: Vec<ModeArg>,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Write a SYNTHETIC event dataset made from Fashion-MNIST (simulated
    /// saccades and DVS pixels, N-MNIST binary format): DIR/Train/<label>/
    /// and DIR/Test/<label>/, for `snnc train … --data events:DIR`.
    MakeEvents {
        #[arg(long)]
        out: PathBuf,
        /// Where the Fashion-MNIST IDX files are.
        #[arg(long, default_value = snnc::data::FASHION_MNIST_DIR)]
        data_dir: PathBuf,
        /// Convert only the first N training images (default all 60,000).
        #[arg(long)]
        limit: Option<usize>,
        /// Convert only the first N test images (default all 10,000).
        #[arg(long)]
        test_limit: Option<usize>,
        /// Mean contrast threshold on log intensity.
        #[arg(long, default_value_t = snnc::data::events::SynthParams::default().threshold)]
        threshold: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Read an event file (.bin N-MNIST, .aedat 2.0/3.1, .npy) and print its
    /// format, event count, extent, duration and polarity balance.
    Inspect { file: PathBuf },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// The model (default: the embedded examples/models/digits_mlp.snn).
    file: Option<PathBuf>,
    /// digits (embedded), fashion-mnist, mnist, cifar10, or events:DIR (event
    /// files in DIR/Train/<label>/ and DIR/Test/<label>/, binned into T frames).
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
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    optimizer: OptimizerKind,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Applied to conv/linear weights only.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    schedule: Schedule,
    /// Execution order of the fused CPU plan: layer-major (fastest),
    /// time-major or time-major-recompute (kernels run one step at a time:
    /// less memory at large T; see `snnc bench --schedule fused-…`).
    #[arg(long, default_value = "layer-major")]
    order: SchedOpts,
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
    /// cpu: the fused CPU plan; cuda: the fusion plan on the CUDA executor
    /// (GPU 0; optimizer on the host). Checkpoints are the same either way,
    /// so a run can resume on the other device.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Bptt,
    Rate,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Bptt => Mode::Bptt,
            ModeArg::Rate => Mode::Rate,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Dot,
    /// Node/edge counts and build and verify times.
    Stats,
}

/// Keeps freed tensors in the heap for the next step instead of returning
/// them to the kernel: glibc serves blocks above its mmap threshold with
/// fresh mappings, and every training step would pay a page fault per 4 KiB
/// of each new value (fmnist_csnn, batch 128, T = 8: steps ~10 % faster
/// with the threshold at glibc's maximum, 32 MiB, and no trimming).
/// Allocation sizes, and so the counting allocator's peaks, do not change.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: mallopt only changes glibc malloc's tuning parameters; it is
    // called before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    let matches = Cli::command().get_matches();
    let args = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(s) = args.egraph_time_limit {
        if !(s.is_finite() && s > 0.0) {
            eprintln!("error: --egraph-time-limit must be a positive number of seconds, got {s}");
            return ExitCode::FAILURE;
        }
    }
    snnc::passes::rate::set_default_limits(
        args.egraph_node_limit,
        args.egraph_time_limit
            .map(std::time::Duration::from_secs_f64),
    );
    let result = match args.cmd {
        Cmd::Check {
            file,
            json,
            mode,
            params,
        } => {
            if params {
                snnc::frontend::load(&file)
                    .map(|(_, a)| print!("{}", interop::param_table(&a, json)))
            } else {
                cli::check(&file, json, mode.map(Mode::from))
            }
        }
        Cmd::Graph {
            file,
            steps,
            after,
            list_passes,
            mode,
            format,
            batch,
            eval,
            schedule,
            output,
        } => {
            let opts = Options {
                eval,
                ..Options::new(steps, batch, mode.into())
            };
            match file {
                Some(file) if !list_passes => cli::graph(
                    &file,
                    &opts,
                    &after,
                    match format {
                        Format::Text => cli::GraphFormat::Text,
                        Format::Dot => cli::GraphFormat::Dot,
                        Format::Stats => cli::GraphFormat::Stats,
                    },
                    schedule,
                ),
                _ => Ok(cli::list_passes(&opts, schedule)),
            }
            .and_then(|text| write_out(output.as_deref(), &text))
        }
        Cmd::Plan {
            file,
            steps,
            after,
            mode,
            batch,
            schedule,
            json,
            output,
        } => cli::plan(
            &file,
            &Options {
                after,
                ..Options::new(steps, batch, mode.into())
            },
            schedule,
            json,
        )
        .and_then(|text| write_out(output.as_deref(), &text)),
        Cmd::Run {
            file,
            steps,
            seed,
            batch,
            f64,
            json,
            params,
            input,
            eval,
        } => {
            if params.is_some() || input.is_some() || eval {
                interop::run_given(
                    &file,
                    params.as_deref(),
                    input.as_deref(),
                    steps,
                    batch,
                    seed,
                    f64,
                    json,
                )
            } else {
                cli::run(&file, steps, batch, seed, f64, json)
            }
        }
        Cmd::Export {
            source,
            params,
            format,
            out,
            dt,
            f64,
        } => interop::export_cmd(&source, params.as_deref(), &format, &out, dt, f64),
        Cmd::Import {
            file,
            out,
            params_out,
            dt,
        } => interop::import_cmd(&file, &out, params_out.as_deref(), dt),
        Cmd::Train(a) => {
            // The flags given on the command line (with --resume, these
            // must agree with the run's settings).
            let sub = matches.subcommand_matches("train").expect("train");
            let explicit: Vec<String> = sub
                .ids()
                .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.to_string())
                .collect();
            match train(*a, explicit) {
                // Interrupted: the checkpoint is saved and the message printed.
                Ok(true) => return ExitCode::from(130),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Cmd::Eval {
            checkpoint,
            data,
            data_dir,
            batch,
            device,
            params,
            steps,
        } => match params {
            Some(p) => interop::eval_params(
                &checkpoint,
                &p,
                data,
                data_dir,
                steps.unwrap_or(4),
                batch.unwrap_or(32),
            ),
            None if checkpoint.extension().is_some_and(|e| e == "snn") => Err(format!(
                "error: `{}` is a model without weights: add --params PARAMS.safetensors",
                checkpoint.display()
            )),
            None => cli::eval(&checkpoint, data, data_dir, batch, device == Device::Cuda),
        },
        Cmd::Rules { json } => {
            print!("{}", cli::rules(json));
            Ok(())
        }
        Cmd::GradCheck {
            file,
            steps,
            batch,
            seed,
            json,
            params,
            batch_file,
            mode,
            f64,
            paper_grad_scale,
            dump,
        } => {
            if params.is_some() || batch_file.is_some() || dump.is_some() || f64 || paper_grad_scale
            {
                interop::grad::grad_dump(&interop::grad::GradRequest {
                    file: &file,
                    params: params.as_deref(),
                    batch_file: batch_file.as_deref(),
                    steps,
                    batch,
                    seed,
                    modes: mode.into_iter().map(Mode::from).collect(),
                    wide: f64,
                    paper_grad_scale,
                    dump: dump.as_deref(),
                    json,
                })
            } else {
                cli::grad_check(&file, steps, batch, seed, json)
            }
        }
        Cmd::Bench {
            file,
            steps,
            mode,
            batch,
            repeats,
            schedule,
            device,
            no_fuse,
            floor,
            json,
        } => {
            let modes: Vec<Mode> = mode.into_iter().map(Mode::from).collect();
            match device {
                Device::Cpu => cli::bench(
                    &file,
                    &steps,
                    &modes,
                    &schedule,
                    batch,
                    repeats.max(1),
                    floor,
                    json,
                ),
                Device::Cuda => fused_schedules(&schedule).and_then(|s| {
                    cuda::tools::bench_cuda(
                        &file,
                        &steps,
                        &modes,
                        &s,
                        batch,
                        repeats.max(1),
                        json,
                        !no_fuse,
                    )
                }),
            }
        }
        Cmd::Emit {
            file,
            steps,
            mode,
            batch,
            target,
            out,
        } => cli::emit(&file, steps, mode.into(), batch, &target, &out),
        Cmd::CudaCheck {
            models,
            steps,
            mode,
            batch,
            seed,
            emulate,
            require_gpu,
            outputs_only,
            no_fuse,
            schedule,
            bandwidth,
            json,
        } => match bandwidth {
            Some(mib) => cuda::tools::bandwidth_check(mib << 20, 20),
            None => cuda_check(
                models,
                steps,
                mode,
                batch,
                seed,
                emulate,
                require_gpu,
                !outputs_only,
                !no_fuse,
                fused_schedules(&[schedule]).map(|s| s[0]),
                json,
            ),
        },
        Cmd::Data(DataCmd::MakeEvents {
            out,
            data_dir,
            limit,
            test_limit,
            threshold,
            seed,
        }) => cli::make_events(&out, &data_dir, limit, test_limit, threshold, seed),
        Cmd::Data(DataCmd::Inspect { file }) => cli::inspect_events(&file),
        Cmd::Report {
            file,
            steps,
            mode,
            batch,
            json,
        } => {
            let modes: Vec<Mode> = mode.into_iter().map(Mode::from).collect();
            cli::report(&file, &steps, &modes, batch, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{}", msg.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// `snnc train`; `Ok(true)` when interrupted (exit code 130).
fn train(a: TrainArgs, explicit: Vec<String>) -> Result<bool, String> {
    let (model_file, model_source) = match &a.file {
        Some(f) => (
            f.display().to_string(),
            std::fs::read_to_string(f)
                .map_err(|e| format!("error: cannot read `{}`: {e}", f.display()))?,
        ),
        None => (
            cli::DEFAULT_MODEL.0.to_string(),
            cli::DEFAULT_MODEL.1.to_string(),
        ),
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
            kind: a.optimizer,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: a.schedule,
        seed: a.seed,
        paper_grad_scale: a.paper_grad_scale,
        order: a.order,
        init: a.init,
    };
    cli::train(cli::TrainRequest {
        cfg,
        explicit,
        out: a.out,
        resume: a.resume,
        json: a.json,
        cuda: a.device == Device::Cuda,
    })
}

/// The fusion plans' schedules among `plans` (the CUDA executor runs no
/// graph-executor schedule).
fn fused_schedules(plans: &[cli::BenchPlan]) -> Result<Vec<SchedOpts>, String> {
    plans
        .iter()
        .map(|p| match p {
            cli::BenchPlan::Fused(s) => Ok(*s),
            cli::BenchPlan::Graph(_) => Err(format!(
                "error: --device cuda runs the fusion plan: --schedule fused, \
                 fused-time-major or fused-time-major-recompute, not `{p}` \
                 (--no-fuse runs one kernel per node)"
            )),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn cuda_check(
    models: Vec<String>,
    steps: Vec<usize>,
    mode: Vec<ModeArg>,
    batch: usize,
    seed: u64,
    emulate: bool,
    require: bool,
    per_node: bool,
    fused: bool,
    schedule: Result<SchedOpts, String>,
    json: bool,
) -> Result<(), String> {
    let schedule = schedule?;
    let models = if models.is_empty() {
        cuda::tools::example_models()?
    } else {
        models.iter().map(|m| cuda::tools::model_path(m)).collect()
    };
    let opts = cuda::tools::CheckOptions {
        models,
        steps,
        modes: mode.into_iter().map(Mode::from).collect(),
        batch,
        seed,
        per_node,
        tol: 1e-4,
        fused,
        schedule,
    };
    if cuda::tools::cuda_check(&opts, emulate, require, json)? {
        Ok(())
    } else {
        Err("error: cuda-check: some cases failed (table above)".into())
    }
}

fn write_out(path: Option<&Path>, text: &str) -> Result<(), String> {
    match path {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(p) => std::fs::write(p, text)
            .map_err(|e| format!("error: cannot write `{}`: {e}", p.display())),
    }
}
