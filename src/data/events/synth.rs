//! A **synthetic** event dataset made from Fashion-MNIST, the way N-MNIST
//! was made from MNIST (Orchard et al. 2015), but with a simulated camera
//! instead of a real one: no DVS recording can be fetched here.
//!
//! Each 28×28 image is placed on a 34×34 sensor and moved along three
//! straight saccades forming a triangle (offsets (1, 5) → (3, 1) → (5, 5) →
//! (1, 5) pixels, [`SynthParams::saccade_us`] each, constant speed,
//! bilinear resampling). The simulated pixel keeps the log intensity
//! `ln(I + eps)` at its last event; whenever the current value differs by
//! the pixel's contrast threshold it emits an event (ON for up, OFF for
//! down) and moves its reference by one threshold, as many times as the
//! change allows, with the event time interpolated linearly inside the
//! simulation step. Thresholds vary per pixel (Gaussian mismatch), and
//! background noise events arrive at a fixed rate per pixel — both as in
//! real DVS sensors. Everything is seeded per sample: the same command
//! writes the same files.
//!
//! Output (`snnc data make-events --out DIR`): `DIR/Train/<label>/<index>.bin`
//! and `DIR/Test/<label>/<index>.bin` in the N-MNIST binary format
//! (`<index>` is the sample's position in the Fashion-MNIST split, five
//! digits), and `DIR/README.txt` saying what it is.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use super::{encode_nmnist, Event, NMNIST_SIDE};
use crate::data::{idx_split, DataError, Dataset, IdxKind, FASHION_MNIST_CLASSES};
use crate::rng::{mix64, Rng};

/// Parameters of the simulated saccades and camera.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SynthParams {
    /// Sensor side (N-MNIST: 34).
    pub side: usize,
    /// Duration of one saccade (µs); three make a sample.
    pub saccade_us: u64,
    /// Simulation step (µs).
    pub step_us: u64,
    /// Mean contrast threshold on `ln(I + eps)`.
    pub threshold: f64,
    /// Per-pixel threshold mismatch: standard deviation as a fraction of
    /// the threshold.
    pub mismatch: f64,
    /// Offset inside the log, keeps black pixels finite.
    pub eps: f64,
    /// Background noise events per pixel and second.
    pub noise_hz: f64,
}

impl Default for SynthParams {
    fn default() -> SynthParams {
        SynthParams {
            side: NMNIST_SIDE as usize,
            saccade_us: 100_000,
            step_us: 1_000,
            threshold: 0.5,
            mismatch: 0.1,
            eps: 0.1,
            noise_hz: 0.2,
        }
    }
}

/// The saccade triangle: top-left offsets of the image on the sensor.
const PATH: [(f64, f64); 4] = [(1.0, 5.0), (3.0, 1.0), (5.0, 5.0), (1.0, 5.0)];

/// Bilinear sample of a `side × side` image at `(x, y)`, 0 outside.
fn bilinear(img: &[f32], side: usize, x: f64, y: f64) -> f64 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f64, yi: f64| -> f64 {
        if xi < 0.0 || yi < 0.0 || xi >= side as f64 || yi >= side as f64 {
            0.0
        } else {
            f64::from(img[yi as usize * side + xi as usize])
        }
    };
    (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1.0, y0))
        + fy * ((1.0 - fx) * at(x0, y0 + 1.0) + fx * at(x0 + 1.0, y0 + 1.0))
}

/// The image's offset on the sensor at time `t` (µs).
fn offset(p: &SynthParams, t: u64) -> (f64, f64) {
    let k = ((t / p.saccade_us) as usize).min(2);
    let f = ((t - k as u64 * p.saccade_us) as f64 / p.saccade_us as f64).min(1.0);
    let (a, b) = (PATH[k], PATH[k + 1]);
    (a.0 + f * (b.0 - a.0), a.1 + f * (b.1 - a.1))
}

/// Simulates the camera watching the square image `img` (values in [0, 1],
/// side `sqrt(len)`) during the three saccades. Events are sorted by time.
pub fn image_to_events(img: &[f32], p: &SynthParams, seed: u64) -> Vec<Event> {
    let side_in = (img.len() as f64).sqrt() as usize;
    let s = p.side;
    let mut rng = Rng::new(mix64(seed));
    let thresholds: Vec<f64> = (0..s * s)
        .map(|_| (p.threshold * (1.0 + p.mismatch * rng.normal())).max(0.05 * p.threshold))
        .collect();
    let log_at = |t: u64| -> Vec<f64> {
        let (ox, oy) = offset(p, t);
        let mut v = Vec::with_capacity(s * s);
        for y in 0..s {
            for x in 0..s {
                let i = bilinear(img, side_in, x as f64 - ox, y as f64 - oy);
                v.push((i + p.eps).ln());
            }
        }
        v
    };
    let end = 3 * p.saccade_us;
    let mut reference = log_at(0);
    let mut prev = reference.clone();
    let mut events = Vec::new();
    let mut t = 0;
    while t < end {
        let t1 = (t + p.step_us).min(end);
        let now = log_at(t1);
        for k in 0..s * s {
            let (l0, l1) = (prev[k], now[k]);
            let c = thresholds[k];
            let mut emit = |level: f64, pol: u8| {
                let f = if l1 != l0 {
                    (level - l0) / (l1 - l0)
                } else {
                    1.0
                };
                let te = t as f64 + f.clamp(0.0, 1.0) * (t1 - t) as f64;
                events.push(Event {
                    t: te.round() as u64,
                    x: (k % s) as u16,
                    y: (k / s) as u16,
                    p: pol,
                });
            };
            while l1 - reference[k] >= c {
                reference[k] += c;
                emit(reference[k], 1);
            }
            while reference[k] - l1 >= c {
                reference[k] -= c;
                emit(reference[k], 0);
            }
        }
        prev = now;
        t = t1;
    }
    // Background activity: Poisson in time, uniform over pixels and polarity.
    let rate = p.noise_hz * (s * s) as f64 / 1e6; // events per µs
    if rate > 0.0 {
        let mut tn = 0.0;
        loop {
            tn += -(1.0 - rng.uniform()).ln() / rate;
            if tn >= end as f64 {
                break;
            }
            let k = rng.below(s * s);
            events.push(Event {
                t: tn as u64,
                x: (k % s) as u16,
                y: (k / s) as u16,
                p: u8::from(rng.uniform() < 0.5),
            });
        }
    }
    events.sort_by_key(|e| e.t);
    events
}

/// What `snnc data make-events` does.
#[derive(Clone, Debug)]
pub struct MakeEvents {
    pub out: PathBuf,
    /// Where the Fashion-MNIST IDX files are.
    pub data_dir: PathBuf,
    /// Training samples to convert (the first ones), default all 60,000.
    pub limit: Option<usize>,
    /// Test samples to convert, default all 10,000.
    pub test_limit: Option<usize>,
    pub params: SynthParams,
    pub seed: u64,
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct MadeEvents {
    pub train: usize,
    pub test: usize,
    pub events: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl MadeEvents {
    pub fn mean_events(&self) -> f64 {
        self.events as f64 / (self.train + self.test).max(1) as f64
    }
}

/// The text of `DIR/README.txt`.
pub fn readme(m: &MakeEvents, made: &MadeEvents) -> String {
    let p = &m.params;
    format!(
        "SYNTHETIC EVENT DATASET — not a recording from a real event camera.\n\n\
         Made by `snnc data make-events` from Fashion-MNIST ({}) the way N-MNIST was made\n\
         from MNIST (Orchard et al. 2015), with a simulated sensor instead of an ATIS camera:\n\
         each 28x28 image moves over a {side}x{side} sensor along three straight saccades\n\
         (image offsets (1,5) -> (3,1) -> (5,5) -> (1,5) px, {sac} us each); a pixel emits an\n\
         event when ln(I + {eps}) has changed by its threshold since its last event\n\
         (mean {thr}, mismatch {mis} x threshold), ON when brighter, OFF when darker;\n\
         background noise {noise} events/pixel/s. Seed {seed}.\n\n\
         Layout: Train/<label>/<index>.bin, Test/<label>/<index>.bin, <index> being the\n\
         sample's position in the Fashion-MNIST split; labels 0-9 = {classes}.\n\
         Format: N-MNIST binary, 5 bytes an event: x, y, polarity bit (1 = ON) + 23-bit\n\
         timestamp in microseconds, big-endian.\n\n\
         {train} training and {test} test samples, {events} events ({mean:.0} per sample).\n",
        m.data_dir.display(),
        side = p.side,
        sac = p.saccade_us,
        eps = p.eps,
        thr = p.threshold,
        mis = p.mismatch,
        noise = p.noise_hz,
        seed = m.seed,
        classes = FASHION_MNIST_CLASSES.join(", "),
        train = made.train,
        test = made.test,
        events = made.events,
        mean = made.mean_events(),
    )
}

fn write_split(
    d: &Dataset,
    n: usize,
    dir: &Path,
    params: &SynthParams,
    seed: u64,
) -> Result<(usize, u64), DataError> {
    for l in 0..d.classes {
        let sub = dir.join(l.to_string());
        std::fs::create_dir_all(&sub).map_err(|e| DataError::Create {
            path: sub.clone(),
            source: e,
        })?;
    }
    let counts: Vec<(usize, u64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let (img, label) = d.sample(i);
            let ev = image_to_events(img, params, mix64(seed ^ mix64(i as u64)));
            let bytes = encode_nmnist(&ev).map_err(|e| DataError::Sample {
                sample: i,
                source: e,
            })?;
            let path = dir.join(label.to_string()).join(format!("{i:05}.bin"));
            std::fs::write(&path, &bytes).map_err(|e| DataError::Write {
                path: path.clone(),
                source: e,
            })?;
            Ok((ev.len(), bytes.len() as u64))
        })
        .collect::<Result<_, DataError>>()?;
    Ok(counts.iter().fold((0, 0), |(a, b), (c, d)| (a + c, b + d)))
}

/// Converts Fashion-MNIST into the synthetic event dataset under `m.out`.
pub fn make_events(m: &MakeEvents) -> Result<MadeEvents, DataError> {
    let started = Instant::now();
    if m.params.side < 28 + 6 {
        return Err(DataError::Invalid {
            what: format!(
                "the sensor side must be at least 34 (28 + the 6-pixel saccades), got {}",
                m.params.side
            ),
        });
    }
    let split = idx_split(&m.data_dir, IdxKind::FashionMnist)?;
    let n_train = m.limit.unwrap_or(usize::MAX).min(split.train.len());
    let n_test = m.test_limit.unwrap_or(usize::MAX).min(split.test.len());
    if n_train == 0 || n_test == 0 {
        return Err(DataError::Invalid {
            what: "--limit and --test-limit must be at least 1".into(),
        });
    }
    let (e1, b1) = write_split(
        &split.train,
        n_train,
        &m.out.join("Train"),
        &m.params,
        m.seed ^ 0x0074_7261_696e,
    )?;
    let (e2, b2) = write_split(
        &split.test,
        n_test,
        &m.out.join("Test"),
        &m.params,
        m.seed ^ 0x7465_7374,
    )?;
    let made = MadeEvents {
        train: n_train,
        test: n_test,
        events: e1 + e2,
        bytes: b1 + b2,
        seconds: started.elapsed().as_secs_f64(),
    };
    let readme_path = m.out.join("README.txt");
    std::fs::write(&readme_path, readme(m, &made)).map_err(|e| DataError::Write {
        path: readme_path.clone(),
        source: e,
    })?;
    Ok(made)
}
