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
//!
//! Where the machine has AMX, convolutions of spikes whose outputs a mean
//! reads sum Σx and Σx² as they write them (`codegen/cpu/conv_bf16.rs`)
//! and the mean does not read those outputs again: the statistics over
//! such outputs, mixed with one whose input is not spikes (its
//! convolution runs on the f32 kernels and the mean reads it), equal the
//! interpreter's within the same tolerance. Without AMX that test runs
//! every operand through the mean's pass and says so.

mod common;

use snnc::codegen::cpu;
use snnc::codegen::cpu::conv;
use snnc::codegen::exec::Executor;
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

fn to64(t: &Tensor<f32>) -> Tensor<f64> {
    Tensor::from_vec(&t.shape, t.data.iter().map(|&v| v as f64).collect())
}

#[test]
fn statistics_of_convolutions_that_summed_them_equal_the_interpreter() {
    let (x_shape, w_shape) = ([4, 32, 14, 14], [64, 32, 3, 3]);
    let mut g = Graph::new("conv_moments", 3, x_shape[0]);
    let w = g.add_leaf(Op::Input { name: "w".into() }, &w_shape, Role::Input);
    let conv = Op::Conv2d {
        stride: 1,
        padding: 1,
    };
    let ys: Vec<_> = ["x0", "x1", "x2"]
        .iter()
        .map(|&name| {
            let x = g.add_leaf(Op::Input { name: name.into() }, &x_shape, Role::Input);
            g.add_op("t", conv.clone(), None, None, Role::Forward, &[x, w])
        })
        .collect();
    let m = g.add_op("t", Op::ChannelMean, None, None, Role::Output, &ys);
    let mut operands = vec![m];
    operands.extend(&ys);
    let v = g.add_op("t", Op::ChannelVar, None, None, Role::Output, &operands);
    g.outputs.push(("mean".into(), m));
    g.outputs.push(("var".into(), v));
    let n: usize = x_shape.iter().product();
    let mut r = snnc::rng::Rng::new(7);
    // x0 and x1 spikes and window averages (exact in bf16), x2 not.
    let mut spikes = || -> Vec<f32> {
        (0..n)
            .map(|_| ((r.uniform() * 10.0 - 5.0).max(0.0).floor() / 4.0) as f32)
            .collect()
    };
    let (x0, x1) = (spikes(), spikes());
    let x2: Vec<f32> = (0..n).map(|_| r.uniform() as f32 + 0.3).collect();
    let wv: Vec<f32> = (0..w_shape.iter().product())
        .map(|_| r.uniform() as f32 * 0.2 - 0.1)
        .collect();
    let inputs = HashMap::from([
        ("x0".to_string(), Tensor::from_vec(&x_shape, x0)),
        ("x1".to_string(), Tensor::from_vec(&x_shape, x1)),
        ("x2".to_string(), Tensor::from_vec(&x_shape, x2)),
        ("w".to_string(), Tensor::from_vec(&w_shape, wv)),
    ]);
    let mut cpu = cpu::Cpu::new().expect("the CPU backend builds");
    let mut ex = Executor::new(&mut cpu, &g).expect("plans");
    let got = ex
        .run(&inputs, &HashMap::new(), &RunOptions::default())
        .expect("runs");
    let summed = ex.conv_summed;
    let inputs64: HashMap<String, Tensor<f64>> =
        inputs.iter().map(|(k, t)| (k.clone(), to64(t))).collect();
    let want = interp::run(&g, &inputs64, &HashMap::new(), &RunOptions::default()).expect("runs");
    for (name, node) in &g.outputs {
        let w = want.get(*node).expect("computed");
        compare::check(&to64(&got[name]), w, common::agree::F32)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    match conv::amx() {
        Ok(_) if conv::available() => assert_eq!(summed, 2, "the two spike convolutions"),
        Ok(_) => println!("no oneDNN convolutions here: the mean read every operand"),
        Err(why) => {
            println!("no AMX convolutions here ({why}): the mean read every operand");
            assert_eq!(summed, 0);
        }
    }
}
