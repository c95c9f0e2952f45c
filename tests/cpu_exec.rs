//! The CPU executor (SGEMM matmuls, im2col convolutions) computes what the
//! reference interpreter computes: outputs and gradients, both modes, f32.
//!
//! Tolerance (`common::agree::F32`, defined in `snnc::compare`): per
//! element, |got − want| ≤ 1e-4·S, where S is the largest magnitude over all
//! gradients (for a gradient), over the output itself (logits, loss), or the
//! scale of what batch statistics are computed from; against the f32
//! interpreter; where they disagree, the f64 interpreter on the same inputs
//! arbitrates: each element within 1e-4·S of the exact value, or at most 4×
//! as far from it as the f32 interpreter is (`snnc::compare::check_arbitrated`).
//! When outputs still disagree and the reference run is ill-conditioned
//! (`snnc::compare::ill_conditioned`: a spike input within
//! `snnc::compare::TIE` of its threshold, which rounding may decide either
//! way, or a batch norm over a channel of variance below its eps, which
//! multiplies rounding noise by more than 200), a random case is rejected
//! and redrawn, a fixed one fails saying so.

mod common;

use common::gen;
use proptest::prelude::*;
use snnc::codegen::cpu;
use snnc::compile::{compile, Options};
use snnc::interp::{self, RunOptions};
use snnc::model::{Encoding, Model};
use snnc::passes::rate::Mode;
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// The error's prefix when a case is ill-conditioned (see the header).
const ILL_CASE: &str = "ill-conditioned";

/// A disagreement `e`, reported as ill-conditioned when the reference run
/// has a spike tie or a degenerate batch norm (`snnc::compare::ill_conditioned`).
fn ill_or(g: &snnc::ir::Graph, want: &interp::Values<f32>, e: String) -> String {
    match snnc::compare::ill_conditioned(g, want) {
        Some(why) => format!("{ILL_CASE}: {why} ({e})"),
        None => e,
    }
}

fn check(model: &Model, steps: usize, batch: usize, mode: Mode, seed: u64) -> Result<(), String> {
    let g = compile(model, &Options::new(steps, batch, mode))
        .map_err(|e| e.to_string())?
        .graph;
    let a = snnc::shape::analyze(model).map_err(|e| e.to_string())?;
    let params: HashMap<String, Tensor<f32>> =
        snnc::init::cast_params(&snnc::init::init_params(&a, seed));
    let mut x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed)
        .cast::<f32>();
    x.data.iter_mut().for_each(|v| *v *= 2.0);
    let labels = snnc::interp::random_labels(batch, a.output[0], seed).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let opts = RunOptions::seeded(seed);
    let want = interp::run(&g, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    let got = cpu::run(&g, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    common::agree::outputs_arbitrated(
        "executor vs interpreter",
        &g,
        &inputs,
        &params,
        &opts,
        &got,
        &want,
        common::agree::F32,
    )
    .map_err(|e| ill_or(&g, &want, e))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn executor_matches_interpreter(r in gen::recipe(), steps in 1usize..=4, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        match check(&model, steps, batch, mode, seed) {
            Err(e) if e.starts_with(ILL_CASE) => return Err(TestCaseError::reject(e)),
            r => r.map_err(TestCaseError::fail)?,
        }
    }
}

#[test]
fn example_models_at_small_sizes() {
    for name in ["digits_mlp", "fmnist_csnn"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("examples/models/{name}.snn"));
        let (model, _) = snnc::dsl::parse_file(&path).unwrap();
        for mode in [Mode::Bptt, Mode::Rate] {
            check(&model, 2, 2, mode, 3).unwrap_or_else(|e| panic!("{name} {mode}: {e}"));
        }
    }
}

/// The ill-conditioning test the random cases rely on sees a batch norm
/// over a constant channel, and only then.
#[test]
fn degenerate_batch_norm_is_recognised() {
    let model = snnc::dsl::parse(
        "model bn\ninput 3 encoding=direct\nneuron lambda=0.5 theta=1.0\nbatchnorm\nlif\nlinear 2\n",
        "bn.snn",
    )
    .unwrap();
    let g = compile(&model, &Options::new(2, 4, Mode::Bptt))
        .unwrap()
        .graph;
    let a = snnc::shape::analyze(&model).unwrap();
    let params = snnc::init::init_params(&a, 1);
    let labels = snnc::interp::random_labels(4, 2, 1);
    let run = |x: Vec<f64>| {
        let inputs = HashMap::from([
            ("x".to_string(), Tensor::from_vec(&[4, 3], x)),
            ("labels".to_string(), labels.clone()),
        ]);
        let v = interp::run(&g, &inputs, &params, &RunOptions::seeded(1)).unwrap();
        snnc::compare::ill_conditioned(&g, &v)
    };
    // Channel 1 is the same in every sample: variance 0 < eps.
    let constant = vec![0.1, 0.5, 0.9, 0.3, 0.5, 0.2, 0.7, 0.5, 0.4, 0.6, 0.5, 0.8];
    let why = run(constant.clone()).expect("a constant channel is degenerate");
    assert!(why.starts_with("degenerate batch norm"), "{why}");
    let mut varied = constant;
    varied[4] = 0.9;
    varied[10] = 0.1;
    assert_eq!(run(varied), None);
}
