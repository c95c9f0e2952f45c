//! The CPU executor (SGEMM matmuls, im2col convolutions) computes what the
//! reference interpreter computes: outputs and gradients, both modes, f32.
//!
//! Tolerance (`common::agree::F32`, defined in `snnc::compare`): per
//! element, |got − want| ≤ 1e-4·S, where S is the largest magnitude over all
//! gradients (for a gradient), over the output itself (logits, loss), or the
//! scale of what batch statistics are computed from; against the f32
//! interpreter, or, where they disagree, the f64 interpreter on the same
//! inputs (`common::agree::outputs_arbitrated`). When outputs disagree
//! and the reference run has a spike input within `snnc::compare::TIE` of
//! its threshold, the case is a tie (rounding may decide that spike either
//! way): a random case is rejected and redrawn, a fixed one fails saying so.

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

/// The error's prefix when a case is a spike tie (see the header).
const TIE_CASE: &str = "spike tie";

/// A disagreement `e`, reported as a tie when the reference run has a spike
/// input within `snnc::compare::TIE` of its threshold.
fn tie_or(g: &snnc::ir::Graph, want: &interp::Values<f32>, e: String) -> String {
    match snnc::compare::near_tie(g, want) {
        Some((n, d)) => format!(
            "{TIE_CASE}: node {} within {d:e} of its threshold ({e})",
            n.index()
        ),
        None => e,
    }
}

fn check(model: &Model, steps: usize, batch: usize, mode: Mode, seed: u64) -> Result<(), String> {
    let g = compile(model, &Options::new(steps, batch, mode))?.graph;
    let a = snnc::shape::analyze(model).map_err(|e| e.to_string())?;
    let params: HashMap<String, Tensor<f32>> =
        snnc::init::cast_params(&snnc::init::init_params(&a, seed));
    let mut x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed)
        .cast::<f32>();
    x.data.iter_mut().for_each(|v| *v *= 2.0);
    let labels = snnc::interp::random_labels(batch, a.output[0], seed).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let opts = RunOptions { seed };
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
    .map_err(|e| tie_or(&g, &want, e))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn executor_matches_interpreter(r in gen::recipe(), steps in 1usize..=4, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        match check(&model, steps, batch, mode, seed) {
            Err(e) if e.starts_with(TIE_CASE) => return Err(TestCaseError::reject(e)),
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
