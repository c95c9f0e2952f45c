//! `--precision`: linear layers and convolutions round their GEMM operands
//! to TF32 or bf16 and accumulate in f32 (`snnc::precision`); everything
//! else stays f32.
//!
//! Tolerances (per element, `snnc::compare`):
//! - a rounded GEMM on the CPU backend against the f64 product of the
//!   rounded operands: |got − want| ≤ 1e-5·S, S the call's largest
//!   Σ_p |a_ip·b_pj| (f32 accumulation of at most 24 terms is off by at
//!   most 24·2⁻²⁴·S ≈ 1.4e-6·S);
//! - the rounding is real: a bf16 product of random operands differs
//!   from the f32 product by more than 1e-3·S somewhere (bf16 keeps 8
//!   significant bits: each operand is off by up to 2⁻⁹ relative);
//! - the CPU executor against the reference interpreter, both rounding the
//!   same operands: `common::agree::F32` (1e-4·S, f64 arbitration), the
//!   tolerance and scales of tests/cpu_exec.rs;
//!   (Fixed cases: where the two runs compute an operand differently by
//!   f32 rounding, the two roundings may land on neighbouring TF32 or bf16
//!   values, an error of one unit of the precision no f32 tolerance
//!   admits. Random models in every precision are therefore checked by
//!   tests/cuda_emulated.rs, node by node on the device's own operands,
//!   where both sides round the same values.)
//! - training digits_mlp for 3 epochs in bf16 ends within 2 points of test
//!   accuracy of fp32 (the CI-sized stand-in for the Fashion-MNIST check,
//!   `scripts/precision-accuracy.sh`, whose target is 0.3 points).

mod common;

use proptest::prelude::*;
use snnc::codegen::backend::{Backend, Gemm};
use snnc::codegen::cpu::{self, Cpu};
use snnc::compare::{self, Tol};
use snnc::compile::{compile, Options};
use snnc::interp::{self, RunOptions};
use snnc::passes::rate::Mode;
use snnc::precision::Precision;
use snnc::runtime::train::{train, TrainConfig};
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// The GEMM tolerance of the header, against S.
const GEMM: Tol = Tol::new(1e-5, 1.0);

/// A batched row-major product on `backend`: `batch` pairs of A (`m×k`, or
/// `k×m` with `ta`) and B (`k×n`, or `n×k` with `tb`), stored one after
/// another; returns the `batch` C matrices.
#[allow(clippy::too_many_arguments)]
fn gemm_on<B: Backend>(
    backend: &mut B,
    (ta, tb): (bool, bool),
    (m, n, k, batch): (usize, usize, usize, usize),
    a: &[f32],
    b: &[f32],
    precision: Precision,
) -> Vec<f32> {
    let mut bufs = [
        backend.alloc(a.len()).unwrap(),
        backend.alloc(b.len()).unwrap(),
        backend.alloc(batch * m * n).unwrap(),
    ];
    backend.upload(&mut bufs[0], a).unwrap();
    backend.upload(&mut bufs[1], b).unwrap();
    let g = Gemm {
        stride_a: m * k,
        stride_b: k * n,
        stride_c: m * n,
        batch,
        precision,
        ..Gemm::dense(
            ta,
            tb,
            m,
            n,
            k,
            backend.ptr(&bufs[0]),
            backend.ptr(&bufs[1]),
            backend.ptr(&bufs[2]),
        )
    };
    backend.gemm(&g).unwrap();
    let c = backend.download(&bufs[2], batch * m * n).unwrap();
    for buf in bufs {
        backend.free(buf);
    }
    c
}

/// The f64 products of `a` and `b` rounded to `p` (the batch of
/// [`gemm_on`]), and each element's Σ|a·b|.
fn reference(
    (ta, tb): (bool, bool),
    (m, n, k, batch): (usize, usize, usize, usize),
    a: &[f32],
    b: &[f32],
    p: Precision,
) -> (Vec<f32>, Vec<f64>) {
    let (mut c, mut mag) = (Vec::new(), Vec::new());
    for q in 0..batch {
        let (aq, bq) = (&a[q * m * k..], &b[q * k * n..]);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut s_abs) = (0f64, 0f64);
                for l in 0..k {
                    let x = p.round(if ta { aq[l * m + i] } else { aq[i * k + l] });
                    let y = p.round(if tb { bq[j * k + l] } else { bq[l * n + j] });
                    s += f64::from(x) * f64::from(y);
                    s_abs += (f64::from(x) * f64::from(y)).abs();
                }
                c.push(s as f32);
                mag.push(s_abs);
            }
        }
    }
    (c, mag)
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut r = snnc::rng::Rng::new(seed);
    (0..len).map(|_| r.range(-2.0, 2.0) as f32).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Every transpose combination, batch and precision: the CPU backend's
    /// GEMM is the f32-accumulated product of the rounded operands.
    #[test]
    fn cpu_gemm_multiplies_the_rounded_operands(
        m in 1usize..24, n in 1usize..24, k in 1usize..24, batch in 1usize..4,
        ta in any::<bool>(), tb in any::<bool>(), p in 0usize..3, seed in 0u64..1000,
    ) {
        let precision = Precision::ALL[p];
        let a = data(batch * m * k, seed);
        let b = data(batch * k * n, seed + 1);
        let mut backend = Cpu::new().unwrap();
        let got = gemm_on(&mut backend, (ta, tb), (m, n, k, batch), &a, &b, precision);
        let (want, mag) = reference((ta, tb), (m, n, k, batch), &a, &b, precision);
        let s = mag.iter().cloned().fold(0.0, f64::max);
        let shape = vec![got.len()];
        compare::check_scaled(
            &Tensor::from_vec(&shape, got),
            &Tensor::from_vec(&shape, want),
            GEMM,
            s,
        )
        .map_err(|e| TestCaseError::fail(format!("{precision}: {e} [S = {s:e}]")))?;
    }
}

#[test]
fn bf16_products_differ_from_f32_products() {
    let (m, n, k) = (16, 16, 16);
    let (a, b) = (data(m * k, 1), data(k * n, 2));
    let mut backend = Cpu::new().unwrap();
    let shape = (m, n, k, 1);
    let f32s = gemm_on(&mut backend, (false, false), shape, &a, &b, Precision::Fp32);
    for p in [Precision::Tf32, Precision::Bf16] {
        let got = gemm_on(&mut backend, (false, false), shape, &a, &b, p);
        let (_, mag) = reference((false, false), shape, &a, &b, p);
        let s = mag.iter().cloned().fold(0.0, f64::max);
        let worst = got
            .iter()
            .zip(&f32s)
            .map(|(x, y)| f64::from((x - y).abs()) / s)
            .fold(0.0, f64::max);
        // bf16: 2⁻⁹ per operand; TF32: 2⁻¹², so at least 1e-4·S.
        let least = if p == Precision::Bf16 { 1e-3 } else { 1e-4 };
        assert!(worst > least, "{p}: largest change {worst:e}·S");
        assert!(worst < 4.0 * p.unit_roundoff(), "{p}: {worst:e}·S");
    }
}

/// The CPU executor in TF32 and bf16 against the interpreter rounding the
/// same operands, on the example models at small sizes, both modes.
#[test]
fn executor_matches_the_interpreter_in_every_precision() {
    for name in ["digits_mlp", "fmnist_csnn"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("examples/models/{name}.snn"));
        let (model, a) = snnc::frontend::load(&path).unwrap();
        let params: HashMap<String, Tensor<f32>> =
            snnc::init::cast_params(&snnc::init::init_params(&a, 3));
        for mode in [Mode::Bptt, Mode::Rate] {
            let g = compile(&model, &Options::new(2, 2, mode)).unwrap().graph;
            let mut x = interp::random_input(&g, false, 3).cast::<f32>();
            x.data.iter_mut().for_each(|v| *v *= 2.0);
            let labels = interp::random_labels(2, a.output[0], 3).cast::<f32>();
            let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
            let mut losses = Vec::new();
            for precision in Precision::ALL {
                let opts = RunOptions {
                    precision,
                    ..RunOptions::seeded(3)
                };
                let want = interp::run(&g, &inputs, &params, &opts).unwrap();
                let got = cpu::run(&g, &inputs, &params, &opts).unwrap();
                common::agree::outputs_arbitrated(
                    &format!("{name} {mode} {precision}: executor vs interpreter"),
                    &g,
                    &inputs,
                    &params,
                    &opts,
                    &got,
                    &want,
                    common::agree::F32,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                losses.push(got["loss"].data[0]);
            }
            // The rounding reaches the loss.
            assert_ne!(losses[0], losses[2], "{name} {mode}: bf16 loss = f32 loss");
        }
    }
}

#[test]
fn bf16_training_learns_like_fp32() {
    let cfg = |precision| TrainConfig {
        model_source: snnc::cli::DEFAULT_MODEL.1.to_string(),
        model_file: "digits_mlp.snn".into(),
        data: "digits".into(),
        data_dir: None,
        mode: Mode::Rate,
        steps: 4,
        epochs: 3,
        batch: 32,
        lr: 0.1,
        optim: snnc::runtime::optim::OptimConfig {
            kind: snnc::runtime::optim::OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 5e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: snnc::runtime::optim::Schedule::Cosine,
        seed: 0,
        paper_grad_scale: false,
        order: Default::default(),
        precision,
        init: None,
    };
    let mut acc = Vec::new();
    for (p, mode) in [Precision::Fp32, Precision::Bf16]
        .into_iter()
        .flat_map(|p| [Mode::Rate, Mode::Bptt].map(|m| (p, m)))
    {
        let dir =
            std::env::temp_dir().join(format!("snnc-precision-{}-{p}-{mode}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = TrainConfig { mode, ..cfg(p) };
        let s = train(&c, &dir, None, true).unwrap();
        let saved = snnc::runtime::checkpoint::load(&dir).unwrap();
        let kept: TrainConfig = serde_json::from_str(&saved.config).unwrap();
        assert_eq!(kept.precision, p, "the run's config keeps --precision");
        acc.push(s.epochs.last().unwrap().test_acc);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("test accuracy fp32 rate, bptt; bf16 rate, bptt: {acc:?}");
    for i in 0..2 {
        assert!(acc[i] > 0.9, "fp32 learns: {acc:?}");
        assert!(
            (acc[i + 2] - acc[i]).abs() <= 0.02,
            "bf16 within 2 points of fp32: {acc:?}"
        );
    }
}
