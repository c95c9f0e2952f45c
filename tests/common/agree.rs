//! The tests' one way to say two executions agree: `snnc::compare` (per
//! element, relative to `max(|want_i|, floor·max|want|)`), over every output
//! of a graph, with the tolerances the tests state in their headers.

use snnc::compare::{self, Tol};
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// f32 executions (CPU executor, fused plan, CUDA emulator) against the f32
/// interpreter: relative 1e-4 per element, elements below 1e-3 of the
/// output's largest magnitude compared against that magnitude.
pub const F32: Tol = Tol::new(1e-4, 1e-3);

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
    for name in names {
        let got = got
            .get(name)
            .ok_or_else(|| format!("{what}: output {name} missing"))?;
        compare::check(got, &want[name], tol)
            .map_err(|m| format!("{what} {name}: {m} [{tol}]"))?;
    }
    Ok(())
}
