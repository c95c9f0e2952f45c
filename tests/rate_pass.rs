//! The rate pass: exact rules preserve BPTT's gradients; rate mode equals
//! BPTT where docs/math.md says it must (T = 1, output layer, time-constant
//! inputs), collapses every backward read to time-aggregated values, and
//! keeps the same bytes at every T.

mod common;

use common::gen;
use proptest::prelude::*;
use snnc::interp::{self, RunOptions, Values};
use snnc::ir::Graph;
use snnc::model::{Encoding, LayerKind, Model};
use snnc::passes::cost::graph_cost;
use snnc::passes::rate::{rate_pass, Limits, Mode};
use snnc::tensor::Tensor;
use snnc::unroll::{unroll_with, Phase, UnrollConfig};
use snnc::{autodiff, init, shape};
use std::collections::HashMap;

struct Setup {
    g: Graph,
    inputs: HashMap<String, Tensor<f64>>,
    params: HashMap<String, Tensor<f64>>,
}

fn setup(model: &Model, steps: usize, batch: usize, seed: u64) -> Setup {
    let cfg = UnrollConfig {
        steps,
        batch,
        phase: Phase::Train,
    };
    let g = autodiff::autodiff(&unroll_with(model, &cfg).unwrap()).unwrap();
    let a = shape::analyze(model).unwrap();
    let params = init::init_params(&a, seed);
    let mut x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed);
    // Intensities in [0, 2) so that neurons fire.
    x.data.iter_mut().for_each(|v| *v *= 2.0);
    let classes = g.g[g.output("logits").unwrap()].shape[1];
    let mut labels = Tensor::zeros(&[batch, classes]);
    for b in 0..batch {
        labels.data[b * classes + (b * 7 + seed as usize) % classes] = 1.0;
    }
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    Setup { g, inputs, params }
}

fn run(s: &Setup, g: &Graph) -> Values<f64> {
    interp::run(g, &s.inputs, &s.params, &RunOptions { seed: 3 }).unwrap()
}

/// Largest |a − b| of every gradient output, relative to 1 + the largest
/// |b| of any gradient (a gradient that is zero in exact arithmetic is
/// rounding of the others, so it is judged on their scale).
fn grad_errors(a: &Graph, va: &Values<f64>, b: &Graph, vb: &Values<f64>) -> Vec<(String, f64)> {
    let grads: Vec<&(String, snnc::ir::NodeIndex)> = b
        .outputs
        .iter()
        .filter(|(n, _)| n.starts_with("grad:"))
        .collect();
    let scale = grads
        .iter()
        .flat_map(|(_, nb)| vb.get(*nb).unwrap().data.iter())
        .fold(0f64, |m, v| m.max(v.abs()));
    grads
        .into_iter()
        .map(|(name, nb)| {
            let x = va.get(a.output(name).unwrap()).unwrap();
            let y = vb.get(*nb).unwrap();
            let err = x
                .data
                .iter()
                .zip(&y.data)
                .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
            (name.clone(), err / (1.0 + scale))
        })
        .collect()
}

fn has_maxpool(layers: &[snnc::model::Layer]) -> bool {
    layers.iter().any(|l| match &l.kind {
        LayerKind::MaxPool { .. } => true,
        LayerKind::Residual { main, shortcut } => has_maxpool(main) || has_maxpool(shortcut),
        _ => false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// With exact rules only, the rewritten graph computes the gradients of
    /// the un-rewritten autodiff graph.
    #[test]
    fn exact_rules_preserve_bptt(r in gen::recipe(), steps in 1usize..=8, batch in 1usize..=3, seed in 0u64..1000) {
        let model = gen::build(&r);
        let s = setup(&model, steps, batch, seed);
        let (g2, _) = rate_pass(s.g.clone(), Mode::Bptt, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (va, vb) = (run(&s, &g2), run(&s, &s.g));
        for (name, err) in grad_errors(&g2, &va, &s.g, &vb) {
            prop_assert!(err <= 1e-9, "{name}: {err:e}\n{model:#?}");
        }
    }

    /// Rate mode collapses every random model (max pool with stride = kernel
    /// included): no backward node reads a per-step value (the pass checks
    /// this itself and fails otherwise). At T = 1 it equals BPTT.
    #[test]
    fn rate_mode_collapses_and_equals_bptt_at_t1(r in gen::recipe(), steps in 1usize..=6, batch in 1usize..=3, seed in 0u64..1000) {
        let model = gen::build(&r);
        let s = setup(&model, steps, batch, seed);
        let (g2, _) = rate_pass(s.g.clone(), Mode::Rate, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let v = run(&s, &g2);
        if steps == 1 {
            let vb = run(&s, &s.g);
            for (name, err) in grad_errors(&g2, &v, &s.g, &vb) {
                prop_assert!(err <= 1e-12, "T=1 {name}: {err:e}");
            }
        }
        // The output layer's gradients are exact at any T: δs_t = δr/T.
        let vb = run(&s, &s.g);
        let last = model.layers.len() - 1;
        for (name, err) in grad_errors(&g2, &v, &s.g, &vb) {
            if name.starts_with(&format!("grad:{last}.")) {
                prop_assert!(err <= 1e-12, "output layer {name}: {err:e}");
            }
        }
        let _ = has_maxpool(&model.layers);
    }
}

fn example(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    snnc::dsl::parse_file(&path).unwrap().0
}

/// digits_mlp has a direct (time-constant) input and one hidden layer: the
/// first decorrelate is exact at the output layer and the second because
/// the input is constant, so rate gradients equal BPTT's at any T.
#[test]
fn digits_mlp_rate_is_exact() {
    for steps in [2, 4, 7] {
        let s = setup(&example("digits_mlp"), steps, 3, 5);
        let (g2, _) = rate_pass(s.g.clone(), Mode::Rate, &Limits::default()).unwrap();
        let (va, vb) = (run(&s, &g2), run(&s, &s.g));
        for (name, err) in grad_errors(&g2, &va, &s.g, &vb) {
            assert!(err <= 1e-12, "T={steps} {name}: {err:e}");
        }
    }
}

/// Rate mode keeps the same bytes for the backward at every T; BPTT's grow
/// linearly in T.
#[test]
fn kept_bytes_constant_in_rate_mode_linear_in_bptt() {
    let model = example("fmnist_csnn");
    let kept = |mode, steps| {
        let cfg = UnrollConfig {
            steps,
            batch: 2,
            phase: Phase::Train,
        };
        let g = autodiff::autodiff(&unroll_with(&model, &cfg).unwrap()).unwrap();
        let (g, _) = rate_pass(g, mode, &Limits::default()).unwrap();
        graph_cost(&g).kept_bytes
    };
    let rate: Vec<f64> = [1, 2, 4].iter().map(|&t| kept(Mode::Rate, t)).collect();
    assert!(rate.iter().all(|&b| b == rate[0]), "{rate:?}");
    let bptt: Vec<f64> = [1, 2, 3].iter().map(|&t| kept(Mode::Bptt, t)).collect();
    assert!(bptt[1] > bptt[0], "{bptt:?}");
    assert_eq!(bptt[2] - bptt[1], bptt[1] - bptt[0], "{bptt:?}");
}

/// Exceeding a limit is an error that names the region, not a fallback.
#[test]
fn limits_are_errors_naming_the_region() {
    let s = setup(&example("digits_mlp"), 4, 1, 1);
    let limits = Limits {
        nodes: 25,
        ..Limits::default()
    };
    let e = rate_pass(s.g.clone(), Mode::Rate, &limits)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("region") && e.contains("did not saturate"),
        "{e}"
    );
}

/// The pass refuses a graph autodiff did not build.
#[test]
fn needs_the_autodiff_graph() {
    let g = snnc::unroll::unroll(&example("digits_mlp"), 2).unwrap();
    let e = rate_pass(g, Mode::Rate, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("autodiff"), "{e}");
}
