//! The CPU executor (SGEMM matmuls, im2col convolutions) computes what the
//! reference interpreter computes: outputs and gradients, both modes, f32,
//! relative error < 1e-4.

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

fn check(model: &Model, steps: usize, batch: usize, mode: Mode, seed: u64) -> Result<(), String> {
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
    let got = cpu::run(&g, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    for (name, n) in &g.outputs {
        let (w, v) = (want.get(*n).unwrap(), &got[name]);
        let scale = w.data.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (p, q) in v.data.iter().zip(&w.data) {
            if (p - q).abs() > 1e-4 * (1.0 + scale) {
                return Err(format!(
                    "{name}: executor {p} vs interpreter {q} (scale {scale})"
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn executor_matches_interpreter(r in gen::recipe(), steps in 1usize..=4, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        check(&model, steps, batch, mode, seed).map_err(TestCaseError::fail)?;
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
