//! Convolutions over sparse inputs as events (`snnc_conv_events`, taken by
//! the CPU executor when at most `exec::EVENT_DENSITY` of the input is
//! nonzero) compute what the reference interpreter computes.
//!
//! Tolerance (`common::agree::F32`, defined in `snnc::compare`): per
//! element, |got − want| ≤ 1e-4·S, S the output's largest magnitude,
//! against the f32 interpreter, the f64 interpreter arbitrating (as in
//! tests/cpu_exec.rs). The CPU form of the kernel equals its GPU form bit
//! for bit (tests/cpu_backend.rs).

mod common;

use proptest::prelude::*;
use snnc::codegen::cpu::Cpu;
use snnc::codegen::exec::Executor;
use snnc::interp::{self, RunOptions};
use snnc::ir::{Graph, Op};
use snnc::rng::Rng;
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// Each element nonzero with probability `density`, then in [-1, 1).
fn sparse(shape: &[usize], density: f64, seed: u64) -> Tensor<f32> {
    let mut r = Rng::new(seed);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            if r.uniform() < density {
                r.range(-1.0, 1.0) as f32
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(shape, data)
}

/// The executor's output with the event threshold `threshold` and a
/// convolution workspace of `workspace` floats, and how many convolutions
/// ran as events.
fn run(
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    threshold: f64,
    workspace: usize,
) -> (HashMap<String, Tensor<f32>>, usize) {
    let mut cpu = Cpu::new().unwrap();
    let mut ex = Executor::new(&mut cpu, g).unwrap();
    ex.event_density = threshold;
    ex.conv_workspace = workspace;
    let out = ex.run(inputs, params, &RunOptions::seeded(0)).unwrap();
    (out, ex.event_convs)
}

/// The forward of a convolution on an input `density` nonzero, as events,
/// against the interpreter.
fn check(
    (b, ci, h, w): (usize, usize, usize, usize),
    (co, k, stride, pad): (usize, usize, usize, usize),
    (density, workspace): (f64, usize),
    seed: u64,
) -> Result<(), String> {
    let x = [b, ci, h, w];
    let other = [co, ci, k, k];
    let op = Op::Conv2d {
        stride,
        padding: pad,
    };
    let g = Graph::single_op("test", op, &x, &other);
    let inputs = HashMap::from([("x".to_string(), sparse(&x, density, seed))]);
    let params = HashMap::from([("w".to_string(), sparse(&other, 1.0, seed + 1))]);
    let opts = RunOptions::seeded(0);
    let want = interp::run(&g, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    let (got, events) = run(&g, &inputs, &params, 1.0, workspace);
    if events != 1 {
        return Err(format!("{events} convolutions ran as events, not 1"));
    }
    common::agree::outputs_arbitrated(
        "events vs interpreter",
        &g,
        &inputs,
        &params,
        &opts,
        &got,
        &want,
        common::agree::F32,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Every geometry the DSL allows at small sizes (strides, paddings
    /// below the kernel, kernels up to the padded input) whose transposed
    /// weights fit the workspace, every density.
    #[test]
    fn event_convolutions_equal_the_interpreter(
        b in 1usize..4, ci in 1usize..5, h in 1usize..9, w in 1usize..9,
        co in 1usize..7, k in 1usize..4, stride in 1usize..3, pad in 0usize..3,
        density in 0.0f64..1.0, ws in 1usize..600, seed in 0u64..1000,
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k && pad < k);
        // The transposed weights go where a chunk's column matrix would
        // (the workspace cap sets the chunk): co ≤ cols·(samples per chunk).
        let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        let chunk = (ws / (ci * k * k * ho * wo)).clamp(1, b);
        prop_assume!(co <= ho * wo * chunk);
        check((b, ci, h, w), (co, k, stride, pad), (density, ws), seed)
            .map_err(TestCaseError::fail)?;
    }
}

/// The executor takes the event path by the input's density: at most
/// `EVENT_DENSITY` nonzero, and not above.
#[test]
fn the_density_picks_the_path() {
    let (x, wt) = ([4, 8, 10, 10], [6, 8, 3, 3]);
    let g = Graph::single_op(
        "test",
        Op::Conv2d {
            stride: 1,
            padding: 1,
        },
        &x,
        &wt,
    );
    let params = HashMap::from([("w".to_string(), sparse(&wt, 1.0, 1))]);
    let limit = snnc::codegen::exec::EVENT_DENSITY;
    for (density, events) in [(limit * 0.5, 1), (((1.0 + limit) / 2.0).min(0.95), 0)] {
        let inputs = HashMap::from([("x".to_string(), sparse(&x, density, 2))]);
        let (_, got) = run(&g, &inputs, &params, limit, 1 << 20);
        assert_eq!(got, events, "{density} nonzero");
    }
    // Off: never.
    let inputs = HashMap::from([("x".to_string(), sparse(&x, 0.01, 3))]);
    assert_eq!(run(&g, &inputs, &params, -1.0, 1 << 20).1, 0);
}
