//! The training runtime on the embedded digits set: it learns, seeded runs
//! are reproducible, an interrupted run resumes to the same result, and a
//! corrupt checkpoint is an error that names the file.

use snnc::passes::rate::Mode;
use snnc::runtime::checkpoint;
use snnc::runtime::optim::{OptimConfig, OptimizerKind, Schedule};
use snnc::runtime::train::{train, TrainConfig};
use std::path::PathBuf;

fn config(mode: Mode, epochs: usize) -> TrainConfig {
    TrainConfig {
        model_source: snnc::cli::DEFAULT_MODEL.1.to_string(),
        model_file: "digits_mlp.snn".into(),
        data: "digits".into(),
        data_dir: None,
        mode,
        steps: 2,
        epochs,
        batch: 32,
        lr: 0.1,
        optim: OptimConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 5e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: Schedule::Const,
        seed: 7,
        paper_grad_scale: false,
        init: None,
        order: Default::default(),
        precision: Default::default(),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snnc-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn learns_digits_in_both_modes() {
    for mode in [Mode::Rate, Mode::Bptt] {
        let dir = tmp(&format!("learn-{mode}"));
        let s = train(&config(mode, 3), &dir, None, true).unwrap();
        for (file, title) in [
            ("loss.svg", "training loss"),
            ("accuracy.svg", "accuracy"),
            ("firing_rates.svg", "firing rates"),
        ] {
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains(title), "{file}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            3
        );
        let acc = s.epochs.last().unwrap().test_acc;
        assert!(acc > 0.85, "{mode}: test accuracy {acc}");
        assert!(s.epochs[0].firing_rates.contains_key("1:lif"));
    }
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let a = tmp("straight");
    let straight = train(&config(Mode::Rate, 4), &a, None, true).unwrap();
    let b = tmp("split");
    train(&config(Mode::Rate, 2), &b, None, true).unwrap();
    let ck = checkpoint::load(&b).unwrap();
    assert_eq!(ck.epoch, 2);
    let resumed = train(&config(Mode::Rate, 4), &b, Some(ck), true).unwrap();
    assert_eq!(resumed.epochs.len(), 2);
    let (x, y) = (
        straight.epochs.last().unwrap(),
        resumed.epochs.last().unwrap(),
    );
    assert_eq!(x.test_acc, y.test_acc);
    assert_eq!(x.train_loss, y.train_loss);
    let (pa, pb) = (
        checkpoint::load(&a).unwrap().params,
        checkpoint::load(&b).unwrap().params,
    );
    assert_eq!(pa, pb, "parameters differ after resuming");
    // Two runs with the same seed are identical.
    let again = train(&config(Mode::Rate, 4), &tmp("again"), None, true).unwrap();
    assert_eq!(again.epochs.last().unwrap().train_loss, x.train_loss);
}

#[test]
fn corrupt_checkpoint_is_a_clear_error() {
    let d = tmp("corrupt");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(checkpoint::FILE), b"not a checkpoint").unwrap();
    let e = checkpoint::load(&d).unwrap_err().to_string();
    assert!(
        e.contains("checkpoint.safetensors") && e.contains("not a valid snnc checkpoint"),
        "{e}"
    );
    let e = checkpoint::load(&tmp("missing")).unwrap_err().to_string();
    assert!(e.contains("cannot read checkpoint"), "{e}");
}

#[test]
fn mismatched_dataset_is_a_clear_error() {
    let mut c = config(Mode::Rate, 1);
    c.model_source = "input 1x28x28\nflatten\nlinear 10\n".into();
    let e = train(&c, &tmp("mismatch"), None, true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("samples of shape 64") && e.contains("expects input 1×28×28"),
        "{e}"
    );
}

/// Training on the time-major fused plans (kernels run one step at a time;
/// with batch-norm statistics recomputed) gives the layer-major run's
/// losses up to rounding, and learns.
#[test]
fn time_major_orders_train_like_layer_major() {
    use snnc::passes::schedule::SchedOpts;
    let model = "model digits_bn\ninput 64 encoding=direct\nlinear 48 bias=false\nbatchnorm\nlif\nlinear 10\n";
    let mut losses = Vec::new();
    for order in [
        SchedOpts::LAYER_MAJOR,
        SchedOpts::TIME_MAJOR,
        SchedOpts::TIME_MAJOR_RECOMPUTE,
    ] {
        let cfg = TrainConfig {
            model_source: model.into(),
            model_file: "digits_bn.snn".into(),
            steps: 3,
            order,
            ..config(Mode::Rate, 2)
        };
        let s = train(&cfg, &tmp(&format!("order-{order}")), None, true).unwrap();
        let last = s.epochs.last().unwrap();
        assert!(
            last.test_acc > 0.8,
            "{order}: test accuracy {}",
            last.test_acc
        );
        losses.push((order, s.epochs[0].train_loss));
    }
    let base = losses[0].1;
    for (order, l) in &losses[1..] {
        assert!(
            (l - base).abs() <= 1e-3 * base,
            "{order}: first-epoch loss {l} vs layer-major {base}"
        );
    }
}
