//! Forward convolutions and weight gradients of one-input-channel layers
//! (a grayscale image's first convolution), written directly with AVX-512:
//! 16 output columns per register, each a sum of k² broadcast weights
//! times shifted rows of the zero-padded input, which stays in L1.
//!
//! Why: with one input channel a convolution is k² multiply-adds per
//! output, too few for oneDNN's blocked kernels, which ran fmnist_csnn's
//! first convolution (batch 128, 1 → 32 channels, 28×28, 3×3) at
//! 38–46 GFLOP/s forward and weight gradient (`SNNC_PROFILE` on the 2-core
//! machine, 2026-12-08); the forward is bound by writing its output. The
//! forward also sums its output's per-channel moments (Σx, Σx² in double)
//! while each vector is in a register, for the batch norm that follows,
//! as the AMX path does (`conv_bf16`).
//!
//! Threads: as the library path (`conv`), the samples are split over
//! rayon's workers in parts fixed by their number; a weight gradient's and
//! the moments' parts are added in part order, so the results depend only
//! on the number of workers.

use super::layout;
use crate::codegen::backend::{ConvCall, ConvPass};
use rayon::prelude::*;

/// Output columns per vector.
const LANES: usize = 16;

/// Whether this path runs `call`: one input channel, stride 1, a 3×3,
/// 5×5 or 7×7 filter, and a CPU with AVX-512 (forward and weight
/// gradient; the input gradient of a first layer is not needed, and other
/// shapes go to oneDNN).
pub fn takes(call: &ConvCall) -> bool {
    call.ci == 1
        && call.stride == 1
        && matches!(call.k, 3 | 5 | 7)
        && call.ho > 0
        && call.wo > 0
        && call.pass != ConvPass::GradInput
        && call.ho + call.k == call.h + 2 * call.pad + 1
        && call.wo + call.k == call.w + 2 * call.pad + 1
        && avx512()
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A sample's zero-padded input: `rows` rows of `width` floats, wide
/// enough that every vector of 16 output columns reads inside it.
struct Padded {
    rows: usize,
    width: usize,
    data: Vec<f32>,
}

impl Padded {
    fn new(c: &ConvCall) -> Padded {
        let rows = c.h + 2 * c.pad;
        let width = c.wo.next_multiple_of(LANES) + c.k - 1;
        Padded {
            rows,
            width,
            data: vec![0.0; rows * width],
        }
    }

    /// Loads sample `x` (h × w) into the interior; the border stays zero.
    fn load(&mut self, x: &[f32], c: &ConvCall) {
        for (r, row) in x.chunks_exact(c.w).enumerate() {
            let at = (r + c.pad) * self.width + c.pad;
            self.data[at..at + c.w].copy_from_slice(row);
        }
    }
}

/// Runs `call` (which [`takes`] accepted), splitting its samples over
/// `sizes` parts that start at `starts`. Writes the output's moments to
/// `call.moments` where that is set and the pass is a forward.
///
/// # Safety
/// The call's addresses must hold its operands (f32, NCHW and OIHW), the
/// output apart from the inputs, and `call.moments` (where nonzero)
/// 2·co doubles.
pub unsafe fn run(call: &ConvCall, sizes: &[usize], starts: &[usize]) {
    let c = *call;
    let kk = c.k * c.k;
    let sample_y = c.co * c.ho * c.wo;
    let parts: Vec<Vec<f64>> = (0..sizes.len())
        .into_par_iter()
        .map(|p| {
            let (n, first) = (sizes[p], starts[p]);
            let x = c.ins[0] as *const f32;
            let mut padded = Padded::new(&c);
            match c.pass {
                ConvPass::Forward => {
                    let w = std::slice::from_raw_parts(c.ins[1] as *const f32, c.co * kk);
                    let mut sums = vec![0.0; 2 * c.co];
                    let mut plane = vec![0.0; c.ho * c.wo];
                    for s in first..first + n {
                        padded.load(
                            std::slice::from_raw_parts(x.add(s * c.h * c.w), c.h * c.w),
                            &c,
                        );
                        let out = std::slice::from_raw_parts_mut(
                            (c.out as *mut f32).add(s * sample_y),
                            sample_y,
                        );
                        for (o, out) in out.chunks_exact_mut(c.ho * c.wo).enumerate() {
                            // Through a buffer in cache, streamed out in
                            // whole lines where the plane starts one (the
                            // output is written, not read, here).
                            let streamed = layout::streams(out);
                            let to = match streamed {
                                true => &mut plane[..],
                                false => &mut *out,
                            };
                            match c.k {
                                3 => avx512::forward::<3>(&padded, w, &c, o, to, &mut sums),
                                5 => avx512::forward::<5>(&padded, w, &c, o, to, &mut sums),
                                _ => avx512::forward::<7>(&padded, w, &c, o, to, &mut sums),
                            }
                            if streamed {
                                layout::stream_copy(&plane, out);
                            }
                        }
                    }
                    layout::fence();
                    sums
                }
                _ => {
                    let d = c.ins[1] as *const f32;
                    let mut acc = vec![[0f32; LANES]; c.co * kk];
                    for s in first..first + n {
                        padded.load(
                            std::slice::from_raw_parts(x.add(s * c.h * c.w), c.h * c.w),
                            &c,
                        );
                        let dy = std::slice::from_raw_parts(d.add(s * sample_y), sample_y);
                        match c.k {
                            3 => avx512::grad_weight::<3>(&padded, dy, &c, &mut acc),
                            5 => avx512::grad_weight::<5>(&padded, dy, &c, &mut acc),
                            _ => avx512::grad_weight::<7>(&padded, dy, &c, &mut acc),
                        }
                    }
                    // Each weight's lanes added in lane order.
                    acc.iter()
                        .map(|l| f64::from(l.iter().sum::<f32>()))
                        .collect()
                }
            }
        })
        .collect();
    match c.pass {
        ConvPass::Forward if c.moments != 0 => {
            let out = std::slice::from_raw_parts_mut(c.moments as *mut f64, 2 * c.co);
            out.fill(0.0);
            for part in &parts {
                for (o, v) in out.iter_mut().zip(part) {
                    *o += v;
                }
            }
        }
        ConvPass::GradWeight => {
            let out = std::slice::from_raw_parts_mut(c.out as *mut f32, c.co * kk);
            for (i, o) in out.iter_mut().enumerate() {
                // Part sums in f32 and in part order, as the library path.
                *o = parts.iter().fold(0.0f32, |a, p| a + p[i] as f32);
            }
        }
        _ => {}
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ConvCall, Padded, LANES};
    use std::arch::x86_64::*;

    /// The mask of the first `n` of 16 lanes.
    fn mask(n: usize) -> __mmask16 {
        if n >= LANES {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// Output channel `o` of one sample (ho × wo) from its padded input,
    /// its Σx and Σx² added to `sums` (Σx of every channel first).
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn forward<const K: usize>(
        x: &Padded,
        w: &[f32],
        c: &ConvCall,
        o: usize,
        out: &mut [f32],
        sums: &mut [f64],
    ) {
        let kk = K * K;
        assert!(c.k == K && w.len() >= c.co * kk && out.len() >= c.ho * c.wo && o < c.co);
        assert!(x.data.len() >= x.rows * x.width && x.rows + 1 >= c.ho + K);
        let xp = x.data.as_ptr();
        {
            let mut wv = [_mm512_setzero_ps(); 49];
            for (v, &w) in wv.iter_mut().zip(&w[o * kk..][..kk]) {
                *v = _mm512_set1_ps(w);
            }
            let (mut s0, mut s1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            let (mut q0, mut q1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            for y in 0..c.ho {
                for xb in (0..c.wo).step_by(LANES) {
                    let m = mask(c.wo - xb);
                    let mut acc = _mm512_setzero_ps();
                    for i in 0..K {
                        let row = xp.add((y + i) * x.width + xb);
                        for j in 0..K {
                            let v = _mm512_loadu_ps(row.add(j));
                            acc = _mm512_fmadd_ps(wv[i * K + j], v, acc);
                        }
                    }
                    let acc = _mm512_maskz_mov_ps(m, acc);
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(y * c.wo + xb), m, acc);
                    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(acc));
                    let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                        _mm512_castps_pd(acc),
                        1,
                    )));
                    s0 = _mm512_add_pd(s0, lo);
                    s1 = _mm512_add_pd(s1, hi);
                    q0 = _mm512_add_pd(q0, _mm512_mul_pd(lo, lo));
                    q1 = _mm512_add_pd(q1, _mm512_mul_pd(hi, hi));
                }
            }
            sums[o] += _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
            sums[c.co + o] += _mm512_reduce_add_pd(_mm512_add_pd(q0, q1));
        }
    }

    /// Adds one sample's weight-gradient terms to `acc` (per weight, 16
    /// lanes): the incoming gradient `dy` (co × ho × wo) times the padded
    /// input's shifted rows.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn grad_weight<const K: usize>(
        x: &Padded,
        dy: &[f32],
        c: &ConvCall,
        acc: &mut [[f32; LANES]],
    ) {
        let kk = K * K;
        assert!(c.k == K && dy.len() >= c.co * c.ho * c.wo && acc.len() >= c.co * kk);
        assert!(x.data.len() >= x.rows * x.width && x.rows + 1 >= c.ho + K);
        let xp = x.data.as_ptr();
        for o in 0..c.co {
            let a = &mut acc[o * kk..][..kk];
            let mut r = [_mm512_setzero_ps(); 49];
            for (r, a) in r.iter_mut().zip(a.iter()) {
                *r = _mm512_loadu_ps(a.as_ptr());
            }
            for y in 0..c.ho {
                for xb in (0..c.wo).step_by(LANES) {
                    let m = mask(c.wo - xb);
                    let d = _mm512_maskz_loadu_ps(m, dy.as_ptr().add((o * c.ho + y) * c.wo + xb));
                    for i in 0..K {
                        let row = xp.add((y + i) * x.width + xb);
                        for j in 0..K {
                            let v = _mm512_loadu_ps(row.add(j));
                            r[i * K + j] = _mm512_fmadd_ps(d, v, r[i * K + j]);
                        }
                    }
                }
            }
            for (r, a) in r.iter().zip(a.iter_mut()) {
                _mm512_storeu_ps(a.as_mut_ptr(), *r);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::{ConvCall, Padded, LANES};
    pub(super) unsafe fn forward<const K: usize>(
        _: &Padded,
        _: &[f32],
        _: &ConvCall,
        _: usize,
        _: &mut [f32],
        _: &mut [f64],
    ) {
        unreachable!("takes() needs AVX-512")
    }
    pub(super) unsafe fn grad_weight<const K: usize>(
        _: &Padded,
        _: &[f32],
        _: &ConvCall,
        _: &mut [[f32; LANES]],
    ) {
        unreachable!("takes() needs AVX-512")
    }
}
