//! `snnc data make-events`, `snnc data inspect` and `snnc train --data
//! events:DIR` through the binary, on a small fake Fashion-MNIST folder.

mod common;
use common::run::snnc;

use std::path::{Path, PathBuf};

struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Raw IDX files of `n` 28×28 images (a label-sized bright bar) and labels.
fn fake_fashion(dir: &Path, split: &str, n: usize) {
    common::idx::write_fashion(dir, split, n, |l, y, x| {
        if (5..10 + 2 * l).contains(&y) && (8..20).contains(&x) {
            250
        } else {
            0
        }
    });
}

#[test]
fn make_inspect_and_train_on_events() {
    let d = TmpDir(std::env::temp_dir().join(format!("snnc-cli-events-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&d.0);
    let fm = d.0.join("fm");
    fake_fashion(&fm, "train", 6);
    fake_fashion(&fm, "t10k", 3);
    let ev = d.0.join("ev");
    let (code, out, err) = snnc(&[
        "data",
        "make-events",
        "--out",
        ev.to_str().unwrap(),
        "--data-dir",
        fm.to_str().unwrap(),
        "--limit",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SYNTHETIC"), "{out}");
    assert!(out.contains("4 training + 3 test samples"), "{out}");
    let (code, out, err) = snnc(&[
        "data",
        "inspect",
        ev.join("Train/1/00001.bin").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("N-MNIST binary"), "{out}");
    assert!(out.contains("sensor: 34×34"), "{out}");
    // The paper's 48×48 model: the 34×34 sensor is centred in its frames.
    let data = format!("events:{}", ev.display());
    let run = d.0.join("run");
    let (code, out, err) = snnc(&[
        "train",
        "examples/models/vggsnn_dvs.snn",
        "--data",
        &data,
        "-T",
        "1",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--out",
        run.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"test_acc\""), "{out}");
    assert!(run.join("checkpoint.safetensors").is_file());
    // Errors, not panics.
    let (code, _, err) = snnc(&["data", "inspect", "no/such/file.bin"]);
    assert_eq!(code, 1);
    assert!(err.contains("no/such/file.bin"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = snnc(&[
        "train",
        "examples/models/vggsnn_dvs34.snn",
        "--data",
        "events:no/such/dir",
        "--epochs",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no/such/dir/Train"), "{err}");
    assert!(err.contains("make-events"), "{err}");
    let (code, _, err) = snnc(&[
        "data",
        "make-events",
        "--out",
        d.0.join("x").to_str().unwrap(),
        "--data-dir",
        d.0.join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("dataset-fashion-mnist"), "{err}");
}

// ------------------------------------------------- rejected files and events

/// One N-MNIST record (x, y, polarity, 23-bit µs timestamp).
fn nmnist_record(x: u8, y: u8, p: u8, ts: u32) -> [u8; 5] {
    let w = (u64::from(x) << 32) | (u64::from(y) << 24) | (u64::from(p) << 23) | u64::from(ts);
    let b = w.to_be_bytes();
    [b[3], b[4], b[5], b[6], b[7]]
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `n` files of 5 valid events per class in DIR/SPLIT/{0,1}/.
fn good_files(dir: &Path, split: &str, n: usize) {
    for label in 0..2u8 {
        for i in 0..n {
            let recs: Vec<u8> = (0..5u8)
                .flat_map(|k| nmnist_record(k + label, 3, 1, 100 * u32::from(k) + i as u32))
                .collect();
            write(&dir.join(format!("{split}/{label}/{i:05}.bin")), &recs);
        }
    }
}

/// A model small enough to train on 200 samples in a blink.
fn tiny_model(dir: &Path) -> PathBuf {
    let f = dir.join("tiny.snn");
    std::fs::write(&f, "input 2x34x34 encoding=events\nflatten\nlinear 2\n").unwrap();
    f
}

fn train_on(model: &Path, data: &Path, out: &Path) -> (i32, String, String) {
    snnc(&[
        "train",
        model.to_str().unwrap(),
        "--data",
        &format!("events:{}", data.display()),
        "-T",
        "1",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ])
}

#[test]
fn train_reports_rejected_files_and_dropped_events() {
    let d = common::run::TmpDir::new("cli-reject");
    let ev = d.0.join("ev");
    good_files(&ev, "Train", 90);
    good_files(&ev, "Test", 9);
    // 198 good files, a folder named x.bin and a file whose one event is
    // at x = 250, and one more below: 2 of 201 rejected (< 1 %), training
    // goes on.
    std::fs::create_dir_all(ev.join("Train/0/x.bin")).unwrap();
    write(&ev.join("Train/1/wide.bin"), &nmnist_record(250, 1, 1, 0));
    // A file with one bad event of 21: the event is dropped.
    let mut recs: Vec<u8> = (0..20u8)
        .flat_map(|k| nmnist_record(k, k, 1, 1000 * u32::from(k)))
        .collect();
    recs.extend(nmnist_record(3, 77, 0, 20_000));
    write(&ev.join("Test/1/tall.bin"), &recs);
    let model = tiny_model(&d.0);
    let (code, out, err) = train_on(&model, &ev, &d.0.join("run"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"test_acc\""), "{out}");
    assert!(
        err.contains(
            "events: 2 of 201 files rejected (1 a directory, 1 mostly out of sensor 34×34); \
             1 of 1,011 events dropped (y ≥ 34: 1)"
        ),
        "{err}"
    );
    assert!(
        err.contains("Train/0/x.bin: a directory, not an event file"),
        "{err}"
    );
    assert!(
        err.contains("Train/1/wide.bin: 1 of 1 events invalid"),
        "{err}"
    );
    // One more (an empty file): 3 of 202, more than 1 %: refused.
    write(&ev.join("Test/0/empty.bin"), &[]);
    let (code, out, err) = train_on(&model, &ev, &d.0.join("run2"));
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("3 of 202 files rejected (1 a directory, 1 empty, 1 mostly out of sensor"),
        "{err}"
    );
    assert!(
        err.contains("more than 1 % of the files, dataset refused"),
        "{err}"
    );
    assert!(
        err.contains("Test/0/empty.bin: no events: empty file (0 bytes)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn train_on_a_small_folder_with_a_directory_named_x_bin_refuses_it() {
    let d = common::run::TmpDir::new("cli-xbin");
    let ev = d.0.join("ev");
    good_files(&ev, "Train", 3);
    good_files(&ev, "Test", 1);
    std::fs::create_dir_all(ev.join("Train/1/x.bin")).unwrap();
    let (code, _, err) = train_on(&tiny_model(&d.0), &ev, &d.0.join("run"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("1 of 9 files rejected (1 a directory)"),
        "{err}"
    );
    assert!(
        err.contains("Train/1/x.bin: a directory, not an event file"),
        "{err}"
    );
}

#[test]
fn inspect_shows_dropped_events_and_refuses_bad_files() {
    let d = common::run::TmpDir::new("cli-inspect");
    let mut recs: Vec<u8> = (0..20u8)
        .flat_map(|k| nmnist_record(k, k, 1, 1000 * u32::from(k)))
        .collect();
    recs.extend(nmnist_record(250, 5, 0, 20_000));
    let f = d.0.join("a.bin");
    write(&f, &recs);
    let (code, out, err) = snnc(&["data", "inspect", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("events: 20 "), "{out}");
    assert!(
        out.contains(
            "dropped: 1 invalid events (x ≥ 34: 1 (first x = 250, y = 5 at t = 20000 µs))"
        ),
        "{out}"
    );
    for (name, bytes, want) in [
        ("empty.bin", vec![], "no events: empty file (0 bytes)"),
        (
            "markers.bin",
            [nmnist_record(0, 240, 0, 0); 2].concat(),
            "only 2 timestamp-overflow markers",
        ),
        (
            "wide.bin",
            nmnist_record(250, 5, 0, 0).to_vec(),
            "1 of 1 events invalid",
        ),
    ] {
        let f = d.0.join(name);
        write(&f, &bytes);
        let (code, _, err) = snnc(&["data", "inspect", f.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
    }
    let x = d.0.join("x.bin");
    std::fs::create_dir_all(&x).unwrap();
    let (code, _, err) = snnc(&["data", "inspect", x.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("x.bin: a directory, not an event file"),
        "{err}"
    );
}
