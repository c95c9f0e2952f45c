//! What the AMX paths share (`conv_bf16`, `gemm_bf16`): the `SNNC_AMX`
//! switch and the bf16 arithmetic that makes their results f32-accurate.
//!
//! A product whose one operand bf16 holds exactly (spikes, 0 or 1, and
//! their window averages k/4) runs on AMX's bf16 tiles with the other
//! operand split into three bf16 parts, v = hi + mid + lo, each the
//! rounding of what the parts before it leave: the three hold 3 × 8
//! significant bits plus signs, all of f32's 24, so each product of the
//! exact operand with a part is exact and the sums are f32's.

use std::sync::OnceLock;

/// How many bf16 parts hold an f32.
pub const PARTS: usize = 3;

/// Whether `SNNC_AMX` lets products of bf16-exact operands run on AMX:
/// unset or `on`; `off` keeps everything on the f32 kernels; another value
/// is an error. Read once per process.
pub fn enabled() -> Result<bool, String> {
    static ON: OnceLock<Result<bool, String>> = OnceLock::new();
    ON.get_or_init(
        || match std::env::var("SNNC_AMX").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("on") => Ok(true),
            Ok("off") => Ok(false),
            Ok(other) => Err(format!("SNNC_AMX=`{other}` is neither `on` nor `off`")),
        },
    )
    .clone()
}

/// `v` rounded to the nearest bf16 (ties to even), as bits.
pub fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// `v`'s three bf16 parts, largest first.
pub fn split(v: f32) -> [u16; PARTS] {
    let mut rest = v;
    [0; PARTS].map(|_| {
        let part = to_bf16(rest);
        rest -= from_bf16(part);
        part
    })
}

/// Whether every element of `x` is exact in bf16 (the low 16 bits of
/// each f32 zero).
pub fn exact_in_bf16(x: &[f32]) -> bool {
    x.iter().fold(0u32, |low, v| low | (v.to_bits() & 0xffff)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_parts_hold_every_f32() {
        let mut r = crate::rng::Rng::new(7);
        for i in 0..10_000 {
            let v = match i {
                // 1 + 2⁻⁹ + 2⁻²³: one bit in each part.
                0 => 1.0 + 2f32.powi(-9) + f32::EPSILON,
                1 => 1.0 + f32::EPSILON,
                2 => -3.999_999_8,
                _ => ((r.uniform() * 2.0 - 1.0) * 10f64.powi(i % 9 - 4)) as f32,
            };
            let parts = split(v);
            // Smallest first: each partial sum is exact in f32.
            let sum = from_bf16(parts[2]) + from_bf16(parts[1]) + from_bf16(parts[0]);
            assert_eq!(sum, v, "{v:e}: {parts:?}");
            // Two parts do not hold it.
            if i == 0 {
                assert_ne!(from_bf16(parts[1]) + from_bf16(parts[0]), v);
            }
        }
    }

    #[test]
    fn exactness_is_the_low_half_of_the_bits() {
        assert!(exact_in_bf16(&[0.0, 1.0, 0.25, 0.75, -0.5, 3.0 / 64.0]));
        assert!(!exact_in_bf16(&[0.0, 1.0, 0.1]));
        assert!(!exact_in_bf16(&[1.0 + f32::EPSILON]));
    }
}
