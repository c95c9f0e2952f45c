//! What "agrees" means, defined once: every comparison of two executions
//! (interpreter, CPU executor, fused plan, CUDA backend) goes through here.
//!
//! **Per element, relative to a stated scale.** Element i of `got` agrees
//! with `want` when
//!
//! ```text
//! |got_i − want_i| ≤ rel · max(|want_i|, floor · max_j |want_j|)
//! ```
//!
//! `rel` is the relative tolerance; `floor` says how far below the tensor's
//! largest magnitude an element is still compared relative to itself. Below
//! that, rounding of the large terms that cancelled to give a small result
//! dominates, so the element is compared relative to `floor · max|want|`
//! instead. A tensor of zeros must be matched exactly.
//!
//! **Spike ties.** A spike is a discontinuity: a membrane potential within
//! rounding of the threshold fires in one execution and not in the other,
//! and everything downstream differs by O(1). No tolerance can absorb that,
//! so it is handled before comparing: [`near_tie`] finds a spike input within
//! [`TIE`] (relative to `1 + |θ|`) of its threshold in the reference run,
//! and callers skip such a case, count it and say so — they never widen the
//! tolerance for it.

use crate::interp::Values;
use crate::ir::{Graph, Op};
use crate::tensor::Tensor;
use num_traits::Float;
use petgraph::stable_graph::NodeIndex;
use std::fmt;

/// A tolerance: relative `rel`, with elements below `floor · S` compared
/// against that scale, and never against less than `abs` (see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub rel: f64,
    pub floor: f64,
    /// An absolute floor under the scale: a tensor that is all rounding
    /// noise (the batch variance of a constant channel, 0 on one side and
    /// 1e-14 on the other) is compared in absolute terms. 0 for none.
    pub abs: f64,
}

impl Tol {
    pub const fn new(rel: f64, floor: f64) -> Tol {
        Tol {
            rel,
            floor,
            abs: 0.0,
        }
    }

    /// The same tolerance with an absolute floor.
    pub const fn with_abs(self, abs: f64) -> Tol {
        Tol { abs, ..self }
    }
}

impl fmt::Display for Tol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "|got − want| ≤ {:e}·max(|want|, {:e}·S{}) per element",
            self.rel,
            self.floor,
            if self.abs > 0.0 {
                format!(", {:e}", self.abs)
            } else {
                String::new()
            }
        )
    }
}

/// The first element that does not agree, and how far off the worst one is.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// Flat index of the first failing element (`usize::MAX`: shapes differ).
    pub index: usize,
    pub got: f64,
    pub want: f64,
    /// The scale the floor is relative to (`max_j |want_j|` by default).
    pub scale: f64,
    /// Elements that fail.
    pub count: usize,
    /// Largest error over all elements, in units of the allowed error
    /// (1 = exactly at the tolerance).
    pub worst: f64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == usize::MAX {
            return write!(f, "shapes differ");
        }
        write!(
            f,
            "element {}: got {} want {} (scale {}; {} element(s) fail, worst at {:.1}× the tolerance)",
            self.index, self.got, self.want, self.scale, self.count, self.worst
        )
    }
}

/// `max_j |t_j|` over the finite elements: the scale [`check`] uses.
pub fn max_abs<F: Float>(t: &Tensor<F>) -> f64 {
    t.data
        .iter()
        .map(|v| v.to_f64().unwrap_or(f64::NAN).abs())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

/// The error of each element in units of the allowed error: ≤ 1 agrees.
/// Non-finite values agree only with the identical value.
fn errors<'a, F: Float>(
    got: &'a [F],
    want: &'a [F],
    tol: Tol,
    scale: f64,
) -> impl Iterator<Item = f64> + 'a {
    let base = (tol.floor * scale).max(tol.abs);
    let it = got.iter().zip(want).map(move |(&g, &w)| {
        let (g, w) = (
            g.to_f64().unwrap_or(f64::NAN),
            w.to_f64().unwrap_or(f64::NAN),
        );
        if g == w {
            return 0.0;
        }
        if !g.is_finite() || !w.is_finite() {
            return f64::INFINITY;
        }
        let allowed = tol.rel * w.abs().max(base);
        if allowed == 0.0 {
            f64::INFINITY
        } else {
            (g - w).abs() / allowed
        }
    });
    it
}

/// Checks `got` against `want` under `tol`, with `want`'s own largest
/// magnitude as the scale (see the module documentation).
pub fn check<F: Float>(got: &Tensor<F>, want: &Tensor<F>, tol: Tol) -> Result<(), Mismatch> {
    check_scaled(got, want, tol, max_abs(want))
}

/// [`check`] with the scale given: for tensors compared as a group, the
/// largest magnitude in the group. A gradient that is zero in exact
/// arithmetic (a bias before batch norm) comes out as rounding noise of the
/// terms that cancelled; measured against its own size that noise is 100 %
/// off, against the group's scale it is as small as everywhere else.
pub fn check_scaled<F: Float>(
    got: &Tensor<F>,
    want: &Tensor<F>,
    tol: Tol,
    scale: f64,
) -> Result<(), Mismatch> {
    let errs = errors(&got.data, &want.data, tol, scale);
    first_mismatch(got, want, scale, errs)
}

/// How many times the f32 reference's own error an execution may be off
/// when the exact value arbitrates ([`check_arbitrated`]).
pub const ARBITRATE_FACTOR: f64 = 4.0;

/// Checks an f32 execution `got` against `exact` (the f64 interpreter on
/// the same inputs) where it disagreed with the f32 `reference`: element i
/// agrees when
///
/// ```text
/// |got_i − exact_i| ≤ max(rel · max(|exact_i|, floor · S), 4 · |reference_i − exact_i|)
/// ```
///
/// An execution under test need not be more accurate than the reference
/// it is tested against, only comparably so: where the computation is
/// ill-conditioned (a gradient that cancels to zero through a batch norm
/// over three samples), the f32 reference itself is off by more than
/// `tol`, and the execution passes when it is off by at most four times as
/// much (the factor the CUDA check uses for the same question).
pub fn check_arbitrated<F: Float>(
    got: &Tensor<F>,
    reference: &Tensor<F>,
    exact: &Tensor<F>,
    tol: Tol,
    scale: f64,
) -> Result<(), Mismatch> {
    if reference.shape != exact.shape || reference.data.len() != exact.data.len() {
        return check_scaled(got, exact, tol, scale);
    }
    let f = |v: &F| v.to_f64().unwrap_or(f64::NAN);
    let errs = errors(&got.data, &exact.data, tol, scale)
        .zip(got.data.iter().zip(&reference.data).zip(&exact.data))
        .map(|(e, ((g, r), x))| {
            let (g, r, x) = (f(g), f(r), f(x));
            let own = ARBITRATE_FACTOR * (r - x).abs();
            if e <= 1.0 || !own.is_finite() || own == 0.0 {
                e
            } else {
                e.min((g - x).abs() / own)
            }
        });
    first_mismatch(got, exact, scale, errs)
}

/// The first element whose error (in units of the allowed error) exceeds
/// 1, with the count and the worst; shapes that differ are a mismatch.
fn first_mismatch<F: Float>(
    got: &Tensor<F>,
    want: &Tensor<F>,
    scale: f64,
    errs: impl Iterator<Item = f64>,
) -> Result<(), Mismatch> {
    if got.shape != want.shape || got.data.len() != want.data.len() {
        return Err(Mismatch {
            index: usize::MAX,
            got: f64::NAN,
            want: f64::NAN,
            scale: f64::NAN,
            count: got.data.len().max(want.data.len()),
            worst: f64::INFINITY,
        });
    }
    let (mut first, mut count, mut worst) = (None, 0usize, 0f64);
    for (i, e) in errs.enumerate() {
        // A NaN error counts as a failure.
        if e.is_nan() || e > 1.0 {
            first.get_or_insert(i);
            count += 1;
            worst = if e.is_nan() {
                f64::INFINITY
            } else {
                worst.max(e)
            };
        }
    }
    match first {
        None => Ok(()),
        Some(i) => Err(Mismatch {
            index: i,
            got: got.data[i].to_f64().unwrap_or(f64::NAN),
            want: want.data[i].to_f64().unwrap_or(f64::NAN),
            scale,
            count,
            worst,
        }),
    }
}

/// The largest per-element error relative to `max(|want_i|, floor ·
/// max|want|, abs)`: the smallest `rel` for which [`check`] passes with
/// this `floor` and `abs` (infinite when shapes differ or a value is
/// non-finite).
pub fn rel_err<F: Float>(got: &Tensor<F>, want: &Tensor<F>, floor: f64, abs: f64) -> f64 {
    if got.shape != want.shape || got.data.len() != want.data.len() {
        return f64::INFINITY;
    }
    let tol = Tol::new(1.0, floor).with_abs(abs);
    let errs = errors(&got.data, &want.data, tol, max_abs(want));
    errs.fold(
        0.0,
        |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
    )
}

/// A spike decided by rounding: its input lies within `TIE · (1 + |θ|)` of
/// the threshold θ. f32 executions that sum in different orders differ by
/// a few ulps of the sum's terms (≈ 1e-6 relative); 1e-5 leaves a margin.
pub const TIE: f64 = 1e-5;

/// The first spike node of `g` (in node order) whose input, in `values` (a
/// reference run of `g`), lies within [`TIE`] of its threshold, with the
/// distance: a case another execution may legitimately decide differently.
pub fn near_tie<F: Float>(g: &Graph, values: &Values<F>) -> Option<(NodeIndex, f64)> {
    for n in g.g.node_indices() {
        let Op::Spike { theta, .. } = g.node(n).op else {
            continue;
        };
        let Some(&u) = g.operands(n).first() else {
            continue;
        };
        let Some(t) = values.get(u) else { continue };
        let margin = TIE * (1.0 + theta.abs());
        let closest = t
            .data
            .iter()
            .map(|v| (v.to_f64().unwrap_or(f64::NAN) - theta).abs())
            .fold(f64::INFINITY, f64::min);
        if closest <= margin {
            return Some((n, closest));
        }
    }
    None
}

/// A batch norm in the reference run that normalises a channel whose
/// batch variance is below its `eps`: the node and the smallest variance.
/// Normalising divides by `sqrt(var + eps) < sqrt(2·eps)` (≈ 4.5e-3 at the
/// default eps), so it multiplies the rounding noise of whatever is
/// computed from that channel — the forward's centred values and, in the
/// backward, the input gradient, which is zero in exact arithmetic when the
/// channel is constant — by more than 200, and by the product when such
/// batch norms follow each other. Like a spike tie, no tolerance on the
/// outputs describes that; callers that find outputs disagreeing skip such
/// a case and say so.
pub fn degenerate_norm<F: Float>(g: &Graph, values: &Values<F>) -> Option<(NodeIndex, f64)> {
    for n in g.g.node_indices() {
        let Op::Normalize { eps } = g.node(n).op else {
            continue;
        };
        let Some(&var) = g.operands(n).get(2) else {
            continue;
        };
        let Some(t) = values.get(var) else { continue };
        let least = t
            .data
            .iter()
            .map(|v| v.to_f64().unwrap_or(f64::NAN))
            .fold(f64::INFINITY, f64::min);
        if least < eps {
            return Some((n, least));
        }
    }
    None
}

/// Why a case whose outputs disagree is ill-conditioned rather than wrong
/// ([`near_tie`], [`degenerate_norm`]), in words; `None` when it is not.
pub fn ill_conditioned<F: Float>(g: &Graph, values: &Values<F>) -> Option<String> {
    if let Some((n, d)) = near_tie(g, values) {
        return Some(format!(
            "spike tie: node {} within {d:e} of its threshold",
            n.index()
        ));
    }
    degenerate_norm(g, values).map(|(n, v)| {
        format!(
            "degenerate batch norm: node {} normalises a channel of variance {v:e} < eps",
            n.index()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor<f64> {
        Tensor::from_vec(&[v.len()], v.to_vec())
    }

    #[test]
    fn relative_per_element_not_absolute() {
        // 1e-5 off on an element of 1e-3 is 1 % relative: the old absolute
        // rule `1e-4·(1 + max)` accepted it.
        let tol = Tol::new(1e-4, 1e-3);
        assert!(check(&t(&[1e-3, 1.0]), &t(&[1e-3 + 1e-5, 1.0]), tol).is_err());
        assert!(check(&t(&[1e-3, 1.0]), &t(&[1e-3 * (1.0 + 5e-5), 1.0]), tol).is_ok());
        // Below floor·max, the scale is floor·max: 1e-8 off on 1e-6 passes
        // (allowed 1e-4 · 1e-3 · 1 = 1e-7).
        assert!(check(&t(&[1e-6, 1.0]), &t(&[1e-6 + 1e-8, 1.0]), tol).is_ok());
        assert!(check(&t(&[1e-6, 1.0]), &t(&[1e-6 + 1e-6, 1.0]), tol).is_err());
    }

    #[test]
    fn no_absolute_slack_for_small_tensors() {
        // The tests' f32 rule, 1e-4 of the tensor's scale: a tensor of size
        // 1e-2 off by 5e-5 is 0.5 % off. The rule it replaced,
        // `|p − q| ≤ 1e-4·(1 + max|want|)`, accepted that.
        let tol = Tol::new(1e-4, 1.0);
        assert!(check(&t(&[1e-2, 0.0]), &t(&[1e-2 + 5e-5, 0.0]), tol).is_err());
        assert!(check(&t(&[1e-2, 0.0]), &t(&[1e-2 + 5e-7, 0.0]), tol).is_ok());
        // Every element is held to the same scale: 5e-7 off on a zero.
        assert!(check(&t(&[1e-2, 5e-7]), &t(&[1e-2, 0.0]), tol).is_ok());
        assert!(check(&t(&[1e-2, 5e-6]), &t(&[1e-2, 0.0]), tol).is_err());
    }

    #[test]
    fn zeros_nan_and_shapes() {
        let tol = Tol::new(1e-4, 1e-3);
        assert!(check(&t(&[0.0, 0.0]), &t(&[0.0, 0.0]), tol).is_ok());
        assert!(check(&t(&[0.0, 1e-30]), &t(&[0.0, 0.0]), tol).is_err());
        assert!(check(&t(&[f64::NAN]), &t(&[1.0]), tol).is_err());
        assert!(check(&t(&[1.0]), &t(&[f64::NAN]), tol).is_err());
        assert!(check(&t(&[1.0, 2.0]), &t(&[1.0]), tol).is_err());
        let m = check(&t(&[1.0, 3.0, 2.0]), &t(&[1.0, 2.0, 3.0]), tol).unwrap_err();
        assert_eq!((m.index, m.count, m.scale), (1, 2, 3.0));
        assert!((rel_err(&t(&[1.0, 2.2]), &t(&[1.0, 2.0]), 1e-3, 0.0) - 0.1).abs() < 1e-12);
        // The absolute floor: 1e-14 against 0 is no error at abs 1e-9.
        assert!(rel_err(&t(&[1e-14]), &t(&[0.0]), 1e-3, 1e-9) < 1e-4);
        assert!(check(&t(&[1e-14]), &t(&[0.0]), Tol::new(1e-4, 1e-3)).is_err());
    }

    #[test]
    fn arbitration_allows_four_times_the_references_own_error() {
        let tol = Tol::new(1e-4, 1.0);
        let exact = t(&[0.0, 1.0]);
        // The reference is 5e-4 off on a zero (5× the tolerance at S = 1):
        // up to 2e-3 off passes, more fails, and elements the reference got
        // right keep the plain tolerance.
        let reference = t(&[-5e-4, 1.0]);
        assert!(check_arbitrated(&t(&[1.9e-3, 1.0]), &reference, &exact, tol, 1.0).is_ok());
        let m = check_arbitrated(&t(&[2.1e-3, 1.0]), &reference, &exact, tol, 1.0).unwrap_err();
        assert_eq!((m.index, m.count), (0, 1));
        assert!(check_arbitrated(&t(&[0.0, 1.0 + 2e-4]), &reference, &exact, tol, 1.0).is_err());
        assert!(check_arbitrated(&t(&[0.0, 1.0 + 5e-5]), &reference, &exact, tol, 1.0).is_ok());
        assert!(check_arbitrated(&t(&[f64::NAN, 1.0]), &reference, &exact, tol, 1.0).is_err());
    }
}
