//! CIFAR-10 binary batches on files the tests write (raw and gzip), and
//! every error path the format has (it has no header, so no magic and no
//! count fields: damage shows as a length that is not a whole number of
//! records, or a label out of range).

mod common;
use common::run::TmpDir;

use std::io::Write;
use std::path::Path;

use snnc::data::{channel_stats, cifar10_split, DataError, CIFAR10_MEAN, CIFAR10_STD};

const RECORD: usize = 3073;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Pixel of record `r` (global index `g`), channel `c`, position `p`.
fn pixel(g: usize, c: usize, p: usize) -> u8 {
    ((g * 31 + c * 101 + p * 7) % 256) as u8
}

/// `n` records with global indices from `first`; labels `g % 10`.
fn batch(first: usize, n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n * RECORD);
    for g in first..first + n {
        b.push((g % 10) as u8);
        for c in 0..3 {
            for p in 0..1024 {
                b.push(pixel(g, c, p));
            }
        }
    }
    b
}

const PER_BATCH: usize = 3;

fn file_names() -> Vec<&'static str> {
    vec![
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ]
}

/// Five training batches of 3 records and a test batch of 2.
fn write_set(dir: &Path, gzip: bool) {
    for (k, name) in file_names().into_iter().enumerate() {
        let n = if k < 5 { PER_BATCH } else { 2 };
        let b = batch(k * PER_BATCH, n);
        if gzip {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&b)).unwrap();
        } else {
            std::fs::write(dir.join(name), b).unwrap();
        }
    }
}

fn check_contents(s: &snnc::data::Split) {
    assert_eq!((s.train.len(), s.test.len()), (15, 2));
    for (d, first) in [(&s.train, 0), (&s.test, 15)] {
        d.check().unwrap();
        assert_eq!(d.shape, vec![3, 32, 32]);
        assert_eq!(d.classes, 10);
        for i in 0..d.len() {
            let g = first + i;
            let (x, y) = d.sample(i);
            assert_eq!(y as usize, g % 10);
            for c in 0..3 {
                for p in [0, 1, 33, 1023] {
                    let want = (pixel(g, c, p) as f32 / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
                    assert_eq!(x[c * 1024 + p], want, "sample {g} channel {c} pixel {p}");
                }
            }
        }
    }
    assert_eq!(s.train.name, "cifar10/train");
    assert_eq!(s.test.name, "cifar10/test");
}

#[test]
fn cifar_raw_and_gz_load_identically() {
    let raw = TmpDir::new("raw");
    write_set(&raw.0, false);
    let a = cifar10_split(&raw.0).unwrap();
    check_contents(&a);
    let g = TmpDir::new("gz");
    write_set(&g.0, true);
    let b = cifar10_split(&g.0).unwrap();
    assert_eq!(a, b);
}

#[test]
fn cifar_finds_the_unpacked_tarball_folder() {
    let d = TmpDir::new("sub");
    let sub = d.0.join("cifar-10-batches-bin");
    std::fs::create_dir(&sub).unwrap();
    write_set(&sub, false);
    check_contents(&cifar10_split(&d.0).unwrap());
}

#[test]
fn cifar_normalisation_constants_and_channel_stats() {
    let d = TmpDir::new("stats");
    write_set(&d.0, false);
    let s = cifar10_split(&d.0).unwrap();
    let (mean, std) = channel_stats(&s.train);
    for c in 0..3 {
        // Recompute directly from the generator.
        let mut vals = Vec::new();
        for g in 0..15 {
            for p in 0..1024 {
                vals.push(
                    (pixel(g, c, p) as f64 / 255.0 - CIFAR10_MEAN[c] as f64)
                        / CIFAR10_STD[c] as f64,
                );
            }
        }
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
        assert!(
            (mean[c] - m).abs() < 1e-5,
            "channel {c}: {} vs {m}",
            mean[c]
        );
        assert!(
            (std[c] - v.sqrt()).abs() < 1e-5,
            "channel {c}: {} vs {}",
            std[c],
            v.sqrt()
        );
    }
}

fn spoiled(gzip: bool, spoil: impl FnOnce(&Path)) -> (DataError, String) {
    let d = TmpDir::new("err");
    write_set(&d.0, gzip);
    spoil(&d.0);
    let e = cifar10_split(&d.0).expect_err("should fail");
    let m = e.to_string();
    assert!(
        m.contains("CIFAR-10 binary version") && m.contains("--data-dir"),
        "no hint in: {m}"
    );
    (e, m)
}

#[test]
fn cifar_missing_file() {
    let (e, m) = spoiled(false, |d| {
        std::fs::remove_file(d.join("data_batch_3.bin")).unwrap()
    });
    assert!(matches!(e, DataError::Missing { .. }));
    assert!(m.contains("data_batch_3.bin: file not found"), "{m}");
    assert!(m.contains("cifar-10-batches-bin/data_batch_3.bin"), "{m}");
    let (_, m) = spoiled(true, |d| {
        std::fs::remove_file(d.join("test_batch.bin.gz")).unwrap()
    });
    assert!(m.contains("test_batch.bin: file not found"), "{m}");
}

#[test]
fn cifar_truncated_file_raw_and_gz() {
    for gzip in [false, true] {
        let (e, m) = spoiled(gzip, |d| {
            let mut b = batch(PER_BATCH, PER_BATCH);
            b.truncate(2 * RECORD + 1000);
            if gzip {
                std::fs::write(d.join("data_batch_2.bin.gz"), gz(&b)).unwrap();
            } else {
                std::fs::write(d.join("data_batch_2.bin"), b).unwrap();
            }
        });
        assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
        assert!(m.contains("data_batch_2.bin"), "{m}");
        assert!(
            m.contains(&format!(
                "truncated at byte {}, expected {} bytes (a whole number of 3073-byte records",
                2 * RECORD + 1000,
                3 * RECORD
            )),
            "{m}"
        );
    }
    let (_, m) = spoiled(false, |d| {
        std::fs::write(d.join("test_batch.bin"), []).unwrap()
    });
    assert!(
        m.contains("test_batch.bin: truncated at byte 0, expected 3073 bytes"),
        "{m}"
    );
}

#[test]
fn cifar_corrupt_gzip() {
    let (e, m) = spoiled(true, |d| {
        let p = d.join("data_batch_5.bin.gz");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    });
    assert!(matches!(e, DataError::Gzip { .. }), "{e:?}");
    assert!(
        m.contains("data_batch_5.bin.gz: corrupt or truncated gzip"),
        "{m}"
    );
}

#[test]
fn cifar_label_out_of_range() {
    let (e, m) = spoiled(false, |d| {
        let mut b = batch(0, PER_BATCH);
        b[RECORD] = 10; // label of the second record
        std::fs::write(d.join("data_batch_1.bin"), b).unwrap();
    });
    assert!(matches!(
        e,
        DataError::LabelOutOfRange {
            index: 1,
            label: 10,
            ..
        }
    ));
    assert!(
        m.contains("data_batch_1.bin: label 10 of sample 1 is out of range (expected 0..10)"),
        "{m}"
    );
}

/// Every length that is not a whole number of records is refused, by name.
#[test]
fn cifar_never_panics_on_damaged_files() {
    let d = TmpDir::new("fuzz");
    write_set(&d.0, false);
    let good = batch(0, PER_BATCH);
    for len in (0..good.len()).step_by(89) {
        std::fs::write(d.0.join("test_batch.bin"), &good[..len]).unwrap();
        match cifar10_split(&d.0) {
            Ok(s) => assert!(len % RECORD == 0 && len > 0 && s.test.len() == len / RECORD),
            Err(e) => assert!(e.to_string().contains("test_batch.bin"), "{e}"),
        }
    }
}
