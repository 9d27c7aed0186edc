//! The rows and metadata of a generation benchmark (`attnbench decode`): one CSV
//! row per (variant, KV store, context) cell and the JSON beside it, which reports read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::results::record::{Limits, Machine};

/// One (variant, store, context) cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecodeRecord {
    /// The variant's canonical spec.
    pub variant: String,
    /// `exact`, `other-kernel`, ...
    pub fidelity: String,
    /// `stateful` (its decoder) or `stateless` (the batch call per token).
    pub mode: String,
    /// `f32`, `f16`, `bf16`.
    pub kv: String,
    /// Prompt length.
    pub context: usize,
    /// Tokens generated and timed.
    pub tokens: usize,
    /// Prefill wall time, seconds.
    pub prefill_s: f64,
    /// Median time per generated token, microseconds.
    pub us_per_token: f64,
    /// A 95% distribution-free interval of that median (order statistics), microseconds.
    pub us_lo: f64,
    /// Upper end.
    pub us_hi: f64,
    /// Bytes of decoder state after the last token.
    pub state_bytes: u64,
    /// Bytes the last step read.
    pub bytes_per_token: u64,
    /// Read bandwidth while the cell ran, GB/s: the median of the probes after each of its
    /// context's interleaved rounds (the shared machine's bandwidth moves by tens of percent
    /// within minutes), each a streaming read of `probe_bytes`.
    pub read_gbytes_per_s: f64,
    /// Bytes the cell's probes read: its own `bytes_per_token` rounded up to whole MiB (at
    /// most 1 GiB and what the memory budget leaves), so that a state held in a cache is
    /// compared with reading that much from the same level. 0 in runs before this column,
    /// whose probes read 256 MiB before each round.
    #[serde(default)]
    pub probe_bytes: u64,
    /// `bytes_per_token / us_per_token` over `read_gbytes_per_s`.
    pub read_fraction: f64,
    /// The largest relative error of a generated output row against dense f64 attention.
    pub err_max: f64,
    /// The median of those errors.
    pub err_median: f64,
    /// Exact variants: the relative Frobenius error of all generated outputs against the f64
    /// oracle under the variant's own pattern (dense for full and flash), i.e. the error of
    /// the decoder and its KV store alone; NaN for other fidelities.
    pub err_own: f64,
    /// `ok`, `flagged` (an exact variant with an f32 store off its own definition by more
    /// than the conformance tolerance, 1e-5), `skipped` or `error`.
    pub status: String,
    /// Why a cell was skipped or failed; empty otherwise.
    pub reason: String,
}

/// What a run writes beside its CSV.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeMeta {
    /// The run id (file stem).
    pub run_id: String,
    /// UTC start.
    pub started_utc: String,
    /// Wall time, seconds.
    pub duration_s: f64,
    /// The machine.
    pub machine: Machine,
    /// The measured FMA peaks and read bandwidth.
    pub limits: Limits,
    /// The command line.
    pub command_line: Vec<String>,
    /// The workload.
    pub workload: String,
    /// `[batch, heads, kv_heads, head_dim, v_dim]`.
    pub shape: [usize; 5],
    /// The contexts.
    pub contexts: Vec<usize>,
    /// Tokens per cell.
    pub tokens: usize,
    /// The variants.
    pub variants: Vec<String>,
    /// Worker threads.
    pub threads: usize,
    /// The seed.
    pub seed: u64,
    /// How the run ended (`running` in the file of a run cut short).
    #[serde(default)]
    pub state: crate::results::record::RunState,
    /// Why the run failed, in words.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Reads a decode CSV.
/// A last line cut short by an interrupted write is left out.
pub fn read_decode_csv(path: &Path) -> Result<Vec<DecodeRecord>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut r = csv::Reader::from_reader(&bytes[..whole]);
    r.deserialize()
        .collect::<std::result::Result<Vec<DecodeRecord>, _>>()
        .map_err(|e| {
            Error::new(ErrorKind::Format {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        })
}

pub(crate) fn csv_error(path: &Path, e: csv::Error) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}
