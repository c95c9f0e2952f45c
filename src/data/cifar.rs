//! CIFAR-10, "binary version" (`cifar-10-binary.tar.gz`, which unpacks to
//! `cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin`, each 10,000 records of 3,073 bytes: one label byte
//! (0..=9), then 1,024 red, 1,024 green and 1,024 blue pixels, each plane
//! 32×32 row-major. There is no header, so a file is valid when its length
//! is a whole, non-zero number of records and every label is in range.

use std::path::{Path, PathBuf};

use super::io::{find, read_file};
use super::{DataError, Dataset, Split};

const RECORD: usize = 1 + 3 * 32 * 32;
const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Per-channel (R, G, B) mean and standard deviation of the 50,000
/// CIFAR-10 training images, pixels scaled to [0, 1], std taken over all
/// pixels of a channel (population std): the values widely quoted for the
/// training set (mean 0.49139968, 0.48215841, 0.44653091; std 0.24703223,
/// 0.24348513, 0.26158784), rounded to 4 digits. They were NOT recomputed
/// here: no copy of CIFAR-10 is reachable from snnc's build machines;
/// [`channel_stats`] recomputes them from a loaded set. Note: the also-common std
/// (0.2023, 0.1994, 0.2010) is the mean of per-image stds, a different
/// quantity; snnc uses the per-channel population std.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

fn hint() -> String {
    "to get CIFAR-10, download the \"CIFAR-10 binary version (suitable for C programs)\", \
     cifar-10-binary.tar.gz, from the CIFAR-10 page (https://www.cs.toronto.edu/~kriz/cifar.html), \
     unpack it and pass --data-dir pointing at its cifar-10-batches-bin directory"
        .to_string()
}

/// Reads the five training batches (50,000 images) and the test batch
/// (10,000) from `dir` (or `dir/cifar-10-batches-bin`); each file may be
/// raw or gzip. Values are `(pixel/255 − CIFAR10_MEAN[c]) / CIFAR10_STD[c]`;
/// shape `[3, 32, 32]`.
pub fn cifar10_split(dir: &Path) -> Result<Split, DataError> {
    let hint = hint();
    let dirs = [dir.to_path_buf(), dir.join("cifar-10-batches-bin")];
    let mut train = empty("cifar10/train");
    for name in TRAIN_FILES {
        let path = find(&dirs, &[name], &hint)?;
        let bytes = read_file(&path, &hint)?;
        parse_batch(&path, &bytes, &hint, &mut train)?;
    }
    let mut test = empty("cifar10/test");
    let path = find(&dirs, &["test_batch.bin"], &hint)?;
    parse_batch(&path, &read_file(&path, &hint)?, &hint, &mut test)?;
    Ok(Split { train, test })
}

fn empty(name: &str) -> Dataset {
    Dataset {
        name: name.into(),
        images: Vec::new(),
        labels: Vec::new(),
        shape: vec![3, 32, 32],
        classes: 10,
        events: None,
        files: None,
    }
}

/// Appends the records of one batch file to `out`.
fn parse_batch(path: &Path, bytes: &[u8], hint: &str, out: &mut Dataset) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        let records = bytes.len().div_ceil(RECORD).max(1);
        return Err(DataError::Truncated {
            path: PathBuf::from(path),
            len: bytes.len() as u64,
            expected: (records * RECORD) as u64,
            what: format!(
                "a whole number of {RECORD}-byte records (1 label + 3 × 32 × 32 pixels); \
                 a full batch is 10000 records = {} bytes",
                10000 * RECORD
            ),
            hint: hint.to_string(),
        });
    }
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index: i,
                label: rec[0] as u64,
                classes: 10,
                hint: hint.to_string(),
            });
        }
        out.labels.push(rec[0].into());
        for (c, plane) in rec[1..].chunks_exact(1024).enumerate() {
            let (m, s) = (CIFAR10_MEAN[c], CIFAR10_STD[c]);
            out.images
                .extend(plane.iter().map(|&p| (p as f32 / 255.0 - m) / s));
        }
    }
    Ok(())
}

/// Per-channel mean and population standard deviation of a `[C, H, W]`
/// dataset's stored values (f64 accumulation). On CIFAR-10 as loaded by
/// [`cifar10_split`] the training set gives about (0, 1) per channel; the
/// raw-scale statistics are `m·CIFAR10_STD[c] + CIFAR10_MEAN[c]` and
/// `s·CIFAR10_STD[c]`.
pub fn channel_stats(data: &Dataset) -> (Vec<f64>, Vec<f64>) {
    let c = data.shape.first().copied().unwrap_or(1).max(1);
    let plane = data.sample_len() / c;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    let mut x = vec![0f32; data.sample_len()];
    for i in 0..data.len() {
        // Lazy datasets (image folders) too: their evaluation samples.
        data.sample_into(i, &mut x);
        for (ch, p) in x.chunks_exact(plane.max(1)).enumerate() {
            for &v in p {
                sum[ch] += v as f64;
                sq[ch] += (v as f64) * (v as f64);
            }
        }
    }
    let n = (data.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}
