//! An example model with random parameters and a random batch, as several
//! tests run it on the executor.

use snnc::ir::Graph;
use snnc::model::Model;
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// `examples/models/NAME.snn`.
pub fn model(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    snnc::dsl::parse_file(&path).unwrap().0
}

/// `model`'s parameters, initialised with seed 0, in f32.
pub fn params(model: &Model) -> HashMap<String, Tensor<f32>> {
    let a = snnc::shape::analyze(model).unwrap();
    snnc::init::cast_params(&snnc::init::init_params(&a, 0))
}

/// A random image batch `x` for `g` and random one-hot `labels` over
/// `classes` (seed 1).
pub fn inputs(g: &Graph, batch: usize, classes: usize) -> HashMap<String, Tensor<f32>> {
    let x = snnc::interp::random_input(g, false, 1).cast::<f32>();
    let labels = snnc::interp::random_labels(batch, classes, 1).cast::<f32>();
    HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)])
}

/// The three orders a plan runs in (layer-major, time-major, time-major
/// with batch-norm recompute).
pub const SCHEDULES: [snnc::passes::schedule::SchedOpts; 3] = [
    snnc::passes::schedule::SchedOpts::LAYER_MAJOR,
    snnc::passes::schedule::SchedOpts::TIME_MAJOR,
    snnc::passes::schedule::SchedOpts::TIME_MAJOR_RECOMPUTE,
];
