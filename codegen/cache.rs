//! The on-disk cache of compiled kernels (CUBINs, shared libraries of C
//! and C++ kernels): a stable content hash for the keys and the folder the
//! entries live in.

use std::path::PathBuf;

/// 64-bit FNV-1a: a stable content hash (std's hasher may change between
/// Rust releases).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where compiled kernels are cached: `$SNNC_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/snnc`, else `~/.cache/snnc`, else the temporary folder.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SNNC_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("snnc");
    }
    if let Some(d) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join(".cache").join("snnc");
    }
    std::env::temp_dir().join("snnc-cache")
}

/// A file name part unique to this process and call: concurrent builds
/// of the same entry each write their own temporary file and rename it, so
/// nobody ever sees a partial one.
pub fn unique_tag() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}", std::process::id())
}
