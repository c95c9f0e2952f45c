//! Nothing a user does to a run loses work: run folders are never
//! overwritten or mixed, the metrics and the checkpoint agree after any
//! crash, `--resume` keeps (and checks) the run's settings, an interrupted
//! epoch resumes with its sums, Ctrl-C saves and exits 130, `--json`
//! streams, checkpoints are verified, and `eval` reproduces the run.

mod common;
use common::run::{snnc, TmpDir};
use snnc::passes::rate::Mode;
use snnc::runtime::checkpoint;
use snnc::runtime::optim::{OptimConfig, OptimizerKind, Schedule};
use snnc::runtime::train::{train, train_with, TrainConfig, TrainOptions};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `snnc ARGS` in `cwd`: (exit code, stdout, stderr).
fn snnc_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_snnc"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The epochs of `metrics.jsonl`, in file order.
fn epochs_of(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
                ["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn metrics_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        model_source: snnc::cli::DEFAULT_MODEL.1.to_string(),
        model_file: "digits_mlp.snn".into(),
        data: "digits".into(),
        data_dir: None,
        mode: Mode::Rate,
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
        schedule: Schedule::Cosine,
        seed: 3,
        paper_grad_scale: false,
        init: None,
        order: Default::default(),
        precision: Default::default(),
    }
}

/// Kills the child if the test ends early.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigint(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT failed");
}

/// Spawns a long `snnc train --json` with piped output; returns the guard
/// and a channel of its stdout lines (read by a thread, so the test sees
/// each line as soon as snnc writes it).
fn spawn_json(args: &[&str]) -> (Guard, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_snnc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Guard(child), rx)
}

/// Waits for the child to exit (at most `secs`): (code, stderr).
fn wait(g: &mut Guard, secs: u64) -> (Option<i32>, String) {
    for _ in 0..secs * 20 {
        if let Some(st) = g.0.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            g.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (st.code(), err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("snnc did not exit within {secs} s");
}

// ---------------------------------------------------------------- folders

/// The README's main job (`snnc train`, no --out) run twice in a row: two
/// complete, separate run folders, each with its own epochs once.
#[test]
fn main_job_twice_makes_two_separate_runs() {
    let d = TmpDir::new("main-twice");
    let args = ["train", "--epochs", "2", "-T", "2"];
    let (code, out1, err) = snnc_in(&d.0, &args);
    assert_eq!(code, 0, "{err}");
    assert!(out1.contains("runs/digits_mlp-rate-T2"), "{out1}");
    let (code, out2, err) = snnc_in(&d.0, &args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out2.contains("holds an earlier run") && out2.contains("runs/digits_mlp-rate-T2-2"),
        "the second run must say where it goes: {out2}"
    );
    for name in ["digits_mlp-rate-T2", "digits_mlp-rate-T2-2"] {
        let run = d.0.join("runs").join(name);
        assert_eq!(epochs_of(&run), [1, 2], "{name}");
        let ck = checkpoint::load(&run).unwrap();
        assert_eq!((ck.epoch, ck.batch_in_epoch), (2, 0), "{name}");
        assert!(run.join("config.json").is_file(), "{name}");
    }
    // A third goes to -3.
    let (code, out3, err) = snnc_in(&d.0, &["train", "--epochs", "1", "-T", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out3.contains("runs/digits_mlp-rate-T2-3"), "{out3}");
    assert_eq!(epochs_of(&d.0.join("runs/digits_mlp-rate-T2")), [1, 2]);
}

/// `--out DIR` holding a run (of another model here) is refused and the
/// run is left as it was; an empty existing folder is fine.
#[test]
fn out_into_an_existing_run_is_refused() {
    let d = TmpDir::new("out-taken");
    let run = d.0.join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = snnc(&["train", "--epochs", "1", "-T", "2", "--out", r]);
    assert_eq!(code, 0, "{err}");
    let before = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let other = d.0.join("other.snn");
    std::fs::write(&other, "input 64\nlinear 32\nlif\nlinear 10\n").unwrap();
    let (code, out, err) = snnc(&[
        "train",
        other.to_str().unwrap(),
        "--epochs",
        "1",
        "-T",
        "2",
        "--out",
        r,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("already holds a run"), "{err}");
    assert!(err.contains(&format!("--resume {r}")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        before
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    // Only metrics.jsonl (a run stopped before its first checkpoint by an
    // older snnc): still a run.
    let partial = d.0.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("metrics.jsonl"), "").unwrap();
    let (code, _, err) = snnc(&["train", "--epochs", "1", "--out", partial.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already holds a run (metrics.jsonl)"), "{err}");
    // An empty folder is fine.
    let empty = d.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = snnc(&[
        "train",
        "--epochs",
        "1",
        "-T",
        "2",
        "--out",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epochs_of(&empty), [1]);
    // The library refuses too.
    let e = train(&config(1), &run, None, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already holds a run"), "{e}");
}

/// A run that fails before its first checkpoint (here: T = 0) leaves no
/// folder behind to be mistaken for a run, so the next attempt can use it.
#[test]
fn a_run_that_fails_to_start_leaves_nothing_behind() {
    let d = TmpDir::new("failed-start");
    let (code, _, err) = snnc_in(&d.0, &["train", "-T", "0", "--epochs", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!d.0.join("runs/digits_mlp-rate-T0").exists());
    let run = d.0.join("run");
    let r = run.to_str().unwrap();
    let (code, _, _) = snnc(&["train", "-T", "0", "--epochs", "1", "--out", r]);
    assert_eq!(code, 1);
    assert!(!run.exists(), "a failed start left `{r}`");
    let (code, _, err) = snnc(&["train", "-T", "2", "--epochs", "1", "--out", r]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epochs_of(&run), [1]);
}

// ------------------------------------------------- metrics vs checkpoint

/// A crash between the checkpoint and the metrics line (either order), a
/// torn line and a stale temporary file: resuming leaves exactly one line
/// per epoch and no temporary file.
#[test]
fn resume_repairs_metrics_and_removes_a_stale_tmp() {
    let d = TmpDir::new("repair");
    let run = d.0.join("run");
    let r = run.to_str().unwrap();
    train(&config(2), &run, None, true).unwrap();
    assert_eq!(epochs_of(&run), [1, 2]);
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // An epoch-3 line written before a crash stopped its checkpoint (what
    // older snnc did: metrics first), a torn line, a stale .tmp.
    let third = lines
        .lines()
        .last()
        .unwrap()
        .replace("\"epoch\":2", "\"epoch\":3");
    std::fs::write(
        run.join("metrics.jsonl"),
        format!("{lines}{third}\n{{\"epoch\":4,\"train_lo"),
    )
    .unwrap();
    std::fs::write(run.join("checkpoint.safetensors.tmp"), b"half a checkpoint").unwrap();
    let (code, _, err) = snnc(&["train", "--resume", r, "--epochs", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("removed") && err.contains(".tmp"), "{err}");
    assert_eq!(epochs_of(&run), [1, 2, 3]);
    assert!(!run.join("checkpoint.safetensors.tmp").exists());
    // The checkpoint was written, the line not (a crash or a full disk
    // between the two): resume restores the line from the checkpoint.
    let full = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let two: String = full.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(run.join("metrics.jsonl"), &two).unwrap();
    let (code, _, err) = snnc(&["train", "--resume", r, "--epochs", "4"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epochs_of(&run), [1, 2, 3, 4]);
    let now = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        now.starts_with(&full),
        "epochs 1-3 must be the original lines"
    );
}

/// A run that stopped before its first checkpoint (only config.json) is
/// resumed from the start.
#[test]
fn resume_before_the_first_checkpoint_restarts_the_run() {
    let d = TmpDir::new("config-only");
    let run = d.0.join("run");
    train(&config(1), &run, None, true).unwrap();
    let straight = metrics_lines(&run);
    for f in ["checkpoint.safetensors", "metrics.jsonl"] {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    let (code, out, err) = snnc(&["train", "--resume", run.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("at epoch 1/1"), "{out}");
    let again = metrics_lines(&run);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["train_loss"], straight[0]["train_loss"]);
}

/// One process at a time trains in a run folder: a second `--resume` of a
/// run in progress is refused (and leaves it alone).
#[test]
fn a_run_in_progress_is_not_resumed_twice() {
    let d = TmpDir::new("locked");
    let run = d.0.join("run");
    let r = run.to_str().unwrap();
    train(&config(1), &run, None, true).unwrap();
    let held = snnc::runtime::rundir::lock(&run).unwrap();
    let (code, _, err) = snnc(&["train", "--resume", r, "--epochs", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another snnc process is training"), "{err}");
    assert_eq!(epochs_of(&run), [1]);
    drop(held);
    let (code, _, err) = snnc(&["train", "--resume", r, "--epochs", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epochs_of(&run), [1, 2]);
}

// ------------------------------------------------------------- --resume

/// Flags given with --resume must agree with the run; a finished run says
/// so; --epochs N extends it.
#[test]
fn resume_refuses_contradicting_flags_and_says_when_finished() {
    let d = TmpDir::new("resume-flags");
    let run = d.0.join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = snnc(&["train", "--epochs", "1", "-T", "2", "--out", r]);
    assert_eq!(code, 0, "{err}");
    let ck = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    for (flag, value, has) in [
        ("--lr", "0.05", "0.1"),
        ("--mode", "bptt", "rate"),
        ("-T", "4", "2"),
        ("--data", "mnist", "digits"),
        ("--batch", "16", "32"),
        ("--seed", "9", "0"),
    ] {
        let (code, out, err) = snnc(&["train", "--resume", r, "--epochs", "2", flag, value]);
        assert_eq!(code, 1, "{flag}: {out}{err}");
        assert!(
            err.contains(&format!("{flag} {value} (the run has {has})")),
            "{flag}: {err}"
        );
    }
    let other = d.0.join("other.snn");
    std::fs::write(&other, "input 64\nlinear 10\n").unwrap();
    let (code, _, err) = snnc(&["train", other.to_str().unwrap(), "--resume", r]);
    assert_eq!(code, 1);
    assert!(err.contains("is not the model the run trains"), "{err}");
    let (code, _, err) = snnc(&["train", "--resume", r, "--out", "elsewhere"]);
    assert_eq!(code, 1);
    assert!(err.contains("--out elsewhere"), "{err}");
    // Nothing was touched.
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        ck
    );
    // Finished: a clear message and a non-zero exit, nothing done.
    let (code, out, err) = snnc(&["train", "--resume", r]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("run already finished (1/1 epochs)") && err.contains("--epochs N"),
        "{err}"
    );
    let (code, _, err) = snnc(&["train", "--resume", r, "--epochs", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("already trained 1 epoch"), "{err}");
    // Agreeing flags are fine, and what is taken from the run is printed.
    let (code, out, err) = snnc(&[
        "train", "--resume", r, "--epochs", "2", "-T", "2", "--lr", "0.1", "--mode", "rate",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("with the run's settings") && out.contains("T=2") && out.contains("batch 32"),
        "{out}"
    );
    assert_eq!(epochs_of(&run), [1, 2]);
    // The checkpoint file stands for its folder.
    let file = run.join("checkpoint.safetensors");
    let (code, _, err) = snnc(&["train", "--resume", file.to_str().unwrap(), "--epochs", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epochs_of(&run), [1, 2, 3]);
}

// ----------------------------------------------------- interrupted epochs

/// An epoch interrupted mid-way and resumed reports its loss and accuracy
/// over all its batches: the same metrics line as an uninterrupted run.
#[test]
fn mid_epoch_resume_keeps_the_epochs_sums() {
    let d = TmpDir::new("mid-epoch");
    let (a, b) = (d.0.join("straight"), d.0.join("split"));
    let straight = train(&config(2), &a, None, true).unwrap();
    // 1437 / 32 = 44 batches per epoch: stop after batch 10 of epoch 2.
    let opts = TrainOptions {
        quiet: true,
        stop_after_steps: Some(44 + 10),
        ..TrainOptions::default()
    };
    let s = train_with(&config(2), &b, None, &opts).unwrap();
    assert_eq!(s.interrupted, Some((2, 10)));
    let ck = checkpoint::load(&b).unwrap();
    assert_eq!((ck.epoch, ck.batch_in_epoch), (1, 10));
    assert_eq!(epochs_of(&b), [1]);
    let resumed = train(&config(2), &b, Some(ck), true).unwrap();
    let (x, y) = (&straight.epochs[1], &resumed.epochs[0]);
    assert_eq!((x.train_loss, x.train_acc), (y.train_loss, y.train_acc));
    assert_eq!(x.test_acc, y.test_acc);
    assert_eq!(
        checkpoint::load(&a).unwrap().params,
        checkpoint::load(&b).unwrap().params
    );
    let (la, lb) = (metrics_lines(&a), metrics_lines(&b));
    assert_eq!(lb.len(), 2);
    for k in ["epoch", "train_loss", "train_acc", "test_acc", "lr"] {
        assert_eq!(la[1][k], lb[1][k], "{k}");
    }
}

/// Stopped at an epoch's end: the checkpoint covers the epoch, and the
/// summary says where the run stopped.
#[test]
fn interrupt_at_an_epoch_end_reports_where_it_saved() {
    let d = TmpDir::new("epoch-end");
    let run = d.0.join("run");
    let opts = TrainOptions {
        quiet: true,
        stop_after_steps: Some(44),
        ..TrainOptions::default()
    };
    let s = train_with(&config(3), &run, None, &opts).unwrap();
    assert_eq!(s.interrupted, Some((1, 44)));
    let ck = checkpoint::load(&run).unwrap();
    assert_eq!((ck.epoch, ck.batch_in_epoch), (1, 0));
    assert_eq!(epochs_of(&run), [1]);
    let msg = snnc::runtime::train::interrupted_message(&run, 1, 44);
    assert!(
        msg.starts_with("interrupted: saved checkpoint at epoch 1 batch 44; resume with")
            && msg.contains(&format!("snnc train --resume {}", run.display())),
        "{msg}"
    );
    // The last epoch finishing is not an interruption.
    let run2 = d.0.join("run2");
    let opts = TrainOptions {
        quiet: true,
        stop_after_steps: Some(44),
        ..TrainOptions::default()
    };
    let s = train_with(&config(1), &run2, None, &opts).unwrap();
    assert_eq!(s.interrupted, None);
}

/// Ctrl-C: the checkpoint saved, the message printed, exit code 130, and
/// the run resumes to exactly one metrics line per epoch.
#[test]
fn ctrl_c_saves_and_exits_130() {
    let d = TmpDir::new("sigint");
    let run = d.0.join("run");
    let r = run.to_str().unwrap();
    let (mut g, lines) =
        spawn_json(&["train", "--epochs", "2000", "-T", "2", "--json", "--out", r]);
    // Once an epoch has ended the handler is in place and training runs.
    lines
        .recv_timeout(Duration::from_secs(300))
        .expect("no epoch line from snnc train --json");
    sigint(&g.0);
    let (code, err) = wait(&mut g, 120);
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("interrupted: saved checkpoint at epoch ")
            && err.contains(&format!("resume with `snnc train --resume {r}`")),
        "{err}"
    );
    let ck = checkpoint::load(&run).unwrap();
    assert!(ck.epoch >= 1);
    let done = ck.epoch;
    let want = done + 1;
    let (code, _, err) = snnc(&["train", "--resume", r, "--epochs", &want.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epochs_of(&run), (1..=want as u64).collect::<Vec<_>>());
}

/// `train --json` with its output in a pipe: each epoch's line arrives as
/// the epoch ends, not when the process exits.
#[test]
fn json_lines_arrive_per_epoch_through_a_pipe() {
    let d = TmpDir::new("json-pipe");
    let run = d.0.join("run");
    let (mut g, lines) = spawn_json(&[
        "train",
        "--epochs",
        "2000",
        "-T",
        "2",
        "--json",
        "--out",
        run.to_str().unwrap(),
    ]);
    let first = lines
        .recv_timeout(Duration::from_secs(300))
        .expect("no epoch line while snnc trains");
    assert!(
        g.0.try_wait().unwrap().is_none(),
        "the line came only as snnc exited"
    );
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["epoch"], 1, "{first}");
    sigint(&g.0);
    let (code, err) = wait(&mut g, 120);
    assert_eq!(code, Some(130), "{err}");
}

// ------------------------------------------------------------ checkpoints

/// The offsets of tensor `name`'s data in a safetensors file.
fn data_range(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let o = &header[name]["data_offsets"];
    let (a, b) = (
        o[0].as_u64().unwrap() as usize,
        o[1].as_u64().unwrap() as usize,
    );
    8 + n + a..8 + n + b
}

/// The checkpoint rewritten in the older format (no checksums), with `f`
/// applied to `param/0.weight`'s values.
fn as_v1(bytes: &[u8], f: impl Fn(&mut [f32])) -> Vec<u8> {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    meta.insert("format".into(), "snnc-checkpoint-1".into());
    for k in ["crc32", "meta_crc32", "metrics"] {
        meta.remove(k);
    }
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let mut data = t.data().to_vec();
            if n == "param/0.weight" {
                let mut v: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                f(&mut v);
                data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            }
            (n, t.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// A flipped data byte, a NaN weight, a damaged header: `load` and `eval`
/// refuse, naming the file and the tensor. Old checkpoints without
/// checksums load with a warning.
#[test]
fn damaged_checkpoints_are_refused_naming_the_tensor() {
    let d = TmpDir::new("damaged");
    let run = d.0.join("run");
    train(&config(1), &run, None, true).unwrap();
    let file = run.join("checkpoint.safetensors");
    let good = std::fs::read(&file).unwrap();
    // One flipped bit in the first layer's weights.
    let mut bad = good.clone();
    let range = data_range(&bad, "param/0.weight");
    bad[range.start + 101] ^= 0x10;
    std::fs::write(&file, &bad).unwrap();
    let e = checkpoint::load(&run).unwrap_err().to_string();
    assert!(
        e.contains("checkpoint.safetensors") && e.contains("`param/0.weight` fails its checksum"),
        "{e}"
    );
    let (code, out, err) = snnc(&["eval", run.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("param/0.weight") && !out.contains("test accuracy"),
        "{err}"
    );
    let (code, _, err) = snnc(&["train", "--resume", run.to_str().unwrap(), "--epochs", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("fails its checksum"), "{err}");
    // A NaN written over a weight (checksum not updated): refused.
    let mut nan = good.clone();
    nan[range.start + 8..range.start + 12].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, &nan).unwrap();
    let e = checkpoint::load(&run).unwrap_err().to_string();
    assert!(e.contains("param/0.weight"), "{e}");
    // A NaN in a checkpoint without checksums: refused by name as well.
    std::fs::write(&file, as_v1(&good, |v| v[2] = f32::NAN)).unwrap();
    let e = checkpoint::load(&run).unwrap_err().to_string();
    assert!(
        e.contains("checkpoint.safetensors") && e.contains("`param/0.weight` holds NaN"),
        "{e}"
    );
    let (code, out, err) = snnc(&["eval", run.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("`param/0.weight` holds NaN"), "{err}");
    std::fs::write(&file, as_v1(&good, |v| v[5] = f32::INFINITY)).unwrap();
    let e = checkpoint::load(&run).unwrap_err().to_string();
    assert!(e.contains("`param/0.weight` holds inf"), "{e}");
    // The epoch in the header changed: the metadata checksum fails.
    let mut edited = good.clone();
    let key = b"\"epoch\":\"1\"";
    let at = edited
        .windows(key.len())
        .position(|w| w == key)
        .expect("the epoch in the header");
    edited[at + key.len() - 2] = b'7';
    std::fs::write(&file, &edited).unwrap();
    let e = checkpoint::load(&run).unwrap_err().to_string();
    assert!(e.contains("metadata") && e.contains("checksum"), "{e}");
    // An older checkpoint, intact: loads, with a warning.
    std::fs::write(&file, as_v1(&good, |_| {})).unwrap();
    let ck = checkpoint::load(&run).unwrap();
    assert_eq!(ck.epoch, 1);
    let (code, out, err) = snnc(&["eval", run.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("no checksums"),
        "{err}"
    );
    assert!(out.contains("test accuracy"), "{out}");
}

// ------------------------------------------------------------------- eval

/// `eval` takes the run's batch (and T, data, seed): a Poisson-encoded
/// model trained with --batch 32 evaluates to the test accuracy the run
/// reported.
#[test]
fn eval_reproduces_the_runs_test_accuracy() {
    let d = TmpDir::new("eval");
    let model = d.0.join("digits_poisson.snn");
    std::fs::write(
        &model,
        "input 64 encoding=poisson seed=5\nlinear 64\nlif\nlinear 10\n",
    )
    .unwrap();
    let run = d.0.join("run");
    let r = run.to_str().unwrap();
    let (code, _, err) = snnc(&[
        "train",
        model.to_str().unwrap(),
        "--epochs",
        "2",
        "-T",
        "2",
        "--batch",
        "32",
        "--seed",
        "4",
        "--out",
        r,
    ]);
    assert_eq!(code, 0, "{err}");
    let last = metrics_lines(&run).pop().unwrap();
    let want = format!(
        "test accuracy {:.2}%",
        100.0 * last["test_acc"].as_f64().unwrap()
    );
    let (code, out, err) = snnc(&["eval", r]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("batch 32") && out.contains("T=2") && out.contains("from the run"),
        "{out}"
    );
    assert!(out.contains(&want), "wanted `{want}`:\n{out}");
    // An explicit --batch overrides, and says so.
    let (code, out, err) = snnc(&["eval", r, "--batch", "100"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("batch 100 (the run used 32)"), "{out}");
}
