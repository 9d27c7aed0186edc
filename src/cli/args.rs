//! The clap definitions of every subcommand, their value parsers, and the sweep flags
//! overlaid on the library's defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::attention::Options;
use crate::decode::KvStore;
use crate::harness::decode::DecodeConfig;
use crate::harness::sweep::SweepConfig;
use crate::workload::Workload;

/// Reference CPU benchmark suite for efficient attention.
#[derive(Debug, Parser)]
#[command(name = "attnbench", version, about)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// List every registered variant with its parameters and defaults.
    List {
        /// Print the markdown table of variants (as in README.md).
        #[arg(long)]
        markdown: bool,
    },
    /// Check variants against the f64 oracle on a fixed set of small cases.
    Check {
        /// Comma-separated variant specs, e.g. `full,flash(bq=32,bk=64)`.
        /// Default: every registered variant with default parameters.
        #[arg(long, value_name = "SPEC,...")]
        variants: Option<String>,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Skip cases whose inputs, oracle and workspace exceed this many bytes (suffixes K,
        /// M, G); default: half the machine's RAM.
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
        max_memory: Option<u64>,
    },
    /// Measure time, peak memory and error of variants across sequence lengths; write
    /// results/<UTC time>-<label>.csv and .json.
    Sweep(Box<SweepArgs>),
    /// Turn results CSVs into charts (SVG and PNG) and a markdown report.
    Report {
        /// Results CSV files (several are combined into one report).
        #[arg(required = true, value_name = "RESULTS.csv")]
        csv: Vec<PathBuf>,
        /// Output directory; default: reports/<run id of the first file>.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare two runs cell by cell: the time ratio with its interval, error and memory
    /// changes and a verdict per cell; exits 1 when a --fail-on condition holds.
    Compare(CompareArgs),
    /// Sweep, then report: the main job. Takes every `sweep` flag.
    Run(Box<SweepArgs>),
    /// Draw each head's attention weights under full attention and under each variant, with
    /// per-head entropy, local and first-token mass; write PNGs, maps.csv and maps.md.
    Maps(MapsArgs),
    /// The generation benchmark: per context length, prefill a prompt, then generate tokens
    /// one at a time through each variant's decoder (KV cache, ring buffer or recurrent
    /// state); time per token, state bytes, read bandwidth and error against f64 attention;
    /// write results/<UTC time>-decode.csv and .json and a report.
    Decode(Box<DecodeArgs>),
    /// What each variant does to a real model: the perplexity of a Llama-family GGUF model on
    /// a text with the variant doing the attention of every layer, per context length, with
    /// its time and its error against dense attention on the model's own activations; write
    /// results/<UTC time>-perplexity.csv and .json and a report.
    Perplexity(Box<PerplexityArgs>),
}

/// The variants `perplexity` runs by default (after `full`, the reference): every built-in
/// that runs causally, windows, sinks, Longformer and block selection at several budgets.
pub(super) const PERPLEXITY_VARIANTS: &str = "flash,window(w=256),window(w=1024),window(w=2048),sinks(s=4,w=252),sinks(s=4,w=1020),sinks(s=4,w=2044),longformer(w=256,g=16),longformer(w=1024,g=16),bigbird,strided,fixed,dilated,local,blocktopk(score=mean),blocktopk(score=bound),blocktopk(k=16,score=bound),blocktopk(k=32,score=bound),topk(k=256),lsh,linear(phi=elu1),retention(phi=none)";

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["tokens", "text"])))]
pub(super) struct PerplexityArgs {
    /// The model: a Llama-family GGUF file (F32, F16, BF16, Q4_0, Q4_1 or Q8_0 tensors).
    #[arg(long, value_name = "FILE.gguf")]
    pub(super) model: PathBuf,
    /// Token ids to score: a 1-D .npy of int32 or int64.
    #[arg(long, value_name = "FILE.npy")]
    pub(super) tokens: Option<PathBuf>,
    /// A UTF-8 text to score, tokenized with the model's own tokenizer.
    #[arg(long, value_name = "FILE")]
    pub(super) text: Option<PathBuf>,
    /// How --text is split before BPE: `auto` (the model's `tokenizer.ggml.pre`), `gpt2`
    /// (the GPT-2 rule) or `smollm` (digits one by one, then the GPT-2 rule).
    #[arg(long, default_value = "auto", value_parser = ["auto", "gpt2", "smollm"], requires = "text")]
    pub(super) pre_tokenizer: String,
    /// Context lengths: tokens per window (consecutive windows of the text).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "2048,8192"
    )]
    pub(super) n: Vec<usize>,
    /// Comma-separated variant specs; `full` (the reference) always runs first.
    #[arg(long, value_name = "SPEC,...", default_value = PERPLEXITY_VARIANTS)]
    pub(super) variants: String,
    /// Replace dense attention only from this layer on (0-based).
    #[arg(long, default_value_t = 0)]
    pub(super) from_layer: usize,
    /// At most this many windows per length; default: every whole window of the text.
    #[arg(long)]
    pub(super) max_windows: Option<usize>,
    /// Worker threads; default: all cores.
    #[arg(long)]
    pub(super) threads: Option<usize>,
    /// A directory of captured activations (`*_L<layer>_q.npy`, `_k.npy`, `_v.npy`, shape
    /// [heads, tokens, head_dim]) to check the model's Q, K, V against, e.g. the real-LLM
    /// data's directory.
    #[arg(long, value_name = "DIR")]
    pub(super) check_activations: Option<PathBuf>,
    /// Refuse a run whose weights, activations and attention workspace exceed this many
    /// bytes (suffixes K, M, G); default: half the machine's RAM.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(super) max_memory: Option<u64>,
    /// Directory of the results files.
    #[arg(long, default_value = "results")]
    pub(super) out_dir: PathBuf,
    /// Label in the results file names.
    #[arg(long, default_value = "perplexity")]
    pub(super) label: String,
    /// Do not write the report.
    #[arg(long)]
    pub(super) no_report: bool,
}

/// The variants `decode` runs by default: the exact KV cache, a window and sinks in ring
/// buffers, block selection over the cache, and the two recurrent states.
pub(super) const DECODE_VARIANTS: &str =
    "flash,window(w=4096),sinks(s=4,w=4092),blocktopk,linear(phi=elu1),retention(phi=none)";

#[derive(Debug, Args)]
pub(super) struct DecodeArgs {
    /// Comma-separated variant specs. Variants without a decoder are decoded statelessly
    /// (the whole cache through the batch call, one query per token).
    #[arg(long, value_name = "SPEC,...", default_value = DECODE_VARIANTS)]
    pub(super) variants: String,
    /// Prompt lengths: a list or a doubling range A..B. Default: 1K, 4K, ..., 1M (Gaussian
    /// and structured inputs); 1K, 2K, ... and the longest that fits (npy inputs); 1K, 4K
    /// with --quick.
    #[arg(long, value_name = "LIST|A..B", value_parser = parse_lengths)]
    pub(super) contexts: Option<Lengths>,
    /// Tokens generated (and timed) per cell. Default: 32 (8 with --quick).
    #[arg(long)]
    pub(super) tokens: Option<usize>,
    /// Query heads (Gaussian inputs).
    #[arg(long, default_value_t = 8)]
    pub(super) heads: usize,
    /// KV heads (Gaussian inputs).
    #[arg(long, default_value_t = 2)]
    pub(super) kv_heads: usize,
    /// Head dimension (Gaussian inputs).
    #[arg(long, default_value_t = 64)]
    pub(super) head_dim: usize,
    /// Inputs: `gaussian`, `structured(layer=15)` or `npy:DIR` (e.g. npy:tests/data/lm).
    #[arg(long, default_value = "gaussian", value_parser = parse_workload)]
    pub(super) workload: Workload,
    /// KV stores, comma-separated: f32, f16, bf16.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "f32,f16",
        value_parser = parse_store
    )]
    pub(super) kv: Vec<KvStore>,
    /// Decode every variant statelessly, through the batch call, for comparison.
    #[arg(long)]
    pub(super) stateless: bool,
    /// Skip cells whose cache, or a run whose inputs, would exceed this many bytes
    /// (suffixes K, M, G). Default: 6G.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(super) max_memory: Option<u64>,
    /// Generate fewer tokens (at least 3) in a cell whose first token implies more than this
    /// many seconds for all of them. Default: 20.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub(super) cell_seconds: Option<f64>,
    /// Worker threads; default: all cores.
    #[arg(long)]
    pub(super) threads: Option<usize>,
    /// Seed of the inputs.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// Directory for the CSV and JSON. Default: results.
    #[arg(long, default_value = "results")]
    pub(super) out: PathBuf,
    /// Label appended to the run id.
    #[arg(long, default_value = "decode")]
    pub(super) label: String,
    /// Only write results, no report.
    #[arg(long)]
    pub(super) no_report: bool,
    /// Two short contexts and few tokens, for a smoke run.
    #[arg(long)]
    pub(super) quick: bool,
}

/// The decode configuration of `args` over [`DecodeConfig::default`].
pub(super) fn decode_config(args: &DecodeArgs) -> Result<DecodeConfig, String> {
    let base = DecodeConfig::default();
    let npy_len = match &args.workload {
        Workload::Npy { dir } => {
            Some(crate::workload::npy_dir_len(dir).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let tokens = args
        .tokens
        .unwrap_or(if args.quick { 8 } else { base.tokens });
    if tokens == 0 {
        return Err("--tokens must be at least 1".into());
    }
    let contexts = match (&args.contexts, npy_len) {
        (Some(c), _) => c.0.clone(),
        (None, _) if args.quick => vec![1 << 10, 1 << 12],
        (None, Some(n)) => {
            let last = n.checked_sub(tokens).filter(|&l| l >= 1).ok_or_else(|| {
                format!("the workload has {n} tokens, fewer than --tokens {tokens} plus one")
            })?;
            let mut c: Vec<usize> = (10..)
                .map(|e| 1usize << e)
                .take_while(|&c| c < last)
                .collect();
            c.push(last);
            c
        }
        (None, None) => base.contexts.clone(),
    };
    Ok(DecodeConfig {
        contexts,
        tokens,
        heads: args.heads,
        kv_heads: args.kv_heads,
        head_dim: args.head_dim,
        workload: args.workload.clone(),
        stores: args.kv.clone(),
        stateless: args.stateless,
        memory_budget: args.max_memory.unwrap_or(base.memory_budget),
        cell_budget_s: args.cell_seconds.unwrap_or(base.cell_budget_s),
        seed: args.seed,
        threads: args.threads.unwrap_or(base.threads),
        out_dir: args.out.clone(),
        label: args.label.clone(),
    })
}

#[derive(Debug, Args)]
pub(super) struct MapsArgs {
    /// Inputs: `npy:DIR` (real activations, e.g. npy:tests/data/qkv) or `gaussian`.
    #[arg(long, default_value = "npy:tests/data/qkv", value_parser = parse_workload)]
    pub(super) workload: Workload,
    /// Comma-separated variant specs drawn next to full attention.
    #[arg(
        long,
        value_name = "SPEC,...",
        default_value = "window(w=32),linear(phi=elu1)"
    )]
    pub(super) variants: String,
    /// Heads to draw, e.g. `0,1,2`; default: all.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(super) heads: Option<Vec<usize>>,
    /// Sequence length (a prefix); default: the workload's length, up to 512.
    #[arg(long)]
    pub(super) n: Option<usize>,
    /// Causal masking (the default for npy workloads whose workload.json says causal).
    #[arg(long)]
    pub(super) causal: bool,
    /// Log colour scale (four decades), which shows the tails of the weights.
    #[arg(long)]
    pub(super) log: bool,
    /// Output directory; default: reports/maps-<UTC time>.
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Refuse maps whose inputs and n x n matrices exceed this many bytes (suffixes K, M, G);
    /// default: half the machine's RAM.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(super) max_memory: Option<u64>,
}

#[derive(Debug, Args)]
pub(super) struct CompareArgs {
    /// The reference run's results CSV (several: comma-separated).
    #[arg(
        value_name = "BASE.csv",
        num_args = 1,
        value_delimiter = ',',
        required = true
    )]
    pub(super) base: Vec<PathBuf>,
    /// The run checked against it (several: comma-separated).
    #[arg(
        value_name = "NEW.csv",
        num_args = 1,
        value_delimiter = ',',
        required = true
    )]
    pub(super) new: Vec<PathBuf>,
    /// Exit 1 when any of these holds, comma-separated: `slower` (a cell's verdict),
    /// `slower>P%` (slower by more than P%), `error` (an error regressed), `memory>P%`,
    /// `missing` (a base cell not measured in the new run).
    #[arg(long, value_name = "COND,...", value_delimiter = ',', value_parser = parse_fail_on)]
    pub(super) fail_on: Vec<crate::report::compare::FailOn>,
    /// The smallest time change that counts as slower or faster, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
    pub(super) min_effect: f64,
    /// Compare runs from different machines (a warning instead of an error).
    #[arg(long)]
    pub(super) allow_other_machine: bool,
    /// Compare the new run's variant NEW_SPEC as the base's BASE_SPEC (a candidate
    /// configuration against the current one); repeatable.
    #[arg(long, value_name = "NEW_SPEC=BASE_SPEC", value_parser = crate::report::compare::parse_rename)]
    pub(super) rename: Vec<(String, String)>,
    /// Also write the markdown to this file (never over an existing one).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
}

fn parse_fail_on(text: &str) -> Result<crate::report::compare::FailOn, String> {
    text.parse()
}

#[derive(Debug, Args)]
pub(super) struct SweepArgs {
    /// Comma-separated variant specs, e.g. `full,flash,window(w=128)`; a budget list
    /// `{a,b,...}` stands for each value, e.g. `blocktopk(k={2,4,8})`.
    /// Default: every registered variant's presets.
    #[arg(long, value_name = "SPEC,...")]
    pub(super) variants: Option<String>,
    /// Sequence lengths: a list `256,512,1000` or a doubling range `256..8192` (A, 2A, 4A, ...
    /// up to B).
    /// Default: 256..8192 (256..1024 with --quick).
    #[arg(long, value_name = "LIST|A..B", value_parser = parse_lengths)]
    pub(super) lengths: Option<Lengths>,
    /// Batch size (Gaussian workload). Default: 1.
    #[arg(long)]
    pub(super) batch: Option<usize>,
    /// Query heads (Gaussian workload). Default: 8.
    #[arg(long)]
    pub(super) heads: Option<usize>,
    /// Key/value heads (Gaussian workload); default: --heads.
    #[arg(long)]
    pub(super) kv_heads: Option<usize>,
    /// Head dimension (Gaussian workload). Default: 64.
    #[arg(long)]
    pub(super) head_dim: Option<usize>,
    /// Causal masking (bottom-right aligned); the default for npy workloads whose
    /// workload.json says they were computed causally.
    #[arg(long)]
    pub(super) causal: bool,
    /// ALiBi position biases (per-head slopes 2^(-8k/h)).
    #[arg(long)]
    pub(super) alibi: bool,
    /// tanh soft-capping of the scores at +-C, e.g. 30.
    #[arg(long, value_name = "C")]
    pub(super) softcap: Option<f32>,
    /// Rotary position embedding of Q and K (base 10000 unless given).
    #[arg(long, value_name = "BASE", num_args = 0..=1, default_missing_value = "10000")]
    pub(super) rope: Option<f32>,
    /// Decoding: this many queries (the last positions) against each length of keys; rows
    /// then report their fraction of the measured read bandwidth.
    #[arg(long, value_name = "N")]
    pub(super) n_q: Option<usize>,
    /// Measure the whole multi-head layer (projections + core) around each variant, with
    /// Gaussian X of width --d-model.
    #[arg(long)]
    pub(super) layer: bool,
    /// The layer's model width (with --layer); head_dim becomes d_model / heads.
    #[arg(long, value_name = "N", default_value_t = 512, requires = "layer")]
    pub(super) d_model: usize,
    /// Worker threads; default: all cores.
    #[arg(long)]
    pub(super) threads: Option<usize>,
    /// Inputs: `gaussian`, `gaussian(scale=2)` or `npy:DIR` (real activations, e.g.
    /// npy:tests/data/qkv; shape taken from the files) or `structured(layer=15)` (synthetic,
    /// calibrated to an LLM layer: 0, 15 or 29; any length). Default: for `run`, the bundled LLM
    /// activations npy:tests/data/lm (causal, GQA 9/3, d = 64, n up to 8192); for `sweep`,
    /// gaussian.
    #[arg(long, value_parser = parse_workload)]
    pub(super) workload: Option<Workload>,
    /// Seed of the inputs and of the oracle's row sample. Default: 0.
    #[arg(long)]
    pub(super) seed: Option<u64>,
    /// Query rows (per batch entry and head) the errors are measured on beyond n = 1024: a
    /// seeded sample of N rows including the first and last, or `all` for every row at every
    /// length. Default: 64.
    #[arg(long, value_name = "N|all", value_parser = parse_oracle_rows)]
    pub(super) oracle_rows: Option<OracleRows>,
    /// Interleaved rounds per cell: each length's variants are timed this many times in a
    /// rotating order, and every time, ratio and slope gets a 95% interval from them (at least
    /// 2 for intervals). Default: 3.
    #[arg(long)]
    pub(super) rounds: Option<usize>,
    /// Seeds the error of random-feature variants (FAVOR) is measured over. Default: 5.
    #[arg(long)]
    pub(super) error_seeds: Option<usize>,
    /// Minimum timed calls per cell, over all rounds (default 3; 1 per round with --quick).
    #[arg(long)]
    pub(super) repeats: Option<usize>,
    /// Minimum total timed seconds per cell, over all rounds (default 0.3; 0 with --quick).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub(super) min_time: Option<f64>,
    /// Skip cells whose analytic memory exceeds this many bytes (suffixes K, M, G);
    /// default: half the machine's RAM.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub(super) max_memory: Option<u64>,
    /// Skip a variant's longer lengths once one call took longer than this. Default: 30.
    #[arg(long, value_name = "SECONDS")]
    pub(super) max_seconds: Option<f64>,
    /// Directory for the CSV and JSON. Default: results.
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Label appended to the run id. Default: sweep.
    #[arg(long)]
    pub(super) label: Option<String>,
    /// Few lengths and repeats, for a smoke run (under 30 s).
    #[arg(long)]
    pub(super) quick: bool,
    /// Also write each length's Q, K, V and the f64 oracle's rows as .npy files into
    /// <out>/<run id>-inputs/, for external baselines on the same inputs
    /// (baselines/run.py).
    #[arg(long)]
    pub(super) export_inputs: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Lengths(Vec<usize>);

fn parse_lengths(text: &str) -> Result<Lengths, String> {
    if let Some((a, b)) = text.split_once("..") {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' is not a length"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a == 0 || a > b {
            return Err(format!("range {a}..{b} must have 1 <= start <= end"));
        }
        let mut v = Vec::new();
        let mut n = Some(a);
        while let Some(x) = n.filter(|&x| x <= b) {
            v.push(x);
            n = x.checked_mul(2);
        }
        return Ok(Lengths(v));
    }
    let v = text
        .split(',')
        .map(|s| match s.trim().parse::<usize>() {
            Ok(0) => Err("lengths must be at least 1".to_string()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("'{s}' is not a length")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Lengths(v))
}

/// `--oracle-rows`: a sample size, or every row.
#[derive(Debug, Clone, Copy)]
pub(super) enum OracleRows {
    Sample(usize),
    All,
}

fn parse_oracle_rows(text: &str) -> Result<OracleRows, String> {
    match text.trim() {
        "all" => Ok(OracleRows::All),
        t => match t.parse::<usize>() {
            Ok(n) if n >= 2 => Ok(OracleRows::Sample(n)),
            _ => Err(format!("'{text}' is not a row count (2 or more) or 'all'")),
        },
    }
}

/// The workload `run` measures when none is given: the bundled SmolLM2 layer.
pub(super) const RUN_WORKLOAD: &str = "npy:tests/data/lm";

fn parse_workload(text: &str) -> Result<Workload, String> {
    text.parse().map_err(|e: crate::Error| e.to_string())
}

fn parse_store(text: &str) -> Result<KvStore, String> {
    text.parse().map_err(|e: crate::Error| e.to_string())
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.0..1e6).contains(&s) => Ok(s),
        _ => Err(format!(
            "'{text}' is not a number of seconds (0 or more, below 1e6)"
        )),
    }
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{text}' is not a byte count (e.g. 2000000, 512M, 4G)"))
}

/// The sweep configuration of `args`: every flag given overlaid on
/// [`SweepConfig::quick`] (with `--quick`) or [`SweepConfig::default`]; `run` (the main job)
/// defaults to the bundled LLM activations ([`RUN_WORKLOAD`]). Shape flags that an npy
/// workload would ignore (its shape comes from the files) are an error.
pub(super) fn sweep_config(args: &SweepArgs, run: bool) -> Result<SweepConfig, String> {
    let base = if args.quick {
        SweepConfig::quick()
    } else {
        SweepConfig::default()
    };
    let workload = match &args.workload {
        Some(w) => w.clone(),
        None if run => parse_workload(RUN_WORKLOAD)?,
        None => base.workload.clone(),
    };
    if !matches!(workload, Workload::Gaussian { .. }) {
        let given = [
            ("--batch", args.batch.is_some()),
            ("--heads", args.heads.is_some()),
            ("--kv-heads", args.kv_heads.is_some()),
            ("--head-dim", args.head_dim.is_some()),
            ("--layer", args.layer),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            let default = if args.workload.is_none() {
                " (the default workload of `run`)"
            } else {
                ""
            };
            return Err(format!(
                "{flag} sets the shape of Gaussian inputs, but the workload is {workload}{default}, whose shape is its own; add --workload gaussian to sweep Gaussian inputs"
            ));
        }
        if let Workload::Npy { dir } = &workload
            && args.workload.is_none()
            && !dir.is_dir()
        {
            return Err(format!(
                "the default workload of `run` is {workload}, the LLM activations bundled with the repository, and {} is not a directory here: run from the repository's root, or choose inputs with --workload (e.g. --workload gaussian)",
                dir.display()
            ));
        }
    }
    let mut timing = base.timing;
    if let Some(r) = args.repeats {
        timing.min_repeats = r;
    }
    if let Some(t) = args.min_time {
        timing.min_time = Duration::from_secs_f64(t);
    }
    let (dense_oracle_max, sampled_rows) = match args.oracle_rows {
        None => (base.dense_oracle_max, base.sampled_rows),
        Some(OracleRows::Sample(n)) => (base.dense_oracle_max, n),
        Some(OracleRows::All) => (usize::MAX, base.sampled_rows),
    };
    // Activations a model computed causally (workload.json) are swept causally by default.
    let mut opts = Options::new()
        .causal(args.causal || workload.is_causal_data())
        .alibi(args.alibi);
    opts.softcap = args.softcap;
    opts.rope = args.rope;
    Ok(SweepConfig {
        lengths: args
            .lengths
            .as_ref()
            .map_or(base.lengths.clone(), |l| l.0.clone()),
        batch: args.batch.unwrap_or(base.batch),
        heads: args.heads.unwrap_or(base.heads),
        kv_heads: args.kv_heads.or(args.heads).unwrap_or(base.kv_heads),
        head_dim: args.head_dim.unwrap_or(base.head_dim),
        opts,
        n_q: args.n_q,
        layer: args.layer.then_some(args.d_model),
        threads: args.threads.unwrap_or(base.threads),
        workload,
        seed: args.seed.unwrap_or(base.seed),
        timing,
        rounds: args.rounds.unwrap_or(base.rounds),
        error_seeds: args.error_seeds.unwrap_or(base.error_seeds),
        max_memory: args.max_memory.unwrap_or(base.max_memory),
        max_seconds: args.max_seconds.unwrap_or(base.max_seconds),
        out_dir: args.out.clone().unwrap_or(base.out_dir.clone()),
        label: args.label.clone().unwrap_or(base.label.clone()),
        dense_oracle_max,
        sampled_rows,
        export_inputs: args.export_inputs,
        ..base
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<SweepConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("attnbench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Run(a) => sweep_config(&a, true),
            Command::Sweep(a) => sweep_config(&a, false),
            _ => unreachable!("a sweep command"),
        }
    }

    #[test]
    fn run_measures_the_bundled_llm_layer_causally_and_sweep_stays_gaussian() {
        // Unit tests run in the package root, where the bundled data is.
        let run = config(&["run"]).unwrap();
        assert_eq!(run.workload, parse_workload(RUN_WORKLOAD).unwrap());
        assert!(run.opts.causal, "workload.json says causal");
        assert_eq!(run.lengths, vec![256, 512, 1024, 2048, 4096, 8192]);
        let sweep = config(&["sweep"]).unwrap();
        assert_eq!(sweep.workload, Workload::Gaussian { scale: 1.0 });
        assert!(!sweep.opts.causal);
        let gaussian = config(&["run", "--workload", "gaussian", "--heads", "4"]).unwrap();
        assert_eq!((gaussian.heads, gaussian.opts.causal), (4, false));
        assert!(config(&["run", "--layer"]).unwrap_err().contains("--layer"));
    }

    #[test]
    fn oracle_rows_sets_the_sample_or_every_row() {
        let d = SweepConfig::default();
        let c = config(&["sweep", "--oracle-rows", "256"]).unwrap();
        assert_eq!(
            (c.dense_oracle_max, c.sampled_rows),
            (d.dense_oracle_max, 256)
        );
        let c = config(&["sweep", "--oracle-rows", "all"]).unwrap();
        assert_eq!(c.dense_oracle_max, usize::MAX);
        for bad in ["0", "1", "some", "2.5"] {
            let e = config(&["sweep", "--oracle-rows", bad]).unwrap_err();
            assert!(e.contains("row count"), "{bad}: {e}");
        }
    }

    /// Flags of every subcommand with plausible, extreme and malformed values.
    fn arg_vector() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
        use proptest::prelude::*;
        let command = prop::sample::select(vec![
            "sweep", "run", "decode", "maps", "check", "report", "list",
        ]);
        let flag = prop::sample::select(vec![
            "--variants",
            "--lengths",
            "--batch",
            "--heads",
            "--kv-heads",
            "--head-dim",
            "--causal",
            "--alibi",
            "--softcap",
            "--rope",
            "--n-q",
            "--layer",
            "--d-model",
            "--threads",
            "--workload",
            "--seed",
            "--oracle-rows",
            "--rounds",
            "--error-seeds",
            "--repeats",
            "--min-time",
            "--max-memory",
            "--max-seconds",
            "--label",
            "--quick",
            "--contexts",
            "--tokens",
            "--stores",
            "--cell-seconds",
            "--stateless",
            "--n",
            "--log",
            "--markdown",
            "--no-report",
            "--bogus",
        ]);
        let value = prop_oneof![
            prop::sample::select(vec![
                "0",
                "1",
                "-1",
                "64",
                "1e20",
                "NaN",
                "inf",
                "18446744073709551615",
                "99999999999999999999",
                "256..8192",
                "8192..256",
                "1..1",
                "0..0",
                "16,32,",
                ",",
                "",
                "full",
                "flash,window(w=4)",
                "gaussian",
                "gaussian(scale=0)",
                "npy:/nonexistent",
                "structured(layer=99)",
                "f32,f16",
                "f64",
                "1G",
                "1X",
                "all",
                "2.5",
            ])
            .prop_map(str::to_string),
            "[ -~]{0,12}",
        ];
        (
            command,
            prop::collection::vec((flag, prop::option::of(value)), 0..6),
        )
            .prop_map(|(c, flags)| {
                let mut v = vec!["attnbench".to_string(), c.to_string()];
                for (f, x) in flags {
                    v.push(f.to_string());
                    v.extend(x);
                }
                v
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Parsing and turning flags into a configuration (everything before a run
        /// starts) never panics: it gives a configuration or a message.
        #[test]
        fn any_arguments_parse_to_a_config_or_an_error(args in arg_vector()) {
            let Ok(cli) = Cli::try_parse_from(&args) else {
                return Ok(());
            };
            match cli.command {
                Command::Sweep(a) => drop(sweep_config(&a, false)),
                Command::Run(a) => drop(sweep_config(&a, true)),
                Command::Decode(a) => drop(decode_config(&a)),
                _ => {}
            }
        }
    }
}
