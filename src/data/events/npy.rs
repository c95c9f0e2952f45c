//! Events as a NumPy `.npy` array: `N × 4` integers, columns `t, x, y, p`.
//!
//! `.npy` (NumPy's `format.py`, versions 1.0–3.0): the magic `\x93NUMPY`,
//! a major and a minor version byte, the header length (u16 little-endian
//! in version 1, u32 in 2 and 3), and an ASCII Python dict literal
//! `{'descr': '<i8', 'fortran_order': False, 'shape': (N, 4), }`, then the
//! data. Accepted element types: `i1 i2 i4 i8 u1 u2 u4 u8`, either byte
//! order (`<`, `>`, `|`); C or Fortran order.
//!
//! Values: `t` ≥ 0 (µs), `0 ≤ x, y < 65536`, `p` ∈ {0, 1}, with −1 read as
//! 0 (OFF) for datasets that store polarity as ±1. A row outside these is
//! invalid ([`super::Reject`]: `NegativeTime`, `Pixel`, `Polarity`). The
//! format names no sensor, so coordinates are not checked against one.

use std::path::Path;

use super::{
    truncated, validate, DataError, Decoded, Dropped, Event, Format, Recording, Reject, EVENTS_HINT,
};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The value of `key` in the header dict: the text after `'key':` up to the
/// next top-level `,` or `}` (a tuple is kept whole).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("'{key}'");
    let at = header.find(&k)? + k.len();
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Reads an `N × 4` `.npy` array of `(t, x, y, p)` rows and validates it
/// (see the module doc of [`super`]).
pub fn parse_npy(path: &Path, bytes: &[u8]) -> Result<Recording, DataError> {
    let bad = |msg: &str| DataError::BadHeader {
        path: path.to_path_buf(),
        msg: msg.to_string(),
        hint: EVENTS_HINT.into(),
    };
    if bytes.len() < 10 {
        return Err(truncated(
            path,
            bytes.len(),
            10,
            "the .npy preamble: magic, version, header length".into(),
        ));
    }
    if &bytes[..6] != MAGIC {
        return Err(bad(&format!(
            "does not start with the .npy magic \\x93NUMPY (found {:02x?})",
            &bytes[..6]
        )));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(truncated(
                    path,
                    bytes.len(),
                    12,
                    "the .npy 2.0 preamble".into(),
                ));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!(".npy version {v}.{} is unknown", bytes[7]))),
    };
    let data_start = hstart + hlen;
    if bytes.len() < data_start {
        return Err(truncated(
            path,
            bytes.len(),
            data_start,
            format!("{hstart}-byte preamble + {hlen}-byte header"),
        ));
    }
    let header = std::str::from_utf8(&bytes[hstart..data_start])
        .map_err(|_| bad("the header is not text"))?;
    let descr = dict_value(header, "descr")
        .ok_or_else(|| bad(&format!("no 'descr' in header {header:?}")))?
        .trim_matches(|c| c == '\'' || c == '"');
    let fortran = match dict_value(header, "fortran_order") {
        Some("False") => false,
        Some("True") => true,
        other => return Err(bad(&format!("'fortran_order' is {other:?}"))),
    };
    let shape_text = dict_value(header, "shape")
        .ok_or_else(|| bad(&format!("no 'shape' in header {header:?}")))?;
    let dims: Vec<usize> = shape_text
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(&format!("bad shape {shape_text}")))?;
    let n = match dims.as_slice() {
        [n, 4] => *n,
        _ => {
            return Err(bad(&format!(
                "shape {shape_text}: expected (N, 4) with columns t, x, y, p"
            )))
        }
    };
    let (order, kind, width) = {
        let b = descr.as_bytes();
        if b.len() != 3 || !matches!(b[0], b'<' | b'>' | b'|' | b'=') {
            return Err(bad(&format!("unsupported dtype {descr:?}")));
        }
        let width = (b[2] as char).to_digit(10).unwrap_or(0) as usize;
        if !matches!((b[1], width), (b'i' | b'u', 1 | 2 | 4 | 8)) {
            return Err(bad(&format!(
                "dtype {descr:?}: expected an integer type (i1 … i8, u1 … u8)"
            )));
        }
        (b[0], b[1], width)
    };
    let need = n
        .checked_mul(4 * width)
        .and_then(|d| d.checked_add(data_start))
        .ok_or_else(|| bad(&format!("shape {shape_text} is too large")))?;
    if bytes.len() < need {
        return Err(truncated(
            path,
            bytes.len(),
            need,
            format!("{data_start}-byte header + {n} × 4 values of {width} bytes"),
        ));
    }
    if bytes.len() > need {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            expected: need as u64,
            what: format!("{data_start}-byte header + {n} × 4 values of {width} bytes"),
            hint: EVENTS_HINT.into(),
        });
    }
    let value = |row: usize, col: usize| -> (i128, usize) {
        let idx = if fortran {
            col * n + row
        } else {
            row * 4 + col
        };
        let at = data_start + idx * width;
        let mut raw = [0u8; 8];
        let src = &bytes[at..at + width];
        if order == b'>' {
            for (i, &b) in src.iter().rev().enumerate() {
                raw[i] = b;
            }
        } else {
            raw[..width].copy_from_slice(src);
        }
        let u = u64::from_le_bytes(raw);
        let v = if kind == b'i' && width < 8 {
            let shift = 64 - 8 * width as u32;
            i128::from(((u << shift) as i64) >> shift)
        } else if kind == b'i' {
            i128::from(u as i64)
        } else {
            i128::from(u)
        };
        (v, at)
    };
    let mut events = Vec::with_capacity(n);
    let mut dropped = Dropped::default();
    for row in 0..n {
        let (t, at) = value(row, 0);
        let (x, _) = value(row, 1);
        let (y, _) = value(row, 2);
        let (p, _) = value(row, 3);
        if t < 0 || t > i128::from(u64::MAX) {
            dropped.add(Reject::NegativeTime, || {
                format!("row {row} at byte {at}: timestamp {t}")
            });
            continue;
        }
        if !(0..65536).contains(&x) || !(0..65536).contains(&y) {
            dropped.add(Reject::Pixel, || {
                format!("row {row} at byte {at}: pixel ({x}, {y}) out of range 0..65536")
            });
            continue;
        }
        let p = match p {
            1 => 1,
            0 | -1 => 0,
            _ => {
                dropped.add(Reject::Polarity, || {
                    format!("row {row} at byte {at}: polarity {p}")
                });
                continue;
            }
        };
        events.push(Event {
            t: t as u64,
            x: x as u16,
            y: y as u16,
            p,
        });
    }
    let decoded = Decoded {
        events,
        dropped,
        skipped: 0,
        skipped_what: "",
        sensor: None,
    };
    validate(path, Format::Npy, bytes.len(), decoded)
}
