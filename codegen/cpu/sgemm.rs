//! SGEMM on the host: the executor's [`Gemm`] calls (row-major, strided,
//! batched) on the `gemm` crate or matrixmultiply, and the FLOP floor
//! `snnc bench` measures with the same library.

use crate::codegen::backend::Gemm;
use rayon::prelude::*;

/// A strided matrix operand: base pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat {
    p: *const f32,
    rs: isize,
    cs: isize,
}

/// `C = α·A·B + β·C` for an `m×k` A and a `k×n` B given by strides
/// (transposes are strides); C is `m×n` with row stride `ldc`. With β = 0
/// C is not read (it may hold NaN).
///
/// # Safety
/// The strides must describe matrices inside live allocations, and C must
/// not overlap A or B.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    par: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No products: C = β·C (not read when β = 0).
        for i in 0..m {
            for j in 0..n {
                let p = c.add(i * ldc + j);
                *p = if beta == 0.0 { 0.0 } else { beta * *p };
            }
        }
        return;
    }
    if use_gemm_crate() {
        // gemm computes dst = alpha·dst + beta·lhs·rhs (its alpha/beta are
        // BLAS's beta/alpha); strides are (column, row).
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            beta != 0.0,
            a.p,
            a.cs,
            a.rs,
            b.p,
            b.cs,
            b.rs,
            beta,
            alpha,
            false,
            false,
            false,
            if par {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        )
    } else {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.p,
            a.rs,
            a.cs,
            b.p,
            b.rs,
            b.cs,
            beta,
            c,
            ldc as isize,
            1,
        )
    }
}

/// Runs an executor GEMM on host memory: batch entries in parallel when
/// their outputs are disjoint (each product single-threaded, as many
/// small products as the batch has), else one after another, each
/// multithreaded.
///
/// # Safety
/// The addresses must be host pointers to matrices of the call's extents.
pub unsafe fn run(g: &Gemm) {
    let (rsa, csa) = if g.ta { (1, g.lda) } else { (g.lda, 1) };
    let (rsb, csb) = if g.tb { (1, g.ldb) } else { (g.ldb, 1) };
    let one = |q: usize, par: bool| {
        sgemm(
            (g.m, g.k, g.n),
            g.alpha,
            Mat {
                p: (g.a as *const f32).add(q * g.stride_a),
                rs: rsa as isize,
                cs: csa as isize,
            },
            Mat {
                p: (g.b as *const f32).add(q * g.stride_b),
                rs: rsb as isize,
                cs: csb as isize,
            },
            g.beta,
            (g.c as *mut f32).add(q * g.stride_c),
            g.ldc,
            par,
        )
    };
    let disjoint = g.stride_c >= g.m.saturating_sub(1) * g.ldc + g.n;
    if g.batch > 1 && disjoint {
        (0..g.batch).into_par_iter().for_each(|q| one(q, false));
    } else {
        for q in 0..g.batch {
            one(q, true);
        }
    }
}

/// Which SGEMM library runs the GEMMs: the `gemm` crate unless
/// `SNNC_SGEMM=matrixmultiply`. On the 2-core development machine
/// matrixmultiply wins on 2048³ (253 against 191 GFLOP/s) but gemm wins on
/// the shapes training runs, e.g. the 64×288×3528 convolution chunks of
/// `fmnist_csnn` (100 against 73) (`cargo run --release --example
/// sgemm_floor M K N`).
fn use_gemm_crate() -> bool {
    static CHOICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| std::env::var("SNNC_SGEMM").map_or(true, |v| v != "matrixmultiply"))
}

pub fn library() -> &'static str {
    if use_gemm_crate() {
        "gemm"
    } else {
        "matrixmultiply"
    }
}

/// GFLOP/s of one `n`×`n`×`n` SGEMM with the library in use: median of
/// `repeats` after a warm-up. The FLOP floor of `snnc bench`.
pub fn gflops(n: usize, repeats: usize) -> f64 {
    gflops_mkn(n, n, n, repeats)
}

/// GFLOP/s of an `m`×`k` by `k`×`n` SGEMM, median of `repeats`.
pub fn gflops_mkn(m: usize, k: usize, n: usize, repeats: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let call = Gemm::dense(
        false,
        false,
        m,
        n,
        k,
        a.as_ptr() as u64,
        b.as_ptr() as u64,
        c.as_mut_ptr() as u64,
    );
    let mut times = Vec::new();
    for r in 0..=repeats {
        let t0 = std::time::Instant::now();
        // SAFETY: a, b and c hold the m×k, k×n and m×n matrices.
        unsafe { run(&call) };
        if r > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    2.0 * (m * k * n) as f64 / times[times.len() / 2] / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..len).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect()
    }

    /// Every transpose combination, α, β, strided and batched entries
    /// against a direct triple loop.
    #[test]
    fn gemm_calls_equal_the_triple_loop() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (m, n, k, batch) = (5, 7, 3, 3);
            let a = data(batch * m * k, 1);
            let b = data(batch * k * n, 2);
            let c0 = data(batch * m * n, 3);
            let mut c = c0.clone();
            let (alpha, beta) = (0.5, 2.0);
            let call = Gemm {
                alpha,
                beta,
                stride_a: m * k,
                stride_b: k * n,
                stride_c: m * n,
                batch,
                ..Gemm::dense(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    a.as_ptr() as u64,
                    b.as_ptr() as u64,
                    c.as_mut_ptr() as u64,
                )
            };
            // SAFETY: the buffers hold `batch` matrices of these sizes.
            unsafe { run(&call) };
            for q in 0..batch {
                let (aq, bq) = (&a[q * m * k..], &b[q * k * n..]);
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0.0f64;
                        for p in 0..k {
                            let av = if ta { aq[p * m + i] } else { aq[i * k + p] };
                            let bv = if tb { bq[j * k + p] } else { bq[p * n + j] };
                            s += f64::from(av) * f64::from(bv);
                        }
                        let want =
                            alpha as f64 * s + beta as f64 * c0[q * m * n + i * n + j] as f64;
                        let got = c[q * m * n + i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "ta={ta} tb={tb} q={q} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
