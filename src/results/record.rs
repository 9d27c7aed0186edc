//! The results schema: one CSV row per (variant, length) ([`Record`]), and the run's JSON
//! metadata ([`RunMeta`], with the [`Machine`] and its measured [`Limits`]).
//!
//! The columns are stable and documented in README.md ("Results"). Empty cells mean "not
//! measured" (a skipped or failed cell, or no counting allocator).

use serde::{Deserialize, Serialize};

use crate::attention::Fidelity;

/// One row of a results CSV.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The run this row belongs to (also the file name stem).
    pub run_id: String,
    /// The variant's canonical spec, e.g. `flash(bq=64,bk=128)`.
    pub variant: String,
    /// The registry name, e.g. `flash`.
    pub name: String,
    /// `exact`, `approximate` or `other-kernel`.
    pub fidelity: Fidelity,
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query length.
    pub n_q: usize,
    /// Key/value length.
    pub n_kv: usize,
    /// Head dimension (also the value dimension in sweeps).
    pub head_dim: usize,
    /// Causal masking.
    pub causal: bool,
    /// Worker threads.
    pub threads: usize,
    /// The workload, e.g. `gaussian(scale=1)` or `npy:tests/data/qkv`.
    pub workload: String,
    /// Median time of one call, milliseconds.
    pub time_median_ms: Option<f64>,
    /// Fastest call, milliseconds.
    pub time_min_ms: Option<f64>,
    /// Slowest call, milliseconds.
    pub time_max_ms: Option<f64>,
    /// Timed calls.
    pub repeats: Option<usize>,
    /// Useful floating-point operations of one call: for exact variants the dense-attention
    /// work on the allowed pairs (`2 n_q n_kv (d + d_v)` per head times the mask density);
    /// for the others the variant's analytic flops.
    pub flops: Option<f64>,
    /// `flops / time_median`, GFLOP/s.
    pub gflops: Option<f64>,
    /// The GEMM rate of attention's two products at this length (`[min(n, 1024), d] x
    /// [d, min(n, 16384)]` and back, see [`measure_gemm`]) measured in the same run, GFLOP/s.
    ///
    /// [`measure_gemm`]: crate::harness::machine::measure_gemm
    pub gemm_gflops: Option<f64>,
    /// `100 * gflops / gemm_gflops`.
    pub pct_of_gemm: Option<f64>,
    /// `100 * gflops / ` the run's measured FMA peak on all its threads (see [`Limits`]).
    ///
    /// [`Limits`]: Limits
    pub pct_of_peak: Option<f64>,
    /// Peak heap bytes above the baseline during one call (counting allocator).
    pub peak_bytes: Option<u64>,
    /// The variant's analytic workspace bytes (`Attention::cost`).
    pub workspace_bytes: Option<u64>,
    /// Allowed pairs / all pairs of the variant's mask (1 for dense, ~0.5 causal).
    pub density: Option<f64>,
    /// Relative Frobenius error against dense softmax attention (same causal flag).
    pub err_dense_rel: Option<f64>,
    /// Largest absolute error against dense attention.
    pub err_dense_max_abs: Option<f64>,
    /// Mean row cosine similarity with dense attention.
    pub err_dense_cosine: Option<f64>,
    /// Exact variants: relative Frobenius error against the oracle under their own pattern
    /// (~1e-7; above 1e-5 the row is `flagged`).
    pub err_own_rel: Option<f64>,
    /// Exact variants: largest absolute error against the oracle under their own pattern.
    pub err_own_max_abs: Option<f64>,
    /// Pattern variants: softmax mass dense attention puts on the dropped pairs, mean over
    /// the oracle rows.
    pub dropped_mass: Option<f64>,
    /// Query rows (per batch and head) the errors were computed on; fewer than `n_q` when
    /// the oracle was row-sampled.
    pub oracle_rows: Option<usize>,
    /// Score modifiers of the run, e.g. `alibi;softcap=30;rope=10000`; empty for none.
    #[serde(default)]
    pub modifiers: String,
    /// Decoding rows (`n_q` much smaller than `n_kv`): `100 * ` the K and V bytes the call
    /// must read (times the mask density for exact variants) per second, over the run's
    /// measured read bandwidth.
    #[serde(default)]
    pub pct_of_bandwidth: Option<f64>,
    /// Layer sweeps: the model width of the multi-head layer around the variant.
    #[serde(default)]
    pub d_model: Option<usize>,
    /// Layer sweeps: median time of one whole layer call, milliseconds.
    #[serde(default)]
    pub layer_ms: Option<f64>,
    /// Layer sweeps: median time of the four projections within a layer call, ms.
    #[serde(default)]
    pub proj_ms: Option<f64>,
    /// Layer sweeps: median time of the attention core within a layer call, ms.
    #[serde(default)]
    pub core_ms: Option<f64>,
    /// `ok`, `flagged` (an exact variant off its own definition), `skipped` or `error`.
    pub status: Status,
    /// Why a cell was skipped, flagged or failed; empty otherwise.
    pub note: String,
}

/// The outcome of one cell, serialised as the `status` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Measured; an exact variant matched its own definition.
    #[default]
    Ok,
    /// Measured, but an exact variant is off its own definition by more than
    /// [`FLAG_TOLERANCE`](crate::harness::sweep::FLAG_TOLERANCE): a kernel bug. `sweep` and `run`
    /// exit with status 1.
    Flagged,
    /// Not run (unsupported shape, over the memory or time budget), with the reason.
    Skipped,
    /// The variant returned an error or panicked.
    Error,
}

impl Status {
    /// Whether the cell was measured (`ok` or `flagged`).
    pub fn is_measured(self) -> bool {
        matches!(self, Status::Ok | Status::Flagged)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Flagged => "flagged",
            Status::Skipped => "skipped",
            Status::Error => "error",
        })
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    /// The column's spelling: `ok`, `flagged`, `skipped`, `error`.
    fn from_str(s: &str) -> Result<Self, String> {
        [Status::Ok, Status::Flagged, Status::Skipped, Status::Error]
            .into_iter()
            .find(|v| v.to_string() == s)
            .ok_or_else(|| format!("'{s}' is not a status (ok, flagged, skipped, error)"))
    }
}

/// A run's JSON metadata, written beside its CSV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The run id (the file stem).
    pub run_id: String,
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_utc: String,
    /// Wall time of the whole run, seconds (0 while running).
    pub duration_s: f64,
    /// The machine and build.
    pub machine: Machine,
    /// The full command line.
    pub command_line: Vec<String>,
    /// The input seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// The workload.
    pub workload: String,
    /// The variant specs swept.
    pub variants: Vec<String>,
    /// The lengths swept.
    pub lengths: Vec<usize>,
    /// The GEMM ceiling per length, GFLOP/s.
    pub gemm_gflops: Vec<(usize, f64)>,
    /// The machine's measured FMA peak and read bandwidth.
    pub limits: Option<Limits>,
}

/// The machine and build of a run, recorded in its JSON metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU model name from `/proc/cpuinfo` (or `"unknown"`).
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// SIMD features detected at run time, e.g. `["avx2", "fma", "avx512f"]`.
    pub simd: Vec<String>,
    /// Total RAM in bytes, when known.
    pub memory_bytes: Option<u64>,
    /// The operating system and architecture.
    pub os: String,
    /// `rustc --version` of the build.
    pub rustc: String,
    /// This crate's version.
    pub crate_version: String,
    /// The git commit of the build, when it was built from a git checkout.
    pub git_commit: Option<String>,
}

/// The machine's own limits, measured in the run: what fraction of the hardware each result
/// reaches is reported against these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// The SIMD path measured (the widest available).
    pub isa: String,
    /// FMA throughput of one core at that width, GFLOP/s (12 independent FMA chains).
    pub fma_gflops_one_core: f64,
    /// The same on every worker thread at once, GFLOP/s.
    pub fma_gflops_all_threads: f64,
    /// Worker threads of the all-threads figure.
    pub threads: usize,
    /// Sustained read bandwidth over a 256 MiB buffer (far beyond the last-level cache),
    /// every worker thread reading its share, GB/s: the median of 7 passes after a warm-up
    /// one. (On a shared VM single passes ranged from 23 to 42 GB/s; the median is the rate
    /// a long decode can count on, the maximum a burst.)
    pub read_gbytes_per_s: f64,
}
