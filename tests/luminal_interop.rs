//! luminal interop (feature `luminal`): the inference graph of digits_mlp
//! and fmnist_csnn, lowered to luminal 0.2 primitives and run with its CPU
//! compilers, equals the reference interpreter (f32, relative error
//! < 1e-5) on random inputs and parameters.
#![cfg(feature = "luminal")]

use std::collections::HashMap;

use snnc::codegen::luminal;
use snnc::compile::{compile, Options, Stage};
use snnc::interp::{self, RunOptions};
use snnc::model::Encoding;
use snnc::passes::rate::Mode;
use snnc::tensor::Tensor;

fn check(name: &str, steps: usize, batch: usize, seed: u64) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    let (model, _) = snnc::dsl::parse_file(&path).unwrap();
    let opts = Options {
        eval: true,
        after: Stage::Unrolled,
        ..Options::new(steps, batch, Mode::Bptt)
    };
    let g = compile(&model, &opts).unwrap().graph;
    let a = snnc::shape::analyze(&model).unwrap();
    let mut params: HashMap<String, Tensor<f32>> =
        snnc::init::cast_params(&snnc::init::init_params(&a, seed));
    // Batch-norm gain and shifted running statistics, so that every layer
    // spikes and the normalisation is not the identity.
    for (k, t) in params.iter_mut() {
        let f = if k.ends_with(".gamma") {
            4.0
        } else if k.ends_with(".running_var") {
            0.5
        } else {
            continue;
        };
        t.data.iter_mut().for_each(|v| *v *= f);
    }
    let mut x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed)
        .cast::<f32>();
    // Strong enough input that every layer spikes.
    x.data.iter_mut().for_each(|v| *v *= 3.0);
    let inputs = HashMap::from([("x".to_string(), x)]);
    let want = interp::run(&g, &inputs, &params, &RunOptions::seeded(seed)).unwrap();
    for compiled in [false, true] {
        let mut l = luminal::lower(&g, &inputs, &params).unwrap();
        if compiled {
            l.compile_cpu();
        }
        let got = l.run();
        for (out, n) in &g.outputs {
            let w = want.get(*n).unwrap();
            let v = &got[out];
            assert_eq!(v.shape, w.shape, "{name} {out}");
            let scale = w.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{name}: all-zero readout");
            let err = v
                .data
                .iter()
                .zip(&w.data)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                err <= 1e-5 * scale,
                "{name} (compiled {compiled}): max |luminal − interpreter| = {err}, scale {scale}"
            );
        }
    }
}

#[test]
fn digits_mlp_matches_the_interpreter() {
    for (steps, batch, seed) in [(1, 2, 0), (4, 3, 1), (6, 5, 2)] {
        check("digits_mlp", steps, batch, seed);
    }
}

#[test]
fn fmnist_csnn_matches_the_interpreter() {
    check("fmnist_csnn", 2, 1, 3);
}

#[test]
fn poisson_encoding_is_refused_with_the_op_name() {
    let model = snnc::dsl::parse(
        "input 4 encoding=poisson\nlinear 3\nlif\nlinear 2\n",
        "p.snn",
    )
    .unwrap();
    let opts = Options {
        eval: true,
        after: Stage::Unrolled,
        ..Options::new(2, 1, Mode::Bptt)
    };
    let g = compile(&model, &opts).unwrap().graph;
    let a = snnc::shape::analyze(&model).unwrap();
    let params = snnc::init::cast_params(&snnc::init::init_params(&a, 0));
    let x = Tensor::from_vec(&[1, 4], vec![0.5f32; 4]);
    let e = luminal::lower(&g, &HashMap::from([("x".to_string(), x)]), &params)
        .err()
        .unwrap();
    assert!(e.to_string().contains("`poisson`"), "{e}");
}
