//! Reading a data file that may be gzip-compressed, and finding it under
//! one of several accepted names.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::DataError;

/// Decompressed data larger than this is refused (a corrupt or hostile
/// gzip member could otherwise exhaust memory). The largest file snnc
/// reads, MNIST's training images, is 47 MB.
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// `true` if the bytes start with the gzip magic (1f 8b).
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Decompresses `bytes` if they are gzip (judged by content, not name).
/// `path` and `hint` only go into errors.
pub fn gunzip_if_needed(path: &Path, bytes: Vec<u8>, hint: &str) -> Result<Vec<u8>, DataError> {
    if !is_gzip(&bytes) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(&bytes[..]).take(MAX_DECOMPRESSED + 1);
    if let Err(e) = dec.read_to_end(&mut out) {
        return Err(DataError::Gzip {
            path: path.to_path_buf(),
            at: out.len() as u64,
            msg: e.to_string(),
            hint: hint.to_string(),
        });
    }
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DataError::Gzip {
            path: path.to_path_buf(),
            at: out.len() as u64,
            msg: format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
            hint: hint.to_string(),
        });
    }
    Ok(out)
}

/// Reads `path` whole, decompressing gzip.
pub fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                tried: String::new(),
                hint: hint.to_string(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source: e,
                hint: hint.to_string(),
            }
        }
    })?;
    gunzip_if_needed(path, bytes, hint)
}

/// The first of `names` (each also with `.gz` appended) that exists as a
/// file in one of `dirs`; otherwise a `Missing` error naming the first
/// candidate and listing the rest.
pub fn find(dirs: &[PathBuf], names: &[&str], hint: &str) -> Result<PathBuf, DataError> {
    let mut candidates = Vec::new();
    for dir in dirs {
        for name in names {
            candidates.push(dir.join(name));
            candidates.push(dir.join(format!("{name}.gz")));
        }
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let tried = if !dirs[0].is_dir() {
        format!(" (directory {} does not exist)", dirs[0].display())
    } else if candidates.len() > 1 {
        // Shown relative to the first directory, to keep the line short.
        let rest: Vec<String> = candidates[1..]
            .iter()
            .map(|p| p.strip_prefix(&dirs[0]).unwrap_or(p).display().to_string())
            .collect();
        format!(" (also tried {})", rest.join(", "))
    } else {
        String::new()
    };
    Err(DataError::Missing {
        path: candidates[0].clone(),
        tried,
        hint: hint.to_string(),
    })
}

/// Big-endian u32 at `at` (the caller has checked the length).
pub fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// `DIR/<one of names>` if it is a directory (a data set's split folder);
/// otherwise an error naming the first name, the others tried, and `hint`.
pub fn split_dir(dir: &Path, names: &[&str], hint: &str) -> Result<PathBuf, DataError> {
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
            hint: hint.into(),
        })
}
