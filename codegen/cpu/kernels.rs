//! SGEMM-backed kernels: matmul with either operand transposed (strides,
//! no copies) and convolutions as im2col + SGEMM, per sample (see
//! `samples_per_worker`).

use crate::tensor::Tensor;

/// `C[m×n] = α·op(A)·op(B) + β·C`, with op(A) given by row/column strides.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    par: bool,
) {
    debug_assert!(c.len() >= m * n);
    // SAFETY: the strides describe m×k, k×n and m×n matrices that lie
    // inside `a`, `b` and `c` (callers pass the tensors' own shapes).
    unsafe {
        if use_gemm_crate() {
            // gemm computes dst = alpha·dst + beta·lhs·rhs (its alpha/beta
            // are BLAS's beta/alpha); strides are (column, row).
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                beta != 0.0,
                a.as_ptr(),
                csa as isize,
                rsa as isize,
                b.as_ptr(),
                csb as isize,
                rsb as isize,
                beta,
                1.0,
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
                1.0,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
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

/// GFLOP/s of one `n`×`n`×`n` SGEMM with the library in use: median of
/// `repeats` after a warm-up. The FLOP floor of `snnc bench`.
pub fn sgemm_gflops(n: usize, repeats: usize) -> f64 {
    sgemm_gflops_mkn(n, n, n, repeats)
}

/// GFLOP/s of an `m`×`k` by `k`×`n` SGEMM, median of `repeats`.
pub fn sgemm_gflops_mkn(m: usize, k: usize, n: usize, repeats: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut times = Vec::new();
    for r in 0..=repeats {
        let t0 = std::time::Instant::now();
        sgemm(m, k, n, &a, (k, 1), &b, (n, 1), 0.0, &mut c, true);
        if r > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    2.0 * (m * k * n) as f64 / times[times.len() / 2] / 1e9
}

pub fn sgemm_library() -> &'static str {
    if use_gemm_crate() {
        "gemm"
    } else {
        "matrixmultiply"
    }
}

pub fn matmul(a: &Tensor<f32>, b: &Tensor<f32>, ta: bool, tb: bool) -> Tensor<f32> {
    let (ar, ac) = (a.shape[0], a.shape[1]);
    let (br, bc) = (b.shape[0], b.shape[1]);
    let (m, k, sa) = if ta {
        (ac, ar, (1, ac))
    } else {
        (ar, ac, (ac, 1))
    };
    let (n, sb) = if tb { (br, (1, bc)) } else { (bc, (bc, 1)) };
    let mut out = Tensor::zeros(&[m, n]);
    sgemm(m, k, n, &a.data, sa, &b.data, sb, 0.0, &mut out.data, true);
    out
}

struct Geometry {
    ci: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn rows(&self) -> usize {
        self.ci * self.k * self.k
    }

    fn cols(&self) -> usize {
        self.ho * self.wo
    }

    fn per_in(&self) -> usize {
        self.ci * self.h * self.w
    }

    /// Input row `iy` read by output row `oy` at kernel row `ky`, if any.
    fn in_y(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.padding)
            .filter(|&y| y < self.h)
    }

    /// The output columns `[lo, hi)` whose input column at kernel column
    /// `kx` lies inside the image (the rest read padding).
    fn valid_x(&self, kx: usize) -> (usize, usize) {
        let s = self.stride;
        // ix = ox·s + kx − padding must lie in [0, w).
        let lo = self.padding.saturating_sub(kx).div_ceil(s);
        let hi = if self.w + self.padding > kx {
            ((self.w + self.padding - kx - 1) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Calls `f(row, oy, ox_lo, ox_hi, in_offset)` for every input row that
    /// a (c, ky, kx) row of the column matrix reads: output columns
    /// `oy·wo + [ox_lo, ox_hi)` read input elements `in_offset + ox·stride`.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        for c in 0..self.ci {
            for ky in 0..self.k {
                for kx in 0..self.k {
                    let row = (c * self.k + ky) * self.k + kx;
                    let (lo, hi) = self.valid_x(kx);
                    for oy in 0..self.ho {
                        if let Some(iy) = self.in_y(oy, ky) {
                            // ox_lo·stride + kx ≥ padding by construction.
                            let at =
                                (c * self.h + iy) * self.w + lo * self.stride + kx - self.padding;
                            f(row, oy, lo, hi, at);
                        }
                    }
                }
            }
        }
    }
}

fn geometry(x: &[usize], k: usize, stride: usize, padding: usize) -> Geometry {
    let (ci, h, w) = (x[1], x[2], x[3]);
    Geometry {
        ci,
        h,
        w,
        k,
        stride,
        padding,
        ho: (h + 2 * padding - k) / stride + 1,
        wo: (w + 2 * padding - k) / stride + 1,
    }
}

/// Convolutions run per sample: the batch is cut into one contiguous range
/// of samples per worker thread, and each thread runs im2col into its own
/// `rows × cols` buffer (a few hundred KiB, cache-resident) and a
/// single-threaded SGEMM straight into the sample's NCHW output. Measured
/// on the 2-core machine for `fmnist_csnn`'s 64×288×196 products: about
/// 145 GFLOP/s for the GEMMs run this way, against about 45 GFLOP/s for the
/// whole convolution when a 4 MiB im2col of 18 samples fed one parallel
/// 64×288×3528 GEMM (the im2col and the scatter back to NCHW cost more than
/// the GEMM). With fewer samples than threads, each GEMM is parallel.
fn samples_per_worker(b: usize) -> usize {
    b.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// Workers (and scratch buffers) a convolution over `b` samples uses.
fn workers(b: usize) -> usize {
    b.div_ceil(samples_per_worker(b)).max(1)
}

/// The memory planner's view of these kernels' scratch
/// ([`scratch_floats`]).
pub struct CpuWorkspace;

impl crate::passes::memplan::Workspace for CpuWorkspace {
    fn scratch_bytes(&self, op: &crate::ir::Op, ins: &[&[usize]], _out: &[usize]) -> u64 {
        (scratch_floats(op, ins) as u64).saturating_mul(4)
    }
}

/// Floats of scratch an op allocates while it runs in these kernels (the
/// per-worker im2col buffers of the convolutions, and the gradient of the
/// weights' per-worker partial sums), given its operand shapes; 0 for every
/// other op. The memory planner counts it.
pub fn scratch_floats(op: &crate::ir::Op, ins: &[&[usize]]) -> usize {
    use crate::ir::Op;
    match op {
        Op::Conv2d { stride, padding } => {
            let (x, w) = (ins[0], ins[1]);
            let geo = geometry(x, w[2], *stride, *padding);
            workers(x[0])
                .saturating_mul(geo.rows())
                .saturating_mul(geo.cols())
        }
        Op::Conv2dGradInput {
            stride,
            padding,
            in_h,
            in_w,
        } => {
            let (d, w) = (ins[0], ins[1]);
            let geo = geometry(&[d[0], w[1], *in_h, *in_w], w[2], *stride, *padding);
            workers(d[0])
                .saturating_mul(geo.rows())
                .saturating_mul(geo.cols())
        }
        Op::Conv2dGradWeight {
            stride,
            padding,
            kernel,
        } => {
            let (x, d) = (ins[0], ins[1]);
            let geo = geometry(x, *kernel, *stride, *padding);
            workers(x[0]).saturating_mul(
                geo.rows()
                    .saturating_mul(geo.cols())
                    .saturating_add(d[1].saturating_mul(geo.rows())),
            )
        }
        _ => 0,
    }
}

/// im2col of one sample `xs` into `buf[rows][cols]`.
fn im2col(geo: &Geometry, xs: &[f32], buf: &mut [f32]) {
    let (cols, wo, s) = (geo.cols(), geo.wo, geo.stride);
    // Padding reads 0: clear once, then copy the runs that read the image.
    buf[..geo.rows() * cols].fill(0.0);
    geo.for_each_run(|row, oy, lo, hi, at| {
        let dst = &mut buf[row * cols + oy * wo..][lo..hi];
        if s == 1 {
            dst.copy_from_slice(&xs[at..at + dst.len()]);
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = xs[at + j * s];
            }
        }
    });
}

/// The adjoint of `im2col`: `dx += col2im(buf)` for one sample.
fn col2im_add(geo: &Geometry, buf: &[f32], dx: &mut [f32]) {
    let (cols, wo, s) = (geo.cols(), geo.wo, geo.stride);
    geo.for_each_run(|row, oy, lo, hi, at| {
        let src = &buf[row * cols + oy * wo..][lo..hi];
        for (j, v) in src.iter().enumerate() {
            dx[at + j * s] += v;
        }
    });
}

pub fn conv2d(x: &Tensor<f32>, w: &Tensor<f32>, stride: usize, padding: usize) -> Tensor<f32> {
    use rayon::prelude::*;
    let (b, co, k) = (x.shape[0], w.shape[0], w.shape[2]);
    let geo = geometry(&x.shape, k, stride, padding);
    let (rows, cols, per_in) = (geo.rows(), geo.cols(), geo.per_in());
    let mut out = Tensor::zeros(&[b, co, geo.ho, geo.wo]);
    let per = samples_per_worker(b);
    let par = b < rayon::current_num_threads();
    out.data
        .par_chunks_mut(per * co * cols)
        .zip(x.data.par_chunks(per * per_in))
        .for_each(|(o, xs)| {
            let mut buf = vec![0.0; rows * cols];
            for (ob, xb) in o.chunks_mut(co * cols).zip(xs.chunks(per_in)) {
                im2col(&geo, xb, &mut buf);
                // out_b[co][cols] = W[co][rows] · col[rows][cols]
                sgemm(
                    co,
                    rows,
                    cols,
                    &w.data,
                    (rows, 1),
                    &buf,
                    (cols, 1),
                    0.0,
                    ob,
                    par,
                );
            }
        });
    out
}

pub fn conv2d_grad_input(
    d: &Tensor<f32>,
    w: &Tensor<f32>,
    stride: usize,
    padding: usize,
    h: usize,
    wd: usize,
) -> Tensor<f32> {
    use rayon::prelude::*;
    let (b, co, ci, k) = (d.shape[0], d.shape[1], w.shape[1], w.shape[2]);
    let geo = geometry(&[b, ci, h, wd], k, stride, padding);
    let (rows, cols, per_in) = (geo.rows(), geo.cols(), geo.per_in());
    let mut out = Tensor::zeros(&[b, ci, h, wd]);
    let per = samples_per_worker(b);
    let par = b < rayon::current_num_threads();
    out.data
        .par_chunks_mut(per * per_in)
        .zip(d.data.par_chunks(per * co * cols))
        .for_each(|(dxs, ds)| {
            let mut buf = vec![0.0; rows * cols];
            for (dx, db) in dxs.chunks_mut(per_in).zip(ds.chunks(co * cols)) {
                // dcol[rows][cols] = Wᵀ · dy_b[co][cols]
                sgemm(
                    rows,
                    co,
                    cols,
                    &w.data,
                    (1, rows),
                    db,
                    (cols, 1),
                    0.0,
                    &mut buf,
                    par,
                );
                col2im_add(&geo, &buf, dx);
            }
        });
    out
}

pub fn conv2d_grad_weight(
    x: &Tensor<f32>,
    d: &Tensor<f32>,
    stride: usize,
    padding: usize,
    k: usize,
) -> Tensor<f32> {
    use rayon::prelude::*;
    let (b, co) = (x.shape[0], d.shape[1]);
    let geo = geometry(&x.shape, k, stride, padding);
    let (rows, cols, per_in) = (geo.rows(), geo.cols(), geo.per_in());
    let per = samples_per_worker(b);
    let par = b < rayon::current_num_threads();
    // Each worker sums its samples' dW; the partial sums are added in
    // worker order, so the result does not depend on scheduling.
    let partials: Vec<Vec<f32>> = x
        .data
        .par_chunks(per * per_in)
        .zip(d.data.par_chunks(per * co * cols))
        .map(|(xs, ds)| {
            let mut buf = vec![0.0; rows * cols];
            let mut dw = vec![0.0; co * rows];
            for (xb, db) in xs.chunks(per_in).zip(ds.chunks(co * cols)) {
                im2col(&geo, xb, &mut buf);
                // dW[co][rows] += dy_b[co][cols] · colᵀ
                sgemm(
                    co,
                    cols,
                    rows,
                    db,
                    (cols, 1),
                    &buf,
                    (1, cols),
                    1.0,
                    &mut dw,
                    par,
                );
            }
            dw
        })
        .collect();
    let mut out = Tensor::zeros(&[co, geo.ci, k, k]);
    for p in &partials {
        for (o, v) in out.data.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{grad_ops, ops};

    fn random(shape: &[usize], seed: u64) -> Tensor<f32> {
        let mut r = crate::rng::Rng::new(seed);
        let mut t = Tensor::zeros(shape);
        for v in &mut t.data {
            *v = r.uniform() as f32 * 2.0 - 1.0;
        }
        t
    }

    fn close(name: &str, a: &Tensor<f32>, b: &Tensor<f32>) {
        assert_eq!(a.shape, b.shape, "{name}");
        for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{name}[{i}]: {x} vs {y}"
            );
        }
    }

    /// The per-sample im2col convolutions equal the interpreter's direct
    /// loops for odd sizes, strides, paddings wider than the kernel reach,
    /// and batches smaller and larger than the worker count.
    #[test]
    fn convolutions_equal_the_interpreter() {
        let cases = [
            // (b, ci, h, w, co, k, stride, padding)
            (1, 1, 5, 5, 2, 3, 1, 1),
            (3, 2, 7, 6, 3, 3, 2, 1),
            (5, 3, 8, 8, 4, 1, 1, 0),
            (4, 2, 9, 7, 3, 5, 2, 2),
            (2, 3, 6, 6, 2, 3, 3, 0),
            (7, 1, 4, 4, 2, 3, 1, 2),
        ];
        for (n, &(b, ci, h, w, co, k, s, p)) in cases.iter().enumerate() {
            let x = random(&[b, ci, h, w], 1 + n as u64);
            let wt = random(&[co, ci, k, k], 100 + n as u64);
            let y = conv2d(&x, &wt, s, p);
            close(&format!("conv {n}"), &y, &ops::conv2d(&x, &wt, s, p));
            let d = random(&y.shape, 200 + n as u64);
            close(
                &format!("grad input {n}"),
                &conv2d_grad_input(&d, &wt, s, p, h, w),
                &grad_ops::conv2d_grad_input(&d, &wt, s, p, h, w),
            );
            close(
                &format!("grad weight {n}"),
                &conv2d_grad_weight(&x, &d, s, p, k),
                &grad_ops::conv2d_grad_weight(&x, &d, s, p, k),
            );
        }
    }
}
