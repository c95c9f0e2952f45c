//! Small conversions the interpreter's forward and backward ops share.

use crate::ir::scalar_eval::ScalarError;
use num_traits::Float;

/// Converts an op's f64 attribute to the element type.
pub(super) fn constant<F: Float>(c: f64) -> Result<F, ScalarError> {
    F::from(c).ok_or(ScalarError::Constant(c))
}

/// An element count as `F` (exact up to 2^24 in f32, which covers any
/// count the interpreter is realistically run on).
pub(super) fn count<F: Float>(n: usize) -> F {
    F::from(n).expect("usize converts to a float")
}

/// Product of the axes after the first two: the extent of one (batch,
/// channel) or (batch, time) slab in row-major order.
pub(super) fn inner(shape: &[usize]) -> usize {
    shape[2..].iter().product()
}
