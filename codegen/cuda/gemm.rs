//! Row-major GEMMs expressed as cuBLAS (column-major) calls.
//!
//! snnc's tensors are row-major; cuBLAS is column-major. A row-major matrix
//! `X[r × c]` with leading dimension `ld` is, read column-major, the matrix
//! `Xᵀ[c × r]` with the same `ld`. So `C = op(A)·op(B)` (row-major) is
//! computed as the column-major product `Cᵀ = op(B)ᵀ·op(A)ᵀ`: cuBLAS gets B
//! as its first operand with B's transpose flag, A second with A's, and the
//! dimensions `(n, m, k)`. This module does that swap in one place
//! ([`Gemm::to_cublas`]) and checks cuBLAS's argument rules
//! ([`Cublas::validate`]), so the same call is checked by the CPU emulator
//! (which executes [`Cublas`] with column-major semantics) before a GPU ever
//! sees it.

use crate::codegen::backend::BackendError;
pub use crate::codegen::backend::Gemm;
use crate::precision::Precision;

impl Gemm {
    /// The column-major cuBLAS call computing this product.
    pub fn to_cublas(&self) -> Result<Cublas, BackendError> {
        let i = |v: usize, what: &str| -> Result<i32, BackendError> {
            i32::try_from(v).map_err(|_| {
                BackendError::BadCall(format!("gemm {what} = {v} does not fit cuBLAS's int"))
            })
        };
        let l = |v: usize, what: &str| -> Result<i64, BackendError> {
            i64::try_from(v)
                .map_err(|_| BackendError::BadCall(format!("gemm {what} = {v} does not fit")))
        };
        let call = Cublas {
            transa: self.tb,
            transb: self.ta,
            m: i(self.n, "n")?,
            n: i(self.m, "m")?,
            k: i(self.k, "k")?,
            alpha: self.alpha,
            a: self.b,
            lda: i(self.ldb, "ldb")?,
            stride_a: l(self.stride_b, "stride_b")?,
            b: self.a,
            ldb: i(self.lda, "lda")?,
            stride_b: l(self.stride_a, "stride_a")?,
            beta: self.beta,
            c: self.c,
            ldc: i(self.ldc, "ldc")?,
            stride_c: l(self.stride_c, "stride_c")?,
            batch: i(self.batch, "batch")?,
            precision: self.precision,
        };
        call.validate()?;
        Ok(call)
    }
}

/// Arguments of `cublasSgemmStridedBatched` (column-major), in its order.
/// `transa`/`transb` true means `CUBLAS_OP_T`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cublas {
    pub transa: bool,
    pub transb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: u64,
    pub lda: i32,
    pub stride_a: i64,
    pub b: u64,
    pub ldb: i32,
    pub stride_b: i64,
    pub beta: f32,
    pub c: u64,
    pub ldc: i32,
    pub stride_c: i64,
    pub batch: i32,
    /// `Fp32`: `cublasSgemm…`; otherwise `cublasGemm…Ex` with f32
    /// matrices and the compute type that rounds the operands to it.
    pub precision: Precision,
}

impl Cublas {
    /// cuBLAS's documented argument rules (it returns
    /// `CUBLAS_STATUS_INVALID_VALUE` otherwise), plus non-overlapping
    /// outputs within a batch.
    pub fn validate(&self) -> Result<(), BackendError> {
        let bad = |msg: &str| {
            Err(BackendError::BadCall(format!(
                "invalid cuBLAS gemm ({msg}): {self:?}"
            )))
        };
        if self.m < 0 || self.n < 0 || self.k < 0 || self.batch < 1 {
            return bad("negative size or empty batch");
        }
        let rows_a = if self.transa { self.k } else { self.m };
        let rows_b = if self.transb { self.n } else { self.k };
        if self.lda < rows_a.max(1) {
            return bad(&format!("lda {} < {}", self.lda, rows_a.max(1)));
        }
        if self.ldb < rows_b.max(1) {
            return bad(&format!("ldb {} < {}", self.ldb, rows_b.max(1)));
        }
        if self.ldc < self.m.max(1) {
            return bad(&format!("ldc {} < {}", self.ldc, self.m.max(1)));
        }
        if self.batch > 1 && self.m > 0 && self.n > 0 {
            // Batch outputs must not overlap: either the strides separate
            // whole matrices, or the matrices are side by side in the
            // leading dimension (each batch's columns lie in its own rows).
            let whole = self.stride_c >= i64::from(self.ldc) * i64::from(self.n);
            let side_by_side = self.stride_c >= i64::from(self.m)
                && self.stride_c * i64::from(self.batch) <= i64::from(self.ldc);
            if !whole && !side_by_side {
                return bad(&format!(
                    "batch outputs overlap (stride_c {})",
                    self.stride_c
                ));
            }
        }
        Ok(())
    }

    /// The largest element offset (from each base pointer) the call touches
    /// in A, B and C: what a buffer must hold.
    pub fn extents(&self) -> (usize, usize, usize) {
        let span = |rows: i32, cols: i32, ld: i32, stride: i64| -> usize {
            if rows == 0 || cols == 0 {
                return 0;
            }
            let last = i64::from(rows - 1)
                + i64::from(cols - 1) * i64::from(ld)
                + i64::from(self.batch - 1) * stride;
            (last + 1) as usize
        };
        let (ra, ca) = if self.transa {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (rb, cb) = if self.transb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        (
            span(ra, ca, self.lda, self.stride_a),
            span(rb, cb, self.ldb, self.stride_b),
            span(self.m, self.n, self.ldc, self.stride_c),
        )
    }

    /// Executes the call on host memory with column-major semantics (the
    /// emulator's cuBLAS): `C = α·op(A)·op(B) + β·C` per batch.
    ///
    /// # Safety
    /// `a`, `b`, `c` must be host addresses of f32 buffers holding at least
    /// [`Cublas::extents`] elements, `c` not overlapping `a` or `b`.
    pub unsafe fn run_on_host(&self) {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        if m == 0 || n == 0 {
            return;
        }
        // op(A)[i][p]: A[i + p·lda] untransposed, A[p + i·lda] transposed.
        let (rsa, csa) = if self.transa {
            (self.lda as isize, 1)
        } else {
            (1, self.lda as isize)
        };
        let (rsb, csb) = if self.transb {
            (self.ldb as isize, 1)
        } else {
            (1, self.ldb as isize)
        };
        for q in 0..self.batch as isize {
            let a = (self.a as *const f32).offset(q * self.stride_a as isize);
            let b = (self.b as *const f32).offset(q * self.stride_b as isize);
            let c = (self.c as *mut f32).offset(q * self.stride_c as isize);
            if k == 0 {
                // cuBLAS scales C by β (and does not read it when β = 0).
                for j in 0..n as isize {
                    for i in 0..m as isize {
                        let p = c.offset(i + j * self.ldc as isize);
                        *p = if self.beta == 0.0 {
                            0.0
                        } else {
                            self.beta * *p
                        };
                    }
                }
                continue;
            }
            if self.beta == 0.0 {
                // cuBLAS does not read C when β = 0 (it may hold NaN).
                for j in 0..n as isize {
                    for i in 0..m as isize {
                        *c.offset(i + j * self.ldc as isize) = 0.0;
                    }
                }
            }
            matrixmultiply::sgemm(
                m,
                k,
                n,
                self.alpha,
                a,
                rsa,
                csa,
                b,
                rsb,
                csb,
                if self.beta == 0.0 { 0.0 } else { self.beta },
                c,
                1,
                self.ldc as isize,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-major reference: C = op(A)·op(B).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let av = if ta { a[p * lda + i] } else { a[i * lda + p] };
                    let bv = if tb { b[j * ldb + p] } else { b[p * ldb + j] };
                    acc += f64::from(av) * f64::from(bv);
                }
                c[i * n + j] = acc as f32;
            }
        }
        c
    }

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| r.range(-1.0, 1.0) as f32).collect()
    }

    #[test]
    fn row_major_products_through_column_major_calls() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (8, 2, 4), (5, 9, 1), (2, 3, 0)] {
                // Padded leading dimensions catch a swapped lda/ldb.
                let (pa, pb, pc) = (2, 3, 1);
                let (ra, ca) = if ta { (k, m) } else { (m, k) };
                let (rb, cb) = if tb { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ca + pa, cb + pb, n + pc);
                let a = data(ra.max(1) * lda, 1);
                let b = data(rb.max(1) * ldb, 2);
                let mut c = vec![f32::NAN; m * ldc];
                let g = Gemm {
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    alpha: 1.0,
                    a: a.as_ptr() as u64,
                    lda,
                    stride_a: 0,
                    b: b.as_ptr() as u64,
                    ldb,
                    stride_b: 0,
                    beta: 0.0,
                    c: c.as_mut_ptr() as u64,
                    ldc,
                    stride_c: 0,
                    batch: 1,
                    precision: Precision::Fp32,
                };
                let call = g.to_cublas().unwrap();
                let (ea, eb, ec) = call.extents();
                assert!(ea <= b.len() && eb <= a.len() && ec <= c.len(), "{call:?}");
                unsafe { call.run_on_host() };
                let want = reference(ta, tb, m, n, k, &a, lda, &b, ldb);
                for i in 0..m {
                    for j in 0..n {
                        let (got, w) = (c[i * ldc + j], want[i * n + j]);
                        assert!(
                            (got - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "ta={ta} tb={tb} {m}x{n}x{k} at {i},{j}: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn batched_with_shared_operand_and_side_by_side_outputs() {
        // C_q[m×n] = A[m×k] · B_q, B_q side by side in a [k × batch·n] matrix,
        // C_q stacked: the layout of the convolution forward.
        let (m, n, k, batch) = (4, 3, 5, 3);
        let a = data(m * k, 3);
        let b = data(k * batch * n, 4);
        let mut c = vec![f32::NAN; batch * m * n];
        let g = Gemm {
            ta: false,
            tb: false,
            m,
            n,
            k,
            alpha: 1.0,
            a: a.as_ptr() as u64,
            lda: k,
            stride_a: 0,
            b: b.as_ptr() as u64,
            ldb: batch * n,
            stride_b: n,
            beta: 0.0,
            c: c.as_mut_ptr() as u64,
            ldc: n,
            stride_c: m * n,
            batch,
            precision: Precision::Fp32,
        };
        let call = g.to_cublas().unwrap();
        unsafe { call.run_on_host() };
        for q in 0..batch {
            let bq: Vec<f32> = (0..k)
                .flat_map(|p| b[p * batch * n + q * n..p * batch * n + q * n + n].to_vec())
                .collect();
            let want = reference(false, false, m, n, k, &a, k, &bq, n);
            for (x, y) in c[q * m * n..(q + 1) * m * n].iter().zip(&want) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()));
            }
        }
    }

    #[test]
    fn validation_rejects_bad_leading_dimensions() {
        let mut g = Gemm::dense(false, false, 4, 3, 5, 0, 0, 0);
        assert!(g.to_cublas().is_ok());
        g.lda = 4; // A is 4×5 row-major: lda must be ≥ 5
        assert!(g.to_cublas().is_err());
        let mut g = Gemm::dense(false, false, 4, 3, 5, 0, 0, 0);
        g.batch = 2;
        g.stride_c = 1; // overlapping outputs
        assert!(g.to_cublas().is_err());
    }
}
