//! Event datasets in memory: the events of every sample, binned into
//! frames when a batch asks for them (a 60,000-sample set at T = 10 and
//! 34×34 would take 5.5 GB as frames, ~1 GB as events).
//!
//! Folder layout (the N-MNIST release's): `DIR/Train/<label>/<file>` and
//! `DIR/Test/<label>/<file>` (`train`/`test` also accepted), any of the
//! formats of [`super::read_events`]. Labels are the folder names: all
//! integers → those integers (classes = largest + 1); otherwise the sorted
//! names, numbered from 0. Files are read in name order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::{read_events, to_frames, Binning, Event, FrameSpec, Resize};
use crate::data::{DataError, Dataset, Split};

/// How to get event data (goes into every event-data error).
pub const EVENTS_HINT: &str = "expected an event file (.bin N-MNIST, .aedat AEDAT 2.0/3.1, .npy \
     N×4 t,x,y,p) in DIR/Train/<label>/ or DIR/Test/<label>/; `snnc data make-events --out DIR` \
     writes a synthetic set from Fashion-MNIST";

/// The events of many samples, packed (8 bytes an event), with the frame
/// layout they are binned into.
#[derive(Clone, Debug, PartialEq)]
pub struct EventSamples {
    /// Sample `i`'s events are `offsets[i]..offsets[i + 1]`.
    offsets: Vec<usize>,
    /// Microseconds since the sample's first event.
    t: Vec<u32>,
    /// `x | y << 15 | p << 30`.
    xyp: Vec<u32>,
    pub spec: FrameSpec,
}

impl EventSamples {
    /// Packs `streams`. Errors if a coordinate needs more than 15 bits or a
    /// sample lasts longer than 2³² µs (71 minutes).
    pub fn new(streams: &[Vec<Event>], spec: FrameSpec) -> Result<EventSamples, String> {
        let total: usize = streams.iter().map(Vec::len).sum();
        let mut s = EventSamples {
            offsets: Vec::with_capacity(streams.len() + 1),
            t: Vec::with_capacity(total),
            xyp: Vec::with_capacity(total),
            spec,
        };
        s.offsets.push(0);
        for (i, ev) in streams.iter().enumerate() {
            let t0 = ev.iter().map(|e| e.t).min().unwrap_or(0);
            for e in ev {
                let dt = u32::try_from(e.t - t0).map_err(|_| {
                    format!("sample {i} lasts longer than 2^32 µs ({} µs)", e.t - t0)
                })?;
                if e.x >= 1 << 15 || e.y >= 1 << 15 {
                    return Err(format!(
                        "sample {i}: pixel ({}, {}) needs more than 15 bits",
                        e.x, e.y
                    ));
                }
                s.t.push(dt);
                s.xyp
                    .push(u32::from(e.x) | u32::from(e.y) << 15 | u32::from(e.p != 0) << 30);
            }
            s.offsets.push(s.t.len());
        }
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events over all samples.
    pub fn total_events(&self) -> usize {
        self.t.len()
    }

    /// Sample `i`'s events (times relative to its first event). Panics if
    /// `i >= len()`.
    pub fn events(&self, i: usize) -> Vec<Event> {
        (self.offsets[i]..self.offsets[i + 1])
            .map(|k| {
                let v = self.xyp[k];
                Event {
                    t: u64::from(self.t[k]),
                    x: (v & 0x7fff) as u16,
                    y: ((v >> 15) & 0x7fff) as u16,
                    p: (v >> 30) as u8,
                }
            })
            .collect()
    }

    /// Bins sample `i` into `out` (`spec.len()` values). Panics if `i` is
    /// out of range or `out` has the wrong length (the caller sizes it from
    /// `spec`).
    pub fn fill(&self, i: usize, out: &mut [f32]) {
        to_frames(&self.events(i), &self.spec, out).expect("buffer sized from the spec");
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> EventSamples {
        let mut s = EventSamples {
            offsets: vec![0],
            t: Vec::new(),
            xyp: Vec::new(),
            spec: self.spec,
        };
        for &i in indices {
            let r = self.offsets[i]..self.offsets[i + 1];
            s.t.extend_from_slice(&self.t[r.clone()]);
            s.xyp.extend_from_slice(&self.xyp[r]);
            s.offsets.push(s.t.len());
        }
        s
    }

    /// A dataset whose samples are these events binned into frames.
    pub fn into_dataset(self, name: String, labels: Vec<u8>, classes: usize) -> Dataset {
        Dataset {
            name,
            images: Vec::new(),
            labels,
            shape: self.spec.shape(),
            classes,
            events: Some(Arc::new(self)),
        }
    }
}

/// `DIR/<one of names>` if it is a directory.
fn split_dir(dir: &Path, names: &[&str]) -> Result<PathBuf, DataError> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_dir())
        .ok_or_else(|| DataError::Missing {
            path: dir.join(names[0]),
            tried: if dir.is_dir() {
                format!(" (also tried {})", names[1..].join(", "))
            } else {
                format!(" (directory {} does not exist)", dir.display())
            },
            hint: EVENTS_HINT.into(),
        })
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |e: std::io::Error| DataError::Io {
        path: dir.to_path_buf(),
        source: e,
        hint: EVENTS_HINT.into(),
    };
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        v.push(entry.map_err(io)?.path());
    }
    v.sort();
    Ok(v)
}

/// `(label folder name, files)` of one split.
type Listing = Vec<(String, Vec<PathBuf>)>;

fn list_split(dir: &Path) -> Result<Listing, DataError> {
    let mut out = Vec::new();
    for d in list_dir(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let files: Vec<PathBuf> = list_dir(&d)?
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        out.push((name, files));
    }
    Ok(out)
}

/// Frame layout for [`load_event_split`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventLoad {
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub binning: Binning,
    pub resize: Resize,
}

/// Reads an event dataset folder (see the module doc) into a train/test
/// [`Split`] whose samples are `[T, 2, H, W]` frames. The sensor size is
/// the one the format implies (N-MNIST: 34×34; DVS128: 128×128) when every
/// file agrees on it, otherwise the extent of all events. `limit` caps the
/// samples read per split (the first ones of each class in turn).
pub fn load_event_split(
    dir: &Path,
    frames: EventLoad,
    limit: Option<usize>,
) -> Result<Split, DataError> {
    let train_dir = split_dir(dir, &["Train", "train"])?;
    let test_dir = split_dir(dir, &["Test", "test"])?;
    let train = list_split(&train_dir)?;
    let test = list_split(&test_dir)?;
    // Labels from folder names.
    let mut names: Vec<String> = train.iter().chain(&test).map(|(n, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    let numeric: Option<Vec<usize>> = names.iter().map(|n| n.parse().ok()).collect();
    let label_of = |name: &str| -> usize {
        match &numeric {
            Some(_) => name.parse().expect("checked numeric"),
            None => names
                .binary_search_by(|n| n.as_str().cmp(name))
                .expect("listed"),
        }
    };
    let classes = match &numeric {
        Some(v) => v.iter().max().map_or(0, |m| m + 1),
        None => names.len(),
    };
    if classes == 0 || classes > 256 {
        return Err(DataError::Invalid {
            what: format!(
                "{}: {classes} label folders; expected 1 to 256 (folders named by class under \
                 Train/ and Test/); {EVENTS_HINT}",
                dir.display()
            ),
        });
    }
    let pick = |listing: &Listing| -> Vec<(PathBuf, u8)> {
        // Round-robin over classes so a limit keeps the classes balanced.
        let mut per: Vec<(u8, std::slice::Iter<PathBuf>)> = listing
            .iter()
            .map(|(n, f)| (label_of(n) as u8, f.iter()))
            .collect();
        let total: usize = listing.iter().map(|(_, f)| f.len()).sum();
        let want = limit.unwrap_or(total).min(total);
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            for (l, it) in per.iter_mut() {
                if out.len() < want {
                    if let Some(p) = it.next() {
                        out.push((p.clone(), *l));
                    }
                }
            }
        }
        out
    };
    let train_files = pick(&train);
    let test_files = pick(&test);
    for (files, d) in [(&train_files, &train_dir), (&test_files, &test_dir)] {
        if files.is_empty() {
            return Err(DataError::Missing {
                path: d.clone(),
                tried: " (no event files in its label folders)".into(),
                hint: EVENTS_HINT.into(),
            });
        }
    }
    let read = |files: &[(PathBuf, u8)]| -> Result<Vec<super::Recording>, DataError> {
        files.par_iter().map(|(p, _)| read_events(p)).collect()
    };
    let train_rec = read(&train_files)?;
    let test_rec = read(&test_files)?;
    let all = || train_rec.iter().chain(&test_rec);
    let first = all().next().and_then(|r| r.sensor);
    let sensor = match first {
        Some(s) if all().all(|r| r.sensor == Some(s)) => s,
        _ => all().fold((0, 0), |(w, h), r| {
            let (a, b) = r.extent();
            (w.max(a), h.max(b))
        }),
    };
    if sensor.0 == 0 || sensor.1 == 0 {
        return Err(DataError::Invalid {
            what: format!("{}: no events in any file; {EVENTS_HINT}", dir.display()),
        });
    }
    let spec = FrameSpec {
        steps: frames.steps,
        binning: frames.binning,
        sensor,
        width: frames.width,
        height: frames.height,
        resize: frames.resize,
    };
    let build = |rec: Vec<super::Recording>,
                 files: &[(PathBuf, u8)],
                 split: &str|
     -> Result<Dataset, DataError> {
        let streams: Vec<Vec<Event>> = rec.into_iter().map(|r| r.events).collect();
        let s = EventSamples::new(&streams, spec).map_err(|m| DataError::Invalid {
            what: format!("{}: {m}", dir.display()),
        })?;
        let labels = files.iter().map(|(_, l)| *l).collect();
        Ok(s.into_dataset(format!("events:{}/{split}", dir.display()), labels, classes))
    };
    Ok(Split {
        train: build(train_rec, &train_files, "train")?,
        test: build(test_rec, &test_files, "test")?,
    })
}

/// `--data events:DIR` for a model whose input is `input` (`[2, H, W]`):
/// binned by time into `steps` frames of `H × W` ([`Resize::Auto`]).
pub fn load_for_input(dir: &Path, input: &[usize], steps: usize) -> Result<Split, String> {
    let [2, h, w] = *input else {
        return Err(format!(
            "error: event data needs a model input of 2 polarity channels, C×H×W = 2×H×W; \
             the model's input is {}",
            crate::shape::list(input)
        ));
    };
    load_event_split(
        dir,
        EventLoad {
            steps,
            width: w,
            height: h,
            binning: Binning::Time,
            resize: Resize::Auto,
        },
        None,
    )
    .map_err(|e| format!("error: {e}"))
}
