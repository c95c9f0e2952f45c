//! Event-camera data: each reader on small files written here byte by byte
//! in the exact format (N-MNIST, AEDAT 2.0, AEDAT 3.1, .npy), with
//! truncated and corrupt variants; binning into frames on hand-computable
//! streams; augmentation; the folder loader; the synthetic Fashion-MNIST
//! event set; and one training step of VGG-SNN on it.

mod common;
use common::run::TmpDir;

use std::path::Path;

use snnc::data::events::{
    self, encode_nmnist, load_event_split, load_for_input, parse_aedat2, parse_aedat3,
    parse_events, parse_nmnist, parse_npy, synth, to_frames, Binning, Event, EventLoad,
    EventSamples, FrameAugment, FrameSpec, Resize,
};
use snnc::data::DataError;
use snnc::rng::Rng;

fn ev(t: u64, x: u16, y: u16, p: u8) -> Event {
    Event::new(t, x, y, p)
}

// ---------------------------------------------------------------- N-MNIST

/// One N-MNIST record, assembled bit by bit from the published layout.
fn nmnist_record(x: u8, y: u8, p: u8, ts: u32) -> [u8; 5] {
    let word: u64 = (u64::from(x) << 32)
        | (u64::from(y) << 24)
        | (u64::from(p) << 23)
        | u64::from(ts & 0x7f_ffff);
    let b = word.to_be_bytes();
    [b[3], b[4], b[5], b[6], b[7]]
}

#[test]
fn nmnist_decodes_the_40_bit_layout() {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&nmnist_record(3, 4, 1, 0x01_2345));
    bytes.extend_from_slice(&nmnist_record(33, 0, 0, 0x7f_ffff));
    // The same first record, literally.
    assert_eq!(&bytes[..5], &[3, 4, 0x81, 0x23, 0x45]);
    let e = parse_nmnist(Path::new("a.bin"), &bytes).unwrap().events;
    assert_eq!(e, vec![ev(0x01_2345, 3, 4, 1), ev(0x7f_ffff, 33, 0, 0)]);
}

#[test]
fn nmnist_overflow_marker_adds_2_pow_13() {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&nmnist_record(1, 1, 1, 100));
    bytes.extend_from_slice(&nmnist_record(0, 240, 0, 0)); // marker
    bytes.extend_from_slice(&nmnist_record(2, 2, 0, 50));
    bytes.extend_from_slice(&nmnist_record(0, 240, 0, 0));
    bytes.extend_from_slice(&nmnist_record(3, 3, 1, 7));
    let e = parse_nmnist(Path::new("a.bin"), &bytes).unwrap().events;
    assert_eq!(
        e,
        vec![
            ev(100, 1, 1, 1),
            ev(8192 + 50, 2, 2, 0),
            ev(16384 + 7, 3, 3, 1)
        ]
    );
}

#[test]
fn nmnist_truncated_is_an_error_naming_the_file() {
    let mut bytes = nmnist_record(1, 2, 1, 3).to_vec();
    bytes.extend_from_slice(&[9, 9]);
    let e = parse_nmnist(Path::new("dir/00001.bin"), &bytes).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                len: 7,
                expected: 10,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("dir/00001.bin"), "{msg}");
    assert!(msg.contains("1 complete and 2 stray bytes"), "{msg}");
}

#[test]
fn nmnist_encoder_round_trips_and_refuses_what_does_not_fit() {
    let events = vec![ev(0, 0, 0, 0), ev(5, 33, 12, 1), ev(9, 1, 33, 1)];
    let b = encode_nmnist(&events).unwrap();
    assert_eq!(b.len(), 15);
    assert_eq!(&b[5..10], &nmnist_record(33, 12, 1, 5));
    assert_eq!(parse_nmnist(Path::new("x.bin"), &b).unwrap().events, events);
    // The encoder writes any byte-sized pixel (the reader then checks the
    // 34×34 sensor).
    assert_eq!(
        encode_nmnist(&[ev((1 << 23) - 1, 255, 239, 1)]).unwrap(),
        nmnist_record(255, 239, 1, (1 << 23) - 1)
    );
    assert!(encode_nmnist(&[ev(1 << 23, 0, 0, 0)])
        .unwrap_err()
        .to_string()
        .contains("23 bits"));
    assert!(encode_nmnist(&[ev(0, 0, 240, 0)])
        .unwrap_err()
        .to_string()
        .contains("240"));
    assert!(encode_nmnist(&[ev(0, 256, 0, 0)]).is_err());
    assert!(encode_nmnist(&[ev(0, 0, 0, 2)]).is_err());
}

// --------------------------------------------------------------- AEDAT 2.0

const AEDAT2_HEADER: &[u8] =
    b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, int32 timestamp (8 bytes total)\r\n";

/// A DVS128 address as jAER writes it: y·256 + (127 − x)·2 + (OFF ? 1 : 0).
fn dvs128_addr(x: u32, y: u32, on: bool) -> u32 {
    (y << 8) | ((127 - x) << 1) | u32::from(!on)
}

fn aedat2(records: &[(u32, u32)]) -> Vec<u8> {
    let mut b = AEDAT2_HEADER.to_vec();
    for &(a, t) in records {
        b.extend_from_slice(&a.to_be_bytes());
        b.extend_from_slice(&t.to_be_bytes());
    }
    b
}

#[test]
fn aedat2_decodes_dvs128_addresses() {
    assert_eq!(
        events::decode_dvs128(dvs128_addr(10, 20, true)),
        Ok(Some((10, 20, 1)))
    );
    assert_eq!(
        events::decode_dvs128(dvs128_addr(127, 0, false)),
        Ok(Some((127, 0, 0)))
    );
    // Literal bits: y = 5, raw x = 127 − 3 = 124, OFF.
    assert_eq!(events::decode_dvs128(0x05f9), Ok(Some((3, 5, 0))));
    assert_eq!(events::decode_dvs128(0x8000), Ok(None));
    assert!(events::decode_dvs128(0x1_0000).is_err());
    let b = aedat2(&[
        (dvs128_addr(10, 20, true), 1000),
        (0x8000, 1500), // external event: skipped
        (dvs128_addr(0, 127, false), 2000),
        (dvs128_addr(5, 6, true), 0xffff_fff0),
        (dvs128_addr(7, 8, false), 0x10), // wrapped
    ]);
    let e = parse_aedat2(Path::new("rec.aedat"), &b).unwrap().events;
    assert_eq!(
        e,
        vec![
            ev(1000, 10, 20, 1),
            ev(2000, 0, 127, 0),
            ev(0xffff_fff0, 5, 6, 1),
            ev((1 << 32) + 0x10, 7, 8, 0),
        ]
    );
    let r = parse_events(Path::new("rec.aedat"), &b).unwrap();
    assert_eq!(r.format, events::Format::Aedat2);
    assert_eq!(r.sensor, Some((128, 128)));
    assert_eq!(r.events, e);
    // LF-only line ends are accepted too.
    let lf = [
        b"#!AER-DAT2.0\n".as_slice(),
        &aedat2(&[(dvs128_addr(1, 2, true), 9)])[AEDAT2_HEADER.len()..],
    ]
    .concat();
    assert_eq!(
        parse_aedat2(Path::new("lf.aedat"), &lf).unwrap().events,
        vec![ev(9, 1, 2, 1)]
    );
}

#[test]
fn aedat2_errors_name_the_file_and_the_problem() {
    let p = Path::new("cifar/airplane_0.aedat");
    // Body not a multiple of 8.
    let mut b = aedat2(&[(dvs128_addr(1, 1, true), 1)]);
    b.extend_from_slice(&[0, 0, 0]);
    let e = parse_aedat2(p, &b).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("cifar/airplane_0.aedat"), "{e}");
    assert!(
        e.to_string().contains("1 complete and 3 stray bytes"),
        "{e}"
    );
    // No version line.
    let e = parse_aedat2(p, b"# just a comment\r\n").unwrap_err();
    assert!(matches!(e, DataError::BadHeader { .. }), "{e:?}");
    assert!(e.to_string().contains("#!AER-DAT2.0"), "{e}");
    // A header line that never ends.
    let e = parse_aedat2(p, b"#!AER-DAT2.0").unwrap_err();
    assert!(e.to_string().contains("no end of line"), "{e}");
    // A DAVIS-style address is invalid; half the events invalid refuses
    // the file, naming the first bad record's byte.
    let b = aedat2(&[(dvs128_addr(1, 1, true), 1), (0x8000_0000, 2)]);
    let e = parse_aedat2(p, &b).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::MostlyInvalid {
                invalid: 1,
                total: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let at = AEDAT2_HEADER.len() + 8;
    assert!(e.to_string().contains(&format!("byte {at}")), "{e}");
    assert!(e.to_string().contains("not a DVS128 address: 1"), "{e}");
    // AEDAT 1.0 is refused when detected by extension.
    let e = parse_events(p, b"#!AER-DAT1.0\r\n").unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

// --------------------------------------------------------------- AEDAT 3.1

const AEDAT3_HEADER: &[u8] =
    b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n";

#[allow(clippy::too_many_arguments)]
fn packet_header(
    kind: i16,
    size: i32,
    ts_offset: i32,
    overflow: i32,
    capacity: i32,
    number: i32,
    valid: i32,
) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&1i16.to_le_bytes()); // source
    for v in [size, ts_offset, overflow, capacity, number, valid] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(h.len(), 28);
    h
}

/// A polarity event as libcaer lays it out: x << 17 | y << 2 | pol << 1 | valid.
fn polarity(x: u32, y: u32, on: bool, valid: bool, ts: i32) -> Vec<u8> {
    let data = (x << 17) | (y << 2) | (u32::from(on) << 1) | u32::from(valid);
    [data.to_le_bytes(), ts.to_le_bytes()].concat()
}

fn aedat3_file() -> Vec<u8> {
    let mut b = AEDAT3_HEADER.to_vec();
    // A special-event packet (type 0): skipped.
    b.extend(packet_header(0, 8, 4, 0, 1, 1, 1));
    b.extend([0u8; 8]);
    // Polarity packet, overflow 1, capacity 4 (one unused slot), 3 events, 2 valid.
    b.extend(packet_header(1, 8, 4, 1, 4, 3, 2));
    b.extend(polarity(100, 50, true, true, 10));
    b.extend(polarity(1, 2, false, false, 11)); // invalid: skipped
    b.extend(polarity(127, 127, false, true, 12));
    b.extend([0u8; 8]); // the unused slot
                        // Second polarity packet, same overflow.
    b.extend(packet_header(1, 8, 4, 1, 1, 1, 1));
    b.extend(polarity(3, 4, true, true, 20));
    b
}

#[test]
fn aedat3_reads_polarity_packets() {
    let r = parse_aedat3(Path::new("user01.aedat"), &aedat3_file()).unwrap();
    let e = r.events;
    assert_eq!(r.sensor, Some((128, 128)));
    assert_eq!(
        e,
        vec![
            ev((1 << 31) | 10, 100, 50, 1),
            ev((1 << 31) | 12, 127, 127, 0),
            ev((1 << 31) | 20, 3, 4, 1),
        ]
    );
    let r = parse_events(Path::new("user01.aedat"), &aedat3_file()).unwrap();
    assert_eq!(r.format, events::Format::Aedat3);
    assert_eq!(r.events, e);
}

#[test]
fn aedat3_errors_name_the_file_and_the_byte() {
    let p = Path::new("gesture/user02.aedat");
    let full = aedat3_file();
    let h = AEDAT3_HEADER.len();
    // Cut inside the first packet header.
    let e = parse_aedat3(p, &full[..h + 10]).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("gesture/user02.aedat"), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("packet header at byte {h}")),
        "{e}"
    );
    // Cut inside the polarity packet's events.
    let e = parse_aedat3(p, &full[..h + 36 + 28 + 12]).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("4 events × 8 bytes"), "{e}");
    // More events than capacity.
    let mut b = AEDAT3_HEADER.to_vec();
    b.extend(packet_header(1, 8, 4, 0, 1, 2, 2));
    b.extend([0u8; 8]);
    let e = parse_aedat3(p, &b).unwrap_err();
    assert!(
        matches!(e, DataError::Malformed { at, .. } if at == h as u64),
        "{e:?}"
    );
    // Negative size.
    let mut b = AEDAT3_HEADER.to_vec();
    b.extend(packet_header(1, -8, 4, 0, 1, 1, 1));
    assert!(matches!(
        parse_aedat3(p, &b).unwrap_err(),
        DataError::Malformed { .. }
    ));
    // Polarity events too small.
    let mut b = AEDAT3_HEADER.to_vec();
    b.extend(packet_header(1, 4, 0, 0, 1, 1, 1));
    b.extend([1u8; 4]);
    let e = parse_aedat3(p, &b).unwrap_err();
    assert!(e.to_string().contains("event size 4"), "{e}");
    // No end of header.
    let e = parse_aedat3(p, b"#!AER-DAT3.1\r\n#Format: RAW\r\n\x01\x00").unwrap_err();
    assert!(matches!(e, DataError::BadHeader { .. }), "{e:?}");
    assert!(e.to_string().contains("#!END-HEADER"), "{e}");
    // Wrong version.
    let e = parse_aedat3(p, b"#!AER-DAT2.0\r\n#!END-HEADER\r\n").unwrap_err();
    assert!(e.to_string().contains("#!AER-DAT3.1"), "{e}");
    // A huge capacity does not allocate or overflow: it is a truncation.
    let mut b = AEDAT3_HEADER.to_vec();
    b.extend(packet_header(1, i32::MAX, 4, 0, i32::MAX, 0, 0));
    assert!(matches!(
        parse_aedat3(p, &b).unwrap_err(),
        DataError::Truncated { .. }
    ));
}

// --------------------------------------------------------------------- npy

/// An .npy v1.0 file: header padded to a multiple of 64 with a final '\n'.
fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b.extend_from_slice(data);
    b
}

fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn npy_reads_int_arrays_in_both_orders_and_byte_orders() {
    let rows = [[5, 1, 2, 1], [9, 3, 4, 0], [12, 0, 0, -1]];
    let flat: Vec<i32> = rows.iter().flatten().copied().collect();
    let b = npy("<i4", false, "(3, 4)", &i32s(&flat));
    assert_eq!((b.len() - 48) % 64, 0, "header padded to 64 bytes");
    let want = vec![ev(5, 1, 2, 1), ev(9, 3, 4, 0), ev(12, 0, 0, 0)];
    assert_eq!(parse_npy(Path::new("a.npy"), &b).unwrap().events, want);
    // Fortran order, big-endian u2 (p = −1 cannot be unsigned: use 0).
    let cols: Vec<u16> = vec![5, 9, 12, 1, 3, 0, 2, 4, 0, 1, 0, 0];
    let data: Vec<u8> = cols.iter().flat_map(|x| x.to_be_bytes()).collect();
    let b = npy(">u2", true, "(3, 4)", &data);
    assert_eq!(parse_npy(Path::new("b.npy"), &b).unwrap().events, want);
    // i8, and through parse_events.
    let data: Vec<u8> = flat
        .iter()
        .flat_map(|&x| i64::from(x).to_le_bytes())
        .collect();
    let r = parse_events(Path::new("c.npy"), &npy("<i8", false, "(3, 4)", &data)).unwrap();
    assert_eq!(
        (r.format, r.sensor, r.events),
        (events::Format::Npy, None, want)
    );
    // Zero rows: no events, an error.
    let e = parse_npy(Path::new("d.npy"), &npy("<i4", false, "(0, 4)", &[])).unwrap_err();
    assert!(matches!(e, DataError::NoEvents { .. }), "{e:?}");
    assert!(e.to_string().contains("d.npy: no events"), "{e}");
}

#[test]
fn npy_errors() {
    let p = Path::new("rec.npy");
    let good = i32s(&[1, 2, 3, 1, 4, 5, 6, 0]);
    let e = parse_npy(p, &npy("<i4", false, "(2, 3)", &good[..24])).unwrap_err();
    assert!(matches!(e, DataError::BadHeader { .. }), "{e:?}");
    assert!(e.to_string().contains("expected (N, 4)"), "{e}");
    let e = parse_npy(p, &npy("<f4", false, "(2, 4)", &good)).unwrap_err();
    assert!(e.to_string().contains("integer type"), "{e}");
    let e = parse_npy(p, &npy("<i4", false, "(2, 4)", &good[..20])).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("rec.npy"), "{e}");
    let mut long = good.clone();
    long.push(0);
    let e = parse_npy(p, &npy("<i4", false, "(2, 4)", &long)).unwrap_err();
    assert!(matches!(e, DataError::TrailingData { .. }), "{e:?}");
    let e = parse_npy(p, b"PK\x03\x04 not npy at all").unwrap_err();
    assert!(e.to_string().contains("magic"), "{e}");
    let e = parse_npy(p, b"\x93NUMPY").unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    let e = parse_npy(p, &npy("<i4", false, "(1, 4)", &i32s(&[0, 1, 1, 2]))).unwrap_err();
    assert!(e.to_string().contains("polarity 2"), "{e}");
    let e = parse_npy(p, &npy("<i4", false, "(1, 4)", &i32s(&[-1, 1, 1, 1]))).unwrap_err();
    assert!(e.to_string().contains("timestamp -1"), "{e}");
    let e = parse_npy(p, &npy("<i4", false, "(1, 4)", &i32s(&[0, 70000, 1, 1]))).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = parse_events(Path::new("rec.txt"), b"").unwrap_err();
    assert!(e.to_string().contains("unknown event file type"), "{e}");
}

// ------------------------------------------------------------------ frames

fn spec(steps: usize, binning: Binning, sensor: (u16, u16), w: usize, h: usize) -> FrameSpec {
    FrameSpec {
        steps,
        binning,
        sensor,
        width: w,
        height: h,
        resize: Resize::Auto,
    }
}

/// `[T, 2, H, W]` value.
fn at(f: &[f32], s: &FrameSpec, t: usize, c: usize, y: usize, x: usize) -> f32 {
    f[((t * 2 + c) * s.height + y) * s.width + x]
}

#[test]
fn frames_by_time_split_the_span_evenly() {
    // Times 100..=109: span 10 µs, T = 2 → bin = (t − 100)·2/10.
    let events: Vec<Event> = (0..10)
        .map(|i| ev(100 + i, (i % 2) as u16, 0, (i % 3 == 0) as u8))
        .collect();
    let s = spec(2, Binning::Time, (2, 1), 2, 1);
    let mut f = vec![7.0; s.len()];
    to_frames(&events, &s, &mut f).unwrap();
    // Bin 0: i = 0..4 → (x, p): (0,1) (1,0) (0,0) (1,1) (0,0)
    // Bin 1: i = 5..9 → (1,0) (0,1) (1,0) (0,0) (1,1)
    // Layout [t][c][y][x]; c = p.
    assert_eq!(f, vec![2.0, 1.0, 1.0, 1.0, /* t1 */ 1.0, 2.0, 1.0, 1.0]);
    assert_eq!(at(&f, &s, 1, 0, 0, 1), 2.0);
    assert_eq!(f.iter().sum::<f32>(), 10.0);
}

#[test]
fn frames_by_time_use_first_and_last_timestamp() {
    // Uneven times: 0, 1, 2, 97, 98, 99 → span 100, T = 4: bins 0,0,0,3,3,3.
    let events: Vec<Event> = [0, 1, 2, 97, 98, 99]
        .iter()
        .map(|&t| ev(t, 0, 0, 1))
        .collect();
    let s = spec(4, Binning::Time, (1, 1), 1, 1);
    let mut f = vec![0.0; s.len()];
    to_frames(&events, &s, &mut f).unwrap();
    assert_eq!(f, vec![0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]);
    // By count: 6 events into 4 bins: ⌊i·4/6⌋ = 0,0,1,2,2,3.
    let s = spec(4, Binning::Count, (1, 1), 1, 1);
    to_frames(&events, &s, &mut f).unwrap();
    assert_eq!(f, vec![0.0, 2.0, 0.0, 1.0, 0.0, 2.0, 0.0, 1.0]);
}

#[test]
fn frames_downsample_by_scaling_and_centre_small_sensors() {
    // 4×4 sensor → 2×2 frame: pixel (x, y) → (x/2, y/2).
    let events = vec![
        ev(0, 0, 0, 1),
        ev(1, 1, 1, 1),
        ev(2, 3, 0, 0),
        ev(3, 2, 3, 1),
        ev(4, 9, 9, 1), // outside the sensor: dropped
    ];
    let s = spec(1, Binning::Time, (4, 4), 2, 2);
    let mut f = vec![0.0; s.len()];
    to_frames(&events, &s, &mut f).unwrap();
    assert_eq!(f, vec![0.0, 1.0, 0.0, 0.0, /* ON */ 2.0, 0.0, 0.0, 1.0]);
    // 128×128 → 48×48: x' = ⌊x·48/128⌋.
    let s = spec(1, Binning::Time, (128, 128), 48, 48);
    let mut f = vec![0.0; s.len()];
    to_frames(&[ev(0, 127, 64, 0), ev(0, 3, 2, 0)], &s, &mut f).unwrap();
    assert_eq!(at(&f, &s, 0, 0, 24, 47), 1.0);
    assert_eq!(at(&f, &s, 0, 0, 0, 1), 1.0);
    // 2×2 sensor in a 4×4 frame: centred at offset 1.
    let s = spec(1, Binning::Time, (2, 2), 4, 4);
    let mut f = vec![0.0; s.len()];
    to_frames(&[ev(0, 0, 0, 1), ev(0, 1, 1, 0)], &s, &mut f).unwrap();
    assert_eq!(at(&f, &s, 0, 1, 1, 1), 1.0);
    assert_eq!(at(&f, &s, 0, 0, 2, 2), 1.0);
    assert_eq!(f.iter().sum::<f32>(), 2.0);
    // Explicit Scale up-samples instead: 2 → 4, x' = 2x.
    let s = FrameSpec {
        resize: Resize::Scale,
        ..s
    };
    to_frames(&[ev(0, 1, 1, 0)], &s, &mut f).unwrap();
    assert_eq!(at(&f, &s, 0, 0, 2, 2), 1.0);
    // Centre crop of a larger sensor: 4 → 2 with Center, offset −1.
    let s = FrameSpec {
        resize: Resize::Center,
        ..spec(1, Binning::Time, (4, 4), 2, 2)
    };
    to_frames(&[ev(0, 1, 2, 1), ev(0, 0, 0, 1)], &s, &mut f[..8]).unwrap();
    assert_eq!(
        f[..8].to_vec(),
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    );
}

#[test]
fn frames_reject_bad_sizes() {
    let s = spec(2, Binning::Time, (2, 2), 2, 2);
    assert!(to_frames(&[], &s, &mut [0.0; 3])
        .unwrap_err()
        .to_string()
        .contains("needs 16"));
    let z = spec(0, Binning::Time, (2, 2), 2, 2);
    assert!(to_frames(&[], &z, &mut []).is_err());
    let z = spec(1, Binning::Time, (0, 2), 2, 2);
    assert!(to_frames(&[], &z, &mut [0.0; 8]).is_err());
    // No events: zeros.
    let mut f = vec![1.0; 16];
    to_frames(&[], &s, &mut f).unwrap();
    assert!(f.iter().all(|&v| v == 0.0));
}

#[test]
fn augmentation_rolls_and_flips_consistently() {
    let (t, h, w) = (3, 5, 7);
    let src: Vec<f32> = (0..t * 2 * h * w).map(|i| i as f32).collect();
    // Identity.
    let mut f = src.clone();
    let (fl, dy, dx) = FrameAugment::default()
        .apply(&mut f, h, w, &mut Rng::new(1))
        .unwrap();
    assert_eq!((fl, dy, dx, &f), (false, 0, 0, &src));
    let aug = FrameAugment::dvs();
    let (mut flips, mut shifts) = (0, std::collections::BTreeSet::new());
    for seed in 0..200 {
        let mut f = src.clone();
        let (fl, dy, dx) = aug.apply(&mut f, h, w, &mut Rng::new(seed)).unwrap();
        assert!(dy.abs() <= 5 && dx.abs() <= 5);
        flips += usize::from(fl);
        shifts.insert(dx);
        // Every plane: out[y][x] = in[(y − dy) mod h][flip((x − dx) mod w)].
        for p in 0..t * 2 {
            for y in 0..h {
                for x in 0..w {
                    let sy = (y as isize - dy).rem_euclid(h as isize) as usize;
                    let fx = (x as isize - dx).rem_euclid(w as isize) as usize;
                    let sx = if fl { w - 1 - fx } else { fx };
                    assert_eq!(f[p * h * w + y * w + x], src[p * h * w + sy * w + sx]);
                }
            }
        }
        // Same seed, same result.
        let mut g = src.clone();
        aug.apply(&mut g, h, w, &mut Rng::new(seed)).unwrap();
        assert_eq!(f, g);
    }
    assert!((60..140).contains(&flips), "{flips} flips in 200");
    assert_eq!(shifts.len(), 11, "{shifts:?}");
    assert!(aug.apply(&mut [0.0; 5], 2, 2, &mut Rng::new(0)).is_err());
}

// ----------------------------------------------------------------- dataset

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn event_folder_loads_and_bins_on_demand() {
    let d = TmpDir::new("folder");
    let s0 = vec![ev(0, 0, 0, 1), ev(10, 33, 33, 0), ev(20, 5, 6, 1)];
    let s1 = vec![ev(1000, 1, 1, 0), ev(1001, 2, 2, 1)];
    write(&d.0.join("Train/0/00000.bin"), &encode_nmnist(&s0).unwrap());
    write(&d.0.join("Train/0/00001.bin"), &encode_nmnist(&s1).unwrap());
    write(&d.0.join("Train/3/00002.bin"), &encode_nmnist(&s1).unwrap());
    write(&d.0.join("Test/3/00000.bin"), &encode_nmnist(&s0).unwrap());
    let load = EventLoad {
        steps: 2,
        width: 34,
        height: 34,
        binning: Binning::Time,
        resize: Resize::Auto,
    };
    let (split, report) = load_event_split(&d.0, load, None).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.files, report.events), (4, 10));
    assert_eq!(split.train.len(), 3);
    assert_eq!(split.test.len(), 1);
    assert_eq!(split.train.classes, 4);
    assert_eq!(split.train.shape, vec![2, 2, 34, 34]);
    split.train.check().unwrap();
    split.test.check().unwrap();
    // Round-robin over classes: 0/00000, 3/00002, 0/00001.
    assert_eq!(split.train.labels, vec![0, 3, 0]);
    let mut x = vec![0.0; split.train.sample_len()];
    assert_eq!(split.train.sample_into(0, &mut x), 0);
    let s = FrameSpec {
        steps: 2,
        binning: Binning::Time,
        sensor: (34, 34),
        width: 34,
        height: 34,
        resize: Resize::Auto,
    };
    let mut want = vec![0.0; s.len()];
    to_frames(&s0, &s, &mut want).unwrap();
    assert_eq!(x, want);
    assert_eq!(x.iter().sum::<f32>(), 3.0);
    // A subset keeps events and labels together.
    let sub = split.train.subset(&[2, 0]);
    sub.check().unwrap();
    assert_eq!(sub.labels, vec![0, 0]);
    let mut y = vec![0.0; sub.sample_len()];
    sub.sample_into(1, &mut y);
    assert_eq!(y, want);
    // A limit takes classes in turn.
    let (split, _) = load_event_split(&d.0, load, Some(2)).unwrap();
    assert_eq!(split.train.labels, vec![0, 3]);
    // The model-facing entry point: a 48×48 input centres the 34×34 sensor.
    let split = load_for_input(&d.0, &[2, 48, 48], 3).unwrap();
    assert_eq!(split.train.shape, vec![3, 2, 48, 48]);
    let mut z = vec![0.0; split.train.sample_len()];
    split.train.sample_into(0, &mut z);
    // Event (0, 0) ON at t = 0 lands on (7, 7), channel 1, frame 0.
    assert_eq!(z[48 * 48 + 7 * 48 + 7], 1.0);
    let e = load_for_input(&d.0, &[1, 34, 34], 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 polarity channels"), "{e}");
}

#[test]
fn event_folder_errors_name_the_file() {
    let d = TmpDir::new("bad");
    let e = load_event_split(
        &d.0,
        EventLoad {
            steps: 1,
            width: 2,
            height: 2,
            binning: Binning::Time,
            resize: Resize::Auto,
        },
        None,
    )
    .unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
    assert!(e.to_string().contains("Train"), "{e}");
    write(
        &d.0.join("Train/cat/a.bin"),
        &encode_nmnist(&[ev(0, 1, 1, 1)]).unwrap(),
    );
    write(&d.0.join("Train/dog/b.bin"), &[1, 2, 3]);
    write(
        &d.0.join("Test/cat/c.bin"),
        &encode_nmnist(&[ev(0, 1, 1, 1)]).unwrap(),
    );
    let load = EventLoad {
        steps: 1,
        width: 34,
        height: 34,
        binning: Binning::Time,
        resize: Resize::Auto,
    };
    // One truncated file of three: more than 1 % rejected, refused,
    // naming the file and why.
    let e = load_event_split(&d.0, load, None).unwrap_err();
    assert!(e.to_string().contains("dog/b.bin"), "{e}");
    assert!(e.to_string().contains("1 truncated"), "{e}");
    assert!(matches!(e, DataError::TooManyRejected { .. }), "{e:?}");
    // Named classes are numbered in sorted order; .npy has no sensor size,
    // so the extent of all events is used.
    std::fs::remove_file(d.0.join("Train/dog/b.bin")).unwrap();
    let rows = i32s(&[0, 9, 4, 1, 5, 0, 0, 0]);
    write(
        &d.0.join("Train/dog/b.npy"),
        &npy("<i4", false, "(2, 4)", &rows),
    );
    let (split, _) = load_event_split(&d.0, load, None).unwrap();
    assert_eq!(split.train.labels, vec![0, 1]);
    assert_eq!(split.train.classes, 2);
    let ev_set = split.train.events.as_ref().unwrap();
    assert_eq!(ev_set.spec.sensor, (10, 5));
}

#[test]
fn event_samples_refuse_what_does_not_pack() {
    let s = spec(1, Binning::Time, (2, 2), 2, 2);
    assert!(EventSamples::new(&[vec![ev(0, 1 << 15, 0, 1)]], s).is_err());
    assert!(EventSamples::new(&[vec![ev(0, 0, 0, 1), ev(1 << 33, 0, 0, 1)]], s).is_err());
    let e = EventSamples::new(&[vec![ev(7, 1, 0, 1), ev(9, 0, 1, 0)], vec![]], s).unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e.total_events(), 2);
    assert_eq!(e.events(0), vec![ev(0, 1, 0, 1), ev(2, 0, 1, 0)]);
    assert!(e.events(1).is_empty());
}

// ---------------------------------------------------------------- synthetic

/// A fake Fashion-MNIST folder: `n_train`/`n_test` 28×28 images of a
/// bright rectangle whose size depends on the label, raw IDX.
fn fake_fashion(dir: &Path, n_train: usize, n_test: usize) {
    for (split, n) in [("train", n_train), ("t10k", n_test)] {
        common::idx::write_fashion(dir, split, n, |l, y, x| {
            if (4..8 + 2 * l).contains(&y) && (6..22).contains(&x) {
                220
            } else {
                0
            }
        });
    }
}

#[test]
fn synthetic_saccades_make_edge_events() {
    let mut img = vec![0f32; 28 * 28];
    for y in 8..20 {
        for x in 8..20 {
            img[y * 28 + x] = 1.0;
        }
    }
    let p = synth::SynthParams::default();
    let e = synth::image_to_events(&img, &p, 42);
    assert!(e.len() > 200, "{} events", e.len());
    assert!(e.windows(2).all(|w| w[0].t <= w[1].t), "sorted by time");
    assert!(e
        .iter()
        .all(|v| v.t <= 300_000 && v.x < 34 && v.y < 34 && v.p <= 1));
    let on = e.iter().filter(|v| v.p == 1).count();
    assert!(
        on > e.len() / 5 && on < 4 * e.len() / 5,
        "{on} ON of {}",
        e.len()
    );
    // Each of the three saccades produces events.
    for k in 0..3u64 {
        assert!(e.iter().any(|v| v.t / 100_000 == k), "saccade {k}");
    }
    // Reproducible, and the seed matters (mismatch and noise).
    assert_eq!(e, synth::image_to_events(&img, &p, 42));
    assert_ne!(e, synth::image_to_events(&img, &p, 43));
    // A blank image with no noise gives nothing.
    let quiet = synth::SynthParams { noise_hz: 0.0, ..p };
    assert!(synth::image_to_events(&[0.0; 784], &quiet, 1).is_empty());
    // Round trip through the N-MNIST format.
    let b = encode_nmnist(&e).unwrap();
    assert_eq!(parse_nmnist(Path::new("s.bin"), &b).unwrap().events, e);
}

#[test]
fn make_events_writes_the_nmnist_layout_and_says_it_is_synthetic() {
    let d = TmpDir::new("make");
    let fm = d.0.join("fm");
    fake_fashion(&fm, 12, 5);
    let out = d.0.join("ev");
    let m = synth::MakeEvents {
        out: out.clone(),
        data_dir: fm.clone(),
        limit: Some(10),
        test_limit: None,
        params: synth::SynthParams::default(),
        seed: 0,
    };
    let made = synth::make_events(&m).unwrap();
    assert_eq!((made.train, made.test), (10, 5));
    assert!(made.events > 0);
    let readme = std::fs::read_to_string(out.join("README.txt")).unwrap();
    assert!(readme.starts_with("SYNTHETIC EVENT DATASET"), "{readme}");
    // Train/<label>/<index>.bin: sample 3 has label 3.
    let r = events::read_events(&out.join("Train/3/00003.bin")).unwrap();
    assert_eq!(r.format, events::Format::NMnist);
    assert!(!r.events.is_empty());
    assert!(out.join("Test/4/00004.bin").is_file());
    assert!(!out.join("Train/0/00010.bin").exists());
    // Deterministic.
    let again = d.0.join("ev2");
    synth::make_events(&synth::MakeEvents {
        out: again.clone(),
        ..m
    })
    .unwrap();
    assert_eq!(
        std::fs::read(out.join("Train/7/00007.bin")).unwrap(),
        std::fs::read(again.join("Train/7/00007.bin")).unwrap()
    );
    let split = load_for_input(&out, &[2, 34, 34], 4).unwrap();
    assert_eq!(split.train.len(), 10);
    assert_eq!(split.train.classes, 10);
    // Synthetic saccades pass the readers' checks: nothing dropped.
    let (_, report) = load_event_split(&out, load34(), None).unwrap();
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(report.files, 15);
    // Missing Fashion-MNIST: an error with the apt hint.
    let e = synth::make_events(&synth::MakeEvents {
        data_dir: d.0.join("nothing"),
        out: d.0.join("ev3"),
        limit: None,
        test_limit: None,
        params: synth::SynthParams::default(),
        seed: 0,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("dataset-fashion-mnist"), "{e}");
}

// ------------------------------------------------------------------ training

#[test]
fn vggsnn_trains_one_step_on_a_tiny_synthetic_event_set() {
    use snnc::passes::rate::Mode;
    use snnc::runtime::optim::{OptimConfig, OptimizerKind, Schedule};
    use snnc::runtime::train::{train, TrainConfig};
    let d = TmpDir::new("train");
    let fm = d.0.join("fm");
    fake_fashion(&fm, 4, 2);
    let out = d.0.join("ev");
    synth::make_events(&synth::MakeEvents {
        out: out.clone(),
        data_dir: fm,
        limit: None,
        test_limit: None,
        params: synth::SynthParams::default(),
        seed: 0,
    })
    .unwrap();
    let model_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/models/vggsnn_dvs34.snn"
    );
    let cfg = TrainConfig {
        model_source: std::fs::read_to_string(model_file).unwrap(),
        model_file: model_file.into(),
        data: format!("events:{}", out.display()),
        data_dir: None,
        mode: Mode::Rate,
        steps: 2,
        epochs: 1,
        batch: 4,
        lr: 0.05,
        optim: OptimConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 5e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: Schedule::Const,
        seed: 1,
        paper_grad_scale: false,
        init: None,
        order: Default::default(),
        precision: Default::default(),
    };
    let s = train(&cfg, &d.0.join("run"), None, true).unwrap();
    assert_eq!(s.epochs.len(), 1);
    let m = &s.epochs[0];
    assert!(
        m.train_loss.is_finite() && m.train_loss > 0.0,
        "{}",
        m.train_loss
    );
    assert!((0.0..=1.0).contains(&m.test_acc));
    assert!(!m.firing_rates.is_empty());
    // A model with the wrong channel count is an error, not a panic.
    let bad = TrainConfig {
        model_source: "input 1x34x34 encoding=events\nconv2d 2\nlif\nflatten\nlinear 10\n".into(),
        ..cfg
    };
    let e = train(&bad, &d.0.join("run2"), None, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("2 polarity channels"), "{e}");
}

// -------------------------------------------------------------- validation
//
// Bad event files, written byte by byte: each is either refused with an
// error naming the file, or read with its invalid events dropped and
// counted by reason.

use snnc::data::events::{read_events, timestamp_fence, Reject};

/// `n` valid N-MNIST records, 1.5 ms apart (a 300 ms recording for 200),
/// spread over the 34×34 sensor.
fn nmnist_stream(n: usize) -> Vec<[u8; 5]> {
    (0..n)
        .map(|i| {
            nmnist_record(
                (i % 34) as u8,
                (i * 7 % 34) as u8,
                (i % 2) as u8,
                1500 * i as u32,
            )
        })
        .collect()
}

fn cat(records: &[[u8; 5]]) -> Vec<u8> {
    records.concat()
}

#[test]
fn empty_bin_file_is_an_error_naming_the_file() {
    let d = TmpDir::new("v-empty");
    let f = d.0.join("Train/0/empty.bin");
    write(&f, &[]);
    let e = read_events(&f).unwrap_err();
    assert!(matches!(e, DataError::NoEvents { len: 0, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("empty.bin: no events: empty file (0 bytes)"),
        "{msg}"
    );
    // The same for the other formats: a header and nothing after it.
    let e = parse_aedat2(Path::new("h.aedat"), AEDAT2_HEADER).unwrap_err();
    assert!(matches!(e, DataError::NoEvents { .. }), "{e:?}");
    assert!(e.to_string().contains("no event records"), "{e}");
    let e = parse_aedat3(Path::new("h3.aedat"), AEDAT3_HEADER).unwrap_err();
    assert!(matches!(e, DataError::NoEvents { .. }), "{e:?}");
}

#[test]
fn random_bytes_bin_is_refused_as_mostly_out_of_sensor() {
    let d = TmpDir::new("v-random");
    let mut rng = Rng::new(5);
    let bytes: Vec<u8> = (0..5000).map(|_| rng.below(256) as u8).collect();
    assert_ne!(&bytes[..2], &[0x1f, 0x8b], "not gzip by chance");
    let f = d.0.join("noise.bin");
    write(&f, &bytes);
    let e = read_events(&f).unwrap_err();
    let DataError::MostlyInvalid {
        invalid,
        total,
        ref dropped,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    // 1,000 records less the y = 240 markers; ~98 % outside 34×34.
    assert!(total > 980 && total <= 1000, "{total}");
    assert!(invalid * 10 > total * 9, "{invalid} of {total}");
    assert!(dropped.count(Reject::OutsideX(34, 34)) > 800, "{dropped:?}");
    let msg = e.to_string();
    assert!(msg.contains("noise.bin"), "{msg}");
    assert!(
        msg.contains(&format!("{invalid} of {total} events invalid")),
        "{msg}"
    );
    assert!(msg.contains("x ≥ 34: "), "{msg}");
    assert!(msg.contains("more than 10 %: file refused"), "{msg}");
    assert!(msg.contains("N-Caltech101"), "{msg}");
}

#[test]
fn event_outside_the_sensor_is_dropped_and_counted() {
    // One event at x = 250 among 20: dropped, counted, reported.
    let mut recs = nmnist_stream(20);
    recs.insert(7, nmnist_record(250, 5, 1, 10_000));
    let r = parse_nmnist(Path::new("a.bin"), &cat(&recs)).unwrap();
    assert_eq!(r.events.len(), 20);
    assert!(r.events.iter().all(|e| e.x < 34 && e.y < 34));
    assert_eq!(r.dropped.count(Reject::OutsideX(34, 34)), 1);
    assert_eq!(r.dropped.total(), 1);
    assert_eq!(r.dropped.to_string(), "x ≥ 34: 1");
    assert!(
        r.dropped
            .detailed()
            .contains("x = 250, y = 5 at t = 10000 µs"),
        "{}",
        r.dropped.detailed()
    );
    // y ≥ 34 (but not the 240 marker) too.
    let mut recs = nmnist_stream(20);
    recs.push(nmnist_record(3, 200, 0, 40_000));
    let r = parse_nmnist(Path::new("a.bin"), &cat(&recs)).unwrap();
    assert_eq!(r.dropped.count(Reject::OutsideY(34, 34)), 1);
    // Alone, the event is a file of nothing but invalid events: refused.
    let e = parse_nmnist(Path::new("dir/one.bin"), &nmnist_record(250, 5, 1, 0)).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::MostlyInvalid {
                invalid: 1,
                total: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("dir/one.bin: 1 of 1 events invalid"),
        "{e}"
    );
    // The threshold: 2 of 20 (10 %) are dropped, 3 of 21 (14 %) refuse.
    let mut recs = nmnist_stream(18);
    recs.extend([
        nmnist_record(34, 0, 0, 30_000),
        nmnist_record(0, 34, 0, 30_001),
    ]);
    let r = parse_nmnist(Path::new("a.bin"), &cat(&recs)).unwrap();
    assert_eq!((r.events.len(), r.dropped.total()), (18, 2));
    recs.push(nmnist_record(99, 0, 0, 30_002));
    let e = parse_nmnist(Path::new("a.bin"), &cat(&recs)).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::MostlyInvalid {
                invalid: 3,
                total: 21,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn timestamp_outlier_of_8_s_is_dropped_and_counted() {
    // 200 events over 300 ms and one at 8 s in the middle.
    let mut recs = nmnist_stream(200);
    recs.insert(100, nmnist_record(1, 1, 1, 8_000_000));
    let r = parse_nmnist(Path::new("o.bin"), &cat(&recs)).unwrap();
    assert_eq!(r.events.len(), 200);
    assert!(r.events.iter().all(|e| e.t < 300_000));
    assert_eq!(r.dropped.count(Reject::Outlier), 1);
    // Not also counted as the events after it going back in time.
    assert_eq!(r.dropped.total(), 1, "{:?}", r.dropped);
    assert!(
        r.dropped.detailed().contains("t = 8000000 µs"),
        "{}",
        r.dropped.detailed()
    );
    // A sparse tail within the fence (bulk length beyond the bulk) is kept.
    let mut recs = nmnist_stream(200);
    recs.push(nmnist_record(1, 1, 1, 550_000));
    let r = parse_nmnist(Path::new("o.bin"), &cat(&recs)).unwrap();
    assert_eq!((r.events.len(), r.dropped.total()), (201, 0));
    // An outlier at the start (a stale t = 0 before a recording at 5 s).
    let mut recs: Vec<[u8; 5]> = vec![nmnist_record(2, 2, 0, 0)];
    recs.extend((0..150).map(|i| nmnist_record(3, 3, 1, 5_000_000 + 1000 * i)));
    let r = parse_nmnist(Path::new("o.bin"), &cat(&recs)).unwrap();
    assert_eq!(r.dropped.count(Reject::Outlier), 1);
    assert_eq!(r.events[0].t, 5_000_000);
}

#[test]
fn timestamp_fence_is_the_bulk_widened_by_its_length() {
    // 0, 100, …, 99,900 µs: bulk 900…99,000 µs (1st/99th percentile, sorted
    // index 9 and 990), widened by its length 98,100 µs.
    let mut t: Vec<u64> = (0..1000).map(|i| 100 * i).collect();
    t.reverse();
    assert_eq!(timestamp_fence(&t), Some((900, 99_000, 0, 197_100)));
    // 100 events or fewer: the bulk is the whole range.
    let mut t: Vec<u64> = (0..99).collect();
    t.push(1 << 40);
    assert_eq!(timestamp_fence(&t).unwrap().1, 1 << 40);
    // A short bulk is widened by at least 10 ms.
    let t = vec![5u64; 500];
    assert_eq!(timestamp_fence(&t), Some((5, 5, 0, 10_005)));
    assert_eq!(timestamp_fence(&[]), None);
}

#[test]
fn timestamps_going_back_are_dropped_beyond_1_ms() {
    // 500 µs back: kept (tolerance); 5 ms back: dropped.
    let mut recs = nmnist_stream(20);
    recs.insert(10, nmnist_record(4, 4, 0, 1500 * 9 - 500));
    recs.insert(15, nmnist_record(5, 5, 0, 1500 * 13 - 5000));
    let r = parse_nmnist(Path::new("b.bin"), &cat(&recs)).unwrap();
    assert_eq!(r.events.len(), 21);
    assert_eq!(r.dropped.count(Reject::Backwards), 1);
    assert!(
        r.dropped.detailed().contains("t = 14500 µs after 19500 µs"),
        "{}",
        r.dropped.detailed()
    );
    // A recording that restarts halfway: refused.
    let mut recs = nmnist_stream(20);
    recs.extend(nmnist_stream(20));
    let e = parse_nmnist(Path::new("twice.bin"), &cat(&recs)).unwrap_err();
    assert!(
        e.to_string().contains("timestamp going back > 1000 µs: 19"),
        "{e}"
    );
}

#[test]
fn only_overflow_markers_is_an_error_naming_the_file() {
    let marker = nmnist_record(0, 240, 0, 0);
    let e = parse_nmnist(Path::new("Train/3/markers.bin"), &cat(&[marker; 3])).unwrap_err();
    assert!(matches!(e, DataError::NoEvents { len: 15, .. }), "{e:?}");
    assert!(
        e.to_string().contains(
            "Train/3/markers.bin: no events: 15 bytes, only 3 timestamp-overflow markers (y = 240)"
        ),
        "{e}"
    );
    // AEDAT 2.0 with only external events, AEDAT 3.1 with only special
    // events or invalid-marked ones: the same.
    let e = parse_aedat2(Path::new("ext.aedat"), &aedat2(&[(0x8000, 1), (0x8000, 2)])).unwrap_err();
    assert!(
        e.to_string().contains("only 2 external (bit 15) events"),
        "{e}"
    );
    let mut b = AEDAT3_HEADER.to_vec();
    b.extend(packet_header(0, 8, 4, 0, 1, 1, 1));
    b.extend([0u8; 8]);
    b.extend(packet_header(1, 8, 4, 0, 1, 1, 0));
    b.extend(polarity(1, 1, true, false, 5));
    let e = parse_aedat3(Path::new("sp.aedat"), &b).unwrap_err();
    assert!(
        e.to_string()
            .contains("only 2 non-polarity or invalid-marked events"),
        "{e}"
    );
}

#[test]
fn directory_named_like_an_event_file_is_an_error() {
    let d = TmpDir::new("v-dir");
    let f = d.0.join("x.bin");
    std::fs::create_dir_all(&f).unwrap();
    let e = read_events(&f).unwrap_err();
    assert!(matches!(e, DataError::NotAFile { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("x.bin: a directory, not an event file"),
        "{e}"
    );
}

#[test]
fn npy_and_aedat_invalid_events_are_dropped_and_counted() {
    // .npy: a polarity 2, a negative t and a pixel beyond 65535 among 30.
    let mut rows: Vec<i32> = (0..30).flat_map(|i| [100 * i, i, 2 * i, i % 2]).collect();
    rows.extend([3000, 1, 1, 2, -5, 1, 1, 1, 3001, 70000, 1, 0]);
    let r = parse_npy(
        Path::new("r.npy"),
        &npy("<i4", false, "(33, 4)", &i32s(&rows)),
    )
    .unwrap();
    assert_eq!(r.events.len(), 30);
    assert_eq!(
        r.dropped.to_string(),
        "pixel outside 0…65535: 1, polarity not 0, 1 or −1: 1, negative timestamp: 1"
    );
    // AEDAT 2.0: one DAVIS address among 20 is dropped, not fatal.
    let mut recs: Vec<(u32, u32)> = (0..20).map(|i| (dvs128_addr(i, i, true), 10 * i)).collect();
    recs.push((0x0001_0000, 200));
    let r = parse_aedat2(Path::new("c.aedat"), &aedat2(&recs)).unwrap();
    assert_eq!((r.events.len(), r.dropped.count(Reject::Address)), (20, 1));
    // AEDAT 3.1 from a DVS128: x = 200 is outside 128×128; a negative
    // timestamp is invalid; both dropped among 20.
    let mut b = AEDAT3_HEADER.to_vec();
    b.extend(packet_header(1, 8, 4, 0, 22, 22, 22));
    for i in 0..20 {
        b.extend(polarity(i, i, true, true, 10 * i as i32));
    }
    b.extend(polarity(200, 3, true, true, 300));
    b.extend(polarity(3, 3, true, true, -1));
    let r = parse_aedat3(Path::new("g.aedat"), &b).unwrap();
    assert_eq!(r.events.len(), 20);
    assert_eq!(r.dropped.to_string(), "x ≥ 128: 1, negative timestamp: 1");
    // A packet type libcaer does not define: malformed, at its byte.
    let mut b = AEDAT3_HEADER.to_vec();
    b.extend(packet_header(77, 8, 4, 0, 1, 1, 1));
    b.extend([0u8; 8]);
    let e = parse_aedat3(Path::new("g.aedat"), &b).unwrap_err();
    assert!(
        matches!(e, DataError::Malformed { at, .. } if at == AEDAT3_HEADER.len() as u64),
        "{e:?}"
    );
    assert!(e.to_string().contains("packet type 77"), "{e}");
}

/// An N-MNIST dataset folder: `n_train` files per class in Train/0 and
/// Train/1, `n_test` in Test/0 and Test/1, each 5 valid events.
fn good_folder(dir: &Path, n_train: usize, n_test: usize) {
    for (split, n) in [("Train", n_train), ("Test", n_test)] {
        for label in 0..2 {
            for i in 0..n {
                let recs: Vec<[u8; 5]> = (0..5)
                    .map(|k| nmnist_record(k as u8 + label, 3, 1, 100 * k + i as u32))
                    .collect();
                write(
                    &dir.join(format!("{split}/{label}/{i:05}.bin")),
                    &cat(&recs),
                );
            }
        }
    }
}

fn load34() -> EventLoad {
    EventLoad {
        steps: 1,
        width: 34,
        height: 34,
        binning: Binning::Time,
        resize: Resize::Auto,
    }
}

#[test]
fn event_folder_rejects_bad_files_and_reports_why() {
    let d = TmpDir::new("v-folder");
    // 2 × 90 + 2 × 8 = 196 good files.
    good_folder(&d.0, 90, 8);
    // Two rejected files of 200: 1 %, still used.
    std::fs::create_dir_all(d.0.join("Train/0/x.bin")).unwrap();
    write(&d.0.join("Train/1/empty.bin"), &[]);
    // Two files with an invalid event each: dropped.
    let mut recs = nmnist_stream(20);
    recs.push(nmnist_record(250, 1, 1, 40_000));
    write(&d.0.join("Train/0/wide.bin"), &cat(&recs));
    let mut recs = nmnist_stream(200);
    recs.insert(50, nmnist_record(1, 1, 1, 8_000_000));
    write(&d.0.join("Test/1/late.bin"), &cat(&recs));
    let (split, report) = load_event_split(&d.0, load34(), None).unwrap();
    assert_eq!(report.files, 200);
    assert_eq!(split.train.len() + split.test.len(), 198);
    assert_eq!(split.test.len(), 17);
    assert_eq!(report.events, 196 * 5 + 21 + 201);
    assert_eq!(
        report.summary(),
        "2 of 200 files rejected (1 a directory, 1 empty); 2 of 1,202 events dropped \
         (x ≥ 34: 1, timestamp outlier: 1)"
    );
    let names: Vec<String> = report
        .rejected
        .iter()
        .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["x.bin", "empty.bin"]);
    let text = report.render();
    assert!(
        text.starts_with("events: 2 of 200 files rejected"),
        "{text}"
    );
    assert!(
        text.contains("x.bin: a directory, not an event file"),
        "{text}"
    );
    assert!(text.contains("empty.bin: no events: empty file"), "{text}");
    assert!(!text.contains("make-events"), "no hint per file: {text}");
    // The sample of Test/1/late.bin lasts 300 ms, not 8 s: binned by time
    // into 1 frame, it holds all 200 events.
    let ev_set = split.test.events.as_ref().unwrap();
    assert_eq!(ev_set.spec.sensor, (34, 34));
    // One more bad file (3 of 201): more than 1 %, refused, naming them.
    write(&d.0.join("Test/0/noise.bin"), &[200u8; 10]);
    let Err(e) = load_event_split(&d.0, load34(), None) else {
        panic!("accepted with 3 of 201 files rejected")
    };
    assert!(matches!(e, DataError::TooManyRejected { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(
            "3 of 201 files rejected (1 a directory, 1 empty, 1 mostly out of sensor 34×34)"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("more than 1 % of the files, dataset refused"),
        "{msg}"
    );
    for f in ["x.bin", "empty.bin", "noise.bin"] {
        assert!(msg.contains(f), "{f}: {msg}");
    }
}

#[test]
fn event_folder_with_a_split_of_only_rejected_files_is_refused() {
    let d = TmpDir::new("v-split");
    good_folder(&d.0, 100, 0);
    write(&d.0.join("Test/0/a.bin"), &[]);
    let e = load_event_split(&d.0, load34(), None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("1 of 201 files rejected (1 empty)"), "{msg}");
    assert!(msg.contains("every file of"), "{msg}");
    assert!(msg.contains("Test rejected"), "{msg}");
}
