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

/// [`to_channel_first`] through `turned` (a buffer that stays in cache),
/// copied to `out` with non-temporal stores, where `out` is 64-byte
/// aligned and the CPU has AVX-512: whole lines are written without being
/// read first, where the turn straight into `out` wrote 64 bytes at a time
/// across two lines of 64 channel planes. fmnist_csnn's second convolution
/// took 8.6–9.6 ms against 10.4–15.1 ms for a rate step's 4 calls (4
/// alternating runs, `SNNC_PROFILE`, 2026-12-08); the kernel that reads
/// the output next was no slower. Elsewhere, straight into `out`. The
/// caller fences ([`fence`]) before another thread reads `out`.
pub fn to_channel_first_streamed(
    y: &[f32],
    co: usize,
    hw: usize,
    out: &mut [f32],
    turned: &mut Vec<f32>,
) {
    if streams(out) {
        turned.resize(co * hw, 0.0);
        to_channel_first(y, co, hw, turned);
        stream_copy(turned, &mut out[..co * hw]);
        return;
    }
    to_channel_first(y, co, hw, out);
}

/// Whether [`stream_copy`] into `out` streams: `out` is 64-byte aligned
/// and the CPU has AVX-512.
pub fn streams(out: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (out.as_ptr() as usize).is_multiple_of(64) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Copies `from` into `out` (as long), with non-temporal stores where
/// [`streams`] says so (the caller fences, [`fence`], before another
/// thread reads `out`), else with plain ones.
pub fn stream_copy(from: &[f32], out: &mut [f32]) {
    assert_eq!(from.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if streams(out) {
        // SAFETY: the feature is present; `out` is aligned, as long.
        unsafe { avx512::stream_copy(from, out) };
        return;
    }
    out.copy_from_slice(from);
}

/// Orders this thread's non-temporal stores before its later stores.
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
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
    /// `out` is 64-byte aligned and as long as `from`; the caller fences.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn stream_copy(from: &[f32], out: &mut [f32]) {
        let whole = from.len() / TILE * TILE;
        for i in (0..whole).step_by(TILE) {
            _mm512_stream_ps(
                out.as_mut_ptr().add(i),
                _mm512_loadu_ps(from.as_ptr().add(i)),
            );
        }
        out[whole..].copy_from_slice(&from[whole..]);
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
    fn streamed_turns_equal_the_plain_turn() {
        let mut r = crate::rng::Rng::new(5);
        let mut turned = Vec::new();
        for &[co, hw] in SIZES {
            let y: Vec<f32> = (0..hw * co).map(|_| r.uniform() as f32).collect();
            let mut want = vec![f32::NAN; co * hw];
            to_channel_first(&y, co, hw, &mut want);
            // An aligned output (streamed) and one 4 bytes off (plain).
            #[derive(Clone, Copy)]
            #[repr(C, align(64))]
            struct Line([f32; 16]);
            let mut lines = vec![Line([0.0; 16]); (co * hw).div_ceil(16) + 1];
            for off in [0, 1] {
                // SAFETY: the lines hold 16 floats each, contiguous.
                let flat = unsafe {
                    std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut f32, lines.len() * 16)
                };
                let out = &mut flat[off..off + co * hw];
                assert_eq!((out.as_ptr() as usize).is_multiple_of(64), off == 0);
                out.fill(f32::NAN);
                to_channel_first_streamed(&y, co, hw, out, &mut turned);
                fence();
                assert!(out == want.as_slice(), "co {co}, hw {hw}, offset {off}");
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
