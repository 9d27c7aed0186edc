//! Work splitting: run a closure on disjoint mutable views of an output, in parallel.
//!
//! Both functions split by nested rayon parallel iterators over ndarray's axis iterators, so
//! no list of tasks is materialized: the bookkeeping memory does not grow with the length.

use ndarray::{ArrayViewMut2, ArrayViewMut4, Axis};
use rayon::prelude::*;

/// Calls `f(b, h, slab)` for each `[seq, dim]` slab of a `[batch, heads, seq, dim]` output.
pub fn for_each_head<T, F>(out: ArrayViewMut4<'_, T>, f: F)
where
    T: Send + Sync,
    F: Fn(usize, usize, ArrayViewMut2<'_, T>) + Sync,
{
    out.into_axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(b, per_batch)| {
            per_batch
                .into_axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each(|(h, head)| f(b, h, head));
        });
}

/// Calls `f(workspace, b, h, slab)` for each `[seq, dim]` slab of a `[batch, heads, seq, dim]`
/// output, with the (batch, head) pairs cut into one contiguous run per thread: `init` is
/// called about once per thread, so a large workspace is made (and its pages touched) once
/// per call rather than once per head.
pub fn for_each_head_with<T, W, I, F>(out: ArrayViewMut4<'_, T>, init: I, f: F)
where
    T: Send + Sync,
    I: Fn() -> W + Sync,
    F: Fn(&mut W, usize, usize, ArrayViewMut2<'_, T>) + Sync,
{
    // One entry per (batch, head): a list that does not grow with the length.
    let slabs: Vec<(usize, usize, ArrayViewMut2<'_, T>)> = out
        .into_axis_iter_mut(Axis(0))
        .enumerate()
        .flat_map(|(b, per_batch)| {
            per_batch
                .into_axis_iter_mut(Axis(0))
                .enumerate()
                .map(move |(h, slab)| (b, h, slab))
        })
        .collect();
    // Rayon splits a run only while both halves keep `min_len` items, so the floor: with the
    // ceiling, 9 heads on 2 threads (min 5) never split (4 + 5) and ran on one thread.
    let per_thread = (slabs.len() / rayon::current_num_threads()).max(1);
    slabs
        .into_par_iter()
        .with_min_len(per_thread)
        .for_each_init(&init, |w, (b, h, slab)| f(w, b, h, slab));
}

/// Calls `f(workspace, b, h, first_row, rows)` for each block of `block` query rows of each
/// (batch, head). `init` makes a per-worker workspace; at most a few are alive per thread.
pub fn for_each_row_block<T, W, I, F>(out: ArrayViewMut4<'_, T>, block: usize, init: I, f: F)
where
    T: Send + Sync,
    I: Fn() -> W + Sync,
    F: Fn(&mut W, usize, usize, usize, ArrayViewMut2<'_, T>) + Sync,
{
    for_each_head(out, |b, h, head| {
        head.into_axis_chunks_iter_mut(Axis(0), block)
            .into_par_iter()
            .enumerate()
            .for_each_init(&init, |w, (i, rows)| f(w, b, h, i * block, rows));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    #[test]
    fn runs_of_heads_use_every_thread_whatever_the_head_count() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for heads in [2, 3, 8, 9, 27] {
            let threads = Mutex::new(BTreeSet::new());
            let inits = Mutex::new(0);
            let mut out = ndarray::Array4::<f32>::zeros((1, heads, 1, 1));
            pool.install(|| {
                for_each_head_with(
                    out.view_mut(),
                    || *inits.lock().unwrap() += 1,
                    |_, _, _, _| {
                        threads
                            .lock()
                            .unwrap()
                            .insert(rayon::current_thread_index());
                        // Long enough that the other thread takes the other run.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    },
                );
            });
            assert_eq!(threads.lock().unwrap().len(), 2, "{heads} heads");
            assert!(*inits.lock().unwrap() <= 3, "{heads} heads");
        }
    }
}
