//! [`SweepConfig`]: everything a sweep needs besides the variants, with its one set of
//! defaults ([`SweepConfig::default`], [`SweepConfig::quick`]) that the CLI overlays.

use std::path::PathBuf;
use std::time::Duration;

use super::timing::TimingConfig;
use crate::attention::Options;
use crate::results::artefacts::Previews;
use crate::workload::Workload;

/// The floor of the exact tolerance: an exact variant's row is `flagged` when its error
/// against its own pattern's oracle exceeds `2 * err_f32_plain + FLAG_FLOOR`, twice the error
/// of a plain f32 implementation at the same shape (see
/// [`plain_f32_rows`](crate::oracle::plain_f32_rows)) plus this floor.
pub const FLAG_FLOOR: f64 = 1e-6;

/// Everything a sweep needs besides the variants.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Sequence lengths (`n_q = n_kv = n`).
    pub lengths: Vec<usize>,
    /// Batch size (Gaussian workload).
    pub batch: usize,
    /// Query heads (Gaussian workload).
    pub heads: usize,
    /// Key/value heads (Gaussian workload).
    pub kv_heads: usize,
    /// Head dimension (Gaussian workload).
    pub head_dim: usize,
    /// Causal masking and score modifiers (ALiBi, soft-capping, RoPE) of every call.
    pub opts: Options,
    /// Decoding: this many queries (the last positions) against each length of keys; `None`
    /// sweeps self-attention (`n_q = n_kv = n`).
    pub n_q: Option<usize>,
    /// Layer sweep: measure a multi-head layer of this model width (`heads` heads of
    /// `d_model / heads`, seeded Xavier weights, Gaussian `X`) around each variant.
    pub layer: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// The inputs.
    pub workload: Workload,
    /// Input and row-sampling seed.
    pub seed: u64,
    /// Warm-up (once per cell) and repeats (per cell, spread over the rounds).
    pub timing: TimingConfig,
    /// Interleaved rounds over the whole sweep: every cell is timed `rounds` times, the lengths
    /// in alternating order and each length's variants in a rotating order, so that drift of
    /// the machine hits all of them alike and every cell gets an interval.
    pub rounds: usize,
    /// Random-feature variants ([`Attention::with_seed`](crate::Attention::with_seed)): seeds
    /// their error is measured over (the run's seed and the next ones).
    pub error_seeds: usize,
    /// Cells whose analytic memory (inputs, output, workspace) exceeds this are skipped.
    pub max_memory: u64,
    /// A variant whose median at one length exceeds this skips the longer lengths.
    pub max_seconds: f64,
    /// The dense oracle covers every row up to this length; beyond it, rows are sampled.
    pub dense_oracle_max: usize,
    /// Rows sampled per (batch, head) beyond `dense_oracle_max`.
    pub sampled_rows: usize,
    /// The results directory.
    pub out_dir: PathBuf,
    /// Appended to the run id.
    pub label: String,
    /// The command line, for the metadata.
    pub command_line: Vec<String>,
    /// Pattern previews written beside the results for the report: the harness knows no
    /// registry, so the caller draws them, [`Registry::previews`](crate::Registry::previews)
    /// of the swept variants (the CLI does). Default: none, and the report's pattern figure
    /// then says that no previews were recorded.
    pub previews: Previews,
    /// Write each length's Q, K, V and the f64 oracle's rows as `.npy` files into
    /// `<out_dir>/<run id>-inputs/` (named in the JSON's `inputs_dir`), for external
    /// baselines run on the same inputs (`baselines/run.py`). Default: off.
    pub export_inputs: bool,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            lengths: vec![256, 512, 1024, 2048, 4096, 8192],
            batch: 1,
            heads: 8,
            kv_heads: 8,
            head_dim: 64,
            opts: Options::new(),
            n_q: None,
            layer: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            workload: Workload::Gaussian { scale: 1.0 },
            seed: 0,
            timing: TimingConfig::default(),
            rounds: 3,
            error_seeds: 5,
            max_memory: super::machine::default_budget(),
            max_seconds: 30.0,
            dense_oracle_max: 1024,
            sampled_rows: 64,
            out_dir: PathBuf::from("results"),
            label: "sweep".into(),
            command_line: std::env::args().collect(),
            previews: Previews::default(),
            export_inputs: false,
        }
    }
}

impl SweepConfig {
    /// A smoke run: [`SweepConfig::default`] at n = 256, 512, 1024 with one timed call per
    /// round (`attnbench run --quick`).
    pub fn quick() -> Self {
        Self {
            lengths: vec![256, 512, 1024],
            timing: TimingConfig {
                min_repeats: 3,
                min_time: Duration::ZERO,
                ..TimingConfig::default()
            },
            ..Self::default()
        }
    }
}
