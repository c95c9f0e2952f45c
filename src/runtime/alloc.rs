//! A counting global allocator: wraps the system allocator and keeps the
//! bytes currently allocated and their high-water mark in two atomics.
//!
//! The `snnc` binary installs it; a test binary that measures memory
//! installs it too:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: snnc::runtime::alloc::Counting = snnc::runtime::alloc::Counting;
//! ```
//!
//! [`measure`] runs a closure and returns the peak bytes allocated while it
//! ran above what was allocated before it (the baseline), which is what the
//! memory planner predicts for a step. Counts are process-wide: other
//! threads' allocations during the closure are included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The counting allocator (a unit struct: the counts are global).
pub struct Counting;

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrink(n: usize) {
    CURRENT.fetch_sub(n, Relaxed);
}

// SAFETY: every call is forwarded to `System` with the same arguments; the
// counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

/// Bytes allocated now (0 when the counting allocator is not installed).
pub fn current() -> usize {
    CURRENT.load(Relaxed)
}

/// The most bytes allocated at once since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

/// Starts a new high-water mark at the current allocation.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Relaxed), Relaxed);
}

/// Whether this process counts its allocations (the allocator is
/// installed): anything running Rust code has allocated something.
pub fn installed() -> bool {
    let probe = Box::new(0u64);
    let seen = current() >= std::mem::size_of_val(&*probe);
    drop(probe);
    seen
}

/// Runs `f`; returns its result and the peak bytes allocated while it ran
/// above the bytes allocated when it started. `None` when the counting
/// allocator is not installed.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    if !installed() {
        return (f(), None);
    }
    let base = current();
    reset_peak();
    let r = f();
    (r, Some(peak().saturating_sub(base)))
}
