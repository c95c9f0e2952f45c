//! IDX (MNIST / Fashion-MNIST) on files the tests write, raw and gzip, and
//! every error path; the real Fashion-MNIST when Debian's package is installed.

mod common;
use common::run::TmpDir;

use std::io::Write;
use std::path::Path;

use snnc::data::{idx_split, DataError, IdxKind, FASHION_MNIST_DIR};

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn images_bytes(n: u32, rows: u32, cols: u32, seed: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [2051u32, n, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..n * rows * cols).map(|i| ((i * 7 + seed * 13) % 256) as u8));
    b
}

fn labels_bytes(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&2049u32.to_be_bytes());
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

const TRAIN_LABELS: [u8; 5] = [3, 0, 9, 1, 7];
const TEST_LABELS: [u8; 3] = [2, 8, 5];

/// The four files, each raw or gzip (`.gz` name).
fn write_set(dir: &Path, gzip: bool, train: &str, test: &str) {
    let files = [
        (
            format!("{train}-images-idx3-ubyte"),
            images_bytes(5, 28, 28, 1),
        ),
        (
            format!("{train}-labels-idx1-ubyte"),
            labels_bytes(&TRAIN_LABELS),
        ),
        (
            format!("{test}-images-idx3-ubyte"),
            images_bytes(3, 28, 28, 2),
        ),
        (
            format!("{test}-labels-idx1-ubyte"),
            labels_bytes(&TEST_LABELS),
        ),
    ];
    for (name, bytes) in files {
        if gzip {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn check_contents(s: &snnc::data::Split, kind: IdxKind) {
    assert_eq!(s.train.name, format!("{}/train", kind.name()));
    assert_eq!(s.test.name, format!("{}/test", kind.name()));
    assert_eq!((s.train.len(), s.test.len()), (5, 3));
    assert_eq!(s.train.labels, TRAIN_LABELS.map(u16::from));
    assert_eq!(s.test.labels, TEST_LABELS.map(u16::from));
    for (d, seed) in [(&s.train, 1u32), (&s.test, 2)] {
        d.check().unwrap();
        assert_eq!(d.shape, vec![1, 28, 28]);
        assert_eq!(d.classes, 10);
        let want: Vec<f32> = (0..d.len() as u32 * 784)
            .map(|i| ((i * 7 + seed * 13) % 256) as f32 / 255.0)
            .collect();
        assert_eq!(d.images, want);
        assert!(d.images.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn idx_raw_and_gz_load_identically() {
    let raw = TmpDir::new("raw");
    write_set(&raw.0, false, "train", "t10k");
    let a = idx_split(&raw.0, IdxKind::Mnist).unwrap();
    check_contents(&a, IdxKind::Mnist);

    let gzd = TmpDir::new("gz");
    write_set(&gzd.0, true, "train", "t10k");
    let b = idx_split(&gzd.0, IdxKind::FashionMnist).unwrap();
    check_contents(&b, IdxKind::FashionMnist);
    assert_eq!(a.train.images, b.train.images);
    assert_eq!(a.test.labels, b.test.labels);
}

#[test]
fn idx_accepts_other_namings_and_layouts() {
    // `test-` instead of `t10k-`, inside torchvision's `raw/` folder.
    let d = TmpDir::new("names");
    std::fs::create_dir(d.0.join("raw")).unwrap();
    write_set(&d.0.join("raw"), false, "train", "test");
    check_contents(&idx_split(&d.0, IdxKind::Mnist).unwrap(), IdxKind::Mnist);

    // LeCun's original dotted spelling; gzip recognised by content even
    // without a .gz name.
    let d = TmpDir::new("dotted");
    std::fs::write(
        d.0.join("train-images.idx3-ubyte"),
        gz(&images_bytes(5, 28, 28, 1)),
    )
    .unwrap();
    std::fs::write(
        d.0.join("train-labels.idx1-ubyte"),
        labels_bytes(&TRAIN_LABELS),
    )
    .unwrap();
    std::fs::write(
        d.0.join("t10k-images.idx3-ubyte"),
        images_bytes(3, 28, 28, 2),
    )
    .unwrap();
    std::fs::write(
        d.0.join("t10k-labels.idx1-ubyte"),
        labels_bytes(&TEST_LABELS),
    )
    .unwrap();
    check_contents(&idx_split(&d.0, IdxKind::Mnist).unwrap(), IdxKind::Mnist);
}

/// Writes a good set, lets `spoil` replace one file, and returns the error.
fn spoiled(gzip: bool, kind: IdxKind, spoil: impl FnOnce(&Path)) -> (DataError, String) {
    let d = TmpDir::new("err");
    write_set(&d.0, gzip, "train", "t10k");
    spoil(&d.0);
    let e = idx_split(&d.0, kind).expect_err("should fail");
    let msg = e.to_string();
    // Every error says how to get the data.
    let hint = match kind {
        IdxKind::FashionMnist => "apt-get install dataset-fashion-mnist",
        IdxKind::Mnist => "--data-dir",
    };
    assert!(msg.contains(hint), "no hint in: {msg}");
    (e, msg)
}

#[test]
fn idx_missing_file() {
    let (e, m) = spoiled(false, IdxKind::FashionMnist, |d| {
        std::fs::remove_file(d.join("t10k-labels-idx1-ubyte")).unwrap()
    });
    assert!(matches!(e, DataError::Missing { .. }));
    assert!(m.contains("t10k-labels-idx1-ubyte: file not found"), "{m}");
    assert!(
        m.contains("t10k-labels-idx1-ubyte.gz"),
        "should list the .gz name: {m}"
    );
    assert!(m.contains(FASHION_MNIST_DIR), "{m}");

    // A directory that does not exist at all.
    let e = idx_split(Path::new("/nonexistent/snnc-data"), IdxKind::Mnist).unwrap_err();
    let m = e.to_string();
    assert!(
        m.starts_with(
            "/nonexistent/snnc-data/train-images-idx3-ubyte: file not found \
             (directory /nonexistent/snnc-data does not exist)"
        ),
        "{m}"
    );
}

#[test]
fn idx_truncated_file_raw_and_gz() {
    for gzip in [false, true] {
        let (e, m) = spoiled(gzip, IdxKind::FashionMnist, |d| {
            let mut b = images_bytes(5, 28, 28, 1);
            b.truncate(16 + 4 * 784 + 100);
            let (name, bytes) = if gzip {
                ("train-images-idx3-ubyte.gz", gz(&b))
            } else {
                ("train-images-idx3-ubyte", b)
            };
            std::fs::write(d.join(name), bytes).unwrap();
        });
        assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
        assert!(m.contains("train-images-idx3-ubyte"), "{m}");
        assert!(
            m.contains(&format!(
                "truncated at byte {}, expected {} bytes (16-byte header + 5 × 28 × 28 pixels)",
                16 + 4 * 784 + 100,
                16 + 5 * 784
            )),
            "{m}"
        );
    }
    // Short header.
    let (_, m) = spoiled(false, IdxKind::Mnist, |d| {
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0]).unwrap()
    });
    assert!(
        m.contains("t10k-labels-idx1-ubyte: truncated at byte 6, expected 8 bytes"),
        "{m}"
    );
    // Empty file.
    let (_, m) = spoiled(false, IdxKind::Mnist, |d| {
        std::fs::write(d.join("train-labels-idx1-ubyte"), []).unwrap()
    });
    assert!(
        m.contains("train-labels-idx1-ubyte: truncated at byte 0"),
        "{m}"
    );
}

#[test]
fn idx_corrupt_gzip_stream() {
    let (e, m) = spoiled(true, IdxKind::FashionMnist, |d| {
        let p = d.join("train-labels-idx1-ubyte.gz");
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len() - 6); // cut into the trailer
        std::fs::write(&p, b).unwrap();
    });
    assert!(matches!(e, DataError::Gzip { .. }), "{e:?}");
    assert!(
        m.contains("train-labels-idx1-ubyte.gz: corrupt or truncated gzip"),
        "{m}"
    );
}

#[test]
fn idx_trailing_data() {
    let (e, m) = spoiled(false, IdxKind::Mnist, |d| {
        let mut b = labels_bytes(&TEST_LABELS);
        b.push(0);
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), b).unwrap();
    });
    assert!(matches!(e, DataError::TrailingData { .. }), "{e:?}");
    assert!(
        m.contains("t10k-labels-idx1-ubyte: 12 bytes, expected 11 (8-byte header + 3 labels): trailing data"),
        "{m}"
    );
}

#[test]
fn idx_bad_magic() {
    // A labels file where the images should be.
    let (e, m) = spoiled(false, IdxKind::FashionMnist, |d| {
        std::fs::write(
            d.join("train-images-idx3-ubyte"),
            labels_bytes(&TRAIN_LABELS),
        )
        .unwrap()
    });
    assert!(matches!(
        e,
        DataError::BadMagic {
            found: 0x801,
            expected: 0x803,
            ..
        }
    ));
    assert!(
        m.contains("train-images-idx3-ubyte: bad magic 0x00000801, expected 0x00000803"),
        "{m}"
    );
    // Garbage (e.g. an HTML error page saved under the name).
    let (_, m) = spoiled(true, IdxKind::Mnist, |d| {
        std::fs::write(
            d.join("t10k-labels-idx1-ubyte.gz"),
            gz(b"<html>not found</html>"),
        )
        .unwrap()
    });
    assert!(
        m.contains("t10k-labels-idx1-ubyte.gz: bad magic 0x3c68746d, expected 0x00000801"),
        "{m}"
    );
}

#[test]
fn idx_bad_dimensions() {
    let (e, m) = spoiled(false, IdxKind::Mnist, |d| {
        std::fs::write(d.join("t10k-images-idx3-ubyte"), images_bytes(3, 32, 32, 0)).unwrap()
    });
    assert!(matches!(e, DataError::BadHeader { .. }));
    assert!(
        m.contains("t10k-images-idx3-ubyte: bad header: images are 32×32, expected 28×28"),
        "{m}"
    );
    let (_, m) = spoiled(false, IdxKind::Mnist, |d| {
        std::fs::write(
            d.join("train-images-idx3-ubyte"),
            images_bytes(0, 28, 28, 0),
        )
        .unwrap()
    });
    assert!(
        m.contains("train-images-idx3-ubyte: bad header: 0 images"),
        "{m}"
    );
}

#[test]
fn idx_count_mismatch() {
    let (e, m) = spoiled(true, IdxKind::FashionMnist, |d| {
        std::fs::write(
            d.join("train-labels-idx1-ubyte.gz"),
            gz(&labels_bytes(&[1, 2, 3, 4])),
        )
        .unwrap()
    });
    assert!(matches!(
        e,
        DataError::CountMismatch {
            n_images: 5,
            n_labels: 4,
            ..
        }
    ));
    assert!(m.contains("count mismatch"), "{m}");
    assert!(
        m.contains("train-images-idx3-ubyte.gz holds 5 images"),
        "{m}"
    );
    assert!(
        m.contains("train-labels-idx1-ubyte.gz holds 4 labels"),
        "{m}"
    );
}

#[test]
fn idx_label_out_of_range() {
    let (e, m) = spoiled(false, IdxKind::Mnist, |d| {
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), labels_bytes(&[1, 2, 10])).unwrap()
    });
    assert!(matches!(
        e,
        DataError::LabelOutOfRange {
            index: 2,
            label: 10,
            ..
        }
    ));
    assert!(
        m.contains("t10k-labels-idx1-ubyte: label 10 of sample 2 is out of range (expected 0..10)"),
        "{m}"
    );
}

/// The real thing, from Debian's `dataset-fashion-mnist`, when installed.
#[test]
#[cfg_attr(
    not(snnc_fmnist),
    ignore = "needs Fashion-MNIST: `apt-get install dataset-fashion-mnist`"
)]
fn real_fashion_mnist_if_installed() {
    let dir = IdxKind::FashionMnist.default_dir().unwrap();
    let s = idx_split(&dir, IdxKind::FashionMnist).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (60_000, 10_000));
    assert_eq!(s.train.class_counts(), vec![6000; 10]);
    assert_eq!(s.test.class_counts(), vec![1000; 10]);
    s.train.check().unwrap();
    s.test.check().unwrap();
    // Pixel mean of the training set, widely quoted as 0.2860.
    let mean = s.train.images.iter().map(|&v| v as f64).sum::<f64>() / s.train.images.len() as f64;
    assert!((mean - 0.2860).abs() < 5e-4, "train pixel mean {mean}");
    assert!(s.train.images.iter().all(|v| (0.0..=1.0).contains(v)));
    println!("real Fashion-MNIST: 60000/10000 samples, train pixel mean {mean:.4}");
}

/// Every prefix of a good file, and random damage to the headers, gives an
/// error (or, for harmless damage, a load), never a panic.
#[test]
fn idx_never_panics_on_damaged_files() {
    let d = TmpDir::new("fuzz");
    write_set(&d.0, false, "train", "t10k");
    let good = images_bytes(5, 28, 28, 1);
    let path = d.0.join("train-images-idx3-ubyte");
    let lens: Vec<usize> = (0..40).chain((40..good.len()).step_by(197)).collect();
    for len in lens {
        std::fs::write(&path, &good[..len]).unwrap();
        let e = idx_split(&d.0, IdxKind::Mnist).expect_err("a prefix must not load");
        assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
    }
    let mut rng = snnc::rng::Rng::new(9);
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(16);
            b[at] = rng.below(256) as u8;
        }
        std::fs::write(&path, &b).unwrap();
        if let Err(e) = idx_split(&d.0, IdxKind::Mnist) {
            assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
        }
    }
}
