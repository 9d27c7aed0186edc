//! `sweep --export-inputs`: every length's inputs and the f64 oracle's rows as `.npy` files
//! beside the run, so that another implementation (the external baselines of
//! `baselines/run.py`) runs on exactly the sweep's inputs and is scored against the same
//! oracle rows.
//!
//! Layout, under `<out>/<run id>-inputs/` (the run's JSON names it in `inputs_dir`):
//!
//! | file | dtype | shape |
//! |---|---|---|
//! | `n<N>/q.npy` | `<f4` | `[batch, heads, n_q, head_dim]` |
//! | `n<N>/k.npy`, `n<N>/v.npy` | `<f4` | `[batch, kv_heads, n_kv, head_dim]` |
//! | `n<N>/rows.npy` | `<i8` | `[rows]`: the query rows the oracle covers |
//! | `n<N>/oracle.npy` | `<f8` | `[batch, heads, rows, v_dim]`: dense attention on those rows, under the run's mask |

use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::npy::{encode_f32, encode_f64, encode_i64};

/// The directory name of a run's exported inputs, beside its CSV.
pub(super) fn dir_name(run_id: &str) -> String {
    format!("{run_id}-inputs")
}

/// Creates the export directory of a run; an existing one is an error (runs never clobber).
pub(super) fn create(out_dir: &Path, run_id: &str) -> Result<PathBuf> {
    let dir = out_dir.join(dir_name(run_id));
    std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// The inputs of one length, the row indices the oracle covers and the oracle's rows.
pub(super) struct Exported<'a> {
    pub(super) q: ArrayView4<'a, f32>,
    pub(super) k: ArrayView4<'a, f32>,
    pub(super) v: ArrayView4<'a, f32>,
    pub(super) rows: &'a [usize],
    pub(super) oracle: &'a Array4<f64>,
}

/// Writes one length's files into `dir/n<n>/`.
pub(super) fn write_length(dir: &Path, n: usize, e: &Exported<'_>) -> Result<()> {
    let sub = dir.join(format!("n{n}"));
    std::fs::create_dir(&sub).map_err(|err| Error::io(&sub, err))?;
    let f32s =
        |a: ArrayView4<'_, f32>| encode_f32(a.shape(), &a.iter().copied().collect::<Vec<_>>());
    let rows: Vec<i64> = e.rows.iter().map(|&r| r as i64).collect();
    let oracle: Vec<f64> = e.oracle.iter().copied().collect();
    for (name, bytes) in [
        ("q.npy", f32s(e.q)),
        ("k.npy", f32s(e.k)),
        ("v.npy", f32s(e.v)),
        ("rows.npy", encode_i64(&[rows.len()], &rows)),
        ("oracle.npy", encode_f64(e.oracle.shape(), &oracle)),
    ] {
        let path = sub.join(name);
        std::fs::write(&path, bytes).map_err(|err| Error::io(&path, err))?;
    }
    Ok(())
}
