//! Event datasets in memory: the events of every sample, binned into
//! frames when a batch asks for them (a 60,000-sample set at T = 10 and
//! 34×34 would take 5.5 GB as frames, ~1 GB as events).
//!
//! Folder layout (the N-MNIST release's): `DIR/Train/<label>/<file>` and
//! `DIR/Test/<label>/<file>` (`train`/`test` also accepted), any of the
//! formats of [`super::read_events`]. Labels are the folder names: all
//! integers → those integers (classes = largest + 1); otherwise the sorted
//! names, numbered from 0. Files are read in name order.
//!
//! Every file goes through its reader's validation
//! ([`super::read_events`]). A file that fails — unreadable, empty, a
//! directory, truncated, more than [`super::MAX_INVALID_PERCENT`] % of its
//! events invalid, … — is *rejected* and the rest are used, unless more
//! than [`MAX_REJECTED_FILES_PERCENT`] % of the files read (or every file
//! of a split) were rejected: then the whole folder is refused. What was
//! rejected and dropped is an [`EventReport`]; [`load_for_input`] prints it
//! (on stderr) when it is not clean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::{
    read_events, to_frames, Binning, Dropped, Event, EventError, FrameSpec, Recording, Resize,
};
use crate::data::io::split_dir;
use crate::data::{DataError, Dataset, Split};

/// How to get event data (goes into every event-data error).
pub const EVENTS_HINT: &str = "expected an event file (.bin N-MNIST, .aedat AEDAT 2.0/3.1, .npy \
     N×4 t,x,y,p) in DIR/Train/<label>/ or DIR/Test/<label>/; `snnc data make-events --out DIR` \
     writes a synthetic set from Fashion-MNIST";

/// A folder is refused when more than this share (in percent) of the files
/// read from it are rejected.
pub const MAX_REJECTED_FILES_PERCENT: usize = 1;

/// How many rejected files a report or an error lists by name.
const LIST_REJECTED: usize = 10;

/// A file the folder loader did not use.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedFile {
    pub path: PathBuf,
    /// A few words: `empty`, `a directory`, `truncated`, `mostly out of
    /// sensor 34×34`, …
    pub category: String,
    /// The reader's error, without the hint.
    pub message: String,
}

/// What [`load_event_split`] rejected (files) and dropped (events of the
/// files it kept).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventReport {
    /// Files read, rejected ones included.
    pub files: usize,
    pub rejected: Vec<RejectedFile>,
    /// Events in the kept files, dropped ones included.
    pub events: usize,
    pub dropped: Dropped,
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A few words for why a file was rejected.
fn category(e: &DataError) -> String {
    match e {
        DataError::NoEvents { len: 0, .. } => "empty".into(),
        DataError::NoEvents { .. } => "no events".into(),
        DataError::NotAFile { what, .. } => what.clone(),
        DataError::MostlyInvalid { dropped, .. } => dropped.category(),
        DataError::Truncated { .. } => "truncated".into(),
        DataError::TrailingData { .. } => "trailing data".into(),
        DataError::Malformed { .. } => "malformed".into(),
        DataError::BadHeader { .. } | DataError::BadMagic { .. } => "bad header".into(),
        DataError::Gzip { .. } => "corrupt gzip".into(),
        DataError::Missing { .. } | DataError::Io { .. } => "unreadable".into(),
        DataError::UnknownFormat { .. } => "unknown file type".into(),
        DataError::TooLong { .. } => "too long".into(),
        _ => "invalid".into(),
    }
}

impl EventReport {
    /// Nothing rejected, nothing dropped.
    pub fn is_clean(&self) -> bool {
        self.rejected.is_empty() && self.dropped.is_empty()
    }

    /// Rejected files by category, most frequent first.
    pub fn rejected_by_category(&self) -> Vec<(String, usize)> {
        let mut m: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &self.rejected {
            *m.entry(&r.category).or_insert(0) += 1;
        }
        let mut v: Vec<(String, usize)> = m.into_iter().map(|(c, n)| (c.into(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// One line: `2 of 1,200 files rejected (1 empty, 1 mostly out of
    /// sensor 34×34); 37 of 51,000 events dropped (x ≥ 34: 30, timestamp
    /// outlier: 7)`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} files rejected",
            thousands(self.rejected.len()),
            thousands(self.files)
        );
        if !self.rejected.is_empty() {
            let cats: Vec<String> = self
                .rejected_by_category()
                .iter()
                .map(|(c, n)| format!("{} {c}", thousands(*n)))
                .collect();
            s += &format!(" ({})", cats.join(", "));
        }
        s += &format!(
            "; {} of {} events dropped",
            thousands(self.dropped.total()),
            thousands(self.events)
        );
        if !self.dropped.is_empty() {
            s += &format!(" ({})", self.dropped);
        }
        s
    }

    /// One line per rejected file (the first `max`, then how many more).
    pub fn rejected_lines(&self, max: usize) -> String {
        let mut lines: Vec<String> = self
            .rejected
            .iter()
            .take(max)
            .map(|r| format!("  rejected: {}", r.message))
            .collect();
        if self.rejected.len() > max {
            lines.push(format!("  … and {} more", self.rejected.len() - max));
        }
        lines.join("\n")
    }

    /// The summary line, prefixed `events: `, and the rejected files.
    pub fn render(&self) -> String {
        let mut s = format!("events: {}", self.summary());
        if !self.rejected.is_empty() {
            s += "\n";
            s += &self.rejected_lines(LIST_REJECTED);
        }
        s
    }

    /// Adds one file's result; returns its recording if it was kept.
    fn add(&mut self, path: &Path, r: Result<Recording, DataError>) -> Option<Recording> {
        self.files += 1;
        match r {
            Ok(rec) => {
                self.events += rec.events.len() + rec.dropped.total();
                self.dropped.merge(&rec.dropped);
                Some(rec)
            }
            Err(e) => {
                let full = e.to_string();
                let message = full
                    .strip_suffix(EVENTS_HINT)
                    .map(|m| m.trim_end_matches("; ").to_string())
                    .unwrap_or(full);
                self.rejected.push(RejectedFile {
                    path: path.to_path_buf(),
                    category: category(&e),
                    message,
                });
                None
            }
        }
    }
}

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
    pub fn new(streams: &[Vec<Event>], spec: FrameSpec) -> Result<EventSamples, EventError> {
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
                let dt = u32::try_from(e.t - t0).map_err(|_| EventError::TooLong {
                    sample: i,
                    us: e.t - t0,
                })?;
                if e.x >= 1 << 15 || e.y >= 1 << 15 {
                    return Err(EventError::WidePixel {
                        sample: i,
                        x: e.x,
                        y: e.y,
                    });
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
            labels: labels.into_iter().map(super::super::Label::from).collect(),
            shape: self.spec.shape(),
            classes,
            events: Some(Arc::new(self)),
            files: None,
        }
    }
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
        // Hidden entries (`.DS_Store`) are skipped; anything else, a
        // directory included, is read and rejected if it is no event file.
        let files: Vec<PathBuf> = list_dir(&d)?
            .into_iter()
            .filter(|p| {
                !p.file_name()
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
/// [`Split`] whose samples are `[T, 2, H, W]` frames, and a report of the
/// files rejected and events dropped. The sensor size is the one the
/// format implies (N-MNIST: 34×34; DVS128: 128×128) when every kept file
/// agrees on it, otherwise the extent of all events. `limit` caps the
/// samples read per split (the first ones of each class in turn; files
/// not read are not checked). Errors ([`DataError::TooManyRejected`]) if
/// more than [`MAX_REJECTED_FILES_PERCENT`] % of the files read, or every
/// file of a split, were rejected.
pub fn load_event_split(
    dir: &Path,
    frames: EventLoad,
    limit: Option<usize>,
) -> Result<(Split, EventReport), DataError> {
    let train_dir = split_dir(dir, &["Train", "train"], EVENTS_HINT)?;
    let test_dir = split_dir(dir, &["Test", "test"], EVENTS_HINT)?;
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
    let read = |files: &[(PathBuf, u8)]| -> Vec<Result<Recording, DataError>> {
        files.par_iter().map(|(p, _)| read_events(p)).collect()
    };
    let mut report = EventReport::default();
    let mut keep = |files: &[(PathBuf, u8)]| -> (Vec<Recording>, Vec<(PathBuf, u8)>) {
        let results = read(files);
        let mut recs = Vec::with_capacity(files.len());
        let mut kept = Vec::with_capacity(files.len());
        for ((path, label), r) in files.iter().zip(results) {
            if let Some(rec) = report.add(path, r) {
                recs.push(rec);
                kept.push((path.clone(), *label));
            }
        }
        (recs, kept)
    };
    let (mut train_rec, train_files) = keep(&train_files);
    let (mut test_rec, test_files) = keep(&test_files);
    report.rejected.sort_by(|a, b| a.path.cmp(&b.path));
    let empty_split = [(&train_files, &train_dir), (&test_files, &test_dir)]
        .into_iter()
        .find(|(f, _)| f.is_empty())
        .map(|(_, d)| d);
    if report.rejected.len() * 100 > report.files * MAX_REJECTED_FILES_PERCENT
        || empty_split.is_some()
    {
        let mut summary = report.summary();
        if let Some(d) = empty_split {
            summary += &format!("; every file of {} rejected", d.display());
        }
        return Err(DataError::TooManyRejected {
            path: dir.to_path_buf(),
            summary,
            max_percent: MAX_REJECTED_FILES_PERCENT,
            files: report.rejected_lines(LIST_REJECTED),
            hint: EVENTS_HINT.into(),
        });
    }
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
    let build = |rec: &mut Vec<Recording>,
                 files: &[(PathBuf, u8)],
                 split: &str|
     -> Result<Dataset, DataError> {
        let streams: Vec<Vec<Event>> = rec.drain(..).map(|r| r.events).collect();
        let s = EventSamples::new(&streams, spec).map_err(|m| DataError::Invalid {
            what: format!("{}: {m}", dir.display()),
        })?;
        let labels = files.iter().map(|(_, l)| *l).collect();
        Ok(s.into_dataset(format!("events:{}/{split}", dir.display()), labels, classes))
    };
    let split = Split {
        train: build(&mut train_rec, &train_files, "train")?,
        test: build(&mut test_rec, &test_files, "test")?,
    };
    Ok((split, report))
}

/// `--data events:DIR` for a model whose input is `input` (`[2, H, W]`):
/// binned by time into `steps` frames of `H × W` ([`Resize::Auto`]).
/// Prints the [`EventReport`] on stderr when anything was rejected or
/// dropped.
pub fn load_for_input(dir: &Path, input: &[usize], steps: usize) -> Result<Split, DataError> {
    let [2, h, w] = *input else {
        return Err(DataError::EventInput {
            input: input.to_vec(),
        });
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
    .map(|(split, report)| {
        if !report.is_clean() {
            eprintln!("{}", report.render());
        }
        split
    })
}
