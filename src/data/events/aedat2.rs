//! AEDAT 2.0, the jAER format (CIFAR10-DVS ships in it), with the DVS128
//! address layout.
//!
//! File: ASCII header lines starting with `#`, each ended by `\r\n` (or
//! `\n`); the first is `#!AER-DAT2.0`. Then 8-byte records, big-endian:
//! a u32 address and a u32 timestamp in µs (which wraps at 2³²; a drop of
//! more than 2³¹ is taken as a wrap).
//!
//! DVS128 address (jAER's `Tmpdiff128` extractor and its MATLAB twin
//! `extractRetina128EventsFromAddr.m`: `xmask 0xFE, xshift 1, ymask 0x7F00,
//! yshift 8`, `x = 127 − xaddr`, `pol = 1 − 2·(addr & 1)`):
//!
//! ```text
//! bit 0      polarity: 0 = ON, 1 = OFF
//! bits 1–7   x, mirrored: x = 127 − bits
//! bits 8–14  y
//! bit 15     external (synchronisation) event: not a pixel, skipped
//! ```
//!
//! An address with bits above 15 set is not a DVS128 event (DAVIS cameras
//! use a different layout): it is counted as invalid
//! ([`super::Reject::Address`]) rather than misread as a pixel, so a
//! DAVIS file is refused as mostly invalid.
//! spikingjelly's CIFAR10-DVS loader decodes the same bits and then
//! transposes the image (`x = 127 − y`, `y = 127 − x`); snnc keeps jAER's
//! orientation.

use std::path::Path;

use super::{
    header_lines, truncated, validate, DataError, Decoded, Dropped, Event, Format, Recording,
    Reject, EVENTS_HINT,
};

/// Decodes a DVS128 address: `Some((x, y, p))`, or `None` for an external
/// event (bit 15). Errors on bits above 15 (not a DVS128 address).
pub fn decode_dvs128(addr: u32) -> Result<Option<(u16, u16, u8)>, super::EventError> {
    if addr >> 16 != 0 {
        return Err(super::EventError::NotDvs128(addr));
    }
    if addr & 0x8000 != 0 {
        return Ok(None);
    }
    let x = 127 - ((addr & 0xfe) >> 1) as u16;
    let y = ((addr & 0x7f00) >> 8) as u16;
    let p = 1 - (addr & 1) as u8;
    Ok(Some((x, y, p)))
}

/// Reads an AEDAT 2.0 file with DVS128 addresses (128×128) and validates
/// it (see the module doc of [`super`]).
pub fn parse_aedat2(path: &Path, bytes: &[u8]) -> Result<Recording, DataError> {
    let (lines, start) = header_lines(path, bytes)?;
    match lines.first() {
        Some(l) if l.starts_with(b"#!AER-DAT2.") => {}
        first => {
            return Err(DataError::BadHeader {
                path: path.to_path_buf(),
                msg: format!(
                    "expected the first line `#!AER-DAT2.0`, found {}",
                    first
                        .map(|l| {
                            let l: String = String::from_utf8_lossy(l).chars().take(40).collect();
                            format!("`{}`", l.escape_debug())
                        })
                        .unwrap_or_else(|| String::from("no header"))
                ),
                hint: EVENTS_HINT.into(),
            })
        }
    }
    let body = &bytes[start..];
    if !body.len().is_multiple_of(8) {
        let n = body.len() / 8;
        return Err(truncated(
            path,
            bytes.len(),
            start + (n + 1) * 8,
            format!(
                "{start}-byte header + 8-byte AEDAT 2.0 records: {n} complete and {} stray bytes",
                body.len() % 8
            ),
        ));
    }
    let mut events = Vec::with_capacity(body.len() / 8);
    let mut dropped = Dropped::default();
    let mut external = 0;
    let (mut wraps, mut prev) = (0u64, 0u32);
    for (i, r) in body.chunks_exact(8).enumerate() {
        let addr = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        let ts = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
        if i > 0 && ts < prev && prev - ts > 1 << 31 {
            wraps += 1;
        }
        prev = ts;
        match decode_dvs128(addr) {
            Ok(Some((x, y, p))) => events.push(Event {
                t: (wraps << 32) + u64::from(ts),
                x,
                y,
                p,
            }),
            Ok(None) => external += 1,
            Err(m) => dropped.add(Reject::Address, || {
                format!("at byte {}: {m}", start + 8 * i)
            }),
        }
    }
    let decoded = Decoded {
        events,
        dropped,
        skipped: external,
        skipped_what: "external (bit 15) events",
        sensor: Some((128, 128)),
    };
    validate(path, Format::Aedat2, bytes.len(), decoded)
}
