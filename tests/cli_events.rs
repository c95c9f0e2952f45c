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
    std::fs::create_dir_all(dir).unwrap();
    let mut img = Vec::new();
    for v in [2051u32, n as u32, 28, 28] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    let mut lab = Vec::new();
    for v in [2049u32, n as u32] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    for i in 0..n {
        let l = i % 10;
        lab.push(l as u8);
        for y in 0..28 {
            for x in 0..28 {
                img.push(if (5..10 + 2 * l).contains(&y) && (8..20).contains(&x) {
                    250
                } else {
                    0
                });
            }
        }
    }
    std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), img).unwrap();
    std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), lab).unwrap();
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
