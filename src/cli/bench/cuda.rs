//! `snnc bench --device cuda`: the CUDA executor's training step, per mode,
//! T and fusion-plan schedule (or every node on its own kernel).

use super::BenchPlan;
use crate::cli::cuda_check::bandwidth::measure_bandwidth;
use crate::cli::{CliError, MIB};
use crate::codegen::cuda::{fused, Backend, Cuda, Executor, Step};
use crate::compile::{compile, Options};
use crate::interp::{random_input, random_labels, RunOptions};
use crate::ir::Graph;
use crate::model::Encoding;
use crate::passes::cost::graph_cost;
use crate::passes::fuse_time;
use crate::passes::rate::Mode;
use crate::passes::schedule::SchedOpts;
use crate::precision::Precision;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct CudaBenchRow {
    pub device: String,
    /// "fused", "fused-time-major", "fused-time-major-recompute" (the
    /// fusion plan in that schedule) or "nodes" (one kernel per node).
    pub plan: String,
    pub mode: Mode,
    pub steps: usize,
    pub batch: usize,
    /// Median wall time of one step (upload x and labels, forward +
    /// backward, download loss, logits and gradients; stream synchronised).
    pub step_seconds: f64,
    pub images_per_sec: f64,
    pub gflop_per_step: f64,
    pub gflops: f64,
    /// Bytes the backward keeps (the plan's).
    pub kept_bytes: f64,
    /// The executor's allocator: peak bytes handed out during a step
    /// (arena and pool: values, workspaces, states, inputs, parameters).
    pub peak_live_bytes: usize,
    /// The fusion plan's arena: its planned peak, the peak measured in it
    /// during a step, and its size (0 node by node).
    pub planned_peak_bytes: usize,
    pub arena_peak_bytes: usize,
    pub arena_bytes: usize,
    /// Bytes the executor holds from the device (arena and pool).
    pub reserved_bytes: usize,
    /// Device memory in use (cuMemGetInfo) after the steps, minus before.
    pub device_used_bytes: Option<usize>,
    /// Fused kernels of the plan, and those that update LIF neurons.
    pub kernels: usize,
    pub lif_kernels: usize,
    /// The LIF kernels' launches in one profiled step: bytes they must move
    /// (every tensor of a launch's pointer table once, read or written, and
    /// a step's state), device time, and the ratio; the slowest launch's
    /// GB/s.
    pub lif_bytes: usize,
    pub lif_seconds: f64,
    pub lif_gbps: Option<f64>,
    pub lif_min_gbps: Option<f64>,
    /// With `--limits`: one profiled step's time per kernel class.
    pub classes: Option<Vec<super::limits::ClassRow>>,
}

/// What the bench compares the LIF kernels with: the copy kernel's
/// bandwidth (read + write) on buffers of this size, well beyond the L2.
const BENCH_COPY_BYTES: usize = 256 << 20;

/// `snnc bench --device cuda`: the fusion plan in each of `schedules`
/// (`fused`), or every node on its own kernel.
#[allow(clippy::too_many_arguments)]
pub fn bench_cuda(
    path: &Path,
    steps: &[usize],
    modes: &[Mode],
    schedules: &[SchedOpts],
    batch: usize,
    repeats: usize,
    json: bool,
    fused: bool,
    with_limits: bool,
    precisions: &[Precision],
) -> Result<(), CliError> {
    let (model, a) = crate::frontend::load(path)?;
    let mut cuda = Cuda::new().map_err(|source| CliError::Backend {
        command: "bench --device cuda",
        source,
    })?;
    // Parameters are made in f64 on the host, then cast to f32.
    crate::passes::mem::ensure_fits(
        "the parameters",
        crate::passes::mem::param_bytes(&a, 12),
        crate::passes::mem::Memory::Host,
    )?;
    let params: HashMap<String, Tensor<f32>> =
        crate::init::cast_params(&crate::init::init_params(&a, 0));
    // The reference for the LIF kernels' bandwidth.
    let copy = if fused {
        let r = measure_bandwidth(&mut cuda, BENCH_COPY_BYTES, 10)?;
        r.iter()
            .find(|(e, _, _)| e.contains("kernel"))
            .map(|(_, g, _)| *g)
    } else {
        None
    };
    // --limits: the copy kernel (measured above, or now) and cuBLAS's GEMM
    // on a large square product, in each precision benched (a bf16 row is
    // measured against the tensor cores' bf16 rate).
    let mut machine: HashMap<Precision, super::limits::Limits> = HashMap::new();
    if with_limits {
        let copy = match copy {
            Some(c) => c,
            None => {
                super::limits::copy_kernel_gbs(&measure_bandwidth(&mut cuda, BENCH_COPY_BYTES, 10)?)
            }
        };
        let n = super::limits::GPU_GEMM_N;
        for &p in precisions {
            machine.insert(
                p,
                super::limits::Limits {
                    copy_gbs: copy,
                    gemm_gflops: super::limits::gemm_gflops(&mut cuda, n, 5, p)?,
                    gemm: format!("the backend's {p} GEMM on {n}³"),
                },
            );
        }
    }
    if !json {
        println!("{}: {}", model.name, cuda.describe());
        println!("  {}", cuda.kernels_note);
        println!(
            "batch {batch}, median of {repeats} steps after one warm-up (a step: upload x, labels; forward + backward; download loss, logits, gradients); {}",
            if fused {
                "the fusion plan (fused kernels from one generated module per plan, other nodes on kernels.cu; values, workspaces and kernel states in one arena at planned offsets)"
            } else {
                "every node on its own kernel (--no-fuse)"
            }
        );
        println!("peak: the most bytes live during a step (arena and pool: values, workspaces, states, inputs, parameters); plan / arena peak: the arena's planned and measured peak; reserved: what the executor holds from the device");
        if let Some(c) = copy {
            println!(
                "copy kernel: {c:.0} GB/s (read + write, {} MiB); LIF GB/s: bytes the LIF kernels must move / their device time in one profiled step",
                BENCH_COPY_BYTES >> 20
            );
        }
        print!(
            "{:<28} {:<6} {:>4} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
            "plan",
            "mode",
            "T",
            "step ms",
            "img/s",
            "GFLOP",
            "GFLOP/s",
            "kept MiB",
            "peak MiB",
            "plan MiB",
            "arena pk",
            "reserved MiB",
            "device MiB"
        );
        if fused {
            print!(
                " {:>8} {:>9} {:>7} {:>9}",
                "kernels", "LIF GB/s", "% copy", "min GB/s"
            );
        }
        println!();
    }
    let schedules = if fused {
        schedules.to_vec()
    } else {
        vec![SchedOpts::LAYER_MAJOR]
    };
    for &mode in modes {
        for &t in steps {
            let g = compile(&model, &Options::new(t, batch, mode))?.graph;
            let cost = graph_cost(&g);
            for (&sched, &precision) in schedules
                .iter()
                .flat_map(|s| precisions.iter().map(move |p| (s, p)))
            {
                let spec = RowSpec {
                    sched,
                    fused,
                    repeats,
                    mode,
                    with_limits,
                    precision,
                };
                let row = bench_one(&mut cuda, &g, &params, &model, &a, &spec)?;
                let row = CudaBenchRow {
                    kept_bytes: cost.kept_bytes,
                    gflop_per_step: (cost.forward_flops + cost.backward_flops) / 1e9,
                    gflops: (cost.forward_flops + cost.backward_flops) / 1e9 / row.step_seconds,
                    ..row
                };
                if json {
                    println!("{}", serde_json::to_string(&row).expect("serialisable"));
                    continue;
                }
                print_bench_row(&row, copy, fused);
                if let (Some(c), Some(l)) = (&row.classes, machine.get(&precision)) {
                    println!(
                        "  per kernel class, one profiled step; limits: copy kernel {:.0} GB/s, GEMM {:.0} GFLOP/s ({})",
                        l.copy_gbs, l.gemm_gflops, l.gemm
                    );
                    super::limits::print(c, l);
                }
            }
        }
    }
    Ok(())
}

/// What one row of the CUDA bench runs.
#[derive(Clone, Copy)]
struct RowSpec {
    sched: SchedOpts,
    fused: bool,
    repeats: usize,
    mode: Mode,
    with_limits: bool,
    precision: Precision,
}

/// One row of the bench: `repeats` timed steps of `g` in `sched` (FLOP
/// and kept-byte columns left for the caller).
fn bench_one(
    cuda: &mut Cuda,
    g: &Graph,
    params: &HashMap<String, Tensor<f32>>,
    model: &crate::model::Model,
    a: &crate::shape::Analysis,
    spec: &RowSpec,
) -> Result<CudaBenchRow, CliError> {
    let RowSpec {
        sched,
        fused,
        repeats,
        mode,
        with_limits,
        precision,
    } = *spec;
    let opts = |seed: u64| RunOptions {
        precision,
        ..RunOptions::seeded(seed)
    };
    let batch = g.batch;
    let lowered = fused.then(|| fuse_time::lower(g, sched));
    let g = lowered.as_ref().unwrap_or(g);
    let x = random_input(g, matches!(model.input.encoding, Encoding::Events), 1).cast::<f32>();
    let labels = random_labels(batch, a.output[0], 1).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    cuda.sync()?;
    let before = cuda.mem_info();
    let plan = fused.then(|| fuse_time::plan(g, &[], sched));
    let planned = match &plan {
        Some(p) => crate::passes::memplan::plan_fused(g, p, &crate::codegen::cpu::WORKSPACE),
        None => {
            crate::passes::memplan::build(
                g,
                SchedOpts::LAYER_MAJOR,
                &crate::codegen::cpu::WORKSPACE,
            )
            .mem
        }
    };
    crate::passes::mem::ensure_plan_fits(
        &format!("a training step ({mode}, T={})", g.steps),
        &planned,
        0,
        crate::passes::mem::Memory::Device {
            free: before.map(|(free, _)| free as u64),
        },
    )?;
    let mut exec = if let Some(plan) = plan {
        Executor::with_plan(cuda, g, plan, &[])?
    } else {
        Executor::new(cuda, g)?
    };
    exec.set_resident_params(params)?;
    let mut times = Vec::new();
    let empty = HashMap::new();
    for i in 0..=repeats {
        exec.backend().sync()?;
        let started = Instant::now();
        exec.run(&inputs, &empty, &opts(i as u64))?;
        exec.backend().sync()?;
        if i > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let after = exec.backend().mem_info();
    let stats = exec.stats();
    // One more step with a device mark around every fused launch.
    let kernels = exec.kernels().to_vec();
    let (mut lif_bytes, mut lif_secs, mut lif_min) = (0usize, 0f64, None::<f64>);
    let mut lif = std::collections::HashSet::new();
    if !kernels.is_empty() {
        exec.profile = true;
        exec.run(&inputs, &empty, &opts(0))?;
        exec.profile = false;
        for (step, secs) in exec.kernel_times()? {
            let (k, bytes) = match step {
                Step::Kernel(k) => (k, fused::traffic_bytes(g, &kernels[k])),
                Step::KernelStep(k, t) => (k, fused::step_traffic_bytes(g, &kernels[k], t)),
                Step::Node(_) => continue,
            };
            if !fused::is_lif(g, &kernels[k]) {
                continue;
            }
            lif.insert(k);
            lif_bytes += bytes;
            lif_secs += secs;
            let gbs = bytes as f64 / secs.max(1e-12) / 1e9;
            lif_min = Some(lif_min.map_or(gbs, |m| m.min(gbs)));
        }
    }
    let classes = if with_limits {
        exec.time_units = true;
        exec.run(&inputs, &empty, &opts(0))?;
        exec.time_units = false;
        Some(super::limits::profiled(&exec))
    } else {
        None
    };
    drop(exec);
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    Ok(CudaBenchRow {
        device: cuda.info.name.clone(),
        plan: match (fused, precision) {
            (true, Precision::Fp32) => BenchPlan::Fused(sched).to_string(),
            (true, p) => format!("{}/{p}", BenchPlan::Fused(sched)),
            (false, Precision::Fp32) => "nodes".to_string(),
            (false, p) => format!("nodes/{p}"),
        },
        mode,
        steps: g.steps,
        batch,
        step_seconds: med,
        images_per_sec: batch as f64 / med,
        gflop_per_step: 0.0,
        gflops: 0.0,
        kept_bytes: 0.0,
        peak_live_bytes: stats.peak_live_bytes,
        planned_peak_bytes: stats.planned_peak_bytes,
        arena_peak_bytes: stats.peak_arena_live_bytes,
        arena_bytes: stats.arena_bytes,
        reserved_bytes: stats.peak_reserved_bytes,
        device_used_bytes: match (before, after) {
            (Some((f0, _)), Some((f1, _))) => Some(f0.saturating_sub(f1)),
            _ => None,
        },
        kernels: kernels.len(),
        lif_kernels: lif.len(),
        lif_bytes,
        lif_seconds: lif_secs,
        lif_gbps: (lif_secs > 0.0).then(|| lif_bytes as f64 / lif_secs / 1e9),
        lif_min_gbps: lif_min,
        classes,
    })
}

fn print_bench_row(row: &CudaBenchRow, copy: Option<f64>, fused: bool) {
    print!(
        "{:<28} {:<6} {:>4} {:>10.2} {:>10.1} {:>10.2} {:>9.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>10}",
        row.plan,
        row.mode.to_string(),
        row.steps,
        row.step_seconds * 1e3,
        row.images_per_sec,
        row.gflop_per_step,
        row.gflops,
        row.kept_bytes / MIB,
        row.peak_live_bytes as f64 / MIB,
        row.planned_peak_bytes as f64 / MIB,
        row.arena_peak_bytes as f64 / MIB,
        row.reserved_bytes as f64 / MIB,
        row.device_used_bytes
            .map_or("-".to_string(), |b| format!("{:.1}", b as f64 / MIB))
    );
    if fused {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        print!(
            " {:>8} {:>9} {:>7} {:>9}",
            row.kernels,
            opt(row.lif_gbps),
            match (row.lif_gbps, copy) {
                (Some(l), Some(c)) if c > 0.0 => format!("{:.0}%", 100.0 * l / c),
                _ => "-".to_string(),
            },
            opt(row.lif_min_gbps)
        );
    }
    println!();
}
