//! The step's tail on the backend (src/runtime/device_optim.rs,
//! src/runtime/step.rs): the optimizer kernels give `OptimConfig::update`'s
//! bits, and a run with the update on the device gives the losses,
//! parameters and optimizer state of the run that updates on the host
//! (`TrainOptions::host_update`), on the CPU backend and on the CUDA
//! emulator.
//!
//! The emulator's tests are ignored without a C++ compiler (found by
//! build.rs); with SNNC_REQUIRE_EMU=1 (CI) its absence fails the build.

mod common;

use snnc::codegen::backend::Backend;
use snnc::codegen::cpu::Cpu;
use snnc::codegen::cuda::Emu;
use snnc::passes::rate::Mode;
use snnc::rng::Rng;
use snnc::runtime::checkpoint;
use snnc::runtime::device_optim::{count_correct, running_stat, DeviceOptim};
use snnc::runtime::optim::{OptimConfig, OptimState, OptimizerKind, Schedule};
use snnc::runtime::step::correct;
use snnc::runtime::train::{train_on_with, TrainConfig, TrainOptions};
use snnc::tensor::Tensor;
use std::path::{Path, PathBuf};

fn optim(kind: OptimizerKind, weight_decay: f64) -> OptimConfig {
    OptimConfig {
        kind,
        momentum: 0.9,
        weight_decay,
        betas: (0.9, 0.999),
        eps: 1e-8,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn random(r: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (r.normal() * scale) as f32).collect()
}

/// Buffers on `b` holding `data`.
fn upload_all<B: Backend>(b: &mut B, data: &[Vec<f32>]) -> Vec<B::Buf> {
    data.iter()
        .map(|d| {
            let mut buf = b.alloc(d.len()).unwrap();
            b.upload(&mut buf, d).unwrap();
            buf
        })
        .collect()
}

/// Parameters of several sizes (one element, less and more than a block),
/// decayed (`.weight`) and not.
const PARAMS: &[(&str, usize)] = &[
    ("0.weight", 300),
    ("0.bias", 7),
    ("1.gamma", 1),
    ("1.beta", 0),
    ("2.weight", 1000),
    ("2.bias", 10),
];

/// Four steps of the device update against the host's, for every
/// optimizer, with and without weight decay and grad scale; the state
/// goes back to the host after two steps and the last two start from it
/// (as an epoch boundary or a resume does).
fn update_matches_the_host<B: Backend>(b: &mut B) {
    let names: Vec<(String, usize)> = PARAMS.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
        for wd in [0.0, 5e-2] {
            for scale in [1.0f32, 0.25] {
                let cfg = optim(kind, wd);
                let mut r = Rng::new(7);
                let mut host: Vec<Vec<f32>> =
                    names.iter().map(|(_, n)| random(&mut r, *n, 1.0)).collect();
                let pbufs = upload_all(b, &host);
                let paddrs: Vec<u64> = pbufs.iter().map(|p| b.ptr(p)).collect();
                let mut hstate = OptimState::default();
                let mut dstate = OptimState::default();
                let mut dev = DeviceOptim::new(b, &cfg, &names, &dstate).unwrap();
                for step in 0..4 {
                    if step == 2 {
                        dev.store(b, &mut dstate).unwrap();
                        dev.free(b);
                        dev = DeviceOptim::new(b, &cfg, &names, &dstate).unwrap();
                    }
                    let lr = 0.05 * (1.0 + step as f64) / 3.0;
                    let grads: Vec<Vec<f32>> =
                        names.iter().map(|(_, n)| random(&mut r, *n, 0.1)).collect();
                    for ((name, _), (p, g)) in names.iter().zip(host.iter_mut().zip(&grads)) {
                        let mut g = g.clone();
                        if scale != 1.0 {
                            g.iter_mut().for_each(|x| *x *= scale);
                        }
                        cfg.update(&mut hstate, name, p, &g, lr);
                    }
                    hstate.steps += 1;
                    let gbufs = upload_all(b, &grads);
                    let gaddrs: Vec<u64> = gbufs.iter().map(|g| b.ptr(g)).collect();
                    dev.update(b, &paddrs, &gaddrs, lr, scale).unwrap();
                    for g in gbufs {
                        b.free(g);
                    }
                }
                dev.store(b, &mut dstate).unwrap();
                dev.free(b);
                let what = format!("{kind:?} wd {wd} scale {scale}");
                for (i, p) in pbufs.into_iter().enumerate() {
                    let got = b.download(&p, names[i].1).unwrap();
                    assert_eq!(bits(&got), bits(&host[i]), "{what}: {}", names[i].0);
                    b.free(p);
                }
                assert_eq!(dstate.steps, hstate.steps, "{what}");
                assert_eq!(
                    dstate.buffers.keys().collect::<Vec<_>>(),
                    hstate.buffers.keys().collect::<Vec<_>>(),
                    "{what}"
                );
                for (k, hb) in &hstate.buffers {
                    for (d, h) in dstate.buffers[k].iter().zip(hb) {
                        assert_eq!(bits(d), bits(h), "{what}: state of {k}");
                    }
                }
            }
        }
    }
}

/// The running statistics and the count of right answers against the
/// host loop's formulas (ties go to the first class, as the host's argmax).
fn tail_kernels_match_the_host<B: Backend>(b: &mut B) {
    let mut r = Rng::new(3);
    let (n, m, unbias) = (37, 0.1f32, 1.0f32 + 1.0 / 63.0);
    let run = random(&mut r, n, 1.0);
    let batch = random(&mut r, n, 1.0);
    let bufs = upload_all(b, &[run.clone(), batch.clone()]);
    for u in [1.0, unbias] {
        running_stat(b, b.ptr(&bufs[0]), b.ptr(&bufs[1]), n, m, u).unwrap();
    }
    let mut want = run;
    for u in [1.0, unbias] {
        for (r, x) in want.iter_mut().zip(&batch) {
            *r = if u == 1.0 {
                (1.0 - m) * *r + m * x
            } else {
                (1.0 - m) * *r + m * x * u
            };
        }
    }
    assert_eq!(bits(&b.download(&bufs[0], n).unwrap()), bits(&want));
    for x in bufs {
        b.free(x);
    }
    let (rows, k) = (50, 10);
    let mut logits = random(&mut r, rows * k, 1.0);
    // A tie, a row of −∞ and a NaN.
    logits[3 * k + 4] = logits[3 * k..4 * k].iter().fold(f32::MIN, |a, &x| a.max(x));
    logits[3 * k + 7] = logits[3 * k + 4];
    logits[5 * k..6 * k].fill(f32::NEG_INFINITY);
    logits[6 * k + 2] = f32::NAN;
    let targets: Vec<u16> = (0..rows).map(|i| (i * 7 % k) as u16).collect();
    let mut tf: Vec<f32> = targets.iter().map(|&t| f32::from(t)).collect();
    tf[3] = 4.0;
    let host_targets: Vec<u16> = tf.iter().map(|&t| t as u16).collect();
    let want = correct(&Tensor::from_vec(&[rows, k], logits.clone()), &host_targets);
    let bufs = upload_all(b, &[logits, tf, vec![0.0]]);
    let (z, t, o) = (b.ptr(&bufs[0]), b.ptr(&bufs[1]), b.ptr(&bufs[2]));
    count_correct(b, z, t, o, rows, k).unwrap();
    assert_eq!(b.download(&bufs[2], 1).unwrap()[0], want as f32);
    assert!(want > 0);
    for x in bufs {
        b.free(x);
    }
}

fn emu() -> Emu {
    // The build found a C++ compiler (else these tests are ignored): an
    // emulator that does not build is an error, not a skip.
    Emu::new().unwrap_or_else(|e| panic!("the CUDA emulator does not build: {e}"))
}

#[test]
fn the_update_kernels_give_the_host_update_on_the_cpu() {
    let mut cpu = Cpu::new().unwrap();
    update_matches_the_host(&mut cpu);
    tail_kernels_match_the_host(&mut cpu);
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn the_update_kernels_give_the_host_update_on_the_emulator() {
    let mut e = emu();
    update_matches_the_host(&mut e);
    tail_kernels_match_the_host(&mut e);
    assert!(e.damage.is_empty(), "{:?}", e.damage);
    assert_eq!(e.live_buffers(), 0);
}

// ---- whole runs -------------------------------------------------------------

struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("snnc-device-step-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    TmpDir(d)
}

/// A Fashion-MNIST-shaped IDX set: bars whose height is the class, with
/// noise, so every batch has its own gradients.
fn fake_fashion(dir: &Path, split: &str, n: usize, seed: u64) {
    let mut r = Rng::new(seed);
    common::idx::write_fashion(dir, split, n, |l, y, x| {
        let bar = (5..10 + 2 * l).contains(&y) && (8..20).contains(&x);
        let noise = r.below(60) as u8;
        if bar {
            190 + noise
        } else {
            noise
        }
    });
}

fn model(file: &str) -> (String, String) {
    let path = format!("{}/examples/models/{file}", env!("CARGO_MANIFEST_DIR"));
    (file.to_string(), std::fs::read_to_string(path).unwrap())
}

/// digits_mlp with a batch norm, so the running statistics are exercised.
const BN_MLP: &str = "model bn_mlp\ninput 64\nlinear 96 bias=false\nbatchnorm\nlif\nlinear 10\n";

fn config(model: (String, String), data: &str, mode: Mode, optim: OptimConfig) -> TrainConfig {
    TrainConfig {
        model_source: model.1,
        model_file: model.0,
        data: data.into(),
        data_dir: None,
        mode,
        steps: 2,
        epochs: 2,
        batch: 64,
        lr: 0.05,
        optim,
        schedule: Schedule::Cosine,
        seed: 5,
        paper_grad_scale: true,
        init: None,
        order: Default::default(),
        precision: Default::default(),
    }
}

/// Trains `cfg` with the update on the host and on the device, and checks
/// that the epochs' losses and accuracies, the parameters and the
/// optimizer state are the same bits. `stop` stops both runs after that
/// many steps (mid-epoch: the checkpoint then comes from the device state
/// brought back to the host).
fn device_run_equals_host_run<B: Backend>(b: &mut B, cfg: &TrainConfig, stop: Option<u64>) {
    let on = b
        .describe()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let runs: Vec<_> = [true, false]
        .into_iter()
        .map(|host_update| {
            let dir = tmp(&format!(
                "{on}-{}-{}-{:?}-{host_update}",
                cfg.model_file, cfg.mode, cfg.optim.kind
            ));
            let opts = TrainOptions {
                quiet: true,
                host_update,
                stop_after_steps: stop,
                ..TrainOptions::default()
            };
            let s = train_on_with(cfg, &dir.0, None, &opts, b).unwrap();
            (s, checkpoint::load(&dir.0).unwrap(), dir)
        })
        .collect();
    let ((hs, hc, _), (ds, dc, _)) = (&runs[0], &runs[1]);
    let what = format!("{} {:?} {}", cfg.model_file, cfg.optim.kind, cfg.mode);
    assert_eq!(hs.interrupted, ds.interrupted, "{what}");
    assert_eq!(hs.epochs.len(), ds.epochs.len(), "{what}");
    for (h, d) in hs.epochs.iter().zip(&ds.epochs) {
        assert_eq!(h.train_loss.to_bits(), d.train_loss.to_bits(), "{what}");
        assert_eq!(h.train_acc, d.train_acc, "{what}");
        assert_eq!(h.test_acc, d.test_acc, "{what}");
        assert_eq!(h.firing_rates, d.firing_rates, "{what}");
    }
    assert_eq!(
        hc.params.keys().collect::<Vec<_>>(),
        dc.params.keys().collect::<Vec<_>>()
    );
    for (k, t) in &hc.params {
        assert_eq!(bits(&t.data), bits(&dc.params[k].data), "{what}: {k}");
    }
    assert_eq!(hc.optim.steps, dc.optim.steps, "{what}");
    assert_eq!(
        hc.optim.buffers.keys().collect::<Vec<_>>(),
        dc.optim.buffers.keys().collect::<Vec<_>>()
    );
    for (k, hb) in &hc.optim.buffers {
        for (h, d) in hb.iter().zip(&dc.optim.buffers[k]) {
            let diff: Vec<usize> = (0..h.len())
                .filter(|&i| h[i].to_bits() != d[i].to_bits())
                .collect();
            if let Some(&i) = diff.first() {
                eprintln!(
                    "{k}: {} of {} differ ({} vs {}), first {i}: {} vs {}",
                    diff.len(),
                    h.len(),
                    h.len(),
                    d.len(),
                    h[i],
                    d[i]
                );
            }
            assert_eq!(bits(h), bits(d), "{what}: state of {k}");
        }
    }
    assert_eq!(
        hc.epoch_sums.as_ref().map(|s| s.loss_sum.to_bits()),
        dc.epoch_sums.as_ref().map(|s| s.loss_sum.to_bits())
    );
    println!(
        "{what}: {} epochs, {} optimizer steps, the same bits",
        ds.epochs.len(),
        dc.optim.steps
    );
}

/// The runs of both tests: digits_mlp (SGD, rate), the MLP with a batch
/// norm (AdamW, BPTT; SGD without weight decay, rate), and fmnist_csnn on
/// a small generated Fashion-MNIST (AdamW, rate) stopped mid-epoch.
fn runs<B: Backend>(b: &mut B, fashion: &Path) {
    let sgd = optim(OptimizerKind::Sgd, 5e-4);
    let adamw = optim(OptimizerKind::Adamw, 1e-2);
    device_run_equals_host_run(
        b,
        &config(model("digits_mlp.snn"), "digits", Mode::Rate, sgd),
        None,
    );
    let bn = ("bn_mlp.snn".to_string(), BN_MLP.to_string());
    device_run_equals_host_run(b, &config(bn.clone(), "digits", Mode::Bptt, adamw), None);
    let plain = optim(OptimizerKind::Sgd, 0.0);
    device_run_equals_host_run(b, &config(bn, "digits", Mode::Rate, plain), Some(30));
    let csnn = TrainConfig {
        data_dir: Some(fashion.to_path_buf()),
        batch: 8,
        ..config(model("fmnist_csnn.snn"), "fashion-mnist", Mode::Rate, adamw)
    };
    device_run_equals_host_run(b, &csnn, Some(5));
}

fn fashion(on: &str) -> TmpDir {
    let d = tmp(&format!("fashion-{on}"));
    fake_fashion(&d.0, "train", 32, 1);
    fake_fashion(&d.0, "t10k", 10, 2);
    d
}

#[test]
fn a_run_with_the_device_update_equals_the_host_update_on_the_cpu() {
    let f = fashion("cpu");
    runs(&mut Cpu::new().unwrap(), &f.0);
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn a_run_with_the_device_update_equals_the_host_update_on_the_emulator() {
    let f = fashion("emu");
    let mut e = emu();
    runs(&mut e, &f.0);
    assert!(e.damage.is_empty(), "{:?}", e.damage);
    assert_eq!(e.live_buffers(), 0);
}
