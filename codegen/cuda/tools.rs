//! `snnc cuda-check`, the device-copy bandwidth test and
//! `snnc bench --device cuda`.
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

use super::device::Cuda;
use super::emu::Emu;
use crate::codegen::backend::{check_args, Arg, Backend};
use crate::codegen::exec::{Executor, Step};
use crate::compile::{compile, Options};
use crate::interp::RunOptions;
use crate::interp::{random_input, random_labels};
use crate::ir::{DType, Graph, Node, NodeIndex, Op, Role};
use crate::model::Encoding;
use crate::passes::cost::graph_cost;
use crate::passes::fuse_time;
use crate::passes::rate::Mode;
use crate::passes::schedule::SchedOpts;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MIB: f64 = 1024.0 * 1024.0;

/// Floor of the per-node comparison, as a fraction of the tensor's scale.
pub const NODE_FLOOR: f32 = 1e-2;
/// Floor of the end-to-end comparison of outputs. Coarser than per node:
/// the CPU reference is itself only this accurate at finer floors (its
/// weight gradients differ from the f64 interpreter by up to ~7e-4 at a
/// 1e-3 floor on fmnist_csnn; the CUDA executor's by less, see
/// tests/cuda_emulated.rs).
pub const OUTPUT_FLOOR: f32 = 1.0;

/// Tolerance of a fused kernel in isolation: the outputs' 1e-4. Generated
/// kernels compute the surrogate derivative in f32 (`kernel_ir::prelude`,
/// shared with the CPU's generated C) as z/(1+z)² with z = exp(−a|x|),
/// which keeps its digits near saturation (the form a·s·(1−s) lost up to
/// 6e-4 relative there and needed 1e-3); the CPU executor's node kernel
/// computes it in f64.
pub const KERNEL_TOL: f32 = 1e-4;

/// Absolute floors of the comparisons: a tensor that is all rounding noise
/// (the batch variance of a constant channel: 0 on one side, 1e-14 on the
/// other) is compared in absolute terms.
pub const NODE_ABS_FLOOR: f32 = 1e-9;
pub const OUTPUT_ABS_FLOOR: f32 = 1e-6;

/// Relative error of `got` against `want` (`crate::compare::rel_err`): the
/// largest `|g − w| / max(|w|, floor · max|w|, abs_floor)` (elements far
/// below the tensor's scale are compared at that scale), or infinity when
/// either holds a NaN or infinity, or the shapes differ.
pub fn rel_err_abs(got: &Tensor<f32>, want: &Tensor<f32>, floor: f32, abs_floor: f32) -> f32 {
    crate::compare::rel_err(got, want, floor as f64, abs_floor as f64) as f32
}

/// [`rel_err_abs`] with the per-node absolute floor.
pub fn rel_err(got: &Tensor<f32>, want: &Tensor<f32>, floor: f32) -> f32 {
    rel_err_abs(got, want, floor, NODE_ABS_FLOOR)
}

/// `e` is worse than `than` (NaN is worse than anything).
fn worse(e: f32, than: f32) -> bool {
    e.is_nan() || e > than
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
pub fn example_models() -> Result<Vec<PathBuf>, String> {
    let dir = Path::new("examples/models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            format!(
                "error: cannot list {} (run from the repository root): {e}",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snn"))
        .collect();
    v.sort();
    Ok(v)
}

#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub models: Vec<PathBuf>,
    pub steps: Vec<usize>,
    pub modes: Vec<Mode>,
    pub batch: usize,
    pub seed: u64,
    /// Also check every node in isolation (downloads every value).
    pub per_node: bool,
    pub tol: f32,
    /// Run the fusion plan (fused kernels from the generated module, the
    /// other nodes on kernels.cu); false: every node on its own kernel.
    pub fused: bool,
    /// The fusion plan's schedule: layer-major (a kernel's steps in one
    /// launch) or time-major (one step per launch, on the graph
    /// `fuse_time::lower` makes, against which the CPU executor runs too).
    pub schedule: SchedOpts,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub model: String,
    pub mode: Mode,
    pub steps: usize,
    pub nodes: usize,
    /// Worst end-to-end relative error over the outputs, and which output.
    pub output_err: f32,
    pub worst_output: String,
    /// Worst per-node relative error, and which node.
    pub node_err: f32,
    pub worst_node: String,
    pub spike_flips: usize,
    pub spikes: usize,
    pub seconds: f64,
    pub passed: bool,
    pub verdict: String,
    /// A device output held NaN or infinity.
    pub nonfinite: bool,
    /// Some step differed from the CPU reference on its own inputs.
    pub node_failed: bool,
}

/// The graph of `nodes` (in `g`'s order) reading inputs `a0, a1, …` in
/// place of `reads`, with the `outs` as outputs `y0, y1, …`: the CPU
/// reference of a node, or of a fused kernel, on the device's operands.
fn sub_graph(
    g: &Graph,
    nodes: &[NodeIndex],
    reads: &[NodeIndex],
    outs: &[NodeIndex],
) -> Result<Graph, String> {
    let mut s = Graph::new("node", g.steps, g.batch);
    let mut map: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    for (i, o) in reads.iter().enumerate() {
        let x = s.add(
            Node {
                op: Op::Input {
                    name: format!("a{i}"),
                },
                shape: g.node(*o).shape.clone(),
                dtype: DType::F32,
                layer: None,
                t: None,
                role: Role::Input,
            },
            &[],
        );
        map.insert(*o, x);
    }
    let order = g.topo_order().ok_or("the graph has a cycle")?;
    for n in order.into_iter().filter(|n| nodes.contains(n)) {
        let ops = g
            .operands(n)
            .iter()
            .map(|o| {
                map.get(o).copied().ok_or_else(|| {
                    format!("node {} reads node {}, not given", n.index(), o.index())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut node = g.node(n).clone();
        if outs.contains(&n) {
            node.role = Role::Output;
        }
        map.insert(n, s.add(node, &ops));
    }
    for (i, o) in outs.iter().enumerate() {
        s.outputs.push((format!("y{i}"), map[o]));
    }
    Ok(s)
}

/// The CPU executor's values of `outs`, computed by `nodes` from `reads`.
fn cpu_sub(
    g: &Graph,
    nodes: &[NodeIndex],
    reads: &[(NodeIndex, Tensor<f32>)],
    outs: &[NodeIndex],
    opts: &RunOptions,
) -> Result<Vec<Tensor<f32>>, String> {
    let ids: Vec<NodeIndex> = reads.iter().map(|r| r.0).collect();
    let s = sub_graph(g, nodes, &ids, outs)?;
    let ins: HashMap<String, Tensor<f32>> = reads
        .iter()
        .enumerate()
        .map(|(i, (_, t))| (format!("a{i}"), t.clone()))
        .collect();
    let mut r =
        crate::codegen::cpu::run(&s, &ins, &HashMap::new(), opts).map_err(|e| e.to_string())?;
    (0..outs.len())
        .map(|i| {
            r.remove(&format!("y{i}"))
                .ok_or_else(|| "no output".to_string())
        })
        .collect()
}

/// The worst error of a fused kernel's stored values against the CPU
/// executor run on the kernel's nodes with the device's inputs, and which
/// value it is.
pub fn kernel_error(
    g: &Graph,
    nodes: &[NodeIndex],
    reads: &[(NodeIndex, Tensor<f32>)],
    writes: &[(NodeIndex, Tensor<f32>)],
    opts: &RunOptions,
) -> Result<(f32, NodeIndex), String> {
    let outs: Vec<NodeIndex> = writes.iter().map(|w| w.0).collect();
    let want = cpu_sub(g, nodes, reads, &outs, opts)?;
    let mut worst = (0f32, outs[0]);
    for ((n, got), want) in writes.iter().zip(&want) {
        let e = rel_err(got, want, NODE_FLOOR);
        if worse(e, worst.0) {
            worst = (e, *n);
        }
    }
    Ok(worst)
}

/// A graph of one node reading inputs `a0, a1, …` (for the CPU reference of
/// a node in isolation).
fn single_node_graph(g: &Graph, n: NodeIndex) -> Graph {
    let mut s = Graph::new("node", g.steps, g.batch);
    let ops: Vec<NodeIndex> = g
        .operands(n)
        .iter()
        .enumerate()
        .map(|(i, o)| {
            s.add(
                Node {
                    op: Op::Input {
                        name: format!("a{i}"),
                    },
                    shape: g.node(*o).shape.clone(),
                    dtype: DType::F32,
                    layer: None,
                    t: None,
                    role: Role::Input,
                },
                &[],
            )
        })
        .collect();
    let mut node = g.node(n).clone();
    node.role = Role::Output;
    let out = s.add(node, &ops);
    s.outputs.push(("y".into(), out));
    s
}

fn cpu_node(
    g: &Graph,
    n: NodeIndex,
    ops: &[Tensor<f32>],
    opts: &RunOptions,
) -> Result<Tensor<f32>, String> {
    let s = single_node_graph(g, n);
    let ins: HashMap<String, Tensor<f32>> = ops
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("a{i}"), t.clone()))
        .collect();
    let mut r =
        crate::codegen::cpu::run(&s, &ins, &HashMap::new(), opts).map_err(|e| e.to_string())?;
    r.remove("y").ok_or_else(|| "no output".to_string())
}

/// The error of one node's device result `got`, given the device's operand
/// values `ops`, against a CPU reference:
/// - products and convolutions (sums of many products, which the CPU's and
///   the device's GEMMs add in different orders): `|got − ref|` relative to
///   the same op on `|operands|`, the sum of the magnitudes of the terms,
///   which bounds rounding error whatever the order;
/// - channel reductions: [`rel_err`] against the f64 interpreter (the CPU
///   kernels' f32 serial sums are less accurate than the device's double
///   accumulation);
/// - everything else: [`rel_err`] against the CPU executor.
pub fn node_error(
    g: &Graph,
    n: NodeIndex,
    ops: &[Tensor<f32>],
    got: &Tensor<f32>,
    opts: &RunOptions,
) -> Result<f32, String> {
    let node = g.node(n);
    match node.op {
        Op::ChannelMean | Op::ChannelVar | Op::ChannelSum | Op::ChannelDot => {
            let ops64: Vec<Tensor<f64>> = ops.iter().map(|t| t.cast::<f64>()).collect();
            let refs: Vec<&Tensor<f64>> = ops64.iter().collect();
            let want = crate::interp::eval_op(&node.op, &node.shape, &refs, opts)?.cast::<f32>();
            Ok(rel_err(got, &want, NODE_FLOOR))
        }
        Op::MatMul { .. }
        | Op::Conv2d { .. }
        | Op::Conv2dGradInput { .. }
        | Op::Conv2dGradWeight { .. } => {
            let want = cpu_node(g, n, ops, opts)?;
            let abs: Vec<Tensor<f32>> = ops
                .iter()
                .map(|t| Tensor::from_vec(&t.shape, t.data.iter().map(|v| v.abs()).collect()))
                .collect();
            let mag = cpu_node(g, n, &abs, opts)?;
            if got.shape != want.shape || got.data.iter().any(|v| !v.is_finite()) {
                return Ok(f32::INFINITY);
            }
            Ok(got
                .data
                .iter()
                .zip(&want.data)
                .zip(&mag.data)
                .map(|((&a, &b), &m)| {
                    let d = (a - b).abs();
                    if d == 0.0 {
                        0.0
                    } else {
                        d / m.max(f32::MIN_POSITIVE)
                    }
                })
                .fold(0f32, |e, v| if v > e || v.is_nan() { v } else { e }))
        }
        _ => Ok(rel_err(got, &cpu_node(g, n, ops, opts)?, NODE_FLOOR)),
    }
}

/// Runs one case on `backend` and on the CPU executor.
pub fn check_case<B: Backend>(
    backend: &mut B,
    path: &Path,
    steps: usize,
    mode: Mode,
    opts: &CheckOptions,
    poison: bool,
) -> Result<CaseResult, String> {
    let started = Instant::now();
    let (model, a) = crate::frontend::load(path)?;
    let g = compile(&model, &Options::new(steps, opts.batch, mode))?.graph;
    let params: HashMap<String, Tensor<f32>> =
        crate::init::cast_params(&crate::init::init_params(&a, opts.seed));
    let x = random_input(
        &g,
        matches!(model.input.encoding, Encoding::Events),
        opts.seed,
    )
    .cast::<f32>();
    let labels = random_labels(opts.batch, a.output[0], opts.seed).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let mut r = check_graph(backend, &g, &inputs, &params, opts, poison, |_| {})?;
    r.model = model.name.clone();
    r.mode = mode;
    r.seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

/// Runs `g` on `backend` and on the CPU executor with the same inputs and
/// parameters and compares outputs and (with `opts.per_node`) every step in
/// isolation: a node, or a fused kernel's stored values against the CPU
/// executor on the kernel's nodes. `setup` can adjust the executor
/// (workspace size, resident parameters).
///
/// A fused plan keeps spikes and membrane potentials in registers, so when
/// its outputs differ the case runs again with them stored (the same
/// kernels plus stores) to tell spikes flipped by rounding ties from
/// errors; the verdict says so.
pub fn check_graph<B: Backend>(
    backend: &mut B,
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &CheckOptions,
    poison: bool,
    setup: impl Fn(&mut Executor<'_, B>),
) -> Result<CaseResult, String> {
    // A fusion plan runs a lowered copy of the graph (`fuse_time::lower`:
    // channel dots, per-step affine copies; time-major also its reductions
    // and recompute); both sides run it.
    let lowered = opts.fused.then(|| fuse_time::lower(g, opts.schedule));
    let g = lowered.as_ref().unwrap_or(g);
    let r = check_once(backend, g, inputs, params, opts, poison, &setup, None)?;
    if r.passed || !opts.fused || !opts.per_node || r.nonfinite || r.node_failed {
        return Ok(r);
    }
    let mut keep = Vec::new();
    for n in g.g.node_indices() {
        if matches!(g.node(n).op, Op::Spike { .. }) {
            keep.push(n);
            keep.extend(g.operands(n).first().copied());
        }
    }
    keep.sort();
    keep.dedup();
    let mut again = check_once(
        backend,
        g,
        inputs,
        params,
        opts,
        poison,
        &setup,
        Some(&keep),
    )?;
    again.verdict = format!(
        "{} (run again with spikes and potentials stored; first run: {})",
        again.verdict, r.verdict
    );
    Ok(again)
}

#[allow(clippy::too_many_arguments)]
fn check_once<B: Backend>(
    backend: &mut B,
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &CheckOptions,
    poison: bool,
    setup: &impl Fn(&mut Executor<'_, B>),
    keep: Option<&[NodeIndex]>,
) -> Result<CaseResult, String> {
    let started = Instant::now();
    let ropts = RunOptions { seed: opts.seed };
    let spikes: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|&n| matches!(g.node(n).op, Op::Spike { .. }))
            .collect();
    let (want, cpu_spikes) = crate::codegen::cpu::run_keeping(g, inputs, params, &ropts, &spikes)
        .map_err(|e| format!("error: CPU executor: {e}"))?;

    let mut exec = if opts.fused {
        let keep = keep.unwrap_or(&[]);
        Executor::with_plan(backend, g, fuse_time::plan(g, keep, opts.schedule), keep)
            .map_err(|e| e.to_string())?
    } else {
        Executor::new(backend, g).map_err(|e| e.to_string())?
    };
    exec.poison = poison;
    setup(&mut exec);
    let kernels = exec.kernels().to_vec();
    let mut node_err = 0f32;
    let mut worst_node = String::from("-");
    let mut flips = 0usize;
    let mut spike_count = 0usize;
    let mut node_failure: Option<String> = None;
    let mut first_flip: Option<(NodeIndex, usize, f32)> = None;
    let per_node = opts.per_node;
    // The first step that differs in isolation beyond its tolerance.
    let mut step_failed: Option<String> = None;
    // A kernel run one step at a time is checked as a whole after its last
    // step (a step alone depends on the registers of the steps before):
    // what its steps read and wrote so far.
    type Seen = Vec<(NodeIndex, Tensor<f32>)>;
    let mut partial: HashMap<usize, (Seen, Seen)> = HashMap::new();
    let mut observe = |o: &crate::codegen::exec::Observed<'_>| {
        for (n, out) in o.writes {
            let (Some(c), Op::Spike { theta, .. }) = (cpu_spikes.get(n), &g.node(*n).op) else {
                continue;
            };
            let differ: Vec<usize> = (0..c.len()).filter(|&i| c.data[i] != out.data[i]).collect();
            if first_flip.is_none() && !differ.is_empty() {
                // How far from the threshold were the first spikes to differ
                // (the device's own membrane potential, when the step
                // stored it)?
                let u = g.operands(*n)[0];
                let dist = match o.reads.iter().chain(o.writes).find(|(m, _)| *m == u) {
                    Some((_, v)) => differ
                        .iter()
                        .map(|&i| (v.data[i] - *theta as f32).abs())
                        .fold(0f32, f32::max),
                    None => f32::INFINITY,
                };
                first_flip = Some((*n, differ.len(), dist));
            }
            flips += differ.len();
            spike_count += c.len();
        }
        if !per_node {
            return;
        }
        let (e, what, tol) = match o.step {
            crate::codegen::exec::Step::Node(n) => {
                let node = g.node(n);
                if matches!(node.op, Op::Input { .. } | Op::Param { .. }) {
                    return;
                }
                let ops: Vec<Tensor<f32>> = o.reads.iter().map(|r| r.1.clone()).collect();
                (
                    node_error(g, n, &ops, &o.writes[0].1, &ropts),
                    format!("{} {} #{}", node.op.name(), node.op.attrs(), n.index()),
                    opts.tol,
                )
            }
            crate::codegen::exec::Step::Kernel(k)
            | crate::codegen::exec::Step::KernelStep(k, _) => {
                let f = &kernels[k];
                let (reads, writes) = match o.step {
                    crate::codegen::exec::Step::KernelStep(_, t) => {
                        let (r, w) = partial.entry(k).or_default();
                        for (n, v) in o.reads {
                            if !r.iter().any(|(m, _)| m == n) {
                                r.push((*n, v.clone()));
                            }
                        }
                        for (n, v) in o.writes {
                            w.retain(|(m, _)| m != n);
                            w.push((*n, v.clone()));
                        }
                        if f.loop_steps().last() != Some(&t) {
                            return;
                        }
                        partial.remove(&k).expect("just added")
                    }
                    _ => (o.reads.to_vec(), o.writes.to_vec()),
                };
                match kernel_error(g, &f.nodes, &reads, &writes, &ropts) {
                    Ok((e, n)) => (
                        Ok(e),
                        format!(
                            "kernel {} ({} #{})",
                            f.kernel.name,
                            g.node(n).op.name(),
                            n.index()
                        ),
                        KERNEL_TOL.max(opts.tol),
                    ),
                    Err(e) => (Err(e), String::new(), 0.0),
                }
            }
        };
        match e {
            Ok(e) => {
                if worse(e, tol) && step_failed.is_none() {
                    step_failed = Some(what.clone());
                }
                if worse(e, node_err) {
                    node_err = e;
                    worst_node = what;
                }
            }
            Err(e) => {
                node_failure.get_or_insert(format!("CPU reference of step {}: {e}", o.step));
            }
        }
    };
    let got = exec
        .run_observed(
            inputs,
            params,
            &ropts,
            Some(&mut observe as &mut crate::codegen::exec::Observer<'_>),
        )
        .map_err(|e| e.to_string())?;
    drop(exec);
    if let Some(f) = node_failure {
        return Err(f);
    }
    let mut output_err = 0f32;
    let mut worst_output = String::from("-");
    for (name, _) in &g.outputs {
        let e = rel_err_abs(&got[name], &want[name], OUTPUT_FLOOR, OUTPUT_ABS_FLOOR);
        if worse(e, output_err) {
            output_err = e;
            worst_output = name.clone();
        }
    }
    let nonfinite = got.values().any(|t| t.data.iter().any(|v| !v.is_finite()));
    let node_failed = step_failed.is_some();
    let (passed, verdict) = if nonfinite {
        (false, "FAIL: non-finite device output".to_string())
    } else if let Some(what) = step_failed {
        (false, format!("FAIL: {what} differs in isolation"))
    } else if output_err <= opts.tol {
        (true, "ok".to_string())
    } else if let (Some((n, k, dist)), true) = (first_flip, per_node) {
        // The first spikes to differ had potentials within rounding of the
        // threshold (device and CPU round differently), and every node
        // matches in isolation: what follows is the knock-on effect (a batch
        // norm spreads one flipped spike to its whole channel).
        let tie = dist <= TIE * (1.0 + spike_theta(g, n).abs());
        (
            tie,
            format!(
                "{}: {flips} spikes differ, the first {k} at node {} within {dist:.1e} of the threshold{}",
                if tie { "ok" } else { "FAIL" },
                n.index(),
                if tie { " (ties); every node matches" } else { ", not a tie" }
            ),
        )
    } else if per_node
        && graph_cost(g).forward_flops + graph_cost(g).backward_flops <= ARBITRATE_FLOP
    {
        // Every node matches, yet the outputs differ: rounding amplified
        // somewhere (a batch-norm channel of zero variance divides rounding
        // noise by sqrt(eps)). Ask the f64 interpreter which side is off.
        match arbitrate(g, inputs, params, &ropts, &got, &want, opts.tol) {
            Ok(None) => (
                true,
                format!("ok: {worst_output} differs from the CPU executor, but the f64 interpreter sides with the device"),
            ),
            Ok(Some(msg)) => (false, format!("FAIL: {msg}")),
            Err(e) => (false, format!("FAIL: {worst_output} differs (f64 interpreter: {e})")),
        }
    } else {
        (false, format!("FAIL: {worst_output} differs"))
    };
    Ok(CaseResult {
        model: g.name.clone(),
        mode: Mode::Bptt,
        steps: g.steps,
        nodes: g.node_count(),
        output_err,
        worst_output,
        node_err,
        worst_node,
        spike_flips: flips,
        spikes: spike_count,
        seconds: started.elapsed().as_secs_f64(),
        passed,
        verdict,
        nonfinite,
        node_failed,
    })
}

/// A spike that differs between device and CPU is a tie when the device's
/// membrane potential is within this (relative) distance of the threshold.
pub const TIE: f32 = 1e-5;

fn spike_theta(g: &Graph, n: NodeIndex) -> f32 {
    match g.node(n).op {
        Op::Spike { theta, .. } => theta as f32,
        _ => 0.0,
    }
}

/// Graphs up to this many FLOPs per step get a second opinion from the f64
/// interpreter when the device and the CPU executor disagree.
pub const ARBITRATE_FLOP: f64 = 4e9;

/// Compares device and CPU outputs with the f64 interpreter: `None` when the
/// device is, on every output, at most four times as far from it as the CPU
/// executor (or within `tol`); else what differs.
pub fn arbitrate(
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
    device: &HashMap<String, Tensor<f32>>,
    cpu: &HashMap<String, Tensor<f32>>,
    tol: f32,
) -> Result<Option<String>, String> {
    let cast = |m: &HashMap<String, Tensor<f32>>| -> HashMap<String, Tensor<f64>> {
        m.iter()
            .map(|(k, v)| (k.clone(), v.cast::<f64>()))
            .collect()
    };
    let truth =
        crate::interp::run(g, &cast(inputs), &cast(params), opts).map_err(|e| e.to_string())?;
    let truth: HashMap<&str, Tensor<f32>> = g
        .outputs
        .iter()
        .map(|(name, n)| {
            truth
                .get(*n)
                .map(|t| (name.as_str(), t.cast::<f32>()))
                .ok_or("no value")
        })
        .collect::<Result<_, _>>()?;
    // Gradients are compared normwise over all of them (relative to the
    // largest gradient element anywhere): a parameter whose gradient is 0
    // in exact arithmetic (a bias or weight direction a batch norm cancels,
    // which tiny batches of binary spikes produce often) holds rounding
    // noise on both sides. Other outputs: per tensor, values below 1e-2 in
    // absolute terms. Every node matched in isolation already; this looks
    // for gross errors.
    let grad_scale = truth
        .iter()
        .filter(|(k, _)| k.starts_with("grad:"))
        .flat_map(|(_, t)| t.data.iter())
        .fold(0f32, |m, v| m.max(v.abs()));
    for (name, _) in &g.outputs {
        let t = &truth[name.as_str()];
        let abs = if name.starts_with("grad:") {
            grad_scale.max(1e-2)
        } else {
            1e-2
        };
        let ed = rel_err_abs(&device[name], t, OUTPUT_FLOOR, abs);
        let ec = rel_err_abs(&cpu[name], t, OUTPUT_FLOOR, abs);
        if worse(ed, (4.0 * ec).max(tol)) {
            return Ok(Some(format!(
                "{name}: device {ed:.1e} and CPU executor {ec:.1e} from the f64 interpreter"
            )));
        }
    }
    Ok(None)
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
    if opts.fused {
        format!(
            "the fusion plan ({}): fused kernels from one generated module per case, other nodes on kernels.cu, values in one arena (--no-fuse: every node on its own kernel)",
            schedule_name(opts.schedule)
        )
    } else {
        "every node on its own kernel (--no-fuse)".to_string()
    }
}

/// A fusion plan's schedule as `bench --schedule` spells it.
pub fn schedule_name(s: SchedOpts) -> String {
    if s == SchedOpts::LAYER_MAJOR {
        "fused".to_string()
    } else {
        format!("fused-{s}")
    }
}

/// `snnc cuda-check`: on the GPU (or the CPU emulator). Ok(false) when a
/// case failed; a missing GPU is a skip (Ok(true)) unless `require`.
pub fn cuda_check(
    opts: &CheckOptions,
    emulate: bool,
    require: bool,
    json: bool,
) -> Result<bool, String> {
    if emulate {
        let mut emu = Emu::new().map_err(|e| e.to_string())?;
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
        Err(e) => return Err(format!("error: cuda-check: {e}")),
    };
    println!("cuda-check on {}", cuda.describe());
    println!("  {}", cuda.kernels_note);
    println!("  {}", plan_note(opts));
    Ok(run_cases(&mut cuda, opts, true, json))
}

/// Device-to-device copy bandwidth: `bytes` copied `reps` times by the copy
/// engine (cuMemcpyDtoD) and by the `snnc_copy` kernel. Prints GB/s counting
/// bytes read plus bytes written.
pub fn bandwidth<B: Backend>(
    b: &mut B,
    bytes: usize,
    reps: usize,
) -> Result<Vec<(String, f64)>, String> {
    let r = measure_bandwidth(b, bytes, reps)?;
    for (engine, gbs, secs) in &r {
        println!(
            "device copy, {engine}: {:.2} GB x {reps} in {:.2} ms: {gbs:.0} GB/s (read + write)",
            bytes as f64 / 1e9,
            secs * 1e3,
        );
    }
    Ok(r.into_iter().map(|(e, g, _)| (e, g)).collect())
}

/// [`bandwidth`] without printing: (engine, GB/s, seconds) per engine.
pub fn measure_bandwidth<B: Backend>(
    b: &mut B,
    bytes: usize,
    reps: usize,
) -> Result<Vec<(String, f64, f64)>, String> {
    let len = bytes / 4;
    let src = b.alloc(len).map_err(|e| e.to_string())?;
    let mut dst = b.alloc(len).map_err(|e| e.to_string())?;
    let (sp, dp) = (b.ptr(&src), b.ptr(&dst));
    let n = i32::try_from(len)
        .map_err(|_| "bandwidth buffer too large for the copy kernel".to_string())?;
    let fill = [Arg::P(sp), Arg::I(n), Arg::F(1.5)];
    check_args("snnc_fill", &fill).map_err(|e| e.to_string())?;
    let grid = len.div_ceil(256).min(b.max_grid() as usize) as u32;
    b.launch("snnc_fill", grid, 256, &fill)
        .map_err(|e| e.to_string())?;
    let copy = [Arg::P(sp), Arg::P(dp), Arg::I(n)];
    check_args("snnc_copy", &copy).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for engine in ["memcpy (copy engine)", "snnc_copy kernel"] {
        let once = |b: &mut B, src: &B::Buf, dst: &mut B::Buf| -> Result<(), String> {
            if engine.starts_with("memcpy") {
                b.copy(src, dst, len).map_err(|e| e.to_string())
            } else {
                b.launch("snnc_copy", grid, 256, &copy)
                    .map_err(|e| e.to_string())
            }
        };
        for _ in 0..2 {
            once(b, &src, &mut dst)?;
        }
        b.sync().map_err(|e| e.to_string())?;
        let started = Instant::now();
        for _ in 0..reps {
            once(b, &src, &mut dst)?;
        }
        b.sync().map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        let gbs = 2.0 * bytes as f64 * reps as f64 / secs / 1e9;
        results.push((engine.to_string(), gbs, secs));
    }
    let check = b.download(&dst, 1).map_err(|e| e.to_string())?;
    if check[0] != 1.5 {
        return Err(format!(
            "bandwidth copy produced {} instead of 1.5",
            check[0]
        ));
    }
    b.free(src);
    b.free(dst);
    Ok(results)
}

/// `snnc cuda-check --bandwidth`.
pub fn bandwidth_check(bytes: usize, reps: usize) -> Result<(), String> {
    let mut cuda = Cuda::new().map_err(|e| format!("error: bandwidth: {e}"))?;
    println!("{}", cuda.describe());
    bandwidth(&mut cuda, bytes, reps)?;
    Ok(())
}

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
) -> Result<(), String> {
    let (model, a) = crate::compile::load_for(path, modes)?;
    let mut cuda = Cuda::new().map_err(|e| format!("error: bench --device cuda: {e}"))?;
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
            for &sched in &schedules {
                let row = bench_one(
                    &mut cuda, &g, &params, &model, &a, sched, fused, repeats, mode,
                )?;
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
            }
        }
    }
    Ok(())
}

/// One row of the bench: `repeats` timed steps of `g` in `sched` (FLOP
/// and kept-byte columns left for the caller).
#[allow(clippy::too_many_arguments)]
fn bench_one(
    cuda: &mut Cuda,
    g: &Graph,
    params: &HashMap<String, Tensor<f32>>,
    model: &crate::model::Model,
    a: &crate::shape::Analysis,
    sched: SchedOpts,
    fused: bool,
    repeats: usize,
    mode: Mode,
) -> Result<CudaBenchRow, String> {
    let batch = g.batch;
    let lowered = fused.then(|| fuse_time::lower(g, sched));
    let g = lowered.as_ref().unwrap_or(g);
    let x = random_input(g, matches!(model.input.encoding, Encoding::Events), 1).cast::<f32>();
    let labels = random_labels(batch, a.output[0], 1).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    cuda.sync().map_err(|e| e.to_string())?;
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
        Executor::with_plan(cuda, g, plan, &[]).map_err(|e| e.to_string())?
    } else {
        Executor::new(cuda, g).map_err(|e| e.to_string())?
    };
    exec.set_resident_params(params)
        .map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    let empty = HashMap::new();
    for i in 0..=repeats {
        exec.backend().sync().map_err(|e| e.to_string())?;
        let started = Instant::now();
        exec.run(&inputs, &empty, &RunOptions { seed: i as u64 })
            .map_err(|e| e.to_string())?;
        exec.backend().sync().map_err(|e| e.to_string())?;
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
        exec.run(&inputs, &empty, &RunOptions { seed: 0 })
            .map_err(|e| e.to_string())?;
        exec.profile = false;
        for (step, secs) in exec.kernel_times().map_err(|e| e.to_string())? {
            let (k, bytes) = match step {
                Step::Kernel(k) => (k, super::fused::traffic_bytes(g, &kernels[k])),
                Step::KernelStep(k, t) => (k, super::fused::step_traffic_bytes(g, &kernels[k], t)),
                Step::Node(_) => continue,
            };
            if !super::fused::is_lif(g, &kernels[k]) {
                continue;
            }
            lif.insert(k);
            lif_bytes += bytes;
            lif_secs += secs;
            let gbs = bytes as f64 / secs.max(1e-12) / 1e9;
            lif_min = Some(lif_min.map_or(gbs, |m| m.min(gbs)));
        }
    }
    drop(exec);
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    Ok(CudaBenchRow {
        device: cuda.info.name.clone(),
        plan: if fused {
            schedule_name(sched)
        } else {
            "nodes".to_string()
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
