//! SGEMM-backed kernels: matmul with either operand transposed (strides,
//! no copies) and convolutions as im2col + SGEMM, per sample.

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
                gemm::Parallelism::Rayon(0),
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
        sgemm(m, k, n, &a, (k, 1), &b, (n, 1), 0.0, &mut c);
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
    sgemm(m, k, n, &a.data, sa, &b.data, sb, 0.0, &mut out.data);
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
    /// For each (c, ky, kx, oy, ox) in column order, the input offset within
    /// one sample, or None in the padding.
    fn for_each(&self, mut f: impl FnMut(usize, Option<usize>)) {
        let mut col = 0;
        for c in 0..self.ci {
            for ky in 0..self.k {
                for kx in 0..self.k {
                    for oy in 0..self.ho {
                        let iy = (oy * self.stride + ky)
                            .checked_sub(self.padding)
                            .filter(|&y| y < self.h);
                        for ox in 0..self.wo {
                            let ix = (ox * self.stride + kx)
                                .checked_sub(self.padding)
                                .filter(|&x| x < self.w);
                            let at = match (iy, ix) {
                                (Some(y), Some(x)) => Some((c * self.h + y) * self.w + x),
                                _ => None,
                            };
                            f(col, at);
                            col += 1;
                        }
                    }
                }
            }
        }
    }

    fn rows(&self) -> usize {
        self.ci * self.k * self.k
    }

    fn cols(&self) -> usize {
        self.ho * self.wo
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

/// Samples per im2col chunk: the column buffer stays near `SCRATCH`
/// floats (4 MiB), small next to the activations, while each GEMM still
/// gets thousands of columns.
const SCRATCH: usize = 1 << 20;

fn chunk_of(rows: usize, cols: usize) -> usize {
    (SCRATCH / (rows * cols).max(1)).max(1)
}

/// Floats of scratch an op allocates while it runs in these kernels (the
/// im2col and gathered-gradient buffers of the convolutions), given its
/// operand shapes; 0 for every other op. The memory planner counts it.
pub fn scratch_floats(op: &crate::ir::Op, ins: &[&[usize]]) -> usize {
    use crate::ir::Op;
    match op {
        Op::Conv2d { stride, padding } => {
            let (x, w) = (ins[0], ins[1]);
            let geo = geometry(x, w[2], *stride, *padding);
            let (rows, cols, co) = (geo.rows(), geo.cols(), w[0]);
            let chunk = chunk_of(rows, cols).min(x[0]);
            (rows + co) * chunk * cols
        }
        Op::Conv2dGradInput {
            stride,
            padding,
            in_h,
            in_w,
        } => {
            let (d, w) = (ins[0], ins[1]);
            let geo = geometry(&[d[0], w[1], *in_h, *in_w], w[2], *stride, *padding);
            let (rows, cols, co) = (geo.rows(), geo.cols(), d[1]);
            let chunk = chunk_of(rows.max(co), cols).min(d[0]);
            (rows + co) * chunk * cols
        }
        Op::Conv2dGradWeight {
            stride,
            padding,
            kernel,
        } => {
            let (x, d) = (ins[0], ins[1]);
            let geo = geometry(x, *kernel, *stride, *padding);
            let (rows, cols, co) = (geo.rows(), geo.cols(), d[1]);
            let chunk = chunk_of(rows.max(co), cols).min(x[0]);
            (rows + co) * chunk * cols
        }
        _ => 0,
    }
}

/// A pointer that parallel workers write through at disjoint offsets.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: users write disjoint elements from each thread.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// im2col of samples `b0..b0+n` into `buf[rows][n·cols]`, in parallel.
fn im2col_chunk(geo: &Geometry, x: &[f32], b0: usize, n: usize, buf: &mut [f32]) {
    use rayon::prelude::*;
    let (rows, cols) = (geo.rows(), geo.cols());
    let per_in = geo.ci * geo.h * geo.w;
    let width = n * cols;
    let out = Shared(buf.as_mut_ptr());
    (0..n).into_par_iter().for_each(|j| {
        // Capture the whole wrapper (Send + Sync), not its raw field.
        let out = &out;
        let xs = &x[(b0 + j) * per_in..(b0 + j + 1) * per_in];
        geo.for_each(|i, at| {
            let (r, c) = (i / cols, i % cols);
            debug_assert!(r < rows);
            // SAFETY: sample j owns columns [j·cols, (j+1)·cols) of every
            // row, inside the buffer of rows × n·cols.
            unsafe { *out.0.add(r * width + j * cols + c) = at.map_or(0.0, |a| xs[a]) };
        });
    });
}

pub fn conv2d(x: &Tensor<f32>, w: &Tensor<f32>, stride: usize, padding: usize) -> Tensor<f32> {
    use rayon::prelude::*;
    let (b, co, k) = (x.shape[0], w.shape[0], w.shape[2]);
    let geo = geometry(&x.shape, k, stride, padding);
    let (rows, cols) = (geo.rows(), geo.cols());
    let mut out = Tensor::zeros(&[b, co, geo.ho, geo.wo]);
    let chunk = chunk_of(rows, cols).min(b);
    let mut buf = vec![0.0; rows * chunk * cols];
    let mut prod = vec![0.0; co * chunk * cols];
    for b0 in (0..b).step_by(chunk) {
        let n = chunk.min(b - b0);
        im2col_chunk(&geo, &x.data, b0, n, &mut buf);
        // prod[co][n·cols] = W[co][rows] · buf[rows][n·cols]
        sgemm(
            co,
            rows,
            n * cols,
            &w.data,
            (rows, 1),
            &buf,
            (n * cols, 1),
            0.0,
            &mut prod,
        );
        // Scatter to [b][co][cols].
        out.data[b0 * co * cols..(b0 + n) * co * cols]
            .par_chunks_mut(co * cols)
            .enumerate()
            .for_each(|(j, o)| {
                for c in 0..co {
                    let src = &prod[c * n * cols + j * cols..c * n * cols + (j + 1) * cols];
                    o[c * cols..(c + 1) * cols].copy_from_slice(src);
                }
            });
    }
    out
}

/// `d[b0..b0+n][co][cols]` gathered as `[co][n·cols]`.
fn gather_dy(d: &[f32], co: usize, cols: usize, b0: usize, n: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    out[..co * n * cols]
        .par_chunks_mut(n * cols)
        .enumerate()
        .for_each(|(c, o)| {
            for j in 0..n {
                let src = &d[((b0 + j) * co + c) * cols..((b0 + j) * co + c + 1) * cols];
                o[j * cols..(j + 1) * cols].copy_from_slice(src);
            }
        });
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
    let (rows, cols) = (geo.rows(), geo.cols());
    let per_in = ci * h * wd;
    let mut out = Tensor::zeros(&[b, ci, h, wd]);
    let chunk = chunk_of(rows.max(co), cols).min(b);
    let mut dy = vec![0.0; co * chunk * cols];
    let mut buf = vec![0.0; rows * chunk * cols];
    for b0 in (0..b).step_by(chunk) {
        let n = chunk.min(b - b0);
        gather_dy(&d.data, co, cols, b0, n, &mut dy);
        // dcols[rows][n·cols] = Wᵀ · dy
        sgemm(
            rows,
            co,
            n * cols,
            &w.data,
            (1, rows),
            &dy,
            (n * cols, 1),
            0.0,
            &mut buf,
        );
        let width = n * cols;
        let buf = &buf;
        out.data[b0 * per_in..(b0 + n) * per_in]
            .par_chunks_mut(per_in)
            .enumerate()
            .for_each(|(j, dx)| {
                geo.for_each(|i, at| {
                    if let Some(a) = at {
                        let (r, c) = (i / cols, i % cols);
                        dx[a] += buf[r * width + j * cols + c];
                    }
                });
            });
    }
    out
}

pub fn conv2d_grad_weight(
    x: &Tensor<f32>,
    d: &Tensor<f32>,
    stride: usize,
    padding: usize,
    k: usize,
) -> Tensor<f32> {
    let (b, co) = (x.shape[0], d.shape[1]);
    let geo = geometry(&x.shape, k, stride, padding);
    let (rows, cols) = (geo.rows(), geo.cols());
    let mut out = Tensor::zeros(&[co, geo.ci, k, k]);
    let chunk = chunk_of(rows.max(co), cols).min(b);
    let mut dy = vec![0.0; co * chunk * cols];
    let mut buf = vec![0.0; rows * chunk * cols];
    for b0 in (0..b).step_by(chunk) {
        let n = chunk.min(b - b0);
        im2col_chunk(&geo, &x.data, b0, n, &mut buf);
        gather_dy(&d.data, co, cols, b0, n, &mut dy);
        // dW[co][rows] += dy[co][n·cols] · bufᵀ
        sgemm(
            co,
            n * cols,
            rows,
            &dy,
            (n * cols, 1),
            &buf,
            (1, n * cols),
            1.0,
            &mut out.data,
        );
    }
    out
}
