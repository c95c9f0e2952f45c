//! Schedules and the memory planner: every schedule is a topological order
//! of a graph that still verifies; the arena never lets two live buffers
//! overlap; the peak is the largest live sum; the executor computes the
//! interpreter's outputs and gradients under every schedule (f32, 1e-4);
//! time-major with batch-norm recompute keeps rate-mode memory flat in T.

mod common;

use common::gen;
use proptest::prelude::*;
use snnc::codegen::cpu;
use snnc::compile::{compile, Options};
use snnc::interp::{self, RunOptions};
use snnc::ir::{self, Graph};
use snnc::model::{Encoding, Model};
use snnc::passes::memplan::{self, BufferKind};
use snnc::passes::rate::Mode;
use snnc::passes::schedule::{self, SchedOpts};
use snnc::tensor::Tensor;
use std::collections::HashMap;

const ALL: [SchedOpts; 3] = [
    SchedOpts::LAYER_MAJOR,
    SchedOpts::TIME_MAJOR,
    SchedOpts::TIME_MAJOR_RECOMPUTE,
];

fn example(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    snnc::dsl::parse_file(&path).unwrap().0
}

/// Structural checks of one plan.
fn check_plan(g: &Graph, opts: SchedOpts) -> Result<(), String> {
    let p = memplan::build(g, opts);
    ir::verify(&p.graph).map_err(|e| format!("{opts}: lowered graph: {e}"))?;
    schedule::is_topological(&p.graph, p.order()).map_err(|e| format!("{opts}: {e}"))?;
    p.mem.check_arena().map_err(|e| format!("{opts}: {e}"))?;
    let live = p.mem.live_bytes();
    let max = live.iter().copied().max().unwrap_or(0);
    if max != p.mem.peak_bytes || live[p.mem.peak_at] != max {
        return Err(format!(
            "{opts}: peak {} at {}, live max {max}",
            p.mem.peak_bytes, p.mem.peak_at
        ));
    }
    if p.mem.arena_bytes < p.mem.peak_bytes {
        return Err(format!("{opts}: arena smaller than the peak"));
    }
    // Every computed node's value is in exactly one value buffer.
    let mut held = vec![0usize; p.order().len()];
    for b in p.mem.buffers.iter().filter(|b| b.kind == BufferKind::Value) {
        for &i in &b.nodes {
            held[i] += 1;
        }
    }
    for (i, &n) in p.order().iter().enumerate() {
        let want = usize::from(!memplan::resident(&p.graph.g[n].op));
        if held[i] != want {
            return Err(format!("{opts}: node at {i} is in {} buffers", held[i]));
        }
    }
    Ok(())
}

/// The executor under `opts` against the interpreter on the unlowered graph.
fn check_outputs(
    model: &Model,
    steps: usize,
    batch: usize,
    mode: Mode,
    seed: u64,
) -> Result<(), String> {
    let g = compile(model, &Options::new(steps, batch, mode))?.graph;
    let a = snnc::shape::analyze(model).map_err(|e| e.to_string())?;
    let params: HashMap<String, Tensor<f32>> =
        snnc::init::cast_params(&snnc::init::init_params(&a, seed));
    let mut x =
        snnc::cli::random_input(&g, model.input.encoding == Encoding::Events, seed).cast::<f32>();
    x.data.iter_mut().for_each(|v| *v *= 2.0);
    let labels = snnc::cli::random_labels(batch, a.output[0], seed).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let opts = RunOptions { seed };
    let want = interp::run(&g, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    for sched in ALL {
        check_plan(&g, sched)?;
        let p = memplan::build(&g, sched);
        let got = cpu::run_planned(&p, &inputs, &params, &opts).map_err(|e| e.to_string())?;
        for (name, n) in &g.outputs {
            let (w, v) = (want.get(*n).unwrap(), &got[name]);
            let scale = w.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (p, q) in v.data.iter().zip(&w.data) {
                if (p - q).abs() > 1e-4 * (1.0 + scale) {
                    return Err(format!(
                        "{sched} {name}: executor {p} vs interpreter {q} (scale {scale})"
                    ));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn orders_are_topological_and_arenas_disjoint(r in gen::recipe(), steps in 1usize..=5, batch in 1usize..=3, rate in any::<bool>(), eval in any::<bool>()) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        let mut opts = Options::new(steps, batch, mode);
        if eval {
            opts.eval = true;
            opts.after = snnc::compile::Stage::Unrolled;
        }
        let g = compile(&model, &opts).map_err(TestCaseError::fail)?.graph;
        for sched in ALL {
            check_plan(&g, sched).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn executor_matches_interpreter_under_every_schedule(r in gen::recipe(), steps in 1usize..=4, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        check_outputs(&model, steps, batch, mode, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn example_models_under_every_schedule() {
    for name in ["digits_mlp", "fmnist_csnn"] {
        let model = example(name);
        for mode in [Mode::Bptt, Mode::Rate] {
            check_outputs(&model, 3, 2, mode, 5).unwrap_or_else(|e| panic!("{name} {mode}: {e}"));
        }
    }
}

#[test]
fn schedule_names_round_trip() {
    for s in ALL {
        assert_eq!(s.to_string().parse::<SchedOpts>(), Ok(s));
    }
    assert!("time-minor"
        .parse::<SchedOpts>()
        .unwrap_err()
        .contains("layer-major"));
}

/// Time-major walks steps in the outer loop of the forward; layer-major
/// finishes a layer's steps before the next layer.
#[test]
fn orders_follow_their_schedule() {
    let g = compile(&example("digits_mlp"), &Options::new(3, 1, Mode::Bptt))
        .unwrap()
        .graph;
    // (layer id, step) of the forward matmuls; layer 0 is the input.
    let matmuls = |opts: SchedOpts| -> Vec<(usize, usize)> {
        let p = memplan::build(&g, opts);
        p.order()
            .iter()
            .map(|&n| &p.graph.g[n])
            .filter(|n| matches!(n.op, ir::Op::MatMul { .. }) && n.role == ir::Role::Forward)
            .map(|n| (n.layer.unwrap(), n.t.unwrap()))
            .collect()
    };
    assert_eq!(
        matmuls(SchedOpts::LAYER_MAJOR),
        [(1, 0), (1, 1), (1, 2), (3, 0), (3, 1), (3, 2)]
    );
    assert_eq!(
        matmuls(SchedOpts::TIME_MAJOR),
        [(1, 0), (3, 0), (1, 1), (3, 1), (1, 2), (3, 2)]
    );
}

/// The memory target, as the plan computes it: under time-major
/// with batch-norm recompute, fmnist_csnn's rate-mode peak does not grow
/// from T = 4 to T = 8, and stays well under layer-major's.
#[test]
fn rate_mode_time_major_recompute_is_flat_in_t() {
    let model = example("fmnist_csnn");
    let peak = |t: usize, opts: SchedOpts| {
        let g = compile(&model, &Options::new(t, 128, Mode::Rate))
            .unwrap()
            .graph;
        memplan::build(&g, opts).mem.peak_bytes as f64
    };
    let (t1, t4, t8) = (
        peak(1, SchedOpts::TIME_MAJOR_RECOMPUTE),
        peak(4, SchedOpts::TIME_MAJOR_RECOMPUTE),
        peak(8, SchedOpts::TIME_MAJOR_RECOMPUTE),
    );
    assert!(t8 <= t4 * 1.001, "T=4 {t4}, T=8 {t8}");
    assert!(t8 <= 1.4 * t1, "T=1 {t1}, T=8 {t8}");
    assert!(t8 < 0.6 * peak(8, SchedOpts::LAYER_MAJOR));
}

#[test]
fn digits_mlp_t2_plan_snapshot() {
    let g = compile(&example("digits_mlp"), &Options::new(2, 4, Mode::Rate))
        .unwrap()
        .graph;
    for opts in [SchedOpts::LAYER_MAJOR, SchedOpts::TIME_MAJOR] {
        let p = memplan::build(&g, opts);
        insta::assert_snapshot!(
            format!("digits_mlp_t2_{}", opts.to_string().replace('-', "_")),
            p.mem.to_text(&p.graph)
        );
    }
}
