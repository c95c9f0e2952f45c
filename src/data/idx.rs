//! MNIST and Fashion-MNIST in the IDX format (LeCun et al.), raw or gzip.
//!
//! IDX: a big-endian u32 magic `0x0000_08DD` (`08` = unsigned bytes, `DD` =
//! number of dimensions), one big-endian u32 per dimension, then the data.
//! Images: magic 2051 (`0x803`), dims `n, 28, 28`, then `n·784` pixels.
//! Labels: magic 2049 (`0x801`), dim `n`, then `n` bytes in 0..=9.

use std::path::{Path, PathBuf};

use super::io::{be_u32, find, read_file};
use super::{DataError, Dataset, Split};

/// Where Debian's `dataset-fashion-mnist` installs the four files
/// (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
/// `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`).
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const SIDE: u32 = 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    Mnist,
    FashionMnist,
}

impl IdxKind {
    /// Short name, used in dataset names: `mnist`, `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            IdxKind::Mnist => "mnist",
            IdxKind::FashionMnist => "fashion-mnist",
        }
    }

    /// The directory a system package installs the files to, if one does.
    pub fn default_dir(self) -> Option<PathBuf> {
        match self {
            IdxKind::Mnist => None,
            IdxKind::FashionMnist => Some(PathBuf::from(FASHION_MNIST_DIR)),
        }
    }

    /// How to get the data (goes into every error).
    pub fn hint(self) -> String {
        let files = "train-images-idx3-ubyte, train-labels-idx1-ubyte, \
                     t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (raw or .gz)";
        match self {
            IdxKind::FashionMnist => format!(
                "to get Fashion-MNIST, run `apt-get install dataset-fashion-mnist` (it installs \
                 them in {FASHION_MNIST_DIR}), or pass --data-dir DIR with {files}"
            ),
            IdxKind::Mnist => {
                format!("to get MNIST, pass --data-dir DIR holding the four IDX files {files}")
            }
        }
    }

    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            IdxKind::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            IdxKind::FashionMnist => FASHION_MNIST_CLASSES,
        }
    }
}

/// Reads the training (60,000) and test (10,000) sets from `dir` (or
/// `dir/raw`, torchvision's layout). File names: `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`, each raw or `.gz` (gzip is recognised by
/// content); the `train-images.idx3-ubyte` spelling and `test-` for `t10k-`
/// are accepted too. Pixels are divided by 255; shape `[1, 28, 28]`.
pub fn idx_split(dir: &Path, kind: IdxKind) -> Result<Split, DataError> {
    Ok(Split {
        train: load_idx(dir, kind, "train", &["train"])?,
        test: load_idx(dir, kind, "test", &["t10k", "test"])?,
    })
}

/// One split: the image and label files named `{prefix}-images-idx3-ubyte`
/// etc. for the first prefix that has them.
fn load_idx(
    dir: &Path,
    kind: IdxKind,
    split: &str,
    prefixes: &[&str],
) -> Result<Dataset, DataError> {
    let hint = kind.hint();
    let dirs = [dir.to_path_buf(), dir.join("raw")];
    let names = |what: &str, dims: &str| -> Vec<String> {
        prefixes
            .iter()
            .flat_map(|p| {
                [
                    format!("{p}-{what}-{dims}-ubyte"),
                    format!("{p}-{what}.{dims}-ubyte"),
                ]
            })
            .collect()
    };
    let img_names = names("images", "idx3");
    let lab_names = names("labels", "idx1");
    let img_refs: Vec<&str> = img_names.iter().map(String::as_str).collect();
    let lab_refs: Vec<&str> = lab_names.iter().map(String::as_str).collect();
    let img_path = find(&dirs, &img_refs, &hint)?;
    let lab_path = find(&dirs, &lab_refs, &hint)?;
    let img_bytes = read_file(&img_path, &hint)?;
    let (n_img, pixels) = parse_images(&img_path, &img_bytes, &hint)?;
    let labels = parse_labels(&lab_path, &read_file(&lab_path, &hint)?, &hint)?;
    if n_img != labels.len() {
        return Err(DataError::CountMismatch {
            images: img_path,
            labels: lab_path,
            n_images: n_img as u64,
            n_labels: labels.len() as u64,
            hint,
        });
    }
    Ok(Dataset {
        name: format!("{}/{split}", kind.name()),
        images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: labels.into_iter().map(super::Label::from).collect(),
        shape: vec![1, SIDE as usize, SIDE as usize],
        classes: 10,
        events: None,
        files: None,
    })
}

/// Checks an IDX header: length for the magic and dims, the magic itself.
fn check_header(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    ndim: usize,
    what: &str,
    hint: &str,
) -> Result<(), DataError> {
    let header = 4 + 4 * ndim;
    if bytes.len() < 4 || be_u32(bytes, 0) != magic {
        if bytes.len() < 4 {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                len: bytes.len() as u64,
                expected: header as u64,
                what: format!("{header}-byte IDX {what} header"),
                hint: hint.to_string(),
            });
        }
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: be_u32(bytes, 0),
            expected: magic,
            what: format!("{magic} = IDX {what}: unsigned bytes, {ndim} dimension(s)"),
            hint: hint.to_string(),
        });
    }
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            expected: header as u64,
            what: format!("{header}-byte IDX {what} header"),
            hint: hint.to_string(),
        });
    }
    Ok(())
}

/// Checks the total length against the header's promise.
fn check_len(
    path: &Path,
    len: usize,
    expected: u64,
    what: String,
    hint: &str,
) -> Result<(), DataError> {
    let len = len as u64;
    if len < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            len,
            expected,
            what,
            hint: hint.to_string(),
        });
    }
    if len > expected {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            len,
            expected,
            what,
            hint: hint.to_string(),
        });
    }
    Ok(())
}

/// Returns the sample count and the pixel bytes.
fn parse_images<'a>(
    path: &Path,
    bytes: &'a [u8],
    hint: &str,
) -> Result<(usize, &'a [u8]), DataError> {
    check_header(path, bytes, IMAGES_MAGIC, 3, "images", hint)?;
    let (n, rows, cols) = (be_u32(bytes, 4), be_u32(bytes, 8), be_u32(bytes, 12));
    if rows != SIDE || cols != SIDE {
        return Err(DataError::BadHeader {
            path: path.to_path_buf(),
            msg: format!("images are {rows}×{cols}, expected {SIDE}×{SIDE}"),
            hint: hint.to_string(),
        });
    }
    if n == 0 {
        return Err(DataError::BadHeader {
            path: path.to_path_buf(),
            msg: "0 images".into(),
            hint: hint.to_string(),
        });
    }
    let expected = 16 + n as u64 * (rows as u64) * (cols as u64);
    check_len(
        path,
        bytes.len(),
        expected,
        format!("16-byte header + {n} × {rows} × {cols} pixels"),
        hint,
    )?;
    Ok((n as usize, &bytes[16..]))
}

fn parse_labels(path: &Path, bytes: &[u8], hint: &str) -> Result<Vec<u8>, DataError> {
    check_header(path, bytes, LABELS_MAGIC, 1, "labels", hint)?;
    let n = be_u32(bytes, 4);
    if n == 0 {
        return Err(DataError::BadHeader {
            path: path.to_path_buf(),
            msg: "0 labels".into(),
            hint: hint.to_string(),
        });
    }
    check_len(
        path,
        bytes.len(),
        8 + n as u64,
        format!("8-byte header + {n} labels"),
        hint,
    )?;
    let labels = &bytes[8..];
    if let Some(index) = labels.iter().position(|&l| l >= 10) {
        return Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index] as u64,
            classes: 10,
            hint: hint.to_string(),
        });
    }
    Ok(labels.to_vec())
}
