//! The unrolled graph, run by the reference interpreter, equals an
//! independent LIF simulator (tests/common/sim.rs) on random small models.

mod common;

use common::{gen, sim};
use proptest::prelude::*;
use snnc::interp::{self, RunOptions};
use snnc::model::Encoding;
use snnc::tensor::Tensor;
use snnc::unroll::{unroll_with, Phase, UnrollConfig};
use snnc::{init, shape};
use std::collections::HashMap;

fn check(r: &gen::Recipe, steps: usize, batch: usize, seed: u64) -> Result<(), TestCaseError> {
    let model = gen::build(r);
    let analysis = shape::analyze(&model).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let cfg = UnrollConfig {
        steps,
        batch,
        phase: Phase::Train,
    };
    let g = unroll_with(&model, &cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let params = init::init_params(&analysis, seed);
    let mut xshape = vec![batch];
    if model.input.encoding == Encoding::Events {
        xshape.push(steps);
    }
    xshape.extend_from_slice(&model.input.shape);
    let mut rng = snnc::rng::Rng::new(seed);
    let n: usize = xshape.iter().product();
    // Intensities in [0, 2): enough drive for the neurons to fire.
    let x = Tensor::from_vec(&xshape, (0..n).map(|_| 2.0 * rng.uniform()).collect());
    let want = sim::simulate(&model, &params, &x, steps, seed);
    let inputs = HashMap::from([("x".to_string(), x)]);
    let vals = interp::run(&g, &inputs, &params, &RunOptions::seeded(seed))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got = vals.get(g.output("logits").unwrap()).unwrap();
    prop_assert_eq!(&got.shape, &want.shape);
    for (a, b) in got.data.iter().zip(&want.data) {
        prop_assert!(
            (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
            "interp {a} vs sim {b}\nmodel:\n{model:#?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]
    #[test]
    fn interpreter_matches_independent_simulator(
        r in gen::recipe(), steps in 1usize..=8, batch in 1usize..=3, seed in any::<u64>()
    ) {
        check(&r, steps, batch, seed)?;
    }
}

/// Every reset variant on one fixed model, so that none depends on luck.
#[test]
fn all_reset_variants() {
    for a in [0u8, 4, 8, 12, 36, 44] {
        let r = gen::Recipe {
            image: false,
            dims: (2, 4, 4),
            tokens: vec![(6, 3, 0), (4, a, 0), (6, 1, 0), (4, a, 64)],
            neuron: (a, 1),
            classes: 3,
            enc: 0,
        };
        check(&r, 6, 2, u64::from(a)).unwrap();
    }
}
