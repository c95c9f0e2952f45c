//! Event-camera (DVS) data: readers for the file formats the public
//! neuromorphic datasets ship in, binning of event streams into frames, an
//! in-memory event dataset that bins on demand, and a *synthetic* event
//! dataset made from Fashion-MNIST (no real DVS recording can be fetched
//! here).
//!
//! An [`Event`] is `(t, x, y, p)`: a timestamp in microseconds, the pixel,
//! and the polarity (`p = 1`: brightness went up, ON; `p = 0`: OFF).
//!
//! | format | reader | layout (sources) |
//! | --- | --- | --- |
//! | N-MNIST `.bin` | [`parse_nmnist`] | 5 bytes an event, big-endian 40-bit word: bits 39–32 x, 31–24 y, 23 polarity, 22–0 timestamp (µs). A record with y = 240 is a timestamp-overflow marker adding 2¹³ µs to every later event (Orchard et al. 2015, the dataset's `Read_Ndataset.m`; tonic's `read_mnist_file`). Sensor 34×34 (N-Caltech101 uses the same encoding on a larger sensor: its files are refused as out of sensor) |
//! | AEDAT 2.0 (jAER; CIFAR10-DVS) `.aedat` | [`parse_aedat2`] | ASCII header lines starting with `#` (the first `#!AER-DAT2.0`), then 8-byte big-endian records: u32 address, u32 timestamp (µs, wrapping at 2³²). DVS128 address: bit 0 polarity (0 = ON, 1 = OFF), bits 1–7 x mirrored (x = 127 − bits), bits 8–14 y, bit 15 external event (skipped); see [`decode_dvs128`] |
//! | AEDAT 3.1 (cAER/libcaer; DVS128 Gesture) `.aedat` | [`parse_aedat3`] | header lines up to `#!END-HEADER`, then packets: a 28-byte little-endian header (i16 type, i16 source, i32 event size, i32 timestamp offset, i32 timestamp overflow, i32 capacity, i32 number, i32 valid) and `capacity × size` bytes of events. Polarity events (type 1), 8 bytes: u32 data (bit 0 valid, bit 1 polarity, bits 2–16 y, bits 17–31 x), i32 timestamp; the full timestamp is `overflow << 31 | timestamp` (libcaer `events/common.h`, `events/polarity.h`). Invalid-marked events and libcaer's other packet types (0–13) are skipped; a type outside 0–13 is an error |
//! | NumPy `.npy` | [`parse_npy`] | an `N × 4` integer array (any of `i1 i2 i4 i8 u1 u2 u4 u8`, either byte order, C or Fortran order), columns `t, x, y, p`: t ≥ 0 in µs, 0 ≤ x, y < 65536, p ∈ {0, 1} (−1 is read as OFF). `np.save(f, np.stack([t, x, y, p], 1))` writes one |
//!
//! [`read_events`] picks the reader from the extension (`.bin`, `.aedat`
//! — version from its first line —, `.npy`) and returns a [`Recording`].
//! Every reader returns a [`DataError`] naming the file and the byte where
//! it went wrong on a truncated or malformed file; none panics.
//!
//! # Validation
//!
//! Every reader then checks the events it decoded (one reason per event,
//! the first that applies, in this order):
//!
//! | reason ([`Reject`]) | rule |
//! | --- | --- |
//! | `x ≥ W`, `y ≥ H` | outside the sensor the format declares (N-MNIST 34×34, DVS128 128×128, AEDAT 3.1 `#Source` camera); `.npy` declares none |
//! | not a DVS128 address | AEDAT 2.0 address with bits above 15 |
//! | polarity, pixel, negative timestamp | `.npy` values outside `p ∈ {0, 1, −1}`, `0 ≤ x, y < 65536`, `t ≥ 0`; AEDAT 3.1 negative timestamps |
//! | timestamp outlier | outside the [`timestamp_fence`]: farther from the file's bulk (its 1st–99th percentile of timestamps) than the bulk is long, and at least [`OUTLIER_MIN_MARGIN_US`] (10 ms). Catches up to 1 % stray timestamps in a file of more than 100 events; an 8 s stamp in a 0.3 s N-MNIST recording is one |
//! | timestamp going back | more than [`BACKWARD_TOLERANCE_US`] (1 ms) before the latest kept timestamp (after outliers are removed); a stream that restarts is mostly this |
//!
//! Invalid events are dropped and counted in [`Recording::dropped`] (with
//! the first of each reason), unless more than [`MAX_INVALID_PERCENT`]
//! (10 %) of the file's events are invalid: then the file is refused
//! ([`DataError::MostlyInvalid`], naming the file, the counts and the
//! reasons) — a file that far off is another format, another sensor or
//! corrupt, and what is left would train on garbage. A file without
//! events — empty, a header alone, only overflow markers or external
//! events — is a [`DataError::NoEvents`]; a directory where a file is
//! expected a [`DataError::NotAFile`]; a kept recording longer than 2³² µs
//! a [`DataError::TooLong`]. What the folder loader does with rejected
//! files: see [`load_event_split`] and [`EventReport`].
//!
//! Frames: [`to_frames`] bins a stream into `T` frames of two polarity
//! channels (channel 0 OFF, channel 1 ON; values are event counts), by time
//! or by event count, resized to the frame size (down-sampled by scaling
//! coordinates, e.g. 128×128 → 48×48, or centred when the frame is larger
//! than the sensor); [`FrameAugment`] rolls (±5 px) and flips frames,
//! seeded.
//!
//! Datasets: [`load_event_split`] reads `DIR/Train/<label>/*` and
//! `DIR/Test/<label>/*` (the N-MNIST release's layout; any of the formats
//! above) into [`super::Dataset`]s whose samples are binned into `T`
//! frames when a batch asks for them ([`EventSamples`]); [`make_events`]
//! writes such a folder from Fashion-MNIST (synthetic saccades, see
//! [`synth`]).

mod aedat2;
mod aedat3;
mod dataset;
mod frames;
mod nmnist;
mod npy;
pub mod synth;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::DataError;

pub use aedat2::{decode_dvs128, parse_aedat2};
pub use aedat3::parse_aedat3;
pub use dataset::{
    load_event_split, load_for_input, EventLoad, EventReport, EventSamples, RejectedFile,
    EVENTS_HINT, MAX_REJECTED_FILES_PERCENT,
};
pub use frames::{to_frames, Binning, FrameAugment, FrameSpec, Resize};
pub use nmnist::{encode_nmnist, parse_nmnist, NMNIST_SIDE};
pub use npy::parse_npy;
pub use synth::{make_events, MakeEvents, SynthParams};

/// Events that cannot be encoded, binned or packed as asked (the readers
/// report bad files as [`DataError`](crate::data::DataError)s).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error(
        "address 0x{0:08x} has bits above 15 set: not a DVS128 polarity event \
         (DAVIS AEDAT 2.0 layouts are not supported)"
    )]
    NotDvs128(u32),
    #[error(
        "event {index}: pixel ({x}, {y}) cannot be stored in N-MNIST format (x, y < 256, y ≠ 240)"
    )]
    NmnistPixel { index: usize, x: u16, y: u16 },
    #[error("event {index}: polarity {p} is not 0 or 1")]
    NmnistPolarity { index: usize, p: u8 },
    #[error("event {index}: timestamp {t} µs needs more than 23 bits")]
    NmnistTime { index: usize, t: u64 },
    #[error("frames: T = {steps}, {width}×{height} frames: every size must be at least 1")]
    EmptyFrames {
        steps: usize,
        width: usize,
        height: usize,
    },
    #[error("frames: sensor {0}×{1} is empty")]
    EmptySensor(usize, usize),
    #[error("frames: output holds {len} values, [T={steps}, 2, {height}, {width}] needs {needs}")]
    FramesLen {
        len: usize,
        steps: usize,
        height: usize,
        width: usize,
        needs: usize,
    },
    #[error("augment: {len} values are not whole [2, {h}, {w}] frames")]
    AugmentLen { len: usize, h: usize, w: usize },
    #[error("sample {sample} lasts longer than 2^32 µs ({us} µs)")]
    TooLong { sample: usize, us: u64 },
    #[error("sample {sample}: pixel ({x}, {y}) needs more than 15 bits")]
    WidePixel { sample: usize, x: u16, y: u16 },
}

/// One event: time in microseconds, pixel, polarity (1 = ON, 0 = OFF).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub t: u64,
    pub x: u16,
    pub y: u16,
    pub p: u8,
}

impl Event {
    pub fn new(t: u64, x: u16, y: u16, p: u8) -> Event {
        Event { t, x, y, p }
    }
}

/// The file formats [`read_events`] understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    NMnist,
    Aedat2,
    Aedat3,
    Npy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::NMnist => "N-MNIST binary",
            Format::Aedat2 => "AEDAT 2.0",
            Format::Aedat3 => "AEDAT 3.1",
            Format::Npy => "NumPy (t, x, y, p)",
        }
    }
}

/// The valid events of one file, with the sensor size where the format
/// implies one (N-MNIST: 34×34; DVS128: 128×128; AEDAT 3.1 with a known
/// `#Source`) and the invalid events that were dropped (see
/// [`validate`](self#validation)).
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    pub format: Format,
    pub events: Vec<Event>,
    /// `(width, height)`.
    pub sensor: Option<(u16, u16)>,
    /// Invalid events dropped from the file, by reason (at most
    /// [`MAX_INVALID_PERCENT`] % of its events, or the file is refused).
    pub dropped: Dropped,
}

impl Recording {
    /// `(max x + 1, max y + 1)` over the events, `(0, 0)` if there are none.
    pub fn extent(&self) -> (u16, u16) {
        extent(&self.events)
    }
}

/// `(max x + 1, max y + 1)`, `(0, 0)` for no events.
pub fn extent(events: &[Event]) -> (u16, u16) {
    events.iter().fold((0, 0), |(w, h), e| {
        (w.max(e.x.saturating_add(1)), h.max(e.y.saturating_add(1)))
    })
}

/// The format of `path`, judged by its extension and, for `.aedat`, its
/// first line.
pub fn detect_format(path: &Path, bytes: &[u8]) -> Result<Format, DataError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "bin" => Ok(Format::NMnist),
        "npy" => Ok(Format::Npy),
        "aedat" | "dat" => {
            let first = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let first = String::from_utf8_lossy(first);
            let first = first.trim_end();
            if first.starts_with("#!AER-DAT2.") {
                Ok(Format::Aedat2)
            } else if first.starts_with("#!AER-DAT3.1") {
                Ok(Format::Aedat3)
            } else {
                Err(DataError::BadHeader {
                    path: path.to_path_buf(),
                    msg: format!(
                        "first line `{}` is neither `#!AER-DAT2.0` nor `#!AER-DAT3.1` \
                         (AEDAT 1.0, 3.0 and 4 are not supported)",
                        first.chars().take(40).collect::<String>().escape_debug()
                    ),
                    hint: EVENTS_HINT.into(),
                })
            }
        }
        _ => Err(DataError::UnknownFormat {
            path: path.to_path_buf(),
            ext,
        }),
    }
}

/// Reads an event file of any supported format (see the module table) and
/// validates it. A directory (or another non-file) at `path` is a
/// [`DataError::NotAFile`].
pub fn read_events(path: &Path) -> Result<Recording, DataError> {
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            return Err(DataError::NotAFile {
                path: path.to_path_buf(),
                what: if m.is_dir() {
                    "a directory".into()
                } else {
                    "not a regular file".into()
                },
                hint: EVENTS_HINT.into(),
            });
        }
    }
    let bytes = super::io::read_file(path, EVENTS_HINT)?;
    parse_events(path, &bytes)
}

/// [`read_events`] on bytes already read; `path` names the file in errors
/// and its extension picks the format.
pub fn parse_events(path: &Path, bytes: &[u8]) -> Result<Recording, DataError> {
    match detect_format(path, bytes)? {
        Format::NMnist => parse_nmnist(path, bytes),
        Format::Aedat2 => parse_aedat2(path, bytes),
        Format::Aedat3 => parse_aedat3(path, bytes),
        Format::Npy => parse_npy(path, bytes),
    }
}

// ------------------------------------------------------------- validation

/// A file is refused when more than this share of its events (in percent)
/// is invalid; below it the invalid events are dropped and counted.
pub const MAX_INVALID_PERCENT: usize = 10;

/// How far (µs) a timestamp may go back behind the latest one before it
/// and still be kept.
pub const BACKWARD_TOLERANCE_US: u64 = 1_000;

/// The smallest margin (µs) around a file's bulk beyond which a timestamp
/// is an outlier (see [`timestamp_fence`]).
pub const OUTLIER_MIN_MARGIN_US: u64 = 10_000;

/// Why an event was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    /// x ≥ the sensor width; the sensor `(width, height)`.
    OutsideX(u16, u16),
    /// y ≥ the sensor height; the sensor `(width, height)`.
    OutsideY(u16, u16),
    /// A `.npy` coordinate outside 0…65535.
    Pixel,
    /// A `.npy` polarity other than 0, 1 or −1.
    Polarity,
    /// An AEDAT 2.0 address with bits above 15 (not a DVS128 event).
    Address,
    /// A negative timestamp (`.npy`, AEDAT 3.1).
    NegativeTime,
    /// A timestamp far outside the file's bulk ([`timestamp_fence`]).
    Outlier,
    /// A timestamp more than [`BACKWARD_TOLERANCE_US`] before the latest
    /// kept one.
    Backwards,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Reject::OutsideX(w, _) => write!(f, "x ≥ {w}"),
            Reject::OutsideY(_, h) => write!(f, "y ≥ {h}"),
            Reject::Pixel => f.write_str("pixel outside 0…65535"),
            Reject::Polarity => f.write_str("polarity not 0, 1 or −1"),
            Reject::Address => f.write_str("not a DVS128 address"),
            Reject::NegativeTime => f.write_str("negative timestamp"),
            Reject::Outlier => f.write_str("timestamp outlier"),
            Reject::Backwards => write!(f, "timestamp going back > {BACKWARD_TOLERANCE_US} µs"),
        }
    }
}

/// Invalid events by [`Reject`] reason, with the first of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    counts: BTreeMap<Reject, usize>,
    first: BTreeMap<Reject, String>,
}

impl Dropped {
    /// Counts one event dropped for `why`; `first` describes it if it is
    /// the first for that reason.
    pub fn add(&mut self, why: Reject, first: impl FnOnce() -> String) {
        *self.counts.entry(why).or_insert(0) += 1;
        self.first.entry(why).or_insert_with(first);
    }

    /// Adds `other`'s counts (keeping this one's first events).
    pub fn merge(&mut self, other: &Dropped) {
        for (&r, &n) in &other.counts {
            *self.counts.entry(r).or_insert(0) += n;
        }
        for (&r, d) in &other.first {
            self.first.entry(r).or_insert_with(|| d.clone());
        }
    }

    /// All dropped events.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Events dropped for `why`.
    pub fn count(&self, why: Reject) -> usize {
        self.counts.get(&why).copied().unwrap_or(0)
    }

    /// `(reason, count)`, most frequent first.
    pub fn by_count(&self) -> Vec<(Reject, usize)> {
        let mut v: Vec<(Reject, usize)> = self.counts.iter().map(|(&r, &n)| (r, n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Like the `Display` form, with the first event of each reason:
    /// `x ≥ 34: 2 (first x = 250, t = 17 µs)`.
    pub fn detailed(&self) -> String {
        self.by_count()
            .iter()
            .map(|(r, n)| match self.first.get(r) {
                Some(d) => format!("{r}: {n} (first {d})"),
                None => format!("{r}: {n}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A few words for a file refused because of these events: `mostly
    /// out of sensor 34×34`, `mostly invalid (timestamp outlier)`.
    pub fn category(&self) -> String {
        match self.by_count().first() {
            Some((Reject::OutsideX(w, h) | Reject::OutsideY(w, h), _)) => {
                format!("mostly out of sensor {w}×{h}")
            }
            Some((r, _)) => format!("mostly invalid ({r})"),
            None => "mostly invalid".into(),
        }
    }
}

/// `x ≥ 34: 30, timestamp outlier: 7`, most frequent first.
impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, (r, n)) in self.by_count().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}: {n}")?;
        }
        Ok(())
    }
}

/// What a format decoder read, before [`validate`].
struct Decoded {
    /// Events in file order, with fields the format could decode.
    events: Vec<Event>,
    /// Records the decoder itself found invalid.
    dropped: Dropped,
    /// Records that are not events (overflow markers, external events,
    /// other packet types), for the message on a file without events.
    skipped: usize,
    skipped_what: &'static str,
    sensor: Option<(u16, u16)>,
}

/// The bulk of a file's timestamps and the fence around it:
/// `(bulk_lo, bulk_hi, fence_lo, fence_hi)`. The bulk runs from the 1st to
/// the 99th percentile (nearest rank: sorted index `⌊(n − 1)/100⌋` and
/// `n − 1 − ⌊(n − 1)/100⌋`); the fence is the bulk widened on each side by
/// its own length, at least [`OUTLIER_MIN_MARGIN_US`]. A timestamp outside
/// the fence lies farther from the rest of the recording than the whole
/// recording lasts: an outlier. With 100 events or fewer the bulk is the
/// full range, so nothing is an outlier.
pub fn timestamp_fence(times: &[u64]) -> Option<(u64, u64, u64, u64)> {
    let n = times.len();
    if n == 0 {
        return None;
    }
    let k = (n - 1) / 100;
    let mut t = times.to_vec();
    let lo = *t.select_nth_unstable(k).1;
    let hi = *t.select_nth_unstable(n - 1 - k).1;
    let margin = (hi - lo).max(OUTLIER_MIN_MARGIN_US);
    Some((lo, hi, lo.saturating_sub(margin), hi.saturating_add(margin)))
}

/// The checks every reader applies to what it decoded (module doc,
/// *Validation*): coordinates inside the sensor, timestamps inside the
/// [`timestamp_fence`] and never more than [`BACKWARD_TOLERANCE_US`]
/// behind the latest kept one. Invalid events are dropped and counted; a
/// file without events, or with more than [`MAX_INVALID_PERCENT`] % of
/// them invalid, is an error naming the file.
fn validate(path: &Path, format: Format, len: usize, d: Decoded) -> Result<Recording, DataError> {
    let Decoded {
        events,
        mut dropped,
        skipped,
        skipped_what,
        sensor,
    } = d;
    let total = events.len() + dropped.total();
    if total == 0 {
        return Err(DataError::NoEvents {
            path: path.to_path_buf(),
            len: len as u64,
            what: if len == 0 {
                "empty file (0 bytes)".into()
            } else if skipped > 0 {
                format!("{len} bytes, only {skipped} {skipped_what}")
            } else {
                format!("{len} bytes, no event records")
            },
            hint: EVENTS_HINT.into(),
        });
    }
    let mut kept = events;
    if let Some((w, h)) = sensor {
        kept.retain(|e| {
            let why = if e.x >= w {
                Reject::OutsideX(w, h)
            } else if e.y >= h {
                Reject::OutsideY(w, h)
            } else {
                return true;
            };
            dropped.add(why, || {
                format!("x = {}, y = {} at t = {} µs", e.x, e.y, e.t)
            });
            false
        });
    }
    let times: Vec<u64> = kept.iter().map(|e| e.t).collect();
    if let Some((lo, hi, flo, fhi)) = timestamp_fence(&times) {
        kept.retain(|e| {
            let ok = (flo..=fhi).contains(&e.t);
            if !ok {
                dropped.add(Reject::Outlier, || {
                    format!("t = {} µs, the bulk is {lo}…{hi} µs", e.t)
                });
            }
            ok
        });
    }
    let mut latest: Option<u64> = None;
    kept.retain(|e| match latest {
        Some(m) if e.t.saturating_add(BACKWARD_TOLERANCE_US) < m => {
            dropped.add(Reject::Backwards, || format!("t = {} µs after {m} µs", e.t));
            false
        }
        _ => {
            latest = Some(latest.map_or(e.t, |m| m.max(e.t)));
            true
        }
    });
    let invalid = dropped.total();
    if invalid * 100 > total * MAX_INVALID_PERCENT {
        let out_of_sensor = matches!(
            dropped.by_count().first(),
            Some((Reject::OutsideX(..) | Reject::OutsideY(..), _))
        );
        let note = if format == Format::NMnist && out_of_sensor {
            "; .bin files are read as N-MNIST, whose sensor is 34×34 (N-Caltech101 recordings, \
             up to 240×180, are not)"
                .into()
        } else {
            String::new()
        };
        return Err(DataError::MostlyInvalid {
            path: path.to_path_buf(),
            invalid,
            total,
            max_percent: MAX_INVALID_PERCENT,
            dropped: Box::new(dropped),
            note,
            hint: EVENTS_HINT.into(),
        });
    }
    let (t0, t1) = kept
        .iter()
        .fold((u64::MAX, 0), |(a, b), e| (a.min(e.t), b.max(e.t)));
    if t1 - t0 > u64::from(u32::MAX) {
        return Err(DataError::TooLong {
            path: path.to_path_buf(),
            span_us: t1 - t0,
            hint: EVENTS_HINT.into(),
        });
    }
    Ok(Recording {
        format,
        events: kept,
        sensor,
        dropped,
    })
}

/// `DataError::Truncated` for an event file.
fn truncated(path: &Path, len: usize, expected: usize, what: String) -> DataError {
    DataError::Truncated {
        path: path.to_path_buf(),
        len: len as u64,
        expected: expected as u64,
        what,
        hint: EVENTS_HINT.into(),
    }
}

/// `DataError::Malformed` for an event file.
fn malformed(path: &Path, at: usize, msg: String) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        at: at as u64,
        msg,
        hint: EVENTS_HINT.into(),
    }
}

/// Splits `#` header lines off the front of `bytes`: returns the lines
/// (without line endings) and the offset of the first byte after them.
/// Errors if a header line has no end.
fn header_lines<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Vec<&'a [u8]>, usize), DataError> {
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() && bytes[pos] == b'#' {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            return Err(truncated(
                path,
                bytes.len(),
                bytes.len() + 1,
                format!("header line at byte {pos} has no end of line"),
            ));
        };
        let mut line = &bytes[pos..pos + nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        lines.push(line);
        pos += nl + 1;
    }
    Ok((lines, pos))
}
