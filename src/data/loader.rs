//! Mini-batches and training-time augmentation, reproducible from a seed.
//!
//! Randomness comes from [`crate::rng`]: the order of an epoch is a
//! Fisher–Yates shuffle driven by an `Rng` keyed by `(seed, epoch)`, and the
//! augmentation of a sample by an `Rng` keyed by `(seed, epoch, sample
//! index)`, so a sample is augmented the same way whatever the batch size.
//! An image folder's training split crops and flips as it decodes, from an
//! `Rng` keyed the same way on a stream of its own.
//!
//! Samples of a lazy dataset (event frames, images) are made in parallel
//! (rayon), and [`Loader::prefetch`] makes the next batches on another
//! thread while the caller uses the current one: decoding overlaps the
//! training step.

use rayon::prelude::*;

use crate::rng::{mix64, Rng};

use super::{DataError, Dataset, Label};

const SHUFFLE_STREAM: u64 = 0x5348_5546_464c_4521; // "SHUFFLE!"
const AUGMENT_STREAM: u64 = 0x4155_474d_454e_5421; // "AUGMENT!"
const DECODE_STREAM: u64 = 0x4445_434f_4445_5221; // "DECODER!"

/// The key of a sample's random draws in one epoch of a seeded run.
fn sample_key(stream: u64, seed: u64, epoch: u64, i: usize) -> u64 {
    mix64(mix64(mix64(seed ^ stream) ^ epoch) ^ i as u64)
}

/// In-place Fisher–Yates shuffle.
pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

/// Splits sample indices into `(train, test)` with exactly `n_test` test
/// samples, each class contributing in proportion to its size (largest
/// remainder, ties to the lower class), the choice within a class and the
/// final order of both lists shuffled with `seed`. Same inputs, same result.
pub fn stratified_split<L: Copy + Into<usize>>(
    labels: &[L],
    classes: usize,
    n_test: usize,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let n = labels.len();
    let n_test = n_test.min(n);
    let classes = classes.max(labels.iter().map(|&l| l.into() + 1).max().unwrap_or(0));
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l.into()].push(i);
    }
    let mut quota: Vec<usize> = by_class
        .iter()
        .map(|v| v.len() * n_test / n.max(1))
        .collect();
    let mut rest = n_test - quota.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..classes).collect();
    // Largest remainder first; `sort_by_key` is stable, so ties keep class order.
    order.sort_by_key(|&c| std::cmp::Reverse(by_class[c].len() * n_test % n.max(1)));
    for &c in &order {
        if rest == 0 {
            break;
        }
        if quota[c] < by_class[c].len() {
            quota[c] += 1;
            rest -= 1;
        }
    }
    let mut rng = Rng::new(mix64(seed ^ SHUFFLE_STREAM));
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (c, idx) in by_class.iter_mut().enumerate() {
        shuffle(idx, &mut rng);
        test.extend_from_slice(&idx[..quota[c]]);
        train.extend_from_slice(&idx[quota[c]..]);
    }
    shuffle(&mut train, &mut rng);
    shuffle(&mut test, &mut rng);
    (train, test)
}

/// Random crop with zero padding and random horizontal flip, for image
/// samples of shape `[C, H, W]`. Apply it to training batches only.
///
/// Crop: the image is padded by `crop_padding` on every side with 0.0 and
/// an `H × W` window is cut at a uniformly random offset in
/// `0..=2·crop_padding` per axis. The padding value is 0.0 in the stored
/// (already normalised) space: black for [0, 1]-scaled data, the channel
/// mean for mean/std-normalised CIFAR-10 (torchvision's `RandomCrop` before
/// `Normalize` would pad with black, `−mean/std`, instead).
/// Flip: with probability ½, mirror left–right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    pub crop_padding: usize,
    pub hflip: bool,
}

impl Augment {
    /// The usual CIFAR-10 recipe: 4-pixel padding, random flip.
    pub fn cifar() -> Augment {
        Augment {
            crop_padding: 4,
            hflip: true,
        }
    }

    /// `true` if it leaves every sample unchanged.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.hflip
    }

    /// An error unless `shape` is an image `[C, H, W]` (flat feature
    /// vectors such as the 8×8 digits' `[64]` cannot be cropped or flipped).
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), DataError> {
        if self.is_identity() || (shape.len() == 3 && shape.iter().all(|&d| d > 0)) {
            Ok(())
        } else {
            Err(DataError::Invalid {
                what: format!(
                    "augmentation (crop padding {}, flip {}) needs image samples of shape \
                     [C, H, W], got {}",
                    self.crop_padding,
                    self.hflip,
                    crate::shape::list(shape)
                ),
            })
        }
    }

    /// Writes an augmented copy of the sample `x` (shape `shape`) to `out`,
    /// drawing from `rng`. Errors if the shape is not `[C, H, W]` or the
    /// slices do not match it.
    pub fn apply(
        &self,
        x: &[f32],
        shape: &[usize],
        rng: &mut Rng,
        out: &mut [f32],
    ) -> Result<(), DataError> {
        self.check_shape(shape)?;
        let n: usize = shape.iter().product();
        if x.len() != n || out.len() != n {
            return Err(DataError::Invalid {
                what: format!(
                    "augmentation: sample has {} values and output {}, shape {} needs {n}",
                    x.len(),
                    out.len(),
                    crate::shape::list(shape)
                ),
            });
        }
        self.apply_checked(x, shape, rng, out);
        Ok(())
    }

    /// `apply` after `check_shape` and the length check.
    fn apply_checked(&self, x: &[f32], shape: &[usize], rng: &mut Rng, out: &mut [f32]) {
        if self.is_identity() {
            out.copy_from_slice(x);
            return;
        }
        let (c, h, w) = (shape[0], shape[1], shape[2]);
        let p = self.crop_padding as isize;
        let (dy, dx) = if p > 0 {
            let span = 2 * self.crop_padding + 1;
            (rng.below(span) as isize - p, rng.below(span) as isize - p)
        } else {
            (0, 0)
        };
        let flip = self.hflip && rng.uniform() < 0.5;
        for ch in 0..c {
            let src = &x[ch * h * w..(ch + 1) * h * w];
            let dst = &mut out[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let sy = y as isize + dy;
                for xo in 0..w {
                    let xc = if flip { w - 1 - xo } else { xo };
                    let sx = xc as isize + dx;
                    dst[y * w + xo] = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        src[sy as usize * w + sx as usize]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Iterates mini-batches `(values, labels)` of a [`Dataset`]: values are
/// `B × sample` row-major, labels `B`. [`Loader::new`] shuffles with a
/// permutation keyed by `(seed, epoch)` and makes training samples (an
/// image folder's random crops); [`Loader::sequential`] keeps the dataset
/// order and makes evaluation samples; [`Loader::with_order`] takes the
/// order from the caller (evaluation samples unless [`Loader::seeded`]).
/// The last batch is short unless `drop_last` is set, in which case it is
/// dropped.
#[derive(Clone, Debug)]
pub struct Loader<'a> {
    data: &'a Dataset,
    batch_size: usize,
    drop_last: bool,
    order: Vec<usize>,
    pos: usize,
    augment: Option<Augment>,
    seed: u64,
    epoch: u64,
    /// Training samples: random transforms keyed by `(seed, epoch, i)`.
    seeded: bool,
}

impl<'a> Loader<'a> {
    /// A shuffled pass over `data` for one epoch. Panics if `batch_size`
    /// is 0 (a programming error).
    pub fn new(data: &'a Dataset, batch_size: usize, seed: u64, epoch: u64) -> Loader<'a> {
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = Rng::new(mix64(mix64(seed ^ SHUFFLE_STREAM) ^ epoch));
        shuffle(&mut order, &mut rng);
        Self::with_order(data, batch_size, order).seeded(seed, epoch)
    }

    /// A pass in dataset order. Panics if `batch_size` is 0.
    pub fn sequential(data: &'a Dataset, batch_size: usize) -> Loader<'a> {
        Self::with_order(data, batch_size, (0..data.len()).collect())
    }

    /// A pass visiting the samples at `order` (indices into `data`).
    /// Panics if `batch_size` is 0.
    pub fn with_order(data: &'a Dataset, batch_size: usize, order: Vec<usize>) -> Loader<'a> {
        assert!(batch_size > 0, "Loader: batch size must be at least 1");
        Loader {
            data,
            batch_size,
            drop_last: false,
            order,
            pos: 0,
            augment: None,
            seed: 0,
            epoch: 0,
            seeded: false,
        }
    }

    /// Training samples of epoch `epoch` of a run seeded with `seed`: the
    /// keys of [`Loader::augment`] and of an image folder's random crops.
    pub fn seeded(mut self, seed: u64, epoch: u64) -> Loader<'a> {
        self.seed = seed;
        self.epoch = epoch;
        self.seeded = true;
        self
    }

    /// Drop the last batch when it would be shorter than the batch size.
    pub fn drop_last(mut self, drop_last: bool) -> Loader<'a> {
        self.drop_last = drop_last;
        self
    }

    /// Start at batch `k` (a resumed epoch), without making the batches
    /// before it.
    pub fn skip_batches(mut self, k: usize) -> Loader<'a> {
        self.pos = (k * self.batch_size).min(self.order.len());
        self
    }

    /// Augment every sample (training only), keyed by `(seed, epoch,
    /// sample index)`. Errors unless the dataset holds `[C, H, W]` images.
    pub fn augment(mut self, augment: Augment) -> Result<Loader<'a>, DataError> {
        augment.check_shape(&self.data.shape)?;
        self.augment = Some(augment).filter(|a| !a.is_identity());
        Ok(self)
    }

    /// The sample indices of this epoch, in visiting order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Batches in the whole pass (not just those left).
    pub fn num_batches(&self) -> usize {
        let n = self.order.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    fn remaining(&self) -> usize {
        let left = self.order.len() - self.pos;
        if self.drop_last {
            left / self.batch_size
        } else {
            left.div_ceil(self.batch_size)
        }
    }

    /// Calls `f` with this pass's batches, made `depth` (at least 1) ahead
    /// on another thread: while `f` works on one batch, the next are
    /// decoded. The batches are the ones iterating the loader gives, in
    /// the same order. If `f` returns early, the thread stops after the
    /// batch it is making.
    pub fn prefetch<R>(
        self,
        depth: usize,
        f: impl FnOnce(&mut dyn Iterator<Item = (Vec<f32>, Vec<Label>)>) -> R,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        std::thread::scope(|s| {
            s.spawn(move || {
                for batch in self {
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            });
            let r = f(&mut rx.iter());
            // Unblocks the producer if `f` stopped early.
            drop(rx);
            r
        })
    }

    /// Sample `i` into `out`, as this pass makes it; returns its label.
    fn make_sample(&self, i: usize, out: &mut [f32]) -> Label {
        let data = self.data;
        let fill = |buf: &mut [f32]| {
            if self.seeded {
                let key = sample_key(DECODE_STREAM, self.seed, self.epoch, i);
                data.sample_into_keyed(i, key, buf)
            } else {
                data.sample_into(i, buf)
            }
        };
        match &self.augment {
            Some(a) => {
                let key = sample_key(AUGMENT_STREAM, self.seed, self.epoch, i);
                let mut x = vec![0f32; out.len()];
                let y = fill(&mut x);
                a.apply_checked(&x, &data.shape, &mut Rng::new(key), out);
                y
            }
            None => fill(out),
        }
    }
}

impl Iterator for Loader<'_> {
    type Item = (Vec<f32>, Vec<Label>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining() == 0 {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let (start, n) = (self.pos, self.data.sample_len());
        self.pos = end;
        let idx = &self.order[start..end];
        let mut values = vec![0f32; idx.len() * n];
        let mut labels: Vec<Label> = vec![0; idx.len()];
        if self.data.is_lazy() {
            // Decoding and binning are worth a thread per sample.
            values
                .par_chunks_mut(n.max(1))
                .zip(labels.par_iter_mut())
                .zip(idx.par_iter())
                .for_each(|((out, y), &i)| *y = self.make_sample(i, out));
        } else {
            for ((out, y), &i) in values.chunks_mut(n.max(1)).zip(&mut labels).zip(idx) {
                *y = self.make_sample(i, out);
            }
        }
        Some((values, labels))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.remaining();
        (r, Some(r))
    }
}

impl ExactSizeIterator for Loader<'_> {}

/// One pass's batches, made ahead on a thread of their own from a dataset
/// shared with it: what [`Loader::prefetch`] does, for a caller that
/// pulls batches one at a time from a loop rather than inside a closure.
/// Dropping it stops the thread (after the batch it is making).
pub struct Prefetched {
    rx: Option<std::sync::mpsc::Receiver<(Vec<f32>, Vec<Label>)>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Prefetched {
    /// Starts the thread: it builds the loader `pass` makes for `data` and
    /// sends its batches, keeping `depth` (at least 1) ready.
    pub fn spawn<F>(data: std::sync::Arc<Dataset>, depth: usize, pass: F) -> Prefetched
    where
        F: for<'d> FnOnce(&'d Dataset) -> Loader<'d> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        let worker = std::thread::spawn(move || {
            for batch in pass(&data) {
                if tx.send(batch).is_err() {
                    break;
                }
            }
        });
        Prefetched {
            rx: Some(rx),
            worker: Some(worker),
        }
    }

    /// Ends the thread; a panic in it is raised here.
    fn finish(&mut self) {
        self.rx = None;
        if let Some(worker) = self.worker.take() {
            if let Err(panic) = worker.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

impl Iterator for Prefetched {
    type Item = (Vec<f32>, Vec<Label>);

    fn next(&mut self) -> Option<Self::Item> {
        let got = self.rx.as_ref()?.recv().ok();
        if got.is_none() {
            self.finish();
        }
        got
    }
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        self.finish();
    }
}
