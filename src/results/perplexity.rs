//! The perplexity schema (`attnbench perplexity`), a sibling of the sweep's: one row per
//! (context length, variant) with the model's perplexity on the text when that variant does
//! the attention, its time, and its error against dense attention on the same model's
//! activations; and the run's JSON metadata.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::results::record::{Machine, RunState};

/// The position buckets perplexity is broken down by: `[start, end)` of the predicting
/// position within its window, and the column name.
pub const BUCKETS: [(usize, usize, &str); 6] = [
    (0, 256, "ppl_0_256"),
    (256, 1024, "ppl_256_1k"),
    (1024, 2048, "ppl_1k_2k"),
    (2048, 4096, "ppl_2k_4k"),
    (4096, 8192, "ppl_4k_8k"),
    (8192, usize::MAX, "ppl_8k_up"),
];

/// One row: a variant at one context length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityRecord {
    /// The run id (file stem).
    pub run_id: String,
    /// The model file's name.
    pub model: String,
    /// The context length: tokens per window.
    pub n: usize,
    /// Windows of `n` tokens scored (consecutive, not overlapping, from the first token).
    pub windows: usize,
    /// Next-token predictions scored: `windows * (n - 1)`.
    pub scored: usize,
    /// The variant's spec.
    pub variant: String,
    /// Its fidelity (`exact`, `approximate`, `other-kernel`, `selected`).
    pub fidelity: String,
    /// The first layer the variant replaces dense attention in (`full` before it).
    pub from_layer: usize,
    /// `ok`, or `error` with the message in `note`.
    pub status: String,
    /// `exp(mean negative log-likelihood)` over every scored prediction.
    pub ppl: f64,
    /// `ppl` over the same n's `full` perplexity.
    pub ppl_ratio: f64,
    /// Mean negative log-likelihood, nats per token.
    pub nll: f64,
    /// Perplexity of predictions made at window positions 0-255.
    pub ppl_0_256: Option<f64>,
    /// ... at positions 256-1023.
    pub ppl_256_1k: Option<f64>,
    /// ... at positions 1024-2047.
    pub ppl_1k_2k: Option<f64>,
    /// ... at positions 2048-4095.
    pub ppl_2k_4k: Option<f64>,
    /// ... at positions 4096-8191.
    pub ppl_4k_8k: Option<f64>,
    /// ... at positions 8192 and later.
    pub ppl_8k_up: Option<f64>,
    /// Wall time of one forward pass over a window, seconds (median over windows).
    pub forward_s: f64,
    /// Of which in the attention calls of all layers, seconds (median over windows).
    pub attention_s: f64,
    /// `attention_s / forward_s`.
    pub attention_share: f64,
    /// Relative Frobenius error of the variant's attention output against dense attention
    /// on the Q, K, V of dense attention's own forward pass (first window) at the first
    /// captured layer (`capture_layers` in the metadata).
    pub err_first: Option<f64>,
    /// ... at the middle captured layer.
    pub err_middle: Option<f64>,
    /// ... at the last captured layer.
    pub err_last: Option<f64>,
    /// Worker threads.
    pub threads: usize,
    /// The error, for an `error` row.
    pub note: String,
}

/// Relative errors of the model's Q, K, V against activations captured independently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationCheck {
    /// The layer.
    pub layer: usize,
    /// Tokens compared (the first `n` of the captured ones).
    pub n: usize,
    /// `||Q - Q_ref|| / ||Q_ref||`.
    pub q: f64,
    /// The same for K.
    pub k: f64,
    /// The same for V.
    pub v: f64,
}

/// The JSON metadata of a perplexity run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityMeta {
    /// The run id (file stem).
    pub run_id: String,
    /// UTC start.
    pub started_utc: String,
    /// Wall time, seconds.
    pub duration_s: f64,
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command_line: Vec<String>,
    /// The model file, as given.
    pub model_path: String,
    /// Its size in bytes.
    pub model_bytes: u64,
    /// The model's `general.name`.
    pub model_name: String,
    /// `[layers, d_model, d_ff, heads, kv_heads, head_dim, vocab, context]`.
    pub model_shape: [usize; 8],
    /// Where the tokens came from (`ids:FILE` or `text:FILE`).
    pub tokens_source: String,
    /// Tokens available.
    pub tokens: usize,
    /// The context lengths.
    pub lengths: Vec<usize>,
    /// The variants, `full` first.
    pub variants: Vec<String>,
    /// The first layer the variants replace dense attention in.
    pub from_layer: usize,
    /// The layers whose activations give `err_first`, `err_middle`, `err_last`.
    pub capture_layers: Vec<usize>,
    /// The model's activations against independently captured ones, when asked for.
    #[serde(default)]
    pub activation_check: Vec<ActivationCheck>,
    /// Worker threads.
    pub threads: usize,
    /// How the run ended.
    #[serde(default)]
    pub state: RunState,
    /// Why the run failed, in words.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Whether `path` is a perplexity CSV (its header names `ppl_ratio`).
pub fn is_perplexity_csv(path: &Path) -> Result<bool> {
    super::has_column(path, "ppl_ratio")
}

/// Reads a perplexity CSV. A last line cut short by an interrupted write is left out.
pub fn read_perplexity_csv(path: &Path) -> Result<Vec<PerplexityRecord>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut r = csv::Reader::from_reader(&bytes[..whole]);
    r.deserialize()
        .enumerate()
        .map(|(i, row)| {
            row.map_err(|e| Error::format(path, format!("row {}", i + 1), e.to_string()))
        })
        .collect()
}
