//! Every SGEMM implementation this machine has (the gemm crate,
//! matrixmultiply, and OpenBLAS, BLIS, oneDNN or libblas.so.3 when
//! installed: `codegen/cpu/sgemm`) computes what a triple loop in f64
//! computes, on odd shapes, every transpose combination, padded leading
//! dimensions, α and β (β = 0 with NaN in C: C must not be read), and
//! batches with disjoint and with shared outputs; and so does the
//! automatic per-shape choice. Tolerance: the tests' f32 tolerance
//! (`common::agree::F32`: every element within 1e-4 of the output's
//! largest magnitude). The libraries not found are printed (run with
//! `--nocapture`); without any, the built-in crates are still tested.
//! `SNNC_SGEMM` with an unknown name is an error that lists the names.

mod common;

use snnc::codegen::backend::Gemm;
use snnc::codegen::cpu::sgemm::{self, Impl};
use snnc::compare;
use snnc::tensor::Tensor;

/// One test call: operands, the call, and the exact result.
struct Case {
    a: Vec<f32>,
    b: Vec<f32>,
    c0: Vec<f32>,
    call: Gemm,
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut r = snnc::rng::Rng::new(seed);
    (0..len).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect()
}

/// A batch of `batch` products with leading dimensions padded by `pad`;
/// `shared`: every entry accumulates into the same C (stride 0).
fn case(
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
    (alpha, beta): (f32, f32),
    (batch, pad, shared): (usize, usize, bool),
) -> Case {
    let lda = (if ta { m } else { k }) + pad;
    let ldb = (if tb { k } else { n }) + pad;
    let ldc = n + pad;
    let rows_a = if ta { k } else { m };
    let rows_b = if tb { n } else { k };
    let (sa, sb) = (rows_a * lda, rows_b * ldb);
    let sc = if shared { 0 } else { m * ldc };
    let a = data(batch * sa, 1 + m as u64);
    let b = data(batch * sb, 2 + n as u64);
    let c_len = (batch - 1) * sc + m * ldc;
    // β = 0: C is not read, so NaN there must not reach the result.
    let c0 = if beta == 0.0 {
        vec![f32::NAN; c_len]
    } else {
        data(c_len, 3 + k as u64)
    };
    let call = Gemm {
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        a: 0,
        lda,
        stride_a: sa,
        b: 0,
        ldb,
        stride_b: sb,
        beta,
        c: 0,
        ldc,
        stride_c: sc,
        batch,
        precision: snnc::precision::Precision::Fp32,
    };
    Case { a, b, c0, call }
}

impl Case {
    /// The result in f64: the entries applied one after another (entries
    /// that share C accumulate in order).
    fn exact(&self) -> Vec<f64> {
        let g = &self.call;
        let mut c: Vec<f64> = self.c0.iter().map(|&v| f64::from(v)).collect();
        for q in 0..g.batch {
            let (a, b) = (&self.a[q * g.stride_a..], &self.b[q * g.stride_b..]);
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0.0f64;
                    for p in 0..g.k {
                        let av = if g.ta {
                            a[p * g.lda + i]
                        } else {
                            a[i * g.lda + p]
                        };
                        let bv = if g.tb {
                            b[j * g.ldb + p]
                        } else {
                            b[p * g.ldb + j]
                        };
                        s += f64::from(av) * f64::from(bv);
                    }
                    let at = q * g.stride_c + i * g.ldc + j;
                    let old = if g.beta == 0.0 {
                        0.0
                    } else {
                        f64::from(g.beta) * c[at]
                    };
                    c[at] = f64::from(g.alpha) * s + old;
                }
            }
        }
        c
    }

    /// C after running the call on `imp` (None: the automatic choice).
    fn run(&self, imp: Option<Impl>) -> Vec<f32> {
        let mut c = self.c0.clone();
        let call = Gemm {
            a: self.a.as_ptr() as u64,
            b: self.b.as_ptr() as u64,
            c: c.as_mut_ptr() as u64,
            ..self.call
        };
        // SAFETY: a, b and c hold the call's matrices at its strides.
        unsafe {
            match imp {
                Some(imp) => sgemm::run_with(imp, &call),
                None => sgemm::run_auto(&call),
            }
        }
        c
    }

    /// Only the elements a call writes (padding columns keep C's input).
    fn written(&self, c: &[f64]) -> Tensor<f64> {
        let g = &self.call;
        let entries = if g.stride_c == 0 { 1 } else { g.batch };
        let mut v = Vec::new();
        for q in 0..entries {
            for i in 0..g.m {
                let row = q * g.stride_c + i * g.ldc;
                v.extend_from_slice(&c[row..row + g.n]);
            }
        }
        Tensor::from_vec(&[v.len()], v)
    }

    fn check(&self, imp: Option<Impl>) -> Result<(), String> {
        let got: Vec<f64> = self.run(imp).iter().map(|&v| f64::from(v)).collect();
        let (got, want) = (self.written(&got), self.written(&self.exact()));
        compare::check(&got, &want, common::agree::F32).map_err(|e| {
            let g = &self.call;
            format!(
                "{}: {}×{}×{} ta={} tb={} α={} β={} batch {} lda {} stride_c {}: {e} [{}]",
                imp.map_or("auto", Impl::name),
                g.m,
                g.n,
                g.k,
                g.ta,
                g.tb,
                g.alpha,
                g.beta,
                g.batch,
                g.lda,
                g.stride_c,
                common::agree::F32
            )
        })
    }
}

/// Odd shapes (vectors, sizes around kernel tiles, one large enough for
/// several threads and for the automatic choice to time it), each
/// transpose combination, β = 0 and β ≠ 0, single products with padded
/// rows and batches with disjoint and shared outputs.
fn cases() -> Vec<Case> {
    let shapes = [
        (1, 1, 1),
        (1, 9, 5),
        (7, 1, 3),
        (5, 7, 3),
        (17, 13, 33),
        (31, 65, 9),
        (67, 129, 95),
        (131, 67, 301),
    ];
    let mut v = Vec::new();
    for &shape in &shapes {
        for tr in [(false, false), (true, false), (false, true), (true, true)] {
            for scal in [(1.0, 0.0), (0.75, 1.5)] {
                v.push(case(shape, tr, scal, (1, 0, false)));
                v.push(case(shape, tr, scal, (1, 3, false)));
                v.push(case(shape, tr, scal, (3, 1, false)));
                v.push(case(shape, tr, scal, (2, 0, true)));
            }
        }
    }
    v
}

#[test]
fn every_implementation_equals_the_f64_triple_loop() {
    let available = sgemm::available();
    println!(
        "SGEMM implementations tested: {}",
        available
            .iter()
            .map(|i| format!("{} ({})", i.name(), i.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for m in sgemm::missing() {
        println!("not found (not tested): {m}");
    }
    assert!(available.contains(&Impl::Gemm) && available.contains(&Impl::MatrixMultiply));
    let cases = cases();
    let mut failures = Vec::new();
    for &imp in &available {
        for c in &cases {
            if let Err(e) = c.check(Some(imp)) {
                failures.push(e);
            }
        }
    }
    // `SNNC_SGEMM=auto`'s path: the choice per shape.
    for c in &cases {
        if let Err(e) = c.check(None) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls disagree:\n{}",
        failures.len(),
        (available.len() + 1) * cases.len(),
        failures.join("\n")
    );
}

#[test]
fn an_unknown_sgemm_name_is_an_error_listing_the_names() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snnc"))
        .args(["bench", "examples/models/digits_mlp.snn", "-T", "1"])
        .env("SNNC_SGEMM", "fastblas")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("SNNC_SGEMM=`fastblas`") && err.contains("openblas, blis"),
        "{err}"
    );
}

/// A library that is not installed is an error naming it (tested only
/// when this machine lacks one of them).
#[test]
fn an_sgemm_that_is_not_installed_is_an_error() {
    let names = ["openblas", "blis", "onednn", "blas"];
    let available = sgemm::available();
    let Some(name) = names
        .into_iter()
        .find(|n| !available.iter().any(|i| i.name() == *n))
    else {
        println!("every system SGEMM is installed: nothing to test");
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snnc"))
        .args(["bench", "examples/models/digits_mlp.snn", "-T", "1"])
        .env("SNNC_SGEMM", name)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is not installed"), "{err}");
}
