//! `snnc cuda-check`: the CUDA backend against the CPU executor (the
//! checks themselves are in `codegen::cuda::tools`).

use clap::Args;

use super::args::{modes, ModeArg};
use super::bench::{fused_schedules, BenchPlan};
use super::CliError;
use crate::codegen::cuda;

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
    /// Instead of the models: time device-to-device copies of this many
    /// MiB (copy engine and copy kernel).
    #[arg(long, num_args = 0..=1, default_missing_value = "2048")]
    bandwidth: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: CudaCheckArgs) -> Result<(), CliError> {
    if let Some(mib) = a.bandwidth {
        return Ok(cuda::tools::bandwidth_check(mib << 20, 20)?);
    }
    let schedule = fused_schedules(&[a.schedule])?[0];
    let models = if a.models.is_empty() {
        cuda::tools::example_models()?
    } else {
        a.models
            .iter()
            .map(|m| cuda::tools::model_path(m))
            .collect()
    };
    let opts = cuda::tools::CheckOptions {
        models,
        steps: a.steps,
        modes: modes(&a.mode),
        batch: a.batch,
        seed: a.seed,
        per_node: !a.outputs_only,
        tol: 1e-4,
        fused: !a.no_fuse,
        schedule,
    };
    if cuda::tools::cuda_check(&opts, a.emulate, a.require_gpu, a.json)? {
        Ok(())
    } else {
        Err(CliError::CudaCheckFailed)
    }
}
