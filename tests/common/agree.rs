//! The tests' one way to say two executions agree: `snnc::compare` (per
//! element, relative to `max(|want_i|, floor·S)`), over every output of a
//! graph, with the tolerances the tests state in their headers. The scale S
//! is what the value's rounding error is proportional to:
//! - a gradient (`grad:…`): the largest magnitude over all gradients;
//! - a batch mean (`bn_mean:P`): the larger of its own largest magnitude and
//!   the standard deviation of what it averages (`√max bn_var:P`);
//! - a batch variance (`bn_var:P`): its largest magnitude plus the largest
//!   squared mean (`E[x²]`, what a variance is computed from);
//! - any other output: its own largest magnitude.

use snnc::compare::{self, Tol};
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// f32 executions (CPU executor, fused plan, CUDA emulator) against the f32
/// interpreter: every element within 1e-4·S of the reference. Finer,
/// per-element relative bounds do not hold in f32: sums that cancel (a
/// bias before batch norm, a weight gradient over T·B terms of both signs)
/// carry rounding noise of the terms' size, not the result's.
pub const F32: Tol = Tol::new(1e-4, 1.0);

/// Every output named in `want` agrees in `got` under `tol`; else the first
/// output (in name order) that does not, and where.
pub fn outputs<F: num_traits::Float>(
    what: &str,
    got: &HashMap<String, Tensor<F>>,
    want: &HashMap<String, Tensor<F>>,
    tol: Tol,
) -> Result<(), String> {
    let scales = scales(want);
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    for name in names {
        let got = got
            .get(name)
            .ok_or_else(|| format!("{what}: output {name} missing"))?;
        let scale = scales[name];
        compare::check_scaled(got, &want[name], tol, scale)
            .map_err(|m| format!("{what} {name}: {m} [{tol}, S = {scale:e}]"))?;
    }
    Ok(())
}

/// The scale S of each output (see the module documentation).
fn scales<F: num_traits::Float>(want: &HashMap<String, Tensor<F>>) -> HashMap<String, f64> {
    let is_grad = |name: &str| name.starts_with("grad:");
    let grad_scale = want
        .iter()
        .filter(|(name, _)| is_grad(name))
        .map(|(_, t)| compare::max_abs(t))
        .fold(0.0, f64::max);
    want.iter()
        .map(|(name, w)| {
            let own = compare::max_abs(w);
            let scale = if is_grad(name) {
                grad_scale
            } else if let Some(path) = name.strip_prefix("bn_mean:") {
                let var = want.get(&format!("bn_var:{path}"));
                own.max(var.map_or(0.0, |v| compare::max_abs(v).sqrt()))
            } else if let Some(path) = name.strip_prefix("bn_var:") {
                let mean = want.get(&format!("bn_mean:{path}"));
                own + mean.map_or(0.0, |m| compare::max_abs(m).powi(2))
            } else {
                own
            };
            (name.clone(), scale)
        })
        .collect()
}

/// `outputs` of an f32 execution `got` of graph `g` against the f32
/// interpreter's values `want`; where they disagree, the f64 interpreter
/// (on the same f32 inputs and parameters) arbitrates with
/// `snnc::compare::check_arbitrated`: each element within `tol` of the
/// exact value, or at most 4× as far from it as the f32 interpreter is.
/// The f32 interpreter is itself an approximation: a gradient that cancels
/// to zero through a batch norm over a few samples carries rounding noise
/// larger than `tol·S` in both f32 runs.
pub fn outputs_arbitrated(
    what: &str,
    g: &snnc::ir::Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &snnc::interp::RunOptions,
    got: &HashMap<String, Tensor<f32>>,
    want: &snnc::interp::Values<f32>,
    tol: Tol,
) -> Result<(), String> {
    let named = |vals: &snnc::interp::Values<f32>| -> HashMap<String, Tensor<f32>> {
        g.outputs
            .iter()
            .map(|(name, n)| (name.clone(), vals.get(*n).unwrap().clone()))
            .collect()
    };
    let want = named(want);
    let Err(e32) = outputs(what, got, &want, tol) else {
        return Ok(());
    };
    let cast = |m: &HashMap<String, Tensor<f32>>| -> HashMap<String, Tensor<f64>> {
        m.iter()
            .map(|(k, v)| (k.clone(), v.cast::<f64>()))
            .collect()
    };
    let exact = snnc::interp::run(g, &cast(inputs), &cast(params), opts)
        .map_err(|e| format!("{e32}; the f64 interpreter failed: {e}"))?;
    let scales = scales(&want);
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    for name in names {
        let n = g.outputs.iter().find(|(k, _)| k == name).unwrap().1;
        let x = exact.get(n).unwrap().cast::<f32>();
        let got = got
            .get(name)
            .ok_or_else(|| format!("{what}: output {name} missing"))?;
        compare::check_arbitrated(got, &want[name], &x, tol, scales[name]).map_err(|m| {
            format!(
                "{e32}; against the f64 interpreter: {name}: {m} [{tol}, or ≤ {}× the f32 interpreter's own error, S = {:e}]",
                compare::ARBITRATE_FACTOR,
                scales[name]
            )
        })?;
    }
    Ok(())
}
