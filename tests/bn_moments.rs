//! A batch norm's mean and variance over the same operands read them once
//! on the executor (`codegen/exec/reduce.rs`: Σx and Σx² in one pass, the
//! variance from them) and still equal the f64 interpreter's two-pass
//! Σ(x − m)²/n: on centred data, on data whose mean is 10⁴ times its
//! spread (the cancellation the one-pass form risks), and on a constant
//! channel (variance exactly 0, never negative). A variance over other
//! operands than its mean's takes the two-pass path and agrees too.
//! Tolerance: the tests' f32 tolerance (`common::agree::F32`: every element
//! within 1e-4 of the output's largest magnitude), with the variance's scale
//! its largest magnitude (not the squared mean: the one-pass form must not
//! lose it).

mod common;

use snnc::codegen::cpu;
use snnc::compare;
use snnc::interp::{self, RunOptions};
use snnc::ir::{Graph, Op, Role};
use snnc::tensor::Tensor;
use std::collections::HashMap;

const SHAPE: [usize; 4] = [4, 3, 5, 5];

/// mean(x0, x1) and var(mean, x0, x1); and var over x0 alone around the
/// same mean (the two-pass path).
fn graph() -> Graph {
    let mut g = Graph::new("bn_moments", 2, SHAPE[0]);
    let x0 = g.add_leaf(Op::Input { name: "x0".into() }, &SHAPE, Role::Input);
    let x1 = g.add_leaf(Op::Input { name: "x1".into() }, &SHAPE, Role::Input);
    let m = g.add_op("t", Op::ChannelMean, None, None, Role::Output, &[x0, x1]);
    let v = g.add_op("t", Op::ChannelVar, None, None, Role::Output, &[m, x0, x1]);
    let w = g.add_op("t", Op::ChannelVar, None, None, Role::Output, &[m, x0]);
    g.outputs.push(("mean".into(), m));
    g.outputs.push(("var".into(), v));
    g.outputs.push(("var_x0".into(), w));
    g
}

fn data(offset: f32, spread: f32, seed: u64) -> Tensor<f32> {
    let mut r = snnc::rng::Rng::new(seed);
    let n: usize = SHAPE.iter().product();
    let per_channel = SHAPE[2] * SHAPE[3];
    let v = (0..n)
        .map(|i| {
            let ch = (i / per_channel) % SHAPE[1];
            // Channel 2 constant: variance exactly zero.
            let noise = if ch == 2 {
                0.0
            } else {
                (r.uniform() as f32 * 2.0 - 1.0) * spread
            };
            offset + noise
        })
        .collect();
    Tensor::from_vec(&SHAPE, v)
}

#[test]
fn one_pass_statistics_equal_the_interpreter() {
    let g = graph();
    for (offset, spread) in [(0.0, 1.0), (100.0, 0.01), (-3.0, 0.5)] {
        let inputs = HashMap::from([
            ("x0".to_string(), data(offset, spread, 1)),
            ("x1".to_string(), data(offset, spread, 2)),
        ]);
        let got = cpu::run(&g, &inputs, &HashMap::new(), &RunOptions::default()).expect("runs");
        let inputs64: HashMap<String, Tensor<f64>> = inputs
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    Tensor::from_vec(&t.shape, t.data.iter().map(|&v| v as f64).collect()),
                )
            })
            .collect();
        let want =
            interp::run(&g, &inputs64, &HashMap::new(), &RunOptions::default()).expect("runs");
        for (name, node) in &g.outputs {
            let w = want.get(*node).expect("computed");
            let gt = &got[name];
            let g64 = Tensor::from_vec(&gt.shape, gt.data.iter().map(|&v| v as f64).collect());
            compare::check(&g64, w, common::agree::F32)
                .unwrap_or_else(|m| panic!("offset {offset}, spread {spread}, {name}: {m}"));
            if name.starts_with("var") {
                assert!(gt.data.iter().all(|&v| v >= 0.0), "{name}: {:?}", gt.data);
                assert_eq!(gt.data[2], 0.0, "{name}: the constant channel's variance");
            }
        }
    }
}
