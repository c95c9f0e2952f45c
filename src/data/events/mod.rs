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
//! | N-MNIST / N-Caltech101 `.bin` | [`parse_nmnist`] | 5 bytes an event, big-endian 40-bit word: bits 39–32 x, 31–24 y, 23 polarity, 22–0 timestamp (µs). A record with y = 240 is a timestamp-overflow marker adding 2¹³ µs to every later event (Orchard et al. 2015, the dataset's `Read_Ndataset.m`; tonic's `read_mnist_file`). Sensor 34×34 |
//! | AEDAT 2.0 (jAER; CIFAR10-DVS) `.aedat` | [`parse_aedat2`] | ASCII header lines starting with `#` (the first `#!AER-DAT2.0`), then 8-byte big-endian records: u32 address, u32 timestamp (µs, wrapping at 2³²). DVS128 address: bit 0 polarity (0 = ON, 1 = OFF), bits 1–7 x mirrored (x = 127 − bits), bits 8–14 y, bit 15 external event (skipped); see [`decode_dvs128`] |
//! | AEDAT 3.1 (cAER/libcaer; DVS128 Gesture) `.aedat` | [`parse_aedat3`] | header lines up to `#!END-HEADER`, then packets: a 28-byte little-endian header (i16 type, i16 source, i32 event size, i32 timestamp offset, i32 timestamp overflow, i32 capacity, i32 number, i32 valid) and `capacity × size` bytes of events. Polarity events (type 1), 8 bytes: u32 data (bit 0 valid, bit 1 polarity, bits 2–16 y, bits 17–31 x), i32 timestamp; the full timestamp is `overflow << 31 | timestamp` (libcaer `events/common.h`, `events/polarity.h`). Invalid events and other packet types are skipped |
//! | NumPy `.npy` | [`parse_npy`] | an `N × 4` integer array (any of `i1 i2 i4 i8 u1 u2 u4 u8`, either byte order, C or Fortran order), columns `t, x, y, p`: t ≥ 0 in µs, 0 ≤ x, y < 65536, p ∈ {0, 1} (−1 is read as OFF). `np.save(f, np.stack([t, x, y, p], 1))` writes one |
//!
//! [`read_events`] picks the reader from the extension (`.bin`, `.aedat`
//! — version from its first line —, `.npy`) and returns a [`Recording`].
//! Every reader returns a [`DataError`] naming the file and the byte where
//! it went wrong on a truncated or malformed file; none panics.
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

use std::path::Path;

use super::DataError;

pub use aedat2::{decode_dvs128, parse_aedat2};
pub use aedat3::parse_aedat3;
pub use dataset::{load_event_split, load_for_input, EventLoad, EventSamples, EVENTS_HINT};
pub use frames::{to_frames, Binning, FrameAugment, FrameSpec, Resize};
pub use nmnist::{encode_nmnist, parse_nmnist, NMNIST_SIDE};
pub use npy::parse_npy;
pub use synth::{make_events, MakeEvents, SynthParams};

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

/// The events of one file, with the sensor size where the format implies
/// one (N-MNIST: 34×34; DVS128: 128×128; AEDAT 3.1 with a known `#Source`).
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    pub format: Format,
    pub events: Vec<Event>,
    /// `(width, height)`.
    pub sensor: Option<(u16, u16)>,
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
        _ => Err(DataError::Invalid {
            what: format!(
                "{}: unknown event file type `.{ext}`; expected .bin (N-MNIST), .aedat \
                 (AEDAT 2.0 or 3.1) or .npy (N×4 t, x, y, p)",
                path.display()
            ),
        }),
    }
}

/// Reads an event file of any supported format (see the module table).
pub fn read_events(path: &Path) -> Result<Recording, DataError> {
    let bytes = super::io::read_file(path, EVENTS_HINT)?;
    parse_events(path, &bytes)
}

/// [`read_events`] on bytes already read; `path` names the file in errors
/// and its extension picks the format.
pub fn parse_events(path: &Path, bytes: &[u8]) -> Result<Recording, DataError> {
    let format = detect_format(path, bytes)?;
    let (events, sensor) = match format {
        Format::NMnist => (parse_nmnist(path, bytes)?, Some((NMNIST_SIDE, NMNIST_SIDE))),
        Format::Aedat2 => (parse_aedat2(path, bytes)?, Some((128, 128))),
        Format::Aedat3 => {
            let (events, sensor) = parse_aedat3(path, bytes)?;
            (events, sensor)
        }
        Format::Npy => (parse_npy(path, bytes)?, None),
    };
    Ok(Recording {
        format,
        events,
        sensor,
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
