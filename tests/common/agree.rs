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
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    let is_grad = |name: &str| name.starts_with("grad:");
    let grad_scale = want
        .iter()
        .filter(|(name, _)| is_grad(name))
        .map(|(_, t)| compare::max_abs(t))
        .fold(0.0, f64::max);
    for name in names {
        let got = got
            .get(name)
            .ok_or_else(|| format!("{what}: output {name} missing"))?;
        let w = &want[name];
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
        compare::check_scaled(got, w, tol, scale)
            .map_err(|m| format!("{what} {name}: {m} [{tol}, S = {scale:e}]"))?;
    }
    Ok(())
}
