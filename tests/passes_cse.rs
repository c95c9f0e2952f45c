//! `cse`: snapshot of what it merges, exact agreement with the graph before
//! it (f64 interpreter, every output), and the same over random models.

mod common;

use common::gen;
use proptest::prelude::*;
use snnc::compile::{compile, Options, Stage};
use snnc::interp::{self, RunOptions};
use snnc::model::{Encoding, Model};
use snnc::passes::rate::Mode;
use snnc::tensor::Tensor;
use std::collections::HashMap;

fn graphs(
    model: &Model,
    steps: usize,
    batch: usize,
    mode: Mode,
) -> (snnc::ir::Graph, snnc::ir::Graph) {
    let before = compile(
        model,
        &Options {
            after: Stage::Dce,
            ..Options::new(steps, batch, mode)
        },
    )
    .unwrap()
    .graph;
    let after = compile(model, &Options::new(steps, batch, mode))
        .unwrap()
        .graph;
    (before, after)
}

/// Every output of both graphs, f64, same inputs: equal to the last bit
/// (CSE only removes recomputation).
fn same_outputs(
    model: &Model,
    steps: usize,
    batch: usize,
    mode: Mode,
    seed: u64,
) -> Result<usize, String> {
    let (before, after) = graphs(model, steps, batch, mode);
    let a = snnc::shape::analyze(model).map_err(|e| e.to_string())?;
    let params: HashMap<String, Tensor<f64>> = snnc::init::init_params(&a, seed);
    let x = snnc::interp::random_input(&before, model.input.encoding == Encoding::Events, seed);
    let labels = snnc::interp::random_labels(batch, a.output[0], seed);
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let opts = RunOptions::seeded(seed);
    let v0 = interp::run(&before, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    let v1 = interp::run(&after, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    for (name, n) in &before.outputs {
        let m = after.output(name).ok_or(format!("output {name} lost"))?;
        let (p, q) = (v0.get(*n).unwrap(), v1.get(m).unwrap());
        if p.data != q.data {
            return Err(format!("{name} differs after cse"));
        }
    }
    Ok(before.node_count() - after.node_count())
}

fn example(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    snnc::dsl::parse_file(&path).unwrap().0
}

#[test]
fn fmnist_direct_encoding_hoists_the_first_convolution() {
    let m = example("fmnist_csnn");
    for mode in [Mode::Bptt, Mode::Rate] {
        let removed = same_outputs(&m, 3, 2, mode, 1).unwrap();
        // At least the two duplicate first-layer convolutions and their
        // batch-norm chains.
        assert!(removed >= 2, "{mode}: cse removed only {removed} nodes");
    }
    let (_, after) = graphs(&m, 3, 2, Mode::Rate);
    insta::assert_snapshot!(snnc::ir::to_text(&after));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn cse_preserves_every_output(r in gen::recipe(), steps in 1usize..=4, batch in 1usize..=2, rate in any::<bool>(), seed in 0u64..1000) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        same_outputs(&model, steps, batch, mode, seed).map_err(TestCaseError::fail)?;
    }
}
