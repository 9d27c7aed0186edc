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
    /// `exact`, `approximate`, `other-kernel` or `selected`.
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
    /// Median of every timed call of the cell (all rounds pooled), milliseconds.
    pub time_median_ms: Option<f64>,
    /// Fastest call, milliseconds.
    pub time_min_ms: Option<f64>,
    /// Slowest call, milliseconds.
    pub time_max_ms: Option<f64>,
    /// Timed calls, all rounds.
    pub repeats: Option<usize>,
    /// Interleaved rounds the cell was timed in (within a round the variants of one length
    /// run in a rotating order).
    #[serde(default)]
    pub rounds: Option<usize>,
    /// The median call time of each round, milliseconds, `;`-separated in round order.
    #[serde(default)]
    pub round_medians_ms: String,
    /// Lower end of the 95% interval of the cell's time: the Student-t interval of the mean
    /// log round median (`rounds - 1` degrees of freedom), exponentiated; empty with one
    /// round.
    #[serde(default)]
    pub time_ci_lo_ms: Option<f64>,
    /// Upper end of that interval.
    #[serde(default)]
    pub time_ci_hi_ms: Option<f64>,
    /// Minor page faults per timed call (from `/proc/self/stat`, all threads): a large
    /// buffer allocated per call is faulted in again on every call.
    #[serde(default)]
    pub page_faults: Option<f64>,
    /// Useful floating-point operations of one call, exact variants only: the softmax-pair
    /// work of dense attention on the pairs the mask allows (`2 n_q n_kv (d + d_v)` per head
    /// times the mask density).
    #[serde(alias = "flops")]
    pub useful_flops: Option<f64>,
    /// Floating-point operations one call executes (`Attention::cost`), every variant: for
    /// tiled sparse variants this includes the masked-out pairs of partial tiles, for linear
    /// attention its feature maps and state products.
    #[serde(default)]
    pub executed_flops: Option<f64>,
    /// `useful_flops / time_median`, GFLOP/s.
    #[serde(alias = "gflops")]
    pub useful_gflops: Option<f64>,
    /// `executed_flops / time_median`, GFLOP/s: the rate the hardware fractions use.
    #[serde(default)]
    pub executed_gflops: Option<f64>,
    /// A reference rate, not a ceiling: GFLOP/s of the GEMM library running attention's two
    /// products at this row's shape (`[min(n_q, 1024), d] x [d, min(n_kv, 16384)]` and back,
    /// see [`measure_gemm`]), measured in the same run. A fused kernel that keeps its tiles
    /// in cache can beat it.
    ///
    /// [`measure_gemm`]: crate::harness::machine::measure_gemm
    pub gemm_gflops: Option<f64>,
    /// `100 * executed_gflops / gemm_gflops` (can exceed 100: a reference, not a ceiling).
    pub pct_of_gemm: Option<f64>,
    /// `100 * executed_gflops / ` the run's measured FMA peak on the row's threads (the
    /// one-core figure for 1-thread rows, see [`Limits`]).
    ///
    /// [`Limits`]: Limits
    pub pct_of_peak: Option<f64>,
    /// Peak heap bytes above the baseline during one call (counting allocator).
    pub peak_bytes: Option<u64>,
    /// The variant's analytic workspace bytes (`Attention::cost`).
    pub workspace_bytes: Option<u64>,
    /// Allowed pairs / all pairs of the variant's mask (1 for dense, ~0.5 causal); for
    /// `selected` variants, the pairs they chose over the oracle rows / all pairs.
    pub density: Option<f64>,
    /// Relative Frobenius error against dense softmax attention (same causal flag); for
    /// variants with random features, the mean over `err_seeds` seeds.
    pub err_dense_rel: Option<f64>,
    /// Random-feature variants: the standard deviation of `err_dense_rel` over the seeds.
    #[serde(default)]
    pub err_dense_rel_sd: Option<f64>,
    /// Random-feature variants: seeds the error was measured over (the time is one seed's).
    #[serde(default)]
    pub err_seeds: Option<usize>,
    /// `err_dense_rel` of each input separately when the workload stacks several (the
    /// triples of an `npy:` directory, e.g. layers): `name=error` pairs joined by `;`, in the
    /// batch order; empty for a single input. A window that is fine on one layer and fails
    /// on a sink layer shows here, where the pooled error hides it.
    #[serde(default)]
    pub err_by_input: String,
    /// Largest absolute error against dense attention.
    pub err_dense_max_abs: Option<f64>,
    /// Mean row cosine similarity with dense attention.
    pub err_dense_cosine: Option<f64>,
    /// Exact variants: relative Frobenius error against the oracle under their own pattern
    /// (`selected` variants: under the keys they chose)
    /// (~1e-7; above `tolerance` the row is `flagged`).
    pub err_own_rel: Option<f64>,
    /// Exact and `selected` variants: largest absolute error against their own oracle.
    pub err_own_max_abs: Option<f64>,
    /// Exact and `selected` variants: the own-oracle error a correct f32 kernel may reach at this shape,
    /// `2 * err_f32_plain + 1e-6` (the flash-attention rule: at most twice a plain f32
    /// implementation's error, plus a floor).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Exact and `selected` variants: the error of a plain f32 implementation of the same masked attention
    /// (row by row, sequential sums) against the same oracle rows.
    #[serde(default)]
    pub err_f32_plain: Option<f64>,
    /// Pattern and `selected` variants: softmax mass dense attention puts on the pairs they
    /// drop (did not choose), mean over the oracle rows.
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
    /// Measured, but an exact variant is off its own definition by more than its
    /// [`tolerance`](Record::tolerance) (twice a plain f32 implementation's error plus
    /// [`FLAG_FLOOR`](crate::harness::sweep::FLAG_FLOOR)): a kernel bug. `sweep` and `run` exit
    /// with status 1.
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

impl Record {
    /// Checks every value against its physical range, so that a hand-edited or corrupted
    /// file cannot put a negative time, a NaN ratio or an axis bound of `f64::MAX` into a
    /// report. Errors that are not finite are allowed only on rows not `ok` (a kernel bug
    /// can produce them).
    pub fn validate(&self) -> std::result::Result<(), String> {
        const MAX_SIZE: usize = 1 << 40;
        for (column, v) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("n_q", self.n_q),
            ("n_kv", self.n_kv),
            ("head_dim", self.head_dim),
            ("threads", self.threads),
        ] {
            if !(1..=MAX_SIZE).contains(&v) {
                return Err(format!("{column} is {v}; sizes are between 1 and 2^40"));
            }
        }
        let range = |column: &str, v: Option<f64>, lo: f64, hi: f64, lo_open: bool| match v {
            Some(x) if !(x.is_finite() && x <= hi && (x > lo || (!lo_open && x == lo))) => {
                Err(format!(
                    "{column} is {x:e}; expected a finite value in {}{lo}, {hi:e}]",
                    if lo_open { "(" } else { "[" }
                ))
            }
            _ => Ok(()),
        };
        // Times: above zero, below 11.6 days a call.
        const MAX_MS: f64 = 1e9;
        for (column, v) in [
            ("time_median_ms", self.time_median_ms),
            ("time_min_ms", self.time_min_ms),
            ("time_max_ms", self.time_max_ms),
            ("time_ci_lo_ms", self.time_ci_lo_ms),
            ("time_ci_hi_ms", self.time_ci_hi_ms),
            ("layer_ms", self.layer_ms),
            ("proj_ms", self.proj_ms),
            ("core_ms", self.core_ms),
        ] {
            range(column, v, 0.0, MAX_MS, true)?;
        }
        for part in self.round_medians_ms.split(';').filter(|p| !p.is_empty()) {
            let x = part
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("round_medians_ms holds '{part}', not a number"))?;
            range("a round median", Some(x), 0.0, MAX_MS, true)?;
        }
        for (column, v) in [
            ("page_faults", self.page_faults),
            ("useful_flops", self.useful_flops),
            ("executed_flops", self.executed_flops),
            ("useful_gflops", self.useful_gflops),
            ("executed_gflops", self.executed_gflops),
            ("gemm_gflops", self.gemm_gflops),
            ("pct_of_gemm", self.pct_of_gemm),
            ("pct_of_peak", self.pct_of_peak),
            ("pct_of_bandwidth", self.pct_of_bandwidth),
        ] {
            range(column, v, 0.0, 1e30, false)?;
        }
        for (column, v) in [
            ("peak_bytes", self.peak_bytes),
            ("workspace_bytes", self.workspace_bytes),
        ] {
            if let Some(b) = v.filter(|&b| b > 1 << 60) {
                return Err(format!("{column} is {b}; over 2^60 bytes"));
            }
        }
        range("density", self.density, 0.0, 1.0, false)?;
        if self.status == Status::Ok {
            for (column, v) in [
                ("err_dense_rel", self.err_dense_rel),
                ("err_dense_rel_sd", self.err_dense_rel_sd),
                ("err_dense_max_abs", self.err_dense_max_abs),
                ("err_own_rel", self.err_own_rel),
                ("err_own_max_abs", self.err_own_max_abs),
                ("tolerance", self.tolerance),
                ("err_f32_plain", self.err_f32_plain),
            ] {
                range(column, v, 0.0, 1e12, false)?;
            }
            range(
                "err_dense_cosine",
                self.err_dense_cosine,
                -1.000001,
                1.000001,
                false,
            )?;
            range("dropped_mass", self.dropped_mass, 0.0, 1.000001, false)?;
        }
        Ok(())
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
    /// The GEMM reference rate per length, GFLOP/s (see [`Record::gemm_gflops`]).
    pub gemm_gflops: Vec<(usize, f64)>,
    /// The drift probe per length: its rate at the start of each round.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Every setting of the sweep.
    #[serde(default)]
    pub settings: Option<Settings>,
    /// The machine's measured FMA peak and read bandwidth.
    pub limits: Option<Limits>,
    /// How the run ended. Files written before this field are complete runs.
    #[serde(default)]
    pub state: RunState,
    /// Why the run failed, or what it left out, in words.
    #[serde(default)]
    pub notes: Vec<String>,
    /// With `--export-inputs`: the directory beside the JSON holding each length's inputs
    /// and oracle rows as `.npy` files (`<run id>-inputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_dir: Option<String>,
}

/// How a run ended, in its JSON metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Written when the run starts: a run still `running` in its file was interrupted
    /// (Ctrl-C, a kill, a crash, a full disk) before its end, and its CSV may lack cells.
    Running,
    /// The run ended with an error (in `notes`) before its end.
    Failed,
    /// Every planned cell has its row.
    #[default]
    Complete,
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
    /// The git commit of the build, when it was built from a git checkout; `-dirty` when
    /// the sources differed from it.
    pub git_commit: Option<String>,
    /// The host name, to tell machines of the same model apart.
    #[serde(default)]
    pub host: String,
    /// Transparent huge pages mode, e.g. `always [madvise] never`, when readable.
    #[serde(default)]
    pub thp: Option<String>,
    /// The CPU caches, e.g. `L1d 48K`, `L2 2048K`, `L3 107520K` (per cache instance).
    #[serde(default)]
    pub caches: Vec<String>,
    /// The build settings.
    #[serde(default)]
    pub build: Option<Build>,
}

/// How the binary that made a run was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// Cargo profile (`release`, `debug`).
    pub profile: String,
    /// Optimisation level.
    pub opt_level: String,
    /// RUSTFLAGS of the build (e.g. `-C target-cpu=native`), empty for none.
    pub rustflags: String,
    /// Target features compiled in (run-time dispatch picks wider kernels where detected).
    pub target_features: String,
}

/// The drift probe's rate at one length (see
/// [`probe_gflops`](crate::harness::machine::probe_gflops)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The length.
    pub n: usize,
    /// GFLOP/s at the start of each round.
    pub gflops: Vec<f64>,
}

/// The settings of a sweep, beyond the variants and lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Interleaved rounds per cell.
    pub rounds: usize,
    /// Unmeasured calls before the first round.
    pub warmup: usize,
    /// Timed calls per cell, at least (spread over the rounds).
    pub min_repeats: usize,
    /// Timed seconds per cell, at least (spread over the rounds).
    pub min_time_s: f64,
    /// Timed calls per cell, at most.
    pub max_repeats: usize,
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension (Gaussian workload).
    pub head_dim: usize,
    /// Causal masking.
    pub causal: bool,
    /// Score modifiers, as in [`Record::modifiers`].
    pub modifiers: String,
    /// Decoding queries, when a decode sweep.
    pub n_q: Option<usize>,
    /// Layer sweeps: the model width.
    pub d_model: Option<usize>,
    /// Memory budget, bytes.
    pub max_memory: u64,
    /// Time budget of one call, seconds.
    pub max_seconds: f64,
    /// The dense oracle covers every row up to this length.
    pub dense_oracle_max: usize,
    /// Oracle rows sampled per (batch, head) beyond it.
    pub sampled_rows: usize,
    /// Seeds the error of random-feature variants is measured over.
    pub error_seeds: usize,
}

impl Limits {
    /// The FMA peak of `threads` worker threads: the one-core figure for one thread, the
    /// all-threads figure otherwise.
    pub fn peak_for(&self, threads: usize) -> f64 {
        if threads <= 1 {
            self.fma_gflops_one_core
        } else {
            self.fma_gflops_all_threads
        }
    }

    /// FMA instructions per cycle the one-core peak implies at the reported clock (1 or 2
    /// on current x86 cores; more means the clock runs above the reported one).
    pub fn fma_per_cycle(&self) -> Option<f64> {
        let (mhz, lanes) = (self.clock_mhz?, self.lanes?);
        Some(self.fma_gflops_one_core * 1e3 / (mhz * 2.0 * lanes as f64))
    }
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
    /// Every one-core trial, GFLOP/s (the peak is their maximum; their spread is the probe's
    /// own noise).
    #[serde(default)]
    pub fma_trials_one_core: Vec<f64>,
    /// Every all-threads trial, GFLOP/s.
    #[serde(default)]
    pub fma_trials_all_threads: Vec<f64>,
    /// The clock `/proc/cpuinfo` reports, MHz, when readable: with `lanes` it gives the
    /// FMA instructions per cycle the one-core peak implies (1 or 2 on current x86 cores).
    #[serde(default)]
    pub clock_mhz: Option<f64>,
    /// f32 lanes of one FMA instruction at `isa` (16 for AVX-512), when known.
    #[serde(default)]
    pub lanes: Option<usize>,
    /// Worker threads of the all-threads figure.
    pub threads: usize,
    /// Sustained read bandwidth over a buffer of `read_probe_bytes`, every worker thread
    /// reading its share, GB/s: the median of 7 passes after a warm-up one. (On a shared VM
    /// single passes ranged from 23 to 42 GB/s; the median is the rate a long decode can
    /// count on, the maximum a burst.)
    pub read_gbytes_per_s: f64,
    /// The probe's buffer: 256 MiB or twice the largest CPU cache, whichever is more
    /// (`None`: a run from before it was recorded, which read 256 MiB).
    #[serde(default)]
    pub read_probe_bytes: Option<u64>,
}

/// The JSON beside a CSV of external baselines (`baselines/run.py`): rows timed by other
/// libraries on the exported inputs of the sweep `run_id`, in that sweep's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineMeta {
    /// Always [`BaselineMeta::KIND`].
    pub kind: String,
    /// The sweep whose inputs and oracle rows the baselines ran on (also their rows' run id).
    pub run_id: String,
    /// The sweep's JSON file name.
    pub source: String,
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_utc: String,
    /// Wall time of the script, seconds.
    pub duration_s: f64,
    /// The command line of the script.
    #[serde(default)]
    pub command_line: Vec<String>,
    /// The Python version.
    pub python: String,
    /// Worker threads every library was given.
    pub threads: usize,
    /// The libraries that ran.
    pub libraries: Vec<BaselineLibrary>,
    /// Libraries not run, and why (not installed, a worker that failed).
    #[serde(default)]
    pub skipped: Vec<String>,
}

impl BaselineMeta {
    /// The `kind` of a baselines JSON.
    pub const KIND: &'static str = "attnbench-baselines";
}

/// One library of a [`BaselineMeta`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineLibrary {
    /// `numpy`, `torch` or `ort`.
    pub name: String,
    /// The variants (rows) it contributes, e.g. `torch.sdpa`.
    pub variants: Vec<String>,
    /// Package versions and settings, e.g. `torch 2.15.0`, `cpu capability AVX512`.
    pub versions: Vec<String>,
    /// What was measured about it that a reader should know, e.g. whether its peak memory
    /// shows the n x n score matrix.
    pub notes: Vec<String>,
}
