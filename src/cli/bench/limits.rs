//! `snnc bench --limits`: where a step's time goes, per kernel class,
//! against what the machine can do. One profiled step (every unit of the
//! plan timed on its own, the backend synchronised around it) is summed
//! by class — GEMMs and convolutions, neuron kernels, batch norm, pooling,
//! the rest — and each class's achieved GB/s and GFLOP/s are set against
//! the machine's measured limits: the copy bandwidth (the copy engine and
//! the library's copy kernel; the kernel is the reference, since a kernel
//! can do no better) and the fastest GEMM (on the CPU, the fastest SGEMM
//! the machine has, as `--floor` measures it; on a GPU, cuBLAS on a large
//! square product).
//!
//! Bytes are the least a unit must move: every distinct tensor it reads or
//! writes once, f32 (a fused kernel's pointer table; a library node's
//! operands and result). FLOPs are the cost model's (`passes::cost`).

use crate::codegen::backend::{Arg, Backend, BackendError, Gemm};
use crate::codegen::cuda::fused;
use crate::codegen::exec::{Executor, Step};
use crate::ir::{Graph, Op};
use crate::passes::cost;
use crate::passes::fuse::{Fused, Unit};
use std::time::Instant;

/// What a unit of the plan is, for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Class {
    /// Matmuls, convolutions and their gradients (GEMMs, and around a
    /// convolution's GEMMs its im2col, col2im and transposes).
    Gemm,
    /// Fused kernels that compute spikes (LIF/IF updates, with whatever
    /// elementwise work fused into them).
    Neuron,
    /// Batch norm's statistics, normalisation and their gradients, and
    /// fused kernels of batch-norm nodes without a spike.
    BatchNorm,
    /// Pooling and its gradients.
    Pooling,
    /// Everything else: time means, sums, the loss, other fused kernels.
    Other,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Gemm => "GEMM & conv",
            Class::Neuron => "neuron kernels",
            Class::BatchNorm => "batch norm",
            Class::Pooling => "pooling",
            Class::Other => "other",
        }
    }

    /// Bound by arithmetic (compare with the GEMM peak) rather than by
    /// memory (compare with the copy bandwidth).
    pub fn compute_bound(self) -> bool {
        self == Class::Gemm
    }
}

fn op_class(op: &Op) -> Class {
    match op {
        Op::MatMul { .. }
        | Op::Conv2d { .. }
        | Op::Conv2dGradInput { .. }
        | Op::Conv2dGradWeight { .. } => Class::Gemm,
        Op::ChannelMean
        | Op::ChannelVar
        | Op::Normalize { .. }
        | Op::ChannelScale
        | Op::ChannelSum
        | Op::ChannelDot
        | Op::ChannelBroadcast { .. }
        | Op::BiasAdd => Class::BatchNorm,
        Op::AvgPool { .. }
        | Op::MaxPool { .. }
        | Op::AvgPoolGrad { .. }
        | Op::AvgPoolGradMul { .. }
        | Op::MaxPoolGrad { .. }
        | Op::MaxPoolMask { .. }
        | Op::MaxPoolSelect { .. }
        | Op::MaxPoolRoute { .. } => Class::Pooling,
        _ => Class::Other,
    }
}

fn kernel_class(g: &Graph, f: &Fused) -> Class {
    if fused::is_lif(g, f) {
        return Class::Neuron;
    }
    let ops = || f.nodes.iter().map(|&n| &g.node(n).op);
    if ops().any(|op| op_class(op) == Class::BatchNorm) {
        Class::BatchNorm
    } else if ops().any(|op| op_class(op) == Class::Pooling) {
        Class::Pooling
    } else {
        Class::Other
    }
}

fn elems(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A unit's class, the bytes it must move and its FLOPs; `None` for the
/// units that do no work (leaves and views).
pub fn unit_cost(g: &Graph, kernels: &[Fused], unit: Unit) -> Option<(Class, f64, f64)> {
    let node_flops = |n| {
        let node = g.node(n);
        let ins: Vec<&[usize]> = g
            .operands(n)
            .iter()
            .map(|&o| g.node(o).shape.as_slice())
            .collect();
        cost::flops(&node.op, &ins, &node.shape)
    };
    match unit {
        Unit::Node(n) => {
            let node = g.node(n);
            if matches!(
                node.op,
                Op::Input { .. } | Op::Param { .. } | Op::Reshape { .. } | Op::Detach
            ) {
                return None;
            }
            let mut tensors = g.operands(n);
            tensors.sort();
            tensors.dedup();
            let bytes: usize = tensors
                .iter()
                .map(|&o| elems(&g.node(o).shape))
                .sum::<usize>()
                + elems(&node.shape);
            Some((op_class(&node.op), 4.0 * bytes as f64, node_flops(n)))
        }
        Unit::Kernel(k) => {
            let f = &kernels[k];
            let flops: f64 = f.nodes.iter().map(|&n| node_flops(n)).sum();
            Some((kernel_class(g, f), fused::traffic_bytes(g, f) as f64, flops))
        }
        Unit::Step(k, t) => {
            let f = &kernels[k];
            let steps = f.loop_steps().len().max(1) as f64;
            let flops: f64 = f.nodes.iter().map(|&n| node_flops(n)).sum::<f64>() / steps;
            Some((
                kernel_class(g, f),
                fused::step_traffic_bytes(g, f, t) as f64,
                flops,
            ))
        }
    }
}

/// One class's share of a profiled step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClassRow {
    pub class: Class,
    pub units: usize,
    pub seconds: f64,
    pub bytes: f64,
    pub flops: f64,
}

/// The executor's unit as the plan names it.
fn unit_of(step: Step) -> Unit {
    match step {
        Step::Node(n) => Unit::Node(n),
        Step::Kernel(k) => Unit::Kernel(k),
        Step::KernelStep(k, t) => Unit::Step(k, t),
    }
}

/// The last run's units, each timed alone (`Executor::time_units`),
/// summed by class, the slowest class first.
pub fn profiled<B: Backend>(exe: &Executor<'_, B>) -> Vec<ClassRow> {
    let units: Vec<Unit> = exe.steps().iter().map(|&s| unit_of(s)).collect();
    by_class(exe.graph(), exe.kernels(), &units, exe.unit_seconds())
}

/// `units` (`secs[i]`: unit i's seconds) summed by class, the slowest
/// class first.
pub fn by_class(g: &Graph, kernels: &[Fused], units: &[Unit], secs: &[f64]) -> Vec<ClassRow> {
    let mut rows: Vec<ClassRow> = Vec::new();
    for (&unit, &s) in units.iter().zip(secs) {
        let Some((class, bytes, flops)) = unit_cost(g, kernels, unit) else {
            continue;
        };
        match rows.iter_mut().find(|r| r.class == class) {
            Some(r) => {
                r.units += 1;
                r.seconds += s;
                r.bytes += bytes;
                r.flops += flops;
            }
            None => rows.push(ClassRow {
                class,
                units: 1,
                seconds: s,
                bytes,
                flops,
            }),
        }
    }
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

/// The copy kernel's buffers (each way) and timed copies, for the limits.
pub const COPY_BYTES: usize = 256 << 20;
pub const COPY_REPEATS: usize = 5;

/// The copy kernel's GB/s among `measure_bandwidth`'s results.
pub fn copy_kernel_gbs(results: &[(String, f64, f64)]) -> f64 {
    results
        .iter()
        .find(|(e, _, _)| e.contains("kernel"))
        .map_or(0.0, |(_, g, _)| *g)
}

/// Side of the square SGEMM a GPU's GEMM peak is measured on.
pub const GPU_GEMM_N: usize = 8192;

/// GFLOP/s of the backend's own GEMM in `precision` on `n`³ (median of `reps`
/// calls after a warm-up): a GPU's GEMM limit (cuBLAS).
pub fn gemm_gflops<B: Backend>(
    b: &mut B,
    n: usize,
    reps: usize,
    precision: crate::precision::Precision,
) -> Result<f64, BackendError> {
    let len = n * n;
    let bufs = [b.alloc(len)?, b.alloc(len)?, b.alloc(len)?];
    let p: Vec<u64> = bufs.iter().map(|x| b.ptr(x)).collect();
    // Defined operands (fresh device memory may hold NaNs or denormals).
    let grid = len.div_ceil(256).min(b.max_grid() as usize) as u32;
    let count = i32::try_from(len).map_err(|_| {
        BackendError::BadCall(format!(
            "a {n}² GEMM operand is too large for the fill kernel"
        ))
    })?;
    for &x in &p {
        b.launch(
            "snnc_fill",
            grid,
            256,
            &[Arg::P(x), Arg::I(count), Arg::F(0.5)],
        )?;
    }
    let g = Gemm {
        precision,
        ..Gemm::dense(false, false, n, n, n, p[0], p[1], p[2])
    };
    let mut times = Vec::new();
    let mut result = Ok(());
    for i in 0..=reps {
        let started = Instant::now();
        result = b.gemm(&g).and_then(|()| b.sync());
        if result.is_err() {
            break;
        }
        if i > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    for x in bufs {
        b.free(x);
    }
    result?;
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (n as f64).powi(3) / times[times.len() / 2] / 1e9)
}

/// The machine's limits the classes are measured against.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Limits {
    /// The library's copy kernel, read + write, GB/s.
    pub copy_gbs: f64,
    /// The fastest GEMM, GFLOP/s, and what it is.
    pub gemm_gflops: f64,
    pub gemm: String,
}

/// Prints one row's table: per class, its units, time and share of the
/// profiled step, achieved GB/s and GFLOP/s, and the share of the limit
/// that binds it (copy bandwidth, or the GEMM peak for GEMMs).
pub fn print(rows: &[ClassRow], limits: &Limits) {
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    println!(
        "  {:<15} {:>6} {:>9} {:>6} {:>9} {:>9} {:>12}",
        "class", "units", "ms", "% step", "GB/s", "GFLOP/s", "% of limit"
    );
    for r in rows {
        let s = r.seconds.max(1e-12);
        let (gbs, gflops) = (r.bytes / s / 1e9, r.flops / s / 1e9);
        let limit = if r.class.compute_bound() {
            format!("{:.0} % GEMM", 100.0 * gflops / limits.gemm_gflops)
        } else {
            format!("{:.0} % copy", 100.0 * gbs / limits.copy_gbs)
        };
        println!(
            "  {:<15} {:>6} {:>9.2} {:>6.1} {:>9.1} {:>9.1} {:>12}",
            r.class.name(),
            r.units,
            r.seconds * 1e3,
            100.0 * r.seconds / total.max(1e-12),
            gbs,
            gflops,
            limit
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit of a fused plan gets a class, the classes' times add up
    /// to the step's, and the convolutions land in the GEMM class.
    #[test]
    fn classes_cover_the_plan() {
        let src = "model m\ninput 1x8x8 encoding=direct\nconv2d 4 kernel=3 padding=1 bias=false\n\
                   batchnorm\nlif\navgpool 2\nflatten\nlinear 3 bias=false\n";
        let model = crate::dsl::parse(src, "m.snn").expect("parses");
        let g = crate::compile::compile(
            &model,
            &crate::compile::Options::new(2, 2, crate::passes::rate::Mode::Bptt),
        )
        .expect("compiles")
        .graph;
        let target = crate::compile::Target::Fused(crate::passes::schedule::SchedOpts::LAYER_MAJOR);
        let (eg, plan) = target.plan(&g, &[]);
        let secs: Vec<f64> = (0..plan.units.len()).map(|i| 1.0 + i as f64).collect();
        let rows = by_class(&eg, &plan.kernels, &plan.units, &secs);
        let working: f64 = plan
            .units
            .iter()
            .zip(&secs)
            .filter(|(u, _)| unit_cost(&eg, &plan.kernels, **u).is_some())
            .map(|(_, t)| t)
            .sum();
        let summed: f64 = rows.iter().map(|r| r.seconds).sum();
        assert_eq!(summed, working);
        let classes: Vec<Class> = rows.iter().map(|r| r.class).collect();
        for c in [Class::Gemm, Class::Neuron, Class::Pooling, Class::BatchNorm] {
            assert!(classes.contains(&c), "{c:?} missing from {classes:?}");
        }
        let gemm = rows.iter().find(|r| r.class == Class::Gemm).expect("gemm");
        assert!(gemm.flops > 0.0 && gemm.bytes > 0.0);
    }
}
