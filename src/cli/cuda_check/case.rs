//! One cuda-check case: a compiled graph on a [`Backend`] and on the CPU
//! executor with the same inputs and parameters, outputs compared end to
//! end and (optionally) every step in isolation.

use super::compare::{
    arbitrate, kernel_error, node_error, rel_err_abs, spike_theta, worse, ARBITRATE_FLOP,
    KERNEL_TOL, OUTPUT_ABS_FLOOR, OUTPUT_FLOOR, TIE,
};
use crate::cli::CliError;
use crate::codegen::cuda::{Backend, Executor, Step};
use crate::codegen::exec::{Observed, Observer};
use crate::compile::{compile, Options};
use crate::interp::{random_input, random_labels, RunOptions};
use crate::ir::{Graph, NodeIndex, Op};
use crate::model::Encoding;
use crate::passes::cost::graph_cost;
use crate::passes::fuse_time;
use crate::passes::rate::Mode;
use crate::passes::schedule::SchedOpts;
use crate::precision::Precision;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// The precision of the GEMMs, on the device and in the CPU reference
    /// alike (`crate::precision`).
    pub precision: Precision,
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

/// Runs one case on `backend` and on the CPU executor.
pub fn check_case<B: Backend>(
    backend: &mut B,
    path: &Path,
    steps: usize,
    mode: Mode,
    opts: &CheckOptions,
    poison: bool,
) -> Result<CaseResult, CliError> {
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
) -> Result<CaseResult, CliError> {
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
) -> Result<CaseResult, CliError> {
    let started = Instant::now();
    let ropts = RunOptions {
        precision: opts.precision,
        ..RunOptions::seeded(opts.seed)
    };
    let spikes: Vec<NodeIndex> =
        g.g.node_indices()
            .filter(|&n| matches!(g.node(n).op, Op::Spike { .. }))
            .collect();
    let (want, cpu_spikes) = crate::codegen::cpu::run_keeping(g, inputs, params, &ropts, &spikes)
        .map_err(|e| CliError::Msg(format!("CPU executor: {e}")))?;

    let mut exec = if opts.fused {
        let keep = keep.unwrap_or(&[]);
        Executor::with_plan(backend, g, fuse_time::plan(g, keep, opts.schedule), keep)?
    } else {
        Executor::new(backend, g)?
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
    let mut observe = |o: &Observed<'_>| {
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
            Step::Node(n) => {
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
            Step::Kernel(k) | Step::KernelStep(k, _) => {
                let f = &kernels[k];
                let (reads, writes) = match o.step {
                    Step::KernelStep(_, t) => {
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
    let got = exec.run_observed(
        inputs,
        params,
        &ropts,
        Some(&mut observe as &mut Observer<'_>),
    )?;
    drop(exec);
    if let Some(f) = node_failure {
        return Err(CliError::Msg(f));
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
