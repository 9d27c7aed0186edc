//! Measurement: wall time ([`timing`]), peak heap bytes ([`memory`]), the machine and its
//! limits ([`machine`]), and the sweep ([`sweep`]: the loop; `cell`: one measured cell;
//! `inputs`: a length's inputs) that puts them together into the results schema
//! ([`crate::results::record`]) in files that never clobber ([`runfiles`]), with the report's
//! [`artefacts`] (pattern previews, the attention-map gallery drawn by [`maps`]) beside them.

pub mod artefacts;
mod cell;
mod config;
pub mod decode;
mod inputs;
pub mod machine;
pub mod maps;
pub mod memory;
pub mod runfiles;
pub mod sweep;
pub mod timing;

/// A rayon pool of `threads` workers (0: rayon's default), a run's only pool.
fn thread_pool(threads: usize) -> crate::Result<rayon::ThreadPool> {
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
