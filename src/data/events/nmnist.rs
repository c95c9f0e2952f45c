//! The N-MNIST binary format (Orchard et al. 2015, "Converting Static Image
//! Datasets to Spiking Neuromorphic Datasets Using Saccades"; also
//! N-Caltech101): 5 bytes an event, a big-endian 40-bit word
//!
//! ```text
//! byte 0: x (bits 39–32)   byte 1: y (bits 31–24)
//! byte 2: bit 7 polarity (1 = ON), bits 6–0 timestamp bits 22–16
//! byte 3: timestamp bits 15–8   byte 4: timestamp bits 7–0   (µs)
//! ```
//!
//! A record with y = 240 is not an event but a timestamp-overflow marker:
//! every later timestamp grows by 2¹³ µs (as the dataset's own
//! `Read_Ndataset.m` and tonic's `read_mnist_file` decode it).

use std::path::Path;

use super::{truncated, validate, Decoded, Dropped, Event, Format, Recording};

/// N-MNIST's sensor crop: 34×34 pixels.
pub const NMNIST_SIDE: u16 = 34;

const OVERFLOW_Y: u8 = 240;
const OVERFLOW_STEP: u64 = 1 << 13;
const MAX_TS: u64 = (1 << 23) - 1;

/// Reads an N-MNIST `.bin` file and validates it against the 34×34 sensor
/// (see the module doc of [`super`]). A length that is not a multiple of 5
/// is a truncation error; an empty file or one of only overflow markers is
/// a [`super::DataError::NoEvents`].
pub fn parse_nmnist(path: &Path, bytes: &[u8]) -> Result<Recording, super::DataError> {
    if !bytes.len().is_multiple_of(5) {
        let n = bytes.len() / 5;
        return Err(truncated(
            path,
            bytes.len(),
            (n + 1) * 5,
            format!(
                "5-byte N-MNIST events: {n} complete and {} stray bytes",
                bytes.len() % 5
            ),
        ));
    }
    let mut events = Vec::with_capacity(bytes.len() / 5);
    let mut base = 0u64;
    let mut markers = 0;
    for r in bytes.chunks_exact(5) {
        if r[1] == OVERFLOW_Y {
            base += OVERFLOW_STEP;
            markers += 1;
            continue;
        }
        let ts = (u64::from(r[2] & 0x7f) << 16) | (u64::from(r[3]) << 8) | u64::from(r[4]);
        events.push(Event {
            t: base + ts,
            x: u16::from(r[0]),
            y: u16::from(r[1]),
            p: r[2] >> 7,
        });
    }
    let decoded = Decoded {
        events,
        dropped: Dropped::default(),
        skipped: markers,
        skipped_what: "timestamp-overflow markers (y = 240)",
        sensor: Some((NMNIST_SIDE, NMNIST_SIDE)),
    };
    validate(path, Format::NMnist, bytes.len(), decoded)
}

/// Encodes events in the N-MNIST format. Errors (naming the event) if a
/// coordinate does not fit a byte, y is 240 (the overflow marker), the
/// polarity is not 0/1, or a timestamp needs more than 23 bits (this
/// writer emits no overflow markers).
pub fn encode_nmnist(events: &[Event]) -> Result<Vec<u8>, super::EventError> {
    let mut out = Vec::with_capacity(events.len() * 5);
    for (i, e) in events.iter().enumerate() {
        if e.x > 255 || e.y > 255 || e.y == u16::from(OVERFLOW_Y) {
            return Err(super::EventError::NmnistPixel {
                index: i,
                x: e.x,
                y: e.y,
            });
        }
        if e.p > 1 {
            return Err(super::EventError::NmnistPolarity { index: i, p: e.p });
        }
        if e.t > MAX_TS {
            return Err(super::EventError::NmnistTime { index: i, t: e.t });
        }
        out.extend_from_slice(&[
            e.x as u8,
            e.y as u8,
            (e.p << 7) | (e.t >> 16) as u8,
            (e.t >> 8) as u8,
            e.t as u8,
        ]);
    }
    Ok(out)
}
