//! Image-folder datasets, the layout ImageNet and most custom sets use:
//! `DIR/train/<class>/*.{jpg,jpeg,png}` and `DIR/val/<class>/…` (`test/`
//! is accepted for `val/`). The classes are the sorted names of the
//! training class folders; a validation folder must name one of them.
//!
//! The images are never held decoded: a dataset keeps the file names and
//! decodes a sample when a batch asks for it ([`ImageFiles::fill`]; the
//! [`super::Loader`] decodes a batch's samples in parallel, and
//! [`super::Loader::prefetch`] builds the next batch while the current one
//! trains). Validation samples are resized and centre-cropped to the
//! model's input; training samples get torchvision's random resized crop
//! and horizontal flip, drawn from the loader's `(seed, epoch, sample)`
//! key, so a run is reproducible. Values are per-channel normalised
//! (ImageNet's mean and std by default).
//!
//! Unreadable files never stop a run. Loading reads every file's header
//! (in parallel): a file that is not a PNG or JPEG, is empty or cannot be
//! opened is skipped, and [`ImageFolderReport`] names it. A file that
//! fails later, while decoding (truncated after a valid header), is
//! warned about once, counted ([`ImageFiles::failures`]) and skipped: the
//! next decodable sample takes its place in the batch.

mod synth;
mod transform;

pub use synth::{make_images, MakeImages};

pub use transform::{
    centre_region, RandomResizedCrop, Region, Transform, EVAL_CROP_FRACTION, IMAGENET_MEAN,
    IMAGENET_STD,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::io::split_dir;
use super::{DataError, Dataset, Label, Split};
use crate::rng::Rng;

const HINT: &str = "an image folder holds DIR/train/<class>/*.{jpg,jpeg,png} and \
                    DIR/val/<class>/… (one folder per class, the same class names in both)";

/// Labels are [`Label`]s: at most this many classes.
pub const MAX_CLASSES: usize = Label::MAX as usize + 1;

/// The files of one split and how they become samples, decoded on demand.
#[derive(Debug)]
pub struct ImageFiles {
    paths: Vec<PathBuf>,
    pub transform: Transform,
    /// Samples whose decoding failed, with the reason (each warned about
    /// once, then skipped without another attempt).
    failed: Mutex<BTreeMap<usize, String>>,
}

impl PartialEq for ImageFiles {
    fn eq(&self, other: &ImageFiles) -> bool {
        self.paths == other.paths && self.transform == other.transform
    }
}

impl ImageFiles {
    pub fn new(paths: Vec<PathBuf>, transform: Transform) -> ImageFiles {
        ImageFiles {
            paths,
            transform,
            failed: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Sample `i`'s file.
    pub fn path(&self, i: usize) -> &Path {
        &self.paths[i]
    }

    /// Decodes sample `i` into `out` (`transform.len()` values), drawing a
    /// training transform's crop and flip from `Rng::new(key)` when `key`
    /// is given (evaluation's centre crop otherwise). Returns the sample
    /// actually written: `i`, or if `i` does not decode, the next sample
    /// that does (the failure is warned about on stderr once per file). If
    /// no sample decodes, writes zeros and returns `i`.
    pub fn fill(&self, i: usize, key: Option<u64>, out: &mut [f32]) -> usize {
        let n = self.len();
        let mut j = i;
        for _ in 0..n {
            if !self.known_bad(j) {
                // A decoder that panics on a hostile file fails that file,
                // not the run.
                let path = &self.paths[j];
                let decoded = std::panic::catch_unwind(|| decode(path))
                    .unwrap_or_else(|_| Err("the decoder panicked".into()));
                match decoded {
                    Ok(img) => {
                        let mut rng = key.map(Rng::new);
                        self.transform.apply(&img, rng.as_mut(), out);
                        return j;
                    }
                    Err(why) => self.mark_bad(j, why),
                }
            }
            j = (j + 1) % n;
        }
        out.fill(0.0);
        i
    }

    fn known_bad(&self, i: usize) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&i)
    }

    fn mark_bad(&self, i: usize, why: String) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::btree_map::Entry::Vacant(slot) = failed.entry(i) {
            eprintln!(
                "warning: {}: cannot decode ({why}); skipped, the next image takes its place",
                self.paths[i].display()
            );
            slot.insert(why);
        }
    }

    /// The files that failed to decode so far, with the reason.
    pub fn failures(&self) -> Vec<(PathBuf, String)> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&i, why)| (self.paths[i].clone(), why.clone()))
            .collect()
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> ImageFiles {
        ImageFiles::new(
            indices.iter().map(|&i| self.paths[i].clone()).collect(),
            self.transform,
        )
    }
}

/// An error's text on one line (the decoders end some with blank lines).
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads and decodes one file (the format judged by content).
fn decode(path: &Path) -> Result<image::DynamicImage, String> {
    let bytes = std::fs::read(path).map_err(one_line)?;
    if jpeg_cut_short(&bytes) {
        return Err(format!(
            "truncated JPEG ({} bytes, no end-of-image marker after its last scan)",
            bytes.len()
        ));
    }
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(one_line)?
        .decode()
        .map_err(one_line)
}

/// `true` for a JPEG whose last scan has no end-of-image marker (FF D9)
/// after it: the file was cut short. The JPEG decoder fills a cut image
/// with grey and reports no error, so this is checked first. (Inside a
/// scan every FF byte is followed by 00 or a restart marker, so FF D9
/// cannot occur there; an EXIF thumbnail's markers all come before the
/// main image's scans.)
fn jpeg_cut_short(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return false;
    }
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xff, marker]);
    match (last(0xda), last(0xd9)) {
        (Some(scan), Some(end)) => end < scan,
        (Some(_), None) => true,
        // No scan at all: the decoder's error says more.
        (None, _) => false,
    }
}

/// Reads a file's header only: its format and size.
fn check_header(path: &Path) -> Result<(), String> {
    let (w, h) = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(one_line)?
        .into_dimensions()
        .map_err(one_line)?;
    if w == 0 || h == 0 {
        return Err(format!("empty image ({w}×{h})"));
    }
    Ok(())
}

/// [`check_header`], a panicking decoder counted as a failure.
fn header_ok(path: &Path) -> Result<(), String> {
    std::panic::catch_unwind(|| check_header(path))
        .unwrap_or_else(|_| Err("the decoder panicked".into()))
}

/// How an image folder becomes samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageFolderOptions {
    /// 1 (luma) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub train: RandomResizedCrop,
    pub crop_fraction: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageFolderOptions {
    /// The defaults for a model whose input is `[C, H, W]` (C = 3 or 1):
    /// torchvision's random resized crop and flip for training, the 0.875
    /// centre crop for validation, ImageNet's mean and std (for C = 1, the
    /// average of its three channels' — a choice, not a measured value).
    pub fn for_input(input: &[usize]) -> Result<ImageFolderOptions, DataError> {
        let &[c @ (1 | 3), h, w] = input else {
            return Err(DataError::Invalid {
                what: format!(
                    "an image folder needs a model input of [3, H, W] (RGB) or [1, H, W] \
                     (grayscale); the model's input is {}",
                    crate::shape::list(input)
                ),
            });
        };
        if h == 0 || w == 0 {
            return Err(DataError::Invalid {
                what: format!("image size {h}×{w} is empty"),
            });
        }
        let (mean, std) = if c == 3 {
            (IMAGENET_MEAN, IMAGENET_STD)
        } else {
            let avg = |v: &[f32; 3]| (v[0] + v[1] + v[2]) / 3.0;
            ([avg(&IMAGENET_MEAN); 3], [avg(&IMAGENET_STD); 3])
        };
        Ok(ImageFolderOptions {
            channels: c,
            height: h,
            width: w,
            train: RandomResizedCrop::default(),
            crop_fraction: EVAL_CROP_FRACTION,
            mean,
            std,
        })
    }

    fn transform(&self, train: bool) -> Transform {
        Transform {
            channels: self.channels,
            height: self.height,
            width: self.width,
            train: train.then_some(self.train),
            crop_fraction: self.crop_fraction,
            mean: self.mean,
            std: self.std,
        }
    }
}

/// What loading found besides the images it kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageFolderReport {
    /// Image files found (by extension), kept or skipped.
    pub files: usize,
    /// Files skipped because their header could not be read, with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Other entries in class folders (not .jpg/.jpeg/.png), ignored.
    pub ignored: usize,
}

impl ImageFolderReport {
    /// One line per skipped file after a summary; empty when none was.
    pub fn render(&self) -> String {
        if self.skipped.is_empty() {
            return String::new();
        }
        let mut s = format!(
            "warning: images: {} of {} files skipped (unreadable or not a PNG/JPEG image):",
            self.skipped.len(),
            self.files
        );
        for (p, why) in &self.skipped {
            s += &format!("\n  {}: {why}", p.display());
        }
        s
    }
}

/// `(class name, image files)` of one split, sorted by class then file.
type Listing = Vec<(String, Vec<PathBuf>)>;

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |e: std::io::Error| DataError::Io {
        path: dir.to_path_buf(),
        source: e,
        hint: HINT.into(),
    };
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        // Hidden entries (`.DS_Store`, `._x.jpg`) are not data.
        if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

fn is_image_name(p: &Path) -> bool {
    p.extension().is_some_and(|e| {
        let e = e.to_string_lossy().to_ascii_lowercase();
        matches!(e.as_str(), "jpg" | "jpeg" | "png")
    })
}

/// The class folders of `dir` and their image files; counts other entries.
fn list_split(dir: &Path, ignored: &mut usize) -> Result<Listing, DataError> {
    let mut out = Vec::new();
    for class_dir in list_dir(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (images, other): (Vec<PathBuf>, Vec<PathBuf>) = list_dir(&class_dir)?
            .into_iter()
            .partition(|p| p.is_file() && is_image_name(p));
        *ignored += other.len();
        if images.is_empty() {
            return Err(DataError::NoImages {
                path: class_dir,
                what: "class folder without .jpg, .jpeg or .png files".into(),
                hint: HINT.into(),
            });
        }
        out.push((name, images));
    }
    if out.is_empty() {
        return Err(DataError::NoImages {
            path: dir.to_path_buf(),
            what: "no class folders".into(),
            hint: HINT.into(),
        });
    }
    Ok(out)
}

/// Reads an image folder's listing and every file's header; the samples
/// are decoded later, on demand. Errors if a split or a class folder is
/// missing or has no image, if every image of a class is unreadable, or
/// if a validation class is not a training class.
pub fn load_image_folder(
    dir: &Path,
    opts: &ImageFolderOptions,
) -> Result<(Split, ImageFolderReport), DataError> {
    let train_dir = split_dir(dir, &["train"], HINT)?;
    let val_dir = split_dir(dir, &["val", "test"], HINT)?;
    let mut report = ImageFolderReport::default();
    let train = list_split(&train_dir, &mut report.ignored)?;
    let val = list_split(&val_dir, &mut report.ignored)?;
    let names: Vec<&str> = train.iter().map(|(n, _)| n.as_str()).collect();
    if names.len() > MAX_CLASSES {
        return Err(DataError::Invalid {
            what: format!(
                "{}: {} class folders; snnc's labels hold at most {MAX_CLASSES} classes",
                train_dir.display(),
                names.len()
            ),
        });
    }
    let mut build = |listing: &Listing, split_dir: &Path, part: &str| {
        let mut labelled = Vec::new();
        for (name, files) in listing {
            let Ok(label) = names.binary_search(&name.as_str()) else {
                return Err(DataError::NoImages {
                    path: split_dir.join(name),
                    what: format!(
                        "class `{name}` has no folder in {} (classes: {})",
                        train_dir.display(),
                        names.join(", ")
                    ),
                    hint: HINT.into(),
                });
            };
            report.files += files.len();
            let checked: Vec<Result<(), String>> = files.par_iter().map(|p| header_ok(p)).collect();
            let before = labelled.len();
            for (p, r) in files.iter().zip(checked) {
                match r {
                    Ok(()) => labelled.push((p.clone(), label as Label)),
                    Err(why) => report.skipped.push((p.clone(), why)),
                }
            }
            if labelled.len() == before {
                return Err(DataError::NoImages {
                    path: split_dir.join(name),
                    what: format!("all {} image files are unreadable", files.len()),
                    hint: HINT.into(),
                });
            }
        }
        let (paths, labels): (Vec<PathBuf>, Vec<Label>) = labelled.into_iter().unzip();
        let files = ImageFiles::new(paths, opts.transform(part == "train"));
        Ok(Dataset {
            name: format!("images:{}/{part}", dir.display()),
            images: Vec::new(),
            labels,
            shape: vec![opts.channels, opts.height, opts.width],
            classes: names.len(),
            events: None,
            files: Some(Arc::new(files)),
        })
    };
    let train_set = build(&train, &train_dir, "train")?;
    let test_set = build(&val, &val_dir, "val")?;
    Ok((
        Split {
            train: train_set,
            test: test_set,
        },
        report,
    ))
}

/// `--data images:DIR` for a model whose input is `input` (`[3, H, W]` or
/// `[1, H, W]`), with [`ImageFolderOptions::for_input`]. Prints the
/// skipped files on stderr.
pub fn load_for_input(dir: &Path, input: &[usize]) -> Result<Split, DataError> {
    let opts = ImageFolderOptions::for_input(input)?;
    let (split, report) = load_image_folder(dir, &opts)?;
    let text = report.render();
    if !text.is_empty() {
        eprintln!("{text}");
    }
    Ok(split)
}
