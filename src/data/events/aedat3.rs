//! AEDAT 3.1, the cAER/libcaer format (DVS128 Gesture ships in it).
//!
//! File: header lines starting with `#` (the first `#!AER-DAT3.1`, the
//! last `#!END-HEADER`), each ended by `\r\n`, then event packets until
//! the end of the file. A packet is a 28-byte little-endian header
//! (libcaer `events/common.h`, `struct caer_event_packet_header`):
//!
//! ```text
//! i16 eventType   i16 eventSource   i32 eventSize   i32 eventTSOffset
//! i32 eventTSOverflow   i32 eventCapacity   i32 eventNumber   i32 eventValid
//! ```
//!
//! followed by `eventCapacity × eventSize` bytes of events. Polarity
//! events (type 1, libcaer `events/polarity.h`) are 8 bytes: a u32 `data`
//! (bit 0 valid mark, bit 1 polarity with 1 = ON, bits 2–16 y, bits 17–31
//! x) and an i32 timestamp in µs at `eventTSOffset`; the full timestamp is
//! `eventTSOverflow << 31 | timestamp`. Events without the valid mark and
//! packets of libcaer's other types (0–13: special, frame, IMU, …) are
//! skipped; a packet type outside 0–13 is an error (a corrupt stream, or
//! a custom type snnc cannot check). A polarity event with a negative
//! timestamp is invalid ([`super::Reject::NegativeTime`]).
//!
//! The `#Source N: NAME` header line names the camera; DVS128, DAVIS240
//! and DAVIS346 give the sensor size.

use std::path::Path;

use super::{
    malformed, truncated, validate, DataError, Decoded, Dropped, Event, Format, Recording, Reject,
    EVENTS_HINT,
};

/// `(width, height)`.
pub type Sensor = (u16, u16);

const PACKET_HEADER: usize = 28;
const POLARITY_EVENT: i16 = 1;
/// libcaer's default event types are 0 (special) to 13 (4×4 matrix).
const LAST_EVENT_TYPE: i16 = 13;

fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The sensor size of a camera named in a `#Source` line.
fn sensor_of(name: &str) -> Option<Sensor> {
    let n = name.to_ascii_uppercase();
    if n.contains("DVS128") {
        Some((128, 128))
    } else if n.contains("DAVIS240") {
        Some((240, 180))
    } else if n.contains("DAVIS346") {
        Some((346, 260))
    } else {
        None
    }
}

/// Reads an AEDAT 3.1 file: its polarity events, and the sensor size if
/// the header names a known camera (the events are then validated against
/// it; see the module doc of [`super`]).
pub fn parse_aedat3(path: &Path, bytes: &[u8]) -> Result<Recording, DataError> {
    let bad_header = |msg: &str| DataError::BadHeader {
        path: path.to_path_buf(),
        msg: msg.to_string(),
        hint: EVENTS_HINT.into(),
    };
    // Header: lines up to and including `#!END-HEADER`.
    let mut pos = 0;
    let mut sensor = None;
    let mut first = true;
    loop {
        if pos >= bytes.len() || bytes[pos] != b'#' {
            return Err(bad_header(&format!(
                "no `#!END-HEADER` line before byte {pos}"
            )));
        }
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            return Err(truncated(
                path,
                bytes.len(),
                bytes.len() + 1,
                format!("header line at byte {pos} has no end of line"),
            ));
        };
        let line = String::from_utf8_lossy(&bytes[pos..pos + nl]);
        let line = line.trim_end();
        if first && !line.starts_with("#!AER-DAT3.1") {
            return Err(bad_header(&format!(
                "expected the first line `#!AER-DAT3.1`, found {:?}",
                line.chars().take(40).collect::<String>()
            )));
        }
        first = false;
        if let Some(rest) = line.strip_prefix("#Source ") {
            if let Some((_, name)) = rest.split_once(':') {
                sensor = sensor.or(sensor_of(name.trim()));
            }
        }
        pos += nl + 1;
        if line == "#!END-HEADER" {
            break;
        }
    }
    let mut events = Vec::new();
    let mut dropped = Dropped::default();
    let mut skipped = 0usize;
    while pos < bytes.len() {
        if bytes.len() - pos < PACKET_HEADER {
            return Err(truncated(
                path,
                bytes.len(),
                pos + PACKET_HEADER,
                format!("28-byte packet header at byte {pos}"),
            ));
        }
        let h = &bytes[pos..pos + PACKET_HEADER];
        let kind = i16::from_le_bytes([h[0], h[1]]);
        let size = le_i32(h, 4);
        let ts_offset = le_i32(h, 8);
        let overflow = le_i32(h, 12);
        let capacity = le_i32(h, 16);
        let number = le_i32(h, 20);
        let valid = le_i32(h, 24);
        if !(0..=LAST_EVENT_TYPE).contains(&kind) {
            return Err(malformed(
                path,
                pos,
                format!(
                    "packet type {kind} is not one of libcaer's event types 0–{LAST_EVENT_TYPE} \
                     (a corrupt stream?)"
                ),
            ));
        }
        if size < 0 || capacity < 0 || number < 0 || valid < 0 || overflow < 0 {
            return Err(malformed(
                path,
                pos,
                format!(
                    "packet header has a negative field (size {size}, capacity {capacity}, \
                     number {number}, valid {valid}, overflow {overflow})"
                ),
            ));
        }
        if number > capacity || valid > number {
            return Err(malformed(
                path,
                pos,
                format!(
                    "packet header: {number} events, {valid} valid, capacity {capacity} \
                     (needs valid ≤ number ≤ capacity)"
                ),
            ));
        }
        // Both factors are below 2³¹, so the product fits a u64.
        let payload = size as u64 * capacity as u64;
        let body = pos + PACKET_HEADER;
        if ((bytes.len() - body) as u64) < payload {
            return Err(truncated(
                path,
                bytes.len(),
                (body as u64 + payload) as usize,
                format!("packet at byte {pos}: 28-byte header + {capacity} events × {size} bytes"),
            ));
        }
        if kind == POLARITY_EVENT {
            if size < 8 || ts_offset < 0 || ts_offset as usize + 4 > size as usize {
                return Err(malformed(
                    path,
                    pos,
                    format!(
                        "polarity packet with event size {size} and timestamp offset \
                         {ts_offset} (expected 8 and 4)"
                    ),
                ));
            }
            let size = size as usize;
            for k in 0..number as usize {
                let e = &bytes[body + k * size..body + (k + 1) * size];
                let data = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                if data & 1 == 0 {
                    skipped += 1;
                    continue;
                }
                let ts = le_i32(e, ts_offset as usize);
                if ts < 0 {
                    dropped.add(Reject::NegativeTime, || {
                        format!("t = {ts} at byte {}", body + k * size)
                    });
                    continue;
                }
                events.push(Event {
                    t: ((overflow as u64) << 31) | ts as u64,
                    x: ((data >> 17) & 0x7fff) as u16,
                    y: ((data >> 2) & 0x7fff) as u16,
                    p: ((data >> 1) & 1) as u8,
                });
            }
        } else {
            skipped += number as usize;
        }
        pos = body + payload as usize;
    }
    let decoded = Decoded {
        events,
        dropped,
        skipped,
        skipped_what: "non-polarity or invalid-marked events",
        sensor,
    };
    validate(path, Format::Aedat3, bytes.len(), decoded)
}
