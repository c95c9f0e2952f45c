//! CIFAR-100, "binary version" (`cifar-100-binary.tar.gz`, which unpacks to
//! `cifar-100-binary/`): `train.bin` (50,000 records) and `test.bin`
//! (10,000), each record 3,074 bytes: the coarse label (0..=19, the
//! superclass), the fine label (0..=99, the class), then 1,024 red, 1,024
//! green and 1,024 blue pixels, each plane 32×32 row-major (the CIFAR page,
//! https://www.cs.toronto.edu/~kriz/cifar.html, "Binary version"). There is
//! no header, so a file is valid when its length is a whole, non-zero
//! number of records, every label is in range and every fine class sits in
//! one superclass (a record that moves a class to another superclass is
//! corruption, not data).

use std::path::{Path, PathBuf};

use super::io::{find, read_file};
use super::{DataError, Dataset, Split};

const PIXELS: usize = 3 * 32 * 32;
const RECORD: usize = 2 + PIXELS;
const COARSE: usize = 20;
const FINE: usize = 100;

/// Per-channel (R, G, B) mean and standard deviation of the 50,000
/// CIFAR-100 training images, pixels scaled to [0, 1], the std over all
/// pixels of a channel (population std, the convention of
/// [`super::CIFAR10_STD`]): the values quoted with the recipe
/// `np.mean(train_data, axis=(0, 1, 2)) / 255`, `np.std(…) / 255` (mean
/// 0.50707516, 0.48654887, 0.44091784; std 0.26733429, 0.25643846,
/// 0.27615047), rounded to 4 digits. Not recomputed here (no copy of
/// CIFAR-100 is reachable from snnc's build machines);
/// [`super::channel_stats`] recomputes them from a loaded set.
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

/// Which of a record's two labels is the class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cifar100Labels {
    /// The 100 classes (the usual benchmark).
    Fine,
    /// The 20 superclasses.
    Coarse,
}

impl Cifar100Labels {
    pub fn classes(self) -> usize {
        match self {
            Cifar100Labels::Fine => FINE,
            Cifar100Labels::Coarse => COARSE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cifar100Labels::Fine => "cifar100",
            Cifar100Labels::Coarse => "cifar100-coarse",
        }
    }
}

fn hint() -> String {
    "to get CIFAR-100, download the \"CIFAR-100 binary version (suitable for C programs)\", \
     cifar-100-binary.tar.gz, from the CIFAR page (https://www.cs.toronto.edu/~kriz/cifar.html), \
     unpack it and pass --data-dir pointing at its cifar-100-binary directory"
        .to_string()
}

/// Reads `train.bin` and `test.bin` from `dir` (or `dir/cifar-100-binary`);
/// each file may be raw or gzip. Labels are the fine (100 classes) or
/// coarse (20) ones; values are `(pixel/255 − CIFAR100_MEAN[c]) /
/// CIFAR100_STD[c]`; shape `[3, 32, 32]`.
pub fn cifar100_split(dir: &Path, labels: Cifar100Labels) -> Result<Split, DataError> {
    let hint = hint();
    let dirs = [dir.to_path_buf(), dir.join("cifar-100-binary")];
    let mut split = Vec::new();
    for (file, part) in [("train.bin", "train"), ("test.bin", "test")] {
        let path = find(&dirs, &[file], &hint)?;
        let bytes = read_file(&path, &hint)?;
        let mut d = Dataset {
            name: format!("{}/{part}", labels.name()),
            images: Vec::new(),
            labels: Vec::new(),
            shape: vec![3, 32, 32],
            classes: labels.classes(),
            events: None,
            files: None,
        };
        parse_records(&path, &bytes, labels, &hint, &mut d)?;
        split.push(d);
    }
    let test = split.pop().expect("two parts");
    let train = split.pop().expect("two parts");
    Ok(Split { train, test })
}

/// Appends the records of one file to `out`.
fn parse_records(
    path: &Path,
    bytes: &[u8],
    which: Cifar100Labels,
    hint: &str,
    out: &mut Dataset,
) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        let records = bytes.len().div_ceil(RECORD).max(1);
        return Err(DataError::Truncated {
            path: PathBuf::from(path),
            len: bytes.len() as u64,
            expected: (records * RECORD) as u64,
            what: format!(
                "a whole number of {RECORD}-byte records (coarse label, fine label, \
                 3 × 32 × 32 pixels); train.bin holds 50000 records = {} bytes, test.bin 10000",
                50000 * RECORD
            ),
            hint: hint.to_string(),
        });
    }
    // The superclass each fine class was first seen in.
    let mut parent = [u8::MAX; FINE];
    let n = bytes.len() / RECORD;
    out.labels.reserve(n);
    out.images.reserve(n * PIXELS);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let (coarse, fine) = (rec[0], rec[1]);
        for (label, classes) in [(coarse, COARSE), (fine, FINE)] {
            if label as usize >= classes {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    index: i,
                    label: label as u64,
                    classes,
                    // `expected 0..20` or `0..100` says which label.
                    hint: hint.to_string(),
                });
            }
        }
        let p = &mut parent[fine as usize];
        if *p == u8::MAX {
            *p = coarse;
        } else if *p != coarse {
            return Err(DataError::Malformed {
                path: path.to_path_buf(),
                at: (i * RECORD) as u64,
                msg: format!(
                    "record {i}: fine class {fine} in superclass {coarse}, but earlier records \
                     put it in superclass {p}"
                ),
                hint: hint.to_string(),
            });
        }
        out.labels.push(match which {
            Cifar100Labels::Fine => fine,
            Cifar100Labels::Coarse => coarse,
        } as super::Label);
        for (c, plane) in rec[2..].chunks_exact(1024).enumerate() {
            let (m, s) = (CIFAR100_MEAN[c], CIFAR100_STD[c]);
            out.images
                .extend(plane.iter().map(|&p| (p as f32 / 255.0 - m) / s));
        }
    }
    Ok(())
}
