//! `snnc bench`: median training-step time and peak memory of the CPU
//! executor (or, with `--device cuda`, the CUDA executor), per mode, T and
//! schedule.

mod cuda;
pub mod events;
mod floor;
pub mod limits;

use clap::Args;
use std::collections::HashMap;
use std::path::Path;

use super::args::{modes, Device, SweepArgs};
use super::{CliError, MIB};
use crate::codegen::backend::Backend;
use crate::codegen::cpu::Cpu;
use crate::codegen::exec::{ExecError, Executor, LibraryScratch};
use crate::compile;
use crate::init;
use crate::interp::{random_input, random_labels, RunOptions};
use crate::model::Encoding;
use crate::passes::cost::graph_cost;
use crate::passes::mem::{self, Memory};
use crate::passes::memplan;
use crate::passes::rate::Mode;
use crate::passes::schedule::SchedOpts;
use crate::precision::Precision;
use crate::tensor::Tensor;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Timed steps per row (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Comma-separated: fused (the fusion plan: generated kernels, library
    /// kernels, GEMMs), fused-time-major, fused-time-major-recompute (its
    /// kernels run one step per launch in a time-major order, with or
    /// without batch-norm recompute); on the CPU also one library call
    /// per node in a schedule's order: layer-major, time-major,
    /// time-major-recompute.
    #[arg(long, value_delimiter = ',', default_value = "fused")]
    schedule: Vec<BenchPlan>,
    /// The executor's backend: cpu, or cuda (GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// With --device cuda: every node on its own kernel instead of the
    /// fusion plan.
    #[arg(long)]
    no_fuse: bool,
    /// Also measure the FLOP floor (every SGEMM this machine has — the
    /// gemm crate, matrixmultiply, and OpenBLAS, BLIS, oneDNN or
    /// libblas.so.3 when installed — on 2048³, median of 3; the floor is
    /// the fastest), and give how many times slower than it each SGEMM
    /// and each row runs.
    #[arg(long)]
    floor: bool,
    /// Also profile one step per row, every unit timed on its own, and
    /// give each kernel class's (GEMM & conv, neuron kernels, batch norm,
    /// pooling, other) time, GB/s and GFLOP/s against the machine's
    /// limits: the copy kernel's bandwidth and the fastest GEMM (on the
    /// CPU the floor, which this measures).
    #[arg(long)]
    limits: bool,
    /// Comma-separated precisions of the GEMMs (fp32, tf32, bf16), each a
    /// row of its own, side by side. On the CPU the rounding is emulated
    /// (it costs a copy of every GEMM operand); on a GPU it selects the
    /// tensor-core GEMMs.
    #[arg(long, value_delimiter = ',', default_value = "fp32")]
    precision: Vec<Precision>,
    /// Instead of training steps: every forward convolution of the model
    /// (at --batch, on the CPU) as im2col + SGEMM and as events, on inputs
    /// of 1 % to 60 % nonzero, side by side: where the event path pays.
    #[arg(long)]
    events: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> Result<(), CliError> {
    if a.events {
        let (model, _) = crate::frontend::load(&a.sweep.file)?;
        let opts = compile::Options {
            eval: true,
            after: compile::Stage::Unrolled,
            ..compile::Options::new(1, a.sweep.batch, Mode::Rate)
        };
        let g = compile::compile(&model, &opts)?.graph;
        let rows = events::bench_events(&g, a.repeats.max(1))?;
        if a.json {
            for r in &rows {
                println!("{}", serde_json::to_string(r).expect("serialisable"));
            }
        } else {
            events::print(&rows);
        }
        return Ok(());
    }
    let modes = modes(&a.sweep.mode);
    let (file, steps, batch) = (&a.sweep.file, &a.sweep.steps, a.sweep.batch);
    match a.device {
        Device::Cpu => bench(
            file,
            steps,
            &modes,
            &a.schedule,
            batch,
            a.repeats.max(1),
            a.floor,
            a.limits,
            &a.precision,
            a.json,
        ),
        Device::Cuda => {
            let s = fused_schedules(&a.schedule)?;
            cuda::bench_cuda(
                file,
                steps,
                &modes,
                &s,
                batch,
                a.repeats.max(1),
                a.json,
                !a.no_fuse,
                a.limits,
                &a.precision,
            )
        }
    }
}

/// The fusion plans' schedules among `plans` (the CUDA executor runs no
/// graph-executor schedule).
pub fn fused_schedules(plans: &[BenchPlan]) -> Result<Vec<SchedOpts>, CliError> {
    plans
        .iter()
        .map(|p| match p {
            BenchPlan::Fused(s) => Ok(*s),
            BenchPlan::Graph(_) => Err(CliError::usage(format!(
                "--device cuda runs the fusion plan: --schedule fused, \
                 fused-time-major or fused-time-major-recompute, not `{p}` \
                 (--no-fuse runs one kernel per node)"
            ))),
        })
        .collect()
}

/// What `snnc bench` runs: the fusion plan (layer-major, or time-major:
/// one kernel step at a time), or one node per unit in a schedule's order;
/// named as the pipeline names its targets.
pub use crate::compile::Target as BenchPlan;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub mode: Mode,
    pub steps: usize,
    pub batch: usize,
    /// `fused` (the fusion plan), `fused-SCHEDULE`, or the schedule of a
    /// node-by-node plan (`layer-major`, `time-major`,
    /// `time-major-recompute`).
    pub schedule: String,
    /// Median wall time of one training step (forward + backward), seconds.
    pub step_seconds: f64,
    pub images_per_sec: f64,
    /// Bytes of forward values the backward reads (the plan's, not measured).
    pub kept_bytes: f64,
    /// The memory plan's peak: the most bytes a step allocates at once
    /// (inputs and parameters, resident, not included).
    pub planned_peak_bytes: u64,
    /// The arena the plan's buffers fit in.
    pub arena_bytes: u64,
    /// The most bytes a step allocated at once above what was allocated
    /// before it (counting allocator), over the timed steps; null when the
    /// counting allocator is not installed.
    pub measured_peak_bytes: Option<u64>,
    /// Inputs and parameters.
    pub resident_bytes: u64,
    pub gflop_per_step: f64,
    pub gflops: f64,
    /// The SGEMM floor (GFLOP/s, 2048³: the fastest implementation) when
    /// `--floor` was given.
    pub floor_gflops: Option<f64>,
    /// The implementation that set the floor (`SNNC_SGEMM`'s name for it).
    pub floor_sgemm: Option<&'static str>,
    /// Every implementation's GFLOP/s on 2048³, fastest first.
    pub sgemm_gflops: Option<Vec<floor::SgemmRate>>,
    /// What the GEMMs rounded their operands to.
    pub precision: Precision,
    /// With `--limits`: one profiled step's time per kernel class.
    pub classes: Option<Vec<limits::ClassRow>>,
    /// With `--limits`: the limits the classes are set against.
    pub limits: Option<limits::Limits>,
}

/// Median step time of the CPU executor on random data, and
/// the planned and measured peak memory, per mode, T and schedule.
#[allow(clippy::too_many_arguments)]
fn bench(
    path: &Path,
    steps: &[usize],
    modes: &[Mode],
    schedules: &[BenchPlan],
    batch: usize,
    repeats: usize,
    floor: bool,
    with_limits: bool,
    precisions: &[Precision],
    json: bool,
) -> Result<(), CliError> {
    // An SNNC_SGEMM naming no SGEMM, or one not installed, fails before
    // anything is measured.
    crate::codegen::cpu::sgemm::selection().map_err(|e| CliError::Backend {
        command: "bench",
        source: crate::codegen::backend::BackendError::Compile(e.to_string()),
    })?;
    let (model, a) = crate::frontend::load(path)?;
    // The FLOP floor: the fastest SGEMM this machine has on a large square
    // product (measured before the steps, on an idle thread pool).
    let floor = (floor || with_limits).then(floor::Floor::measure);
    // The copy kernel's bandwidth on the CPU backend, for --limits.
    let machine = if with_limits {
        let mut cpu = Cpu::new().map_err(|source| CliError::Backend {
            command: "bench",
            source,
        })?;
        let copy = crate::cli::cuda_check::bandwidth::measure_bandwidth(
            &mut cpu,
            limits::COPY_BYTES,
            limits::COPY_REPEATS,
        )?;
        let f = floor.as_ref().expect("measured with --limits").fastest();
        Some(limits::Limits {
            copy_gbs: limits::copy_kernel_gbs(&copy),
            gemm_gflops: f.gflops,
            gemm: format!("{} on {}³ (the floor)", f.name, floor::N),
        })
    } else {
        None
    };
    // Parameters are made in f64, then cast to f32.
    mem::ensure_fits("the parameters", mem::param_bytes(&a, 12), Memory::Host)?;
    let params: HashMap<String, Tensor<f32>> = init::cast_params(&init::init_params(&a, 0));
    let mut rows = Vec::new();
    for &mode in modes {
        for &t in steps {
            let g = compile::compile(&model, &compile::Options::new(t, batch, mode))?.graph;
            let x =
                random_input(&g, matches!(model.input.encoding, Encoding::Events), 1).cast::<f32>();
            let labels = random_labels(batch, a.output[0], 1).cast::<f32>();
            let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
            for (&sched, &precision) in schedules
                .iter()
                .flat_map(|s| precisions.iter().map(move |p| (s, p)))
            {
                let run = RunSpec {
                    target: sched,
                    repeats,
                    classes: with_limits,
                    precision,
                };
                let Measured {
                    times,
                    measured,
                    mem,
                    cost,
                    classes,
                } = on_executor(&g, &run, &inputs, &params)?;
                let med = times[times.len() / 2];
                let flop = cost.forward_flops + cost.backward_flops;
                rows.push(BenchRow {
                    mode,
                    steps: t,
                    batch,
                    schedule: sched.to_string(),
                    step_seconds: med,
                    images_per_sec: batch as f64 / med,
                    kept_bytes: cost.kept_bytes,
                    planned_peak_bytes: mem.peak_bytes,
                    arena_bytes: mem.arena_bytes,
                    measured_peak_bytes: measured,
                    resident_bytes: mem.resident_bytes,
                    gflop_per_step: flop / 1e9,
                    gflops: flop / 1e9 / med,
                    floor_gflops: floor.as_ref().map(|f| f.fastest().gflops),
                    floor_sgemm: floor.as_ref().map(|f| f.fastest().name),
                    sgemm_gflops: floor.as_ref().map(|f| f.rates.clone()),
                    precision,
                    classes,
                    limits: machine.clone(),
                });
            }
        }
    }
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("serialisable"));
        }
        return Ok(());
    }
    if let Some(f) = &floor {
        f.print();
    }
    println!("{}: batch {batch}, median of {repeats} steps after two untimed ones (a warm-up, and the measured executor's first) (forward + backward, no update; the parameters resident, as in training); all on the executor's CPU backend: fused = the fusion plan (generated C + library kernels + SGEMM), layer-major etc. = one library call per node in that order; plan = the memory plan's peak, arena = the arena it fits in, meas = the bytes the first step allocated besides the copies of inputs and parameters and the outputs (the arena, the tables)", model.name);
    println!(
        "{:<6} {:>3} {:<20} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "mode",
        "T",
        "schedule",
        "step s",
        "img/s",
        "kept MiB",
        "plan MiB",
        "meas MiB",
        "arena MiB",
        "GFLOP",
        "GFLOP/s"
    );
    for r in &rows {
        if let Some(f) = r.floor_gflops {
            print!("{:>6.1}× ", f / r.gflops);
        }
        println!(
            "{:<6} {:>3} {:<20} {:>8.3} {:>8.1} {:>9.2} {:>9.2} {:>9} {:>9.2} {:>8.2} {:>8.2}",
            r.mode.to_string(),
            r.steps,
            r.label(),
            r.step_seconds,
            r.images_per_sec,
            r.kept_bytes / MIB,
            r.planned_peak_bytes as f64 / MIB,
            r.measured_peak_bytes
                .map_or("n/a".to_string(), |b| format!("{:.2}", b as f64 / MIB)),
            r.arena_bytes as f64 / MIB,
            r.gflop_per_step,
            r.gflops
        );
    }
    if let Some(l) = &machine {
        println!(
            "Per kernel class, one profiled step (each unit timed alone, so the classes add up to a little more than a step); limits: copy kernel {:.1} GB/s (read + write, {} MiB), GEMM {:.1} GFLOP/s ({}); % of limit: GB/s against the copy kernel, or for GEMMs GFLOP/s against the GEMM",
            l.copy_gbs,
            limits::COPY_BYTES >> 20,
            l.gemm_gflops,
            l.gemm
        );
        for r in &rows {
            if let Some(c) = &r.classes {
                println!("{} T={} {}:", r.mode, r.steps, r.label());
                limits::print(c, l);
            }
        }
    }
    if floor.is_some() {
        print_choices();
    }
    Ok(())
}

/// The automatic SGEMM choice's decisions in this run, largest shapes
/// first: the implementation each shape ran on and every candidate's
/// time.
fn print_choices() {
    let choices = crate::codegen::cpu::sgemm::choices();
    if choices.is_empty() {
        return;
    }
    println!("SGEMM per call shape (m×n×k, transposes, batch; timed once on first use: each candidate's median of 3 rounds, or its one call when it fell 4× behind, ms):");
    for c in &choices {
        let times: Vec<String> = c
            .seconds
            .iter()
            .map(|(name, s)| format!("{name} {:.3}", s * 1e3))
            .collect();
        let demoted = c.slow_in_place.map_or(String::new(), |(name, slow, calls)| {
            format!("; {name} was chosen, then {slow} of its {calls} calls in the steps took over 3× its timed median")
        });
        println!(
            "  {:<24} {:<15} ({}{demoted})",
            c.shape,
            c.chosen,
            times.join(", ")
        );
    }
}

/// Sorted step times of `target` on the one executor's CPU backend, with
/// what its first step allocated beyond its copies of inputs and
/// parameters and the outputs it returns (counting allocator: the arena,
/// which later steps reuse), its memory plan (`resident_bytes`: the
/// copies of inputs and parameters) and its graph's cost.
fn on_executor(
    g: &crate::ir::Graph,
    run: &RunSpec,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
) -> Result<Measured, CliError> {
    let RunSpec {
        target,
        repeats,
        classes,
        precision,
    } = *run;
    let opts = |seed: u64| RunOptions {
        precision,
        ..RunOptions::seeded(seed)
    };
    let (eg, plan) = target.plan(g, &[]);
    let cost = graph_cost(&eg);
    let mut cpu = Cpu::new().map_err(|source| CliError::Backend {
        command: "bench",
        source,
    })?;
    let scratch = LibraryScratch {
        conv_workspace: cpu.conv_workspace(),
    };
    let mut mem = memplan::plan_units(&eg, &plan, &[], &scratch).map_err(ExecError::from)?;
    mem.resident_bytes = crate::codegen::cpu::leaf_bytes(&eg);
    mem::ensure_plan_fits(
        &format!("a training step ({target}, on the executor)"),
        &mem,
        0,
        Memory::Host,
    )?;
    // A warm-up step on an executor of its own: the thread pool and the
    // SGEMM library allocate their buffers once per process.
    Executor::with_plan(&mut cpu, &eg, plan.clone(), &[])?.run(inputs, params, &opts(0))?;
    let mut exe = Executor::with_plan(&mut cpu, &eg, plan, &[])?;
    let (first, measured) = crate::runtime::alloc::measure(|| exe.run(inputs, params, &opts(0)));
    let outputs: u64 = first?.values().map(|t| 4 * t.data.len() as u64).sum();
    // What the memory plan accounts for: the arena (and the executor's
    // tables), without its copies of inputs and parameters and the
    // downloaded outputs.
    let measured = measured.map(|b| (b as u64).saturating_sub(mem.resident_bytes + outputs));
    // The timed steps keep the parameters resident, as training does
    // (`runtime::step`): a step uploads its batch, not the weights.
    exe.set_resident_params(params)?;
    let mut times = Vec::new();
    for i in 1..=repeats {
        let started = std::time::Instant::now();
        exe.run(inputs, params, &opts(i as u64))?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    // One more step, every unit timed alone, for --limits.
    let classes = if classes {
        exe.time_units = true;
        exe.run(inputs, params, &opts(0))?;
        Some(limits::profiled(&exe))
    } else {
        None
    };
    Ok(Measured {
        times,
        measured,
        mem,
        cost,
        classes,
    })
}

/// What [`on_executor`] runs: a target, its timed steps, whether to
/// profile one more by kernel class, and the GEMMs' precision.
#[derive(Clone, Copy)]
struct RunSpec {
    target: BenchPlan,
    repeats: usize,
    classes: bool,
    precision: Precision,
}

impl BenchRow {
    /// The schedule, and the precision when it is not f32 (one word:
    /// `fused/bf16`).
    fn label(&self) -> String {
        match self.precision {
            Precision::Fp32 => self.schedule.clone(),
            p => format!("{}/{p}", self.schedule),
        }
    }
}

/// What [`on_executor`] measured of one target.
struct Measured {
    /// Step times, sorted.
    times: Vec<f64>,
    /// The first step's allocations beyond the copies and outputs.
    measured: Option<u64>,
    mem: memplan::MemPlan,
    cost: crate::passes::cost::GraphCost,
    /// One profiled step by kernel class (`--limits`).
    classes: Option<Vec<limits::ClassRow>>,
}
