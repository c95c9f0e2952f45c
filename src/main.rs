//! The `snnc` binary: process setup, then the command line (`snnc::cli`).

use std::process::ExitCode;

/// Counts allocated bytes, for `snnc bench`'s measured peak.
#[global_allocator]
static ALLOC: snnc::runtime::alloc::Counting = snnc::runtime::alloc::Counting;

/// Keeps freed tensors in the heap for the next step instead of returning
/// them to the kernel: glibc serves blocks above its mmap threshold with
/// fresh mappings, and every training step would pay a page fault per 4 KiB
/// of each new value (fmnist_csnn, batch 128, T = 8: steps ~10 % faster
/// with the threshold at glibc's maximum, 32 MiB, and no trimming).
/// Allocation sizes, and so the counting allocator's peaks, do not change.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: mallopt only changes glibc malloc's tuning parameters; it is
    // called before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    snnc::cli::main()
}
