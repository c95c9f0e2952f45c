//! Turns between channel-first (NCHW) and channel-last (NHWC) samples for
//! the AMX convolutions (`conv_bf16`), whose kernels want channels last
//! while the executor keeps channels first.
//!
//! Why by hand: oneDNN's reorder from NCHW f32 into a strided bf16 layout
//! took 0.52 ms for 64 of fmnist_csnn's second-convolution inputs, more
//! than half the AMX convolution itself (a C program on the 2-core
//! machine, 2026-12-07). These work in 16 × 16 tiles of 32-bit values,
//! turned in registers with AVX-512 where the CPU has it (every CPU with
//! AMX does), element by element otherwise.

/// Tile edge: 16 f32 fill one AVX-512 register.
const TILE: usize = 16;

/// One sample's input `x` (ci × hw, f32, every value exact in bf16) as
/// channel-last bf16 over `copies`·ci channels in `out` (hw × copies·ci):
/// channel c + k·ci holds channel c, for k < copies.
pub fn to_channel_last_bf16(x: &[f32], ci: usize, hw: usize, copies: usize, out: &mut [u16]) {
    assert!(x.len() >= ci * hw && out.len() >= hw * copies * ci);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the features are present; the lengths are checked above.
        unsafe { avx512::to_channel_last_bf16(x, ci, hw, copies, out) };
        return;
    }
    to_channel_last_bf16_scalar(x, ci, hw, copies, out, [0, 0]);
}

/// One sample's output `y` (hw × co, f32, channel last) into `out`
/// (co × hw, channel first).
pub fn to_channel_first(y: &[f32], co: usize, hw: usize, out: &mut [f32]) {
    assert!(y.len() >= hw * co && out.len() >= co * hw);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature is present; the lengths are checked above.
        unsafe { avx512::to_channel_first(y, co, hw, out) };
        return;
    }
    to_channel_first_scalar(y, co, hw, out, [0, 0]);
}

/// The scalar turn of channels from `from[0]` and pixels from `from[1]`
/// on (the vector one's edges).
fn to_channel_last_bf16_scalar(
    x: &[f32],
    ci: usize,
    hw: usize,
    copies: usize,
    out: &mut [u16],
    from: [usize; 2],
) {
    let row = copies * ci;
    for c in 0..ci {
        let p0 = if c < from[0] { from[1] } else { 0 };
        for p in p0..hw {
            let b = (x[c * hw + p].to_bits() >> 16) as u16;
            for k in 0..copies {
                out[p * row + k * ci + c] = b;
            }
        }
    }
}

fn to_channel_first_scalar(y: &[f32], co: usize, hw: usize, out: &mut [f32], from: [usize; 2]) {
    for c in 0..co {
        let p0 = if c < from[0] { from[1] } else { 0 };
        for p in p0..hw {
            out[c * hw + p] = y[p * co + c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::TILE;
    use std::arch::x86_64::*;

    /// Transposes the 16 × 16 tile in `r` (row i in r[i]).
    #[target_feature(enable = "avx512f")]
    fn transpose(r: &mut [__m512; 16]) {
        // Within each 128-bit lane: pairs, then quads of rows.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            u[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
            u[4 * i + 1] = _mm512_shuffle_ps::<0xee>(t[4 * i], t[4 * i + 2]);
            u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
            u[4 * i + 3] = _mm512_shuffle_ps::<0xee>(t[4 * i + 1], t[4 * i + 3]);
        }
        // u[4i + j], lane k: column 4k + j of rows 4i..4i+3; the 128-bit
        // lanes of the four u[4i + j] (i = 0..3) turned 4 × 4.
        for j in 0..4 {
            let a = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
            let b = _mm512_shuffle_f32x4::<0xee>(u[j], u[4 + j]);
            let c = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
            let d = _mm512_shuffle_f32x4::<0xee>(u[8 + j], u[12 + j]);
            r[j] = _mm512_shuffle_f32x4::<0x88>(a, c);
            r[4 + j] = _mm512_shuffle_f32x4::<0xdd>(a, c);
            r[8 + j] = _mm512_shuffle_f32x4::<0x88>(b, d);
            r[12 + j] = _mm512_shuffle_f32x4::<0xdd>(b, d);
        }
    }

    /// # Safety
    /// `x` holds ci × hw values and `out` hw × copies·ci.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn to_channel_last_bf16(
        x: &[f32],
        ci: usize,
        hw: usize,
        copies: usize,
        out: &mut [u16],
    ) {
        let row = copies * ci;
        let (cv, pv) = (ci / TILE * TILE, hw / TILE * TILE);
        let mut r = [_mm512_setzero_ps(); 16];
        for c0 in (0..cv).step_by(TILE) {
            for p0 in (0..pv).step_by(TILE) {
                for (i, v) in r.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(x.as_ptr().add((c0 + i) * hw + p0));
                }
                transpose(&mut r);
                for (i, v) in r.iter().enumerate() {
                    // The upper half of each f32: the bf16 it equals.
                    let b = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(*v)));
                    let at = out.as_mut_ptr().add((p0 + i) * row + c0);
                    for k in 0..copies {
                        _mm256_storeu_si256(at.add(k * ci) as *mut __m256i, b);
                    }
                }
            }
        }
        super::to_channel_last_bf16_scalar(x, ci, hw, copies, out, [cv, pv]);
    }

    /// # Safety
    /// `y` holds hw × co values and `out` co × hw.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn to_channel_first(y: &[f32], co: usize, hw: usize, out: &mut [f32]) {
        let (cv, pv) = (co / TILE * TILE, hw / TILE * TILE);
        let mut r = [_mm512_setzero_ps(); 16];
        for p0 in (0..pv).step_by(TILE) {
            for c0 in (0..cv).step_by(TILE) {
                for (i, v) in r.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(y.as_ptr().add((p0 + i) * co + c0));
                }
                transpose(&mut r);
                for (i, v) in r.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add((c0 + i) * hw + p0), *v);
                }
            }
        }
        super::to_channel_first_scalar(y, co, hw, out, [cv, pv]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Channel and pixel counts with and without whole tiles.
    const SIZES: &[[usize; 2]] = &[[32, 196], [16, 16], [5, 7], [33, 49], [64, 20], [17, 256]];

    #[test]
    fn channel_last_bf16_equals_the_scalar_turn() {
        let mut r = crate::rng::Rng::new(3);
        for &[ci, hw] in SIZES {
            // Values exact in bf16: k/4.
            let x: Vec<f32> = (0..ci * hw)
                .map(|_| (r.uniform() * 5.0).floor() as f32 / 4.0)
                .collect();
            for copies in [1, 3] {
                let mut got = vec![0xffffu16; hw * copies * ci];
                let mut want = vec![0u16; hw * copies * ci];
                to_channel_last_bf16(&x, ci, hw, copies, &mut got);
                to_channel_last_bf16_scalar(&x, ci, hw, copies, &mut want, [0, 0]);
                assert_eq!(got, want, "ci {ci}, hw {hw}, copies {copies}");
                let (p, c) = (hw - 1, ci - 1);
                let v = f32::from_bits(u32::from(got[p * copies * ci + c]) << 16);
                assert_eq!(v, x[c * hw + p]);
            }
        }
    }

    #[test]
    fn channel_first_turns_back() {
        let mut r = crate::rng::Rng::new(4);
        for &[co, hw] in SIZES {
            let y: Vec<f32> = (0..hw * co).map(|_| r.uniform() as f32).collect();
            let mut got = vec![f32::NAN; co * hw];
            to_channel_first(&y, co, hw, &mut got);
            for c in 0..co {
                for p in 0..hw {
                    assert_eq!(got[c * hw + p], y[p * co + c], "co {co}, hw {hw}");
                }
            }
        }
    }
}
