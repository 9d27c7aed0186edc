//! Measurement: wall time ([`timing`]), peak heap bytes ([`memory`]), the machine and its
//! limits ([`machine`]), and the sweep ([`sweep`]: the loop; `cell`: one measured cell;
//! `inputs`: a length's inputs; `export`: them and the oracle's rows as `.npy` files for
//! external baselines) that puts them together into the results schema
//! ([`crate::results::record`]) in files that never clobber ([`runfiles`]), with the report's
//! [`artefacts`] (pattern previews, the attention-map gallery drawn by [`maps`]) beside them.

pub mod artefacts;
mod cell;
mod config;
pub mod decode;
mod export;
mod inputs;
pub mod machine;
pub mod maps;
pub mod memory;
pub mod perplexity;
pub mod runfiles;
pub mod sweep;
pub mod timing;

/// The most worker threads a run may ask for: 8 per available core. Beyond that a run
/// measures the OS scheduler rather than the kernels, and a huge count would only start
/// threads until the system gives out.
pub fn max_threads() -> usize {
    8 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Refuses a thread count of 0 or above [`max_threads`].
pub(crate) fn check_threads(threads: usize) -> crate::Result<()> {
    let max = max_threads();
    if (1..=max).contains(&threads) {
        return Ok(());
    }
    Err(crate::error::Error::new(
        crate::error::ErrorKind::BadOption {
            option: "threads",
            message: if threads == 0 {
                "must be at least 1".into()
            } else {
                format!(
                    "{threads} is more than {max} (8 per core of the {} this machine has)",
                    max / 8
                )
            },
        },
    ))
}

/// A rayon pool of `threads` workers, a run's only pool.
fn thread_pool(threads: usize) -> crate::Result<rayon::ThreadPool> {
    check_threads(threads)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| {
            crate::error::Error::new(crate::error::ErrorKind::BadOption {
                option: "threads",
                message: e.to_string(),
            })
        })
}
