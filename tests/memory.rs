//! The counting allocator on deterministic allocations, including from rayon threads.

use attnbench::harness::memory::{CountingAlloc, installed, measure};
use rayon::prelude::*;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn counts_known_allocations() {
    assert!(installed());
    // Warm up rayon's pool so its start-up allocations are not measured.
    (0..4).into_par_iter().for_each(|_| {});
    let (_, peak) = measure(|| {
        let a = std::hint::black_box(vec![1u8; 1 << 20]);
        drop(a);
        let b = std::hint::black_box(vec![1u8; 3 << 20]);
        drop(b);
    });
    let peak = peak.unwrap();
    assert!((3 << 20..(3 << 20) + 4096).contains(&peak), "{peak}");

    let (_, peak) = measure(|| {
        let mut v: Vec<u64> = Vec::with_capacity(1000);
        v.extend(0..1000);
        v.reserve_exact(9000);
        std::hint::black_box(&v);
    });
    let peak = peak.unwrap();
    // realloc from 8,000 to 80,000 bytes: the peak is the larger block.
    assert!((80_000..84_096).contains(&peak), "{peak}");

    // One test function: the counters are process-wide and tests run on parallel threads.
    let (_, peak) = measure(|| {
        // Four blocks of 1 MiB alive at once on the pool's threads.
        let blocks: Vec<Vec<u8>> = (0..4)
            .into_par_iter()
            .map(|_| std::hint::black_box(vec![7u8; 1 << 20]))
            .collect();
        std::hint::black_box(&blocks);
    });
    let peak = peak.unwrap();
    assert!((4 << 20..(4 << 20) + 64 * 1024).contains(&peak), "{peak}");
}
