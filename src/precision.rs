//! The precision of matrix products (`--precision`).
//!
//! Mixed precision in snnc is a property of the GEMMs only (linear layers
//! and convolutions, forward and backward): their operands are rounded to
//! TF32 or bf16 and the products accumulate in f32, which is what tensor
//! cores do (cuBLAS's `CUBLAS_COMPUTE_32F_FAST_TF32` and
//! `CUBLAS_COMPUTE_32F_FAST_16BF` compute types). Everything else — the
//! master weights, the optimizer state, the neuron state, the rate-mode
//! accumulators, batch norm and the loss — stays in f32, so every
//! generated kernel is the same in every precision.
//!
//! The CPU backend and the CUDA emulator round the operands with
//! [`Precision::round`] and run their f32 SGEMM; the reference interpreter
//! rounds the operands of the same ops. All three therefore agree to the
//! f32 accumulation order, and a bf16 run can be checked (and its accuracy
//! measured) without a GPU.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands (no tensor-core rounding).
    #[default]
    Fp32,
    /// Operands rounded to TF32: 10 mantissa bits, f32's exponent range.
    Tf32,
    /// Operands rounded to bfloat16: 7 mantissa bits, f32's exponent range.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Tf32, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The mantissa bits this precision drops from an f32 (23 explicit).
    fn dropped_bits(self) -> u32 {
        match self {
            Precision::Fp32 => 0,
            Precision::Tf32 => 13,
            Precision::Bf16 => 16,
        }
    }

    /// `x` rounded to this precision, to nearest with ties to even (the
    /// rounding of `__float2bfloat16_rn`), and returned as the f32 holding
    /// that value. NaN and infinities pass unchanged; a finite value past
    /// the largest one rounds to infinity, as the conversion does.
    pub fn round(self, x: f32) -> f32 {
        let d = self.dropped_bits();
        if d == 0 || !x.is_finite() {
            return x;
        }
        let bits = x.to_bits();
        let lsb = (bits >> d) & 1;
        let half = (1u32 << (d - 1)) - 1;
        // Adding just under half an ulp, plus the kept lsb, carries into the
        // kept bits exactly when the dropped part is over half, or is half
        // and the kept part is odd. A carry out of the mantissa increments
        // the exponent, which is the correct rounding too (up to infinity).
        f32::from_bits(bits.wrapping_add(half + lsb) & !((1u32 << d) - 1))
    }

    /// Rounds every element of `xs` in place.
    pub fn round_all(self, xs: &mut [f32]) {
        if self != Precision::Fp32 {
            for x in xs {
                *x = self.round(*x);
            }
        }
    }

    /// The relative size of half a unit in the last place of a rounded
    /// operand: the error each operand of a product carries.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Precision::Fp32 => f64::from(f32::EPSILON) / 2.0,
            p => 2f64.powi(-(24 - p.dropped_bits() as i32)),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`Precision`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision `{0}`; expected fp32, tf32 or bf16")]
pub struct UnknownPrecision(pub String);

impl std::str::FromStr for Precision {
    type Err = UnknownPrecision;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPrecision(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let p = Precision::Bf16;
        // 1 + 2⁻⁸ is half way between 1 and 1 + 2⁻⁷: ties go to the even 1.
        assert_eq!(p.round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2⁻⁸ is half way between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶: up.
        assert_eq!(p.round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Just over half rounds up, just under rounds down.
        assert_eq!(
            p.round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(p.round(1.0 + 2f32.powi(-8) - 2f32.powi(-20)), 1.0);
        assert_eq!(
            p.round(-1.0 - 2f32.powi(-8) - 2f32.powi(-20)),
            -1.0 - 2f32.powi(-7)
        );
        // A carry out of the mantissa moves to the next binade.
        assert_eq!(p.round(2.0 - 2f32.powi(-20)), 2.0);
        assert_eq!(p.round(f32::MAX), f32::INFINITY);
        assert!(p.round(f32::NAN).is_nan());
        assert_eq!(p.round(0.0), 0.0);
        // Spikes and small integers are exact.
        for v in [0.0f32, 1.0, -3.0, 255.0] {
            assert_eq!(p.round(v), v);
        }
    }

    #[test]
    fn rounding_error_is_within_half_an_ulp_and_idempotent() {
        let mut r = crate::rng::Rng::new(7);
        for p in Precision::ALL {
            for _ in 0..10_000 {
                let x = (r.range(-1.0, 1.0) * 10f64.powf(r.range(-6.0, 6.0))) as f32;
                let y = p.round(x);
                let err = (f64::from(y) - f64::from(x)).abs() / f64::from(x.abs());
                assert!(err <= p.unit_roundoff(), "{p}: {x} -> {y} ({err})");
                assert_eq!(p.round(y), y, "{p}: rounding {x} twice");
                // Bits below the kept mantissa are zero.
                assert_eq!(y.to_bits() & ((1u32 << p.dropped_bits()) - 1), 0);
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let e = "fp16".parse::<Precision>().unwrap_err();
        assert!(e.to_string().contains("fp32, tf32 or bf16"), "{e}");
    }
}
