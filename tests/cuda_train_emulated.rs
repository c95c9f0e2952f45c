//! Training on the CUDA backend's CPU emulator (`train_on` with `Emu`): the
//! same loop as on the CPU with the step on the CUDA executor running the
//! fusion plan, so its parameters after an epoch must match the CPU
//! trainer's up to rounding (GEMM summation orders differ, which can flip
//! a spike whose potential sits at the threshold), and its checkpoints must
//! resume on the CPU.
//!
//! Without a C++ compiler (found by build.rs) these tests are ignored,
//! with the reason in `cargo test`'s summary; with SNNC_REQUIRE_EMU=1 (CI)
//! its absence fails the build.

use snnc::codegen::cuda::Emu;
use snnc::passes::rate::Mode;
use snnc::runtime::checkpoint;
use snnc::runtime::optim::{OptimConfig, OptimizerKind, Schedule};
use snnc::runtime::train::{train, train_on, TrainConfig};
use snnc::tensor::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn emu() -> Option<Emu> {
    match Emu::new() {
        Ok(e) => Some(e),
        // The build found a C++ compiler (else this test is ignored): an
        // emulator that does not build is an error, not a skip.
        Err(e) => panic!("the CUDA emulator does not build: {e}"),
    }
}

fn config(model: (&str, &str), mode: Mode, epochs: usize) -> TrainConfig {
    TrainConfig {
        model_source: model.1.to_string(),
        model_file: model.0.into(),
        data: "digits".into(),
        data_dir: None,
        mode,
        steps: 2,
        epochs,
        batch: 64,
        lr: 0.1,
        optim: OptimConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 5e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: Schedule::Const,
        seed: 11,
        paper_grad_scale: false,
        init: None,
        order: Default::default(),
        precision: Default::default(),
    }
}

/// digits_mlp with a batch norm, so the running statistics are exercised.
const BN_MLP: (&str, &str) = (
    "bn_mlp.snn",
    "model bn_mlp\ninput 64\nlinear 96 bias=false\nbatchnorm\nlif\nlinear 10\n",
);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snnc-cuda-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Largest |a − b| over every tensor, relative to that tensor's largest
/// magnitude (at least 1e-6): `snnc::compare::rel_err` with floor 1.
fn max_rel_diff(a: &BTreeMap<String, Tensor<f32>>, b: &BTreeMap<String, Tensor<f32>>) -> f32 {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the checkpoints hold different tensors"
    );
    a.iter()
        .map(|(k, x)| snnc::compare::rel_err(&b[k], x, 1.0, 1e-6) as f32)
        .fold(0f32, f32::max)
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn one_epoch_on_the_emulator_equals_the_cpu_trainer() {
    let Some(mut emu) = emu() else { return };
    use snnc::passes::schedule::SchedOpts;
    for (model, mode, order) in [
        (snnc::cli::DEFAULT_MODEL, Mode::Rate, SchedOpts::LAYER_MAJOR),
        (BN_MLP, Mode::Bptt, SchedOpts::LAYER_MAJOR),
        (BN_MLP, Mode::Rate, SchedOpts::LAYER_MAJOR),
        // `--order`: one kernel step per launch on both devices.
        (BN_MLP, Mode::Rate, SchedOpts::TIME_MAJOR_RECOMPUTE),
    ] {
        let cfg = TrainConfig {
            order,
            ..config(model, mode, 1)
        };
        let (c, g) = (
            tmp(&format!("cpu-{mode}-{order}")),
            tmp(&format!("emu-{mode}-{order}")),
        );
        let cpu = train(&cfg, &c, None, true).unwrap();
        let launches = emu.module_launches;
        let gpu = train_on(&cfg, &g, None, true, &mut emu).unwrap();
        assert!(emu.module_launches > launches, "no fused kernel ran");
        let (a, b) = (checkpoint::load(&c).unwrap(), checkpoint::load(&g).unwrap());
        let d = max_rel_diff(&a.params, &b.params);
        let (x, y) = (&cpu.epochs[0], &gpu.epochs[0]);
        println!(
            "{} {mode}: parameters within {d:.1e}; loss {:.6} vs {:.6}, test {:.4} vs {:.4}",
            model.0, x.train_loss, y.train_loss, x.test_acc, y.test_acc
        );
        assert!(d < 1e-4, "{} {mode}: parameters differ by {d}", model.0);
        assert!((x.train_loss - y.train_loss).abs() < 1e-3 * x.train_loss.abs());
        assert!((x.test_acc - y.test_acc).abs() <= 2.0 / 360.0);
        assert_eq!(
            x.firing_rates.keys().collect::<Vec<_>>(),
            y.firing_rates.keys().collect::<Vec<_>>()
        );
        assert_eq!(a.optim.steps, b.optim.steps);
    }
    assert!(emu.damage.is_empty(), "{:?}", emu.damage);
    assert_eq!(emu.live_buffers(), 0);
}

/// A run trained one epoch on the emulator resumes on the CPU, and ends
/// where a run trained on the CPU throughout does (up to rounding).
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn a_checkpoint_from_the_emulator_resumes_on_the_cpu() {
    let Some(mut emu) = emu() else { return };
    let straight = tmp("straight");
    train(&config(BN_MLP, Mode::Rate, 2), &straight, None, true).unwrap();
    let mixed = tmp("mixed");
    train_on(&config(BN_MLP, Mode::Rate, 1), &mixed, None, true, &mut emu).unwrap();
    let ck = checkpoint::load(&mixed).unwrap();
    assert_eq!(ck.epoch, 1);
    let s = train(&config(BN_MLP, Mode::Rate, 2), &mixed, Some(ck), true).unwrap();
    assert_eq!(s.epochs.len(), 1);
    let d = max_rel_diff(
        &checkpoint::load(&straight).unwrap().params,
        &checkpoint::load(&mixed).unwrap().params,
    );
    println!("resumed on the CPU: parameters within {d:.1e} of the CPU-only run");
    assert!(d < 1e-4, "{d}");
    assert_eq!(
        std::fs::read_to_string(mixed.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}
