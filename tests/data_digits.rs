//! The embedded UCI 8×8 digits and the CSV parser behind them.

use std::collections::BTreeMap;
use std::path::Path;

use snnc::data::{
    digits, parse_digits_csv, stratified_split, DataError, DIGITS_CSV_GZ, DIGITS_TEST,
    DIGITS_TOTAL, DIGITS_TRAIN,
};

/// Per-class counts of UCI's optdigits.tes, the set scikit-learn ships.
const CLASS_COUNTS: [usize; 10] = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180];

/// A sample as integers 0..=16, so it can be compared and counted exactly.
fn key(x: &[f32], y: u16) -> (u16, Vec<u8>) {
    (y, x.iter().map(|&v| (v * 16.0).round() as u8).collect())
}

#[test]
fn digits_loads_with_the_documented_sizes_and_ranges() {
    let s = digits(0).unwrap();
    assert_eq!(DIGITS_TOTAL, 1797);
    assert_eq!((s.train.len(), s.test.len()), (DIGITS_TRAIN, DIGITS_TEST));
    assert_eq!((s.train.len(), s.test.len()), (1437, 360));
    for d in [&s.train, &s.test] {
        d.check().unwrap();
        assert_eq!(d.shape, vec![64]);
        assert_eq!(d.classes, 10);
        assert_eq!(d.images.len(), d.len() * 64);
        for &v in &d.images {
            assert!((0.0..=1.0).contains(&v), "value {v} outside [0, 1]");
            // values are integer counts 0..=16 divided by 16
            assert_eq!((v * 16.0).round(), v * 16.0);
        }
    }
    assert_eq!(s.train.name, "digits/train");
    assert_eq!(s.test.name, "digits/test");
    // both ends of the range occur
    assert!(s.train.images.contains(&0.0) && s.train.images.contains(&1.0));
}

#[test]
fn digits_class_counts_match_uci_and_the_split_is_stratified() {
    let s = digits(3).unwrap();
    let (tr, te) = (s.train.class_counts(), s.test.class_counts());
    let total: Vec<usize> = tr.iter().zip(&te).map(|(a, b)| a + b).collect();
    assert_eq!(total, CLASS_COUNTS);
    for c in 0..10 {
        let want = CLASS_COUNTS[c] as f64 * 360.0 / 1797.0;
        assert!(
            (te[c] as f64 - want).abs() < 1.0,
            "class {c}: {} test samples, proportional share {want:.2}",
            te[c]
        );
    }
}

#[test]
fn digits_split_is_a_partition_of_the_embedded_file() {
    let all = parse_digits_csv(Path::new("embedded"), DIGITS_CSV_GZ, "").unwrap();
    assert_eq!(all.len(), 1797);
    let s = digits(11).unwrap();
    let mut want: BTreeMap<(u16, Vec<u8>), i32> = BTreeMap::new();
    for i in 0..all.len() {
        let (x, y) = all.sample(i);
        *want.entry(key(x, y)).or_default() += 1;
    }
    for d in [&s.train, &s.test] {
        for i in 0..d.len() {
            let (x, y) = d.sample(i);
            *want.entry(key(x, y)).or_default() -= 1;
        }
    }
    assert!(want.values().all(|&c| c == 0), "split is not a partition");
}

#[test]
fn digits_first_row_is_the_known_zero() {
    // First line of digits.csv.gz: a 0.
    let all = parse_digits_csv(Path::new("embedded"), DIGITS_CSV_GZ, "").unwrap();
    let (x, y) = all.sample(0);
    assert_eq!(y, 0);
    let first8: Vec<f32> = [0, 0, 5, 13, 9, 1, 0, 0]
        .iter()
        .map(|&v| v as f32 / 16.0)
        .collect();
    assert_eq!(&x[..8], &first8[..]);
}

#[test]
fn digits_split_is_reproducible_by_seed() {
    let a = digits(42).unwrap();
    let b = digits(42).unwrap();
    assert_eq!(a, b, "same seed must give the same split and order");
    let c = digits(43).unwrap();
    assert_ne!(
        a.test.labels, c.test.labels,
        "a different seed should reorder"
    );
    assert_ne!(a.test.images, c.test.images);
}

#[test]
fn stratified_split_hits_the_exact_test_size() {
    let labels: Vec<u8> = (0..103).map(|i| (i % 7) as u8).collect();
    for n_test in [0, 1, 20, 50, 103] {
        let (tr, te) = stratified_split(&labels, 7, n_test, 5);
        assert_eq!(te.len(), n_test);
        let mut all: Vec<usize> = tr.iter().chain(&te).copied().collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
    }
}

fn csv_err(text: &str) -> String {
    let e = parse_digits_csv(Path::new("/tmp/my-digits.csv"), text.as_bytes(), "HINT")
        .expect_err("should fail");
    let msg = e.to_string();
    assert!(msg.contains("/tmp/my-digits.csv"), "no file name in: {msg}");
    assert!(msg.contains("HINT"), "no hint in: {msg}");
    msg
}

fn row(pixel: &str, label: &str) -> String {
    let mut f = vec!["0"; 63];
    f.push(pixel);
    f.push(label);
    f.join(",")
}

#[test]
fn digits_csv_errors_name_file_line_and_problem() {
    let good = row("3", "4");
    let m = csv_err(&format!("{good}\n1,2,3\n"));
    assert!(
        m.contains("line 2") && m.contains("3 fields, expected 65"),
        "{m}"
    );
    let m = csv_err(&format!("{good}\n{}\n", row("17", "1")));
    assert!(
        m.contains("line 2") && m.contains("pixel 17 is out of range"),
        "{m}"
    );
    let m = csv_err(&format!("{}\n", row("x", "1")));
    assert!(
        m.contains("line 1") && m.contains("`x` is not an integer"),
        "{m}"
    );
    let m = csv_err(&format!("{good}\n{good}\n{}\n", row("1", "12")));
    assert!(m.contains("label 12 of sample 2 is out of range"), "{m}");
    let m = csv_err("\n\n");
    assert!(m.contains("no data rows"), "{m}");
    let e = parse_digits_csv(Path::new("x.csv.gz"), &DIGITS_CSV_GZ[..1000], "HINT").unwrap_err();
    assert!(matches!(e, DataError::Gzip { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("x.csv.gz: corrupt or truncated gzip"),
        "{e}"
    );
    // a good row parses
    let d = parse_digits_csv(Path::new("ok.csv"), good.as_bytes(), "").unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d.sample(0).0[63], 3.0 / 16.0);
    assert_eq!(d.sample(0).1, 4);
}
