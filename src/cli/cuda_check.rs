//! `snnc cuda-check`: the CUDA backend (a GPU, or its CPU emulator) against
//! the CPU executor, and `--bandwidth`, the device-copy bandwidth test.
//!
//! cuda-check runs each example model (small batch, a few T, both modes) on
//! a [`Backend`] and on the CPU executor with the same inputs and
//! parameters, and compares
//! - every output (loss, logits, grad:*) end to end, and
//! - every node in isolation: the node's device result against the CPU
//!   executor run on the device's own operand values, so one wrong kernel
//!   is named even when differences elsewhere have propagated.
//!
//! A spike is a threshold, so two correct implementations that round
//! differently can disagree on a membrane potential that lands within
//! rounding of θ, and everything downstream then differs. The check counts
//! such flips: a case whose outputs differ only after spikes flipped, while
//! every node matches in isolation, is reported as such and passes; any
//! node that differs in isolation, or a non-finite value, fails.
//!
//! [`case`] runs one case, [`compare`] judges values, [`bandwidth`] times
//! copies; this module is the command and its table.

pub mod bandwidth;
pub mod case;
pub mod compare;

use clap::Args;
use std::path::{Path, PathBuf};

pub use case::{check_case, check_graph, CaseResult, CheckOptions};
pub use compare::{rel_err, rel_err_abs};

use super::args::{modes, ModeArg};
use super::bench::{fused_schedules, BenchPlan};
use super::CliError;
use crate::codegen::cuda::{Backend, Cuda, Emu};
use compare::{KERNEL_TOL, NODE_FLOOR, OUTPUT_FLOOR};

#[derive(Args)]
pub struct CudaCheckArgs {
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
    schedule: BenchPlan,
    /// What the GEMMs round their operands to (fp32, tf32 or bf16), on the
    /// device and in the CPU reference alike.
    #[arg(long, default_value = "fp32")]
    precision: crate::precision::Precision,
    /// Instead of the models: time device-to-device copies of this many
    /// MiB (copy engine and copy kernel).
    #[arg(long, num_args = 0..=1, default_missing_value = "2048")]
    bandwidth: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: CudaCheckArgs) -> Result<(), CliError> {
    if let Some(mib) = a.bandwidth {
        return bandwidth::bandwidth_check(mib << 20, 20);
    }
    let schedule = fused_schedules(&[a.schedule])?[0];
    let models = if a.models.is_empty() {
        example_models()?
    } else {
        a.models.iter().map(|m| model_path(m)).collect()
    };
    let opts = CheckOptions {
        models,
        steps: a.steps,
        modes: modes(&a.mode),
        batch: a.batch,
        seed: a.seed,
        per_node: !a.outputs_only,
        tol: 1e-4,
        fused: !a.no_fuse,
        schedule,
        precision: a.precision,
    };
    if cuda_check(&opts, a.emulate, a.require_gpu, a.json)? {
        Ok(())
    } else {
        Err(CliError::CudaCheckFailed)
    }
}

/// Where the example models are, from the working directory.
pub fn model_path(name: &str) -> PathBuf {
    if name.ends_with(".snn") || name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("examples/models").join(format!("{name}.snn"))
    }
}

/// Every `examples/models/*.snn`, sorted.
pub fn example_models() -> Result<Vec<PathBuf>, CliError> {
    let dir = Path::new("examples/models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| CliError::ListModels {
            dir: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snn"))
        .collect();
    v.sort();
    Ok(v)
}

fn print_header() {
    println!(
        "{:<12} {:<5} {:>2} {:>6} {:>9} {:<16} {:>9} {:<30} {:>11} {:>7}  verdict",
        "model",
        "mode",
        "T",
        "nodes",
        "out err",
        "worst output",
        "node err",
        "worst node",
        "spike flips",
        "secs"
    );
}

fn print_row(r: &CaseResult) {
    println!(
        "{:<12} {:<5} {:>2} {:>6} {:>9.2e} {:<16} {:>9.2e} {:<30} {:>11} {:>7.2}  {}",
        r.model,
        r.mode.to_string(),
        r.steps,
        r.nodes,
        r.output_err,
        r.worst_output,
        r.node_err,
        r.worst_node,
        format!("{}/{}", r.spike_flips, r.spikes),
        r.seconds,
        r.verdict
    );
}

/// Runs every case on `backend`; prints a table; true when all passed.
pub fn run_cases<B: Backend>(
    backend: &mut B,
    opts: &CheckOptions,
    poison: bool,
    json: bool,
) -> bool {
    if !json {
        print_header();
    }
    let mut all = true;
    let mut count = (0, 0);
    for path in &opts.models {
        for &mode in &opts.modes {
            for &t in &opts.steps {
                match check_case(backend, path, t, mode, opts, poison) {
                    Ok(r) => {
                        all &= r.passed;
                        if r.passed {
                            count.0 += 1;
                        } else {
                            count.1 += 1;
                        }
                        if json {
                            println!("{}", serde_json::to_string(&r).expect("serialisable"));
                        } else {
                            print_row(&r);
                        }
                    }
                    Err(e) => {
                        let e = e.to_string();
                        all = false;
                        count.1 += 1;
                        println!(
                            "{:<12} {:<5} {:>2}  FAIL: {}",
                            path.file_stem()
                                .map(|s| s.to_string_lossy())
                                .unwrap_or_default(),
                            mode.to_string(),
                            t,
                            e.lines().next().unwrap_or("")
                        );
                        for l in e.lines().skip(1).take(20) {
                            println!("    {l}");
                        }
                    }
                }
            }
        }
    }
    if !json {
        println!(
            "cuda-check: {} passed, {} failed (relative error < {:.0e}; elements below {NODE_FLOOR:.0e} (per node) / \
             {OUTPUT_FLOOR:.0e} (outputs) of a tensor's largest are compared at that scale{})",
            count.0,
            count.1,
            opts.tol,
            if opts.fused {
                format!("; fused kernels in isolation < {KERNEL_TOL:.0e}, see KERNEL_TOL")
            } else {
                String::new()
            }
        );
    }
    all
}

fn plan_note(opts: &CheckOptions) -> String {
    let plan = plan_kind(opts);
    match opts.precision {
        crate::precision::Precision::Fp32 => plan,
        p => format!(
            "{plan}; GEMM operands rounded to {p} (f32 accumulation), in the CPU reference too"
        ),
    }
}

fn plan_kind(opts: &CheckOptions) -> String {
    if opts.fused {
        format!(
            "the fusion plan ({}): fused kernels from one generated module per case, other nodes on kernels.cu, values in one arena (--no-fuse: every node on its own kernel)",
            BenchPlan::Fused(opts.schedule)
        )
    } else {
        "every node on its own kernel (--no-fuse)".to_string()
    }
}

/// `snnc cuda-check`: on the GPU (or the CPU emulator). Ok(false) when a
/// case failed; a missing GPU is a skip (Ok(true)) unless `require`.
fn cuda_check(
    opts: &CheckOptions,
    emulate: bool,
    require: bool,
    json: bool,
) -> Result<bool, CliError> {
    if emulate {
        let mut emu = Emu::new().map_err(|source| CliError::Backend {
            command: "cuda-check",
            source,
        })?;
        emu.set_max_grid(64);
        println!("cuda-check on the {}", emu.describe());
        println!("  {}", plan_note(opts));
        return Ok(run_cases(&mut emu, opts, true, json));
    }
    let mut cuda = match Cuda::new() {
        Ok(c) => c,
        Err(e) if !require => {
            println!("cuda-check: skipped: {e}");
            return Ok(true);
        }
        Err(source) => {
            return Err(CliError::Backend {
                command: "cuda-check",
                source,
            })
        }
    };
    println!("cuda-check on {}", cuda.describe());
    println!("  {}", cuda.kernels_note);
    println!("  {}", plan_note(opts));
    Ok(run_cases(&mut cuda, opts, true, json))
}
