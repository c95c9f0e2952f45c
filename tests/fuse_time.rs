//! Time-major fused plans (`passes/fuse_time`), structurally, on random
//! models: every unit reads only values computed by earlier units (or
//! inputs and parameters), every value is computed once, every kernel that
//! is split runs each of its steps exactly once and in its loop order, the
//! arena never lets two live buffers overlap, and the step units interleave
//! layers (time-major) whenever there is more than one multi-step kernel.
//! The CPU lowering's exact rewrites (`channel_dot`, `avgpool_grad_mul`,
//! per-step copies of batch norm's affine) compute bit for bit what they
//! replace (`avgpool_grad_mul` replaces both of fmnist_csnn's pooling
//! gradients in rate mode), and the
//! whole lowering (with means of a repeated value dropped and per-channel
//! scales factored out of channel sums) agrees to 1e-12 (f64), relative to
//! 1 + the output's largest magnitude. Numerical agreement of the plans with the interpreter is
//! `tests/fused_exec.rs`.

mod common;

use common::{example, gen};
use proptest::prelude::*;
use snnc::compile::{compile, Options};
use snnc::interp::{self, RunOptions};
use snnc::ir::{Graph, NodeIndex, Op};
use snnc::model::{Encoding, Model};
use snnc::passes::fuse::{Plan, Unit};
use snnc::passes::rate::Mode;
use snnc::passes::schedule::SchedOpts;
use snnc::passes::{fuse_time, memplan};
use snnc::tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// Every output of `g` and of its CPU lowering (layer-major), f64, the
/// same inputs: bitwise equal (`channel_dot(a, b)` is `channel_sum(a·b)`
/// and `avgpool_grad_mul(d, s)` is `avgpool_grad(d)·s`, with the same
/// roundings). Returns how many nodes were rewritten.
fn lowering_is_exact(model: &Model, steps: usize, mode: Mode, seed: u64) -> Result<usize, String> {
    let g = compile(model, &Options::new(steps, 2, mode))
        .map_err(|e| e.to_string())?
        .graph;
    let mut low = g.clone();
    let n = fuse_time::channel_dots(&mut low)
        + fuse_time::pool_grad_products(&mut low)
        + fuse_time::rematerialise_affine(&mut low);
    snnc::ir::verify(&low).map_err(|e| format!("lowered graph: {e}"))?;
    let a = snnc::shape::analyze(model).map_err(|e| e.to_string())?;
    let params: HashMap<String, Tensor<f64>> = snnc::init::init_params(&a, seed);
    let x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed);
    let labels = snnc::interp::random_labels(2, a.output[0], seed);
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let opts = RunOptions::seeded(seed);
    let v0 = interp::run(&g, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    let v1 = interp::run(&low, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    for (name, o) in &g.outputs {
        let m = low.output(name).ok_or(format!("output {name} lost"))?;
        if v0.get(*o).unwrap().data != v1.get(m).unwrap().data {
            return Err(format!("{name} differs after the exact rewrites"));
        }
    }
    // The whole lowering adds `constant_means` and `factor_channel_scales`:
    // equal up to the rounding of (x + … + x)/T and of γ·Σx against Σγ·x.
    let full = fuse_time::lower(&g, SchedOpts::LAYER_MAJOR);
    snnc::ir::verify(&full).map_err(|e| format!("lowered graph: {e}"))?;
    let v2 = interp::run(&full, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    for (name, o) in &g.outputs {
        let m = full.output(name).ok_or(format!("output {name} lost"))?;
        let (p, q) = (v0.get(*o).unwrap(), v2.get(m).unwrap());
        let scale = p.data.iter().fold(0f64, |a, x| a.max(x.abs()));
        for (x, y) in p.data.iter().zip(&q.data) {
            if (x - y).abs() > 1e-12 * (1.0 + scale) {
                return Err(format!("{name}: {x} vs {y} after the whole lowering"));
            }
        }
    }
    Ok(n)
}

fn check(g: &Graph, plan: &Plan) -> Result<(), String> {
    let mut done: HashSet<NodeIndex> = HashSet::new();
    let mut next_step: HashMap<usize, usize> = HashMap::new();
    for (i, u) in plan.units.iter().enumerate() {
        let (reads, writes) = match *u {
            Unit::Node(n) => (g.operands(n), vec![n]),
            Unit::Kernel(k) => (plan.kernels[k].reads(), plan.kernels[k].outputs()),
            Unit::Step(k, t) => {
                let f = &plan.kernels[k];
                let order = f.loop_steps();
                let at = next_step.entry(k).or_insert(0);
                if order.get(*at) != Some(&t) {
                    return Err(format!(
                        "unit {i}: {} step {t} out of loop order {order:?}",
                        f.kernel.name
                    ));
                }
                *at += 1;
                f.step_access(t)
            }
        };
        for r in reads {
            let leaf = matches!(g.g[r].op, Op::Input { .. } | Op::Param { .. });
            if !leaf && !done.contains(&r) {
                return Err(format!("unit {i} reads %{} before it exists", r.index()));
            }
        }
        for w in writes {
            // A value a kernel stores at several steps (a step-free store)
            // is written again by the same kernel, never by two units.
            if !done.insert(w) && !matches!(u, Unit::Step(..)) {
                return Err(format!("unit {i} computes %{} again", w.index()));
            }
        }
    }
    for (&k, &n) in &next_step {
        let want = plan.kernels[k].loop_steps().len();
        if n != want {
            return Err(format!(
                "{}: {n} of {want} steps run",
                plan.kernels[k].kernel.name
            ));
        }
    }
    for (name, n) in &g.outputs {
        if !done.contains(n) {
            return Err(format!("output {name} never computed"));
        }
    }
    memplan::plan_fused(g, plan, &snnc::codegen::cpu::WORKSPACE)
        .check_arena()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether some kernel's step t + 1 comes after another kernel's step t
/// (the plan is not layer-major in disguise).
fn interleaved(plan: &Plan) -> bool {
    let steps: Vec<(usize, usize)> = plan
        .units
        .iter()
        .filter_map(|u| match *u {
            Unit::Step(k, t) => Some((k, t)),
            _ => None,
        })
        .collect();
    steps
        .windows(2)
        .any(|w| w[0].0 != w[1].0 && w[0].1 == w[1].1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn time_major_plans_are_valid(r in gen::recipe(), steps in 1usize..=4, rate in any::<bool>(), recompute in any::<bool>()) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        let g = compile(&model, &Options::new(steps, 2, mode)).map_err(|e| TestCaseError::fail(e.to_string()))?.graph;
        let opts = if recompute { SchedOpts::TIME_MAJOR_RECOMPUTE } else { SchedOpts::TIME_MAJOR };
        let lowered = fuse_time::lower(&g, opts);
        let plan = fuse_time::plan(&lowered, &[], opts);
        check(&lowered, &plan).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn channel_dots_are_exact(r in gen::recipe(), steps in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000) {
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        lowering_is_exact(&gen::build(&r), steps, mode, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn batch_norm_rewrites_apply_to_fmnist() {
    let model = example::model("fmnist_csnn");
    for mode in [Mode::Bptt, Mode::Rate] {
        let n = lowering_is_exact(&model, 2, mode, 5).unwrap();
        // Two batch norms, each with a γ gradient and a channel-scale
        // gradient that sum a product; the first one's affine is copied
        // into each of the 2 steps.
        assert!(n >= 4, "{mode}: {n} rewrites");
    }
}

#[test]
fn pooling_gradients_times_the_surrogate_are_one_op_in_fmnist() {
    let model = example::model("fmnist_csnn");
    let g = compile(&model, &Options::new(2, 2, Mode::Rate))
        .unwrap()
        .graph;
    let mut low = g.clone();
    // Both average poolings' gradients feed only the product with their
    // LIF layer's surrogate (rate mode: one backward step).
    assert_eq!(fuse_time::pool_grad_products(&mut low), 2);
    let count = |g: &Graph, name: &str| {
        g.g.node_indices()
            .filter(|&n| g.node(n).op.name() == name)
            .count()
    };
    assert_eq!(count(&low, "avgpool_grad"), 0);
    assert_eq!(count(&low, "avgpool_grad_mul"), 2);
    assert_eq!(count(&g, "mul") - count(&low, "mul"), 2);
}

/// Batch norm's backward in the fused plans of fmnist_csnn: every channel
/// sum of a γ-scaled gradient is factored (two per batch norm), so no
/// full-size `channel_scale` is left to a library call and no channel
/// reduction reads one; the input gradient's elementwise work is in kernels.
#[test]
fn batch_norm_backward_stores_no_scaled_gradient() {
    let model = example::model("fmnist_csnn");
    for mode in [Mode::Bptt, Mode::Rate] {
        let g = compile(&model, &Options::new(3, 2, mode)).unwrap().graph;
        let mut f = g.clone();
        let n = snnc::passes::factor::factor_channel_scales(&mut f);
        assert!(n >= 4, "{mode}: {n} sums factored");
        for opts in example::SCHEDULES {
            let lowered = fuse_time::lower(&g, opts);
            let plan = fuse_time::plan(&lowered, &[], opts);
            for u in &plan.units {
                let Unit::Node(v) = *u else { continue };
                let op = &lowered.g[v].op;
                assert_ne!(
                    *op,
                    Op::ChannelScale,
                    "{mode} {opts}: %{} left unfused",
                    v.index()
                );
                if matches!(op, Op::ChannelSum | Op::ChannelDot) {
                    for a in lowered.operands(v) {
                        assert_ne!(
                            lowered.g[a].op,
                            Op::ChannelScale,
                            "{mode} {opts}: %{}",
                            v.index()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn example_models_interleave_steps() {
    for name in ["digits_mlp", "fmnist_csnn", "vggsnn_dvs34"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("examples/models/{name}.snn"));
        let model = snnc::dsl::parse_file(&path).unwrap().0;
        for mode in [Mode::Bptt, Mode::Rate] {
            for opts in [SchedOpts::TIME_MAJOR, SchedOpts::TIME_MAJOR_RECOMPUTE] {
                let g = compile(&model, &Options::new(4, 2, mode)).unwrap().graph;
                let lowered = fuse_time::lower(&g, opts);
                let plan = fuse_time::plan(&lowered, &[], opts);
                check(&lowered, &plan).unwrap_or_else(|e| panic!("{name} {mode} {opts}: {e}"));
                assert!(
                    interleaved(&plan),
                    "{name} {mode} {opts}: steps not interleaved"
                );
            }
        }
    }
}
