//! Peak heap bytes through a counting global allocator.
//!
//! A program opts in by installing [`CountingAlloc`] as its global allocator (the
//! `attnbench` binary, the benches and the examples do; the library never does):
//!
//! ```
//! use attnbench::harness::memory::{CountingAlloc, measure};
//!
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc;
//!
//! # fn main() {
//! let (_, peak) = measure(|| drop(std::hint::black_box(vec![0u8; 1 << 20])));
//! assert!(peak.unwrap() >= 1 << 20);
//! # }
//! ```
//!
//! Then [`measure`] runs a closure and reports the largest number of live heap bytes above
//! the level at its start, across all threads (rayon workers included). Without the
//! allocator installed, [`installed`] is `false` and [`measure`] reports `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
/// Serializes measurements: the counters are process-wide.
static MEASURING: Mutex<()> = Mutex::new(());

/// The system allocator with live-byte and peak counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc;

fn grow(bytes: usize) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrink(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`. The counters are plain
// atomics; updating them allocates nothing and cannot re-enter the allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` was allocated by `System` through this type.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` was allocated by `System` through this type.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
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

/// Whether [`CountingAlloc`] is this process's global allocator.
pub fn installed() -> bool {
    let before = CALLS.load(Ordering::Relaxed);
    drop(std::hint::black_box(Box::new(0u8)));
    CALLS.load(Ordering::Relaxed) != before
}

/// Runs `f` and returns its result with the peak heap bytes above the starting level while
/// it ran, or `None` when [`CountingAlloc`] is not installed. Measurements are serialized.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    if !installed() {
        return (f(), None);
    }
    let _guard = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    let peak = PEAK.load(Ordering::Relaxed);
    (r, Some(peak.saturating_sub(base)))
}
