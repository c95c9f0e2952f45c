//! Datasets: loading, splitting, batching, augmentation.
//!
//! Every parser here is written for snnc (no dataset crates) and returns a
//! [`DataError`] — naming the file, what is wrong with it and how to get
//! the data — instead of panicking on a missing, short or corrupt file.
//!
//! | source | function | per-sample shape | values |
//! | --- | --- | --- | --- |
//! | UCI 8×8 digits, embedded | [`digits`] | `[64]` | `x / 16` in [0, 1] |
//! | MNIST / Fashion-MNIST IDX (raw or `.gz`) | [`idx_split`] | `[1, 28, 28]` | `x / 255` in [0, 1] |
//! | CIFAR-10 binary batches | [`cifar10_split`] | `[3, 32, 32]` | `(x / 255 − mean_c) / std_c` |
//! | CIFAR-100 binary (`train.bin`, `test.bin`; fine or coarse labels) | [`cifar100_split`] | `[3, 32, 32]` | `(x / 255 − mean_c) / std_c` |
//! | image folder (`train/<class>/*.jpg\|png`, `val/…`) | [`images::load_image_folder`] | the model's `[C, H, W]` | decoded on demand: random resized crop + flip (train), centre crop (val), `(x / 255 − mean_c) / std_c` |
//! | event streams (N-MNIST, AEDAT 2.0/3.1, `.npy`) | [`events::load_event_split`] | `[T, 2, H, W]` | event counts per frame, binned on demand |
//!
//! Batches come from a [`Loader`] (seeded shuffle per epoch, optional
//! [`Augment`]ation for training, samples of a lazy dataset made in
//! parallel, [`Loader::prefetch`] to build the next batch on another
//! thread while the current one is used).

mod cifar;
mod cifar100;
mod digits;
mod error;
pub mod events;
mod idx;
pub mod images;
mod io;
mod loader;

pub use cifar::{channel_stats, cifar10_split, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD};
pub use cifar100::{cifar100_split, Cifar100Labels, CIFAR100_MEAN, CIFAR100_STD};
pub use digits::{
    digits, parse_digits_csv, DIGITS_CSV_GZ, DIGITS_TEST, DIGITS_TOTAL, DIGITS_TRAIN,
};
pub use error::DataError;
pub use idx::{idx_split, IdxKind, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR};
pub use loader::{shuffle, stratified_split, Augment, Loader, Prefetched};

/// A class index. Two bytes: ImageNet-1k's 1,000 classes do not fit in one.
pub type Label = u16;

/// A labelled dataset held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where it came from, e.g. `"digits/train"`, `"fashion-mnist/test"`.
    pub name: String,
    /// `len() × shape.product()` values, row-major, already normalised.
    pub images: Vec<f32>,
    /// One class index per sample, each `< classes`.
    pub labels: Vec<Label>,
    /// Per-sample shape: `[64]`, `[1, 28, 28]` or `[3, 32, 32]`.
    pub shape: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
    /// For event data: the samples' events, binned into `shape` frames on
    /// demand ([`Dataset::sample_into`]); `images` is then empty.
    pub events: Option<std::sync::Arc<events::EventSamples>>,
    /// For an image folder: the files, decoded into `shape` on demand
    /// ([`Dataset::sample_into`]); `images` is then empty.
    pub files: Option<std::sync::Arc<images::ImageFiles>>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample (the product of `shape`).
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// `true` if the samples are made on demand (event frames binned,
    /// images decoded) rather than held in `images`.
    pub fn is_lazy(&self) -> bool {
        self.events.is_some() || self.files.is_some()
    }

    /// Sample `i`: its values and its label. Panics if `i >= len()`, or
    /// for an event or image-folder dataset, whose values exist only once
    /// made: use [`Dataset::sample_into`], which works for every dataset.
    pub fn sample(&self, i: usize) -> (&[f32], Label) {
        assert!(
            !self.is_lazy(),
            "Dataset::sample on lazy dataset {}: use sample_into",
            self.name
        );
        let n = self.sample_len();
        (&self.images[i * n..(i + 1) * n], self.labels[i])
    }

    /// Writes sample `i`'s values to `out` (`sample_len()` values; event
    /// samples are binned into frames here, images decoded and
    /// centre-cropped) and returns its label. Panics if `i >= len()` or
    /// `out` has the wrong length. An image that does not decode is
    /// replaced by the next one that does, whose label is returned.
    pub fn sample_into(&self, i: usize, out: &mut [f32]) -> Label {
        self.sample_keyed(i, None, out)
    }

    /// [`Dataset::sample_into`] for training: an image folder's training
    /// split draws its random crop and flip from `Rng::new(key)` (the
    /// [`Loader`] keys it by seed, epoch and sample); every other dataset
    /// ignores `key`.
    pub fn sample_into_keyed(&self, i: usize, key: u64, out: &mut [f32]) -> Label {
        self.sample_keyed(i, Some(key), out)
    }

    fn sample_keyed(&self, i: usize, key: Option<u64>, out: &mut [f32]) -> Label {
        if let Some(f) = &self.files {
            return self.labels[f.fill(i, key, out)];
        }
        match &self.events {
            Some(ev) => ev.fill(i, out),
            None => out.copy_from_slice(self.sample(i).0),
        }
        self.labels[i]
    }

    /// How many samples each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// A new dataset holding the samples at `indices`, in that order (for
    /// quick runs on a slice of a large set). Panics on an index out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        if let Some(ev) = &self.events {
            return Dataset {
                name: self.name.clone(),
                images: Vec::new(),
                labels: indices.iter().map(|&i| self.labels[i]).collect(),
                shape: self.shape.clone(),
                classes: self.classes,
                events: Some(std::sync::Arc::new(ev.subset(indices))),
                files: None,
            };
        }
        if let Some(f) = &self.files {
            return Dataset {
                name: self.name.clone(),
                images: Vec::new(),
                labels: indices.iter().map(|&i| self.labels[i]).collect(),
                shape: self.shape.clone(),
                classes: self.classes,
                events: None,
                files: Some(std::sync::Arc::new(f.subset(indices))),
            };
        }
        let n = self.sample_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (x, y) = self.sample(i);
            images.extend_from_slice(x);
            labels.push(y);
        }
        Dataset {
            name: self.name.clone(),
            images,
            labels,
            shape: self.shape.clone(),
            classes: self.classes,
            events: None,
            files: None,
        }
    }

    /// Checks the invariants the fields promise: sizes agree, labels are in
    /// range, values are finite.
    pub fn check(&self) -> Result<(), DataError> {
        let bad = |msg: &str| {
            Err(DataError::Invalid {
                what: format!("dataset {}: {msg}", self.name),
            })
        };
        if let Some(ev) = &self.events {
            if ev.len() != self.len() || ev.spec.shape() != self.shape || !self.images.is_empty() {
                return bad(&format!(
                    "{} event samples of shape {} for {} labels of shape {} ({} stray values)",
                    ev.len(),
                    crate::shape::list(&ev.spec.shape()),
                    self.len(),
                    crate::shape::list(&self.shape),
                    self.images.len()
                ));
            }
        } else if let Some(f) = &self.files {
            let t = &f.transform;
            if f.len() != self.len()
                || [t.channels, t.height, t.width] != self.shape[..]
                || !self.images.is_empty()
            {
                return bad(&format!(
                    "{} image files made into [{}, {}, {}] for {} labels of shape {} ({} stray \
                     values)",
                    f.len(),
                    t.channels,
                    t.height,
                    t.width,
                    self.len(),
                    crate::shape::list(&self.shape),
                    self.images.len()
                ));
            }
        } else if self.images.len() != self.len() * self.sample_len() {
            return bad(&format!(
                "{} values for {} samples of shape {}",
                self.images.len(),
                self.len(),
                crate::shape::list(&self.shape)
            ));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= self.classes)
        {
            return bad(&format!(
                "label {l} of sample {i} is out of range 0..{}",
                self.classes
            ));
        }
        if let Some(i) = self.images.iter().position(|v| !v.is_finite()) {
            return bad(&format!("value {i} is not finite"));
        }
        Ok(())
    }
}

/// A train/test pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}
