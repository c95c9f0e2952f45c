//! CIFAR-100 binary files written by the tests (raw and gzip): fine and
//! coarse labels, exact normalised values, every error path (short file,
//! label out of range, a class moved to another superclass, missing file),
//! and `snnc train --data cifar100` end to end.

mod common;
use common::run::{snnc, TmpDir};

use std::io::Write;
use std::path::Path;

use snnc::data::{cifar100_split, Cifar100Labels, DataError, CIFAR100_MEAN, CIFAR100_STD};

const RECORD: usize = 3074;

/// Pixel of record `g`, channel `c`, position `p`.
fn pixel(g: usize, c: usize, p: usize) -> u8 {
    ((g * 37 + c * 89 + p * 5) % 256) as u8
}

/// Fine label of record `g`; its superclass is `fine / 5` (any fixed map
/// from classes to superclasses would do).
fn fine(g: usize) -> u8 {
    (g * 7 % 100) as u8
}

fn records(first: usize, n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n * RECORD);
    for g in first..first + n {
        b.push(fine(g) / 5);
        b.push(fine(g));
        for c in 0..3 {
            for p in 0..1024 {
                b.push(pixel(g, c, p));
            }
        }
    }
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `train.bin` with `n_train` records, `test.bin` with 3.
fn write_set(dir: &Path, n_train: usize, gzip: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, first, n) in [("train.bin", 0, n_train), ("test.bin", n_train, 3)] {
        let b = records(first, n);
        if gzip {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&b)).unwrap();
        } else {
            std::fs::write(dir.join(name), b).unwrap();
        }
    }
}

#[test]
fn fine_and_coarse_labels_and_exact_values() {
    let d = TmpDir::new("c100-read");
    write_set(&d.0, 5, false);
    let s = cifar100_split(&d.0, Cifar100Labels::Fine).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (5, 3));
    assert_eq!(s.train.classes, 100);
    assert_eq!(s.train.shape, vec![3, 32, 32]);
    assert_eq!(s.train.name, "cifar100/train");
    assert_eq!(
        s.train.labels,
        (0..5).map(|g| fine(g) as u16).collect::<Vec<_>>()
    );
    assert_eq!(
        s.test.labels,
        (5..8).map(|g| fine(g) as u16).collect::<Vec<_>>()
    );
    s.train.check().unwrap();
    for (g, set, i) in [(0, &s.train, 0), (4, &s.train, 4), (6, &s.test, 1)] {
        let (x, _) = set.sample(i);
        for (c, p) in [(0, 0), (1, 517), (2, 1023)] {
            let want = (pixel(g, c, p) as f32 / 255.0 - CIFAR100_MEAN[c]) / CIFAR100_STD[c];
            assert_eq!(x[c * 1024 + p], want, "record {g} channel {c} pixel {p}");
        }
    }
    let c = cifar100_split(&d.0, Cifar100Labels::Coarse).unwrap();
    assert_eq!(c.train.classes, 20);
    assert_eq!(c.train.name, "cifar100-coarse/train");
    assert_eq!(
        c.train.labels,
        (0..5).map(|g| (fine(g) / 5) as u16).collect::<Vec<_>>()
    );
    assert_eq!(c.train.images, s.train.images);
}

#[test]
fn gzip_and_the_unpacked_subfolder_are_found() {
    let d = TmpDir::new("c100-gz");
    write_set(&d.0.join("cifar-100-binary"), 4, true);
    let s = cifar100_split(&d.0, Cifar100Labels::Fine).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (4, 3));
}

#[test]
fn errors_name_the_file_and_what_is_wrong() {
    let d = TmpDir::new("c100-err");
    // Missing directory / file.
    let e = cifar100_split(&d.0.join("nope"), Cifar100Labels::Fine).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::Missing { .. }), "{msg}");
    assert!(msg.contains("nope/train.bin: file not found"), "{msg}");
    assert!(msg.contains("cifar-100-binary.tar.gz"), "{msg}");

    // A short train.bin: one record and a half.
    write_set(&d.0, 2, false);
    let mut b = records(0, 1);
    b.extend(&records(1, 1)[..1000]);
    std::fs::write(d.0.join("train.bin"), &b).unwrap();
    let e = cifar100_split(&d.0, Cifar100Labels::Fine).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::Truncated { .. }), "{msg}");
    assert!(
        msg.contains("train.bin: truncated at byte 4074, expected 6148 bytes"),
        "{msg}"
    );

    // An empty test.bin.
    write_set(&d.0, 2, false);
    std::fs::write(d.0.join("test.bin"), b"").unwrap();
    let msg = cifar100_split(&d.0, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("test.bin: truncated at byte 0"), "{msg}");

    // A fine label of 100 in the second record; a coarse label of 20.
    for (at, value, want) in [
        (1, 100u8, "label 100 of sample 1"),
        (0, 20, "label 20 of sample 1"),
    ] {
        write_set(&d.0, 2, false);
        let mut b = records(0, 2);
        b[RECORD + at] = value;
        std::fs::write(d.0.join("train.bin"), &b).unwrap();
        let e = cifar100_split(&d.0, Cifar100Labels::Fine).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DataError::LabelOutOfRange { .. }), "{msg}");
        assert!(msg.contains(want), "{msg}");
    }

    // Record 2 puts fine class 0 (superclass 0 in record 0) in superclass 3.
    write_set(&d.0, 3, false);
    let mut b = records(0, 3);
    b[2 * RECORD] = 3;
    b[2 * RECORD + 1] = 0;
    std::fs::write(d.0.join("train.bin"), &b).unwrap();
    let e = cifar100_split(&d.0, Cifar100Labels::Coarse).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::Malformed { .. }), "{msg}");
    assert!(
        msg.contains("train.bin: malformed at byte 6148: record 2: fine class 0 in superclass 3"),
        "{msg}"
    );
}

#[test]
fn snnc_trains_one_epoch_on_generated_cifar100() {
    let d = TmpDir::new("c100-train");
    write_set(&d.0, 40, false);
    let model = d.0.join("tiny100.snn");
    std::fs::write(
        &model,
        "input 3x32x32\nconv2d 4 kernel=3 stride=2 padding=1\nlif\navgpool 4\nflatten\nlinear 20\n",
    )
    .unwrap();
    let (code, out, err) = snnc(&[
        "train",
        model.to_str().unwrap(),
        "--data",
        "cifar100-coarse",
        "--data-dir",
        d.0.to_str().unwrap(),
        "-T",
        "2",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--out",
        d.0.join("run").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"test_acc\""), "{out}");
    // 100 fine classes against a 20-output model: refused, naming both.
    let (code, _, err) = snnc(&[
        "train",
        model.to_str().unwrap(),
        "--data",
        "cifar100",
        "--data-dir",
        d.0.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch",
        "8",
        "--out",
        d.0.join("run2").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("has 100 classes"), "{err}");
}
