//! The UCI 8×8 handwritten digits, embedded in the binary.
//!
//! `digits.csv.gz` is scikit-learn's copy (`sklearn/datasets/data/`) of the
//! test set (`optdigits.tes`) of the UCI "Optical Recognition of Handwritten
//! Digits" data: 1,797 rows of 65 integers, 64 pixel counts in 0..=16 (an
//! 8×8 image, row-major) and the digit 0..=9. Provenance and licence:
//! `src/data/DIGITS-LICENSE.txt`.

use std::path::{Path, PathBuf};

use super::io::gunzip_if_needed;
use super::loader::stratified_split;
use super::{DataError, Dataset, Split};

/// The embedded file, byte for byte as scikit-learn ships it.
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("digits.csv.gz");

/// Samples in the embedded set, and the sizes of the split [`digits`] makes
/// (20 % test, rounded up as scikit-learn's `train_test_split` does).
pub const DIGITS_TOTAL: usize = 1797;
pub const DIGITS_TRAIN: usize = 1437;
pub const DIGITS_TEST: usize = 360;

const EMBEDDED_NAME: &str = "src/data/digits.csv.gz (embedded)";
const EMBEDDED_HINT: &str = "the digits file is compiled into snnc from src/data/digits.csv.gz; \
     rebuild from a clean checkout (the file is scikit-learn's sklearn/datasets/data/digits.csv.gz)";

/// The embedded digits, split 1,437 train / 360 test, stratified by class
/// and shuffled with `seed` (same seed, same split and order). Features are
/// divided by 16, so they lie in [0, 1]; shape `[64]`, 10 classes.
pub fn digits(seed: u64) -> Result<Split, DataError> {
    let all = parse_digits_csv(Path::new(EMBEDDED_NAME), DIGITS_CSV_GZ, EMBEDDED_HINT)?;
    if all.len() != DIGITS_TOTAL {
        return Err(DataError::Invalid {
            what: format!(
                "{EMBEDDED_NAME}: {} rows, expected {DIGITS_TOTAL}; {EMBEDDED_HINT}",
                all.len()
            ),
        });
    }
    let (train_idx, test_idx) = stratified_split(&all.labels, all.classes, DIGITS_TEST, seed);
    let mut train = all.subset(&train_idx);
    let mut test = all.subset(&test_idx);
    train.name = "digits/train".into();
    test.name = "digits/test".into();
    Ok(Split { train, test })
}

/// Parses digits in the UCI `optdigits` CSV layout (raw or gzip): each
/// line 64 integers in 0..=16 then a label in 0..=9. Works for the UCI
/// originals `optdigits.tra` / `optdigits.tes` as well. `path` and `hint`
/// only go into errors.
pub fn parse_digits_csv(path: &Path, bytes: &[u8], hint: &str) -> Result<Dataset, DataError> {
    let text = gunzip_if_needed(path, bytes.to_vec(), hint)?;
    let csv_err = |line: usize, msg: &str| DataError::Csv {
        path: PathBuf::from(path),
        line,
        msg: msg.to_string(),
        hint: hint.to_string(),
    };
    let text = std::str::from_utf8(&text).map_err(|e| {
        let line = 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        csv_err(line, "not UTF-8 text")
    })?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 65 {
            return Err(csv_err(
                line_no,
                &format!(
                    "{} fields, expected 65 (64 pixels and a label)",
                    fields.len()
                ),
            ));
        }
        for (j, f) in fields.iter().enumerate() {
            let v: u32 = f.parse().map_err(|_| {
                csv_err(
                    line_no,
                    &format!("field {}: `{}` is not an integer", j + 1, f.escape_debug()),
                )
            })?;
            if j < 64 {
                if v > 16 {
                    return Err(csv_err(
                        line_no,
                        &format!("field {}: pixel {v} is out of range 0..=16", j + 1),
                    ));
                }
                images.push(v as f32 / 16.0);
            } else {
                if v > 9 {
                    return Err(DataError::LabelOutOfRange {
                        path: path.to_path_buf(),
                        index: labels.len(),
                        label: v as u64,
                        classes: 10,
                        hint: hint.to_string(),
                    });
                }
                labels.push(v as super::Label);
            }
        }
    }
    if labels.is_empty() {
        return Err(csv_err(0, "no data rows"));
    }
    Ok(Dataset {
        name: "digits".into(),
        images,
        labels,
        shape: vec![64],
        classes: 10,
        events: None,
        files: None,
    })
}
