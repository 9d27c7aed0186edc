//! What a variant does to a real model: the perplexity of a Llama-family GGUF model on a
//! text with each variant doing the attention of every layer (or of every layer from
//! `from_layer` on), per context length, next to its time and its error against dense
//! attention on the model's own activations.
//!
//! Per context length `n`, the text's tokens are cut into consecutive windows of `n` (as many
//! whole windows as there are, at most `max_windows`); each window is one forward pass from
//! position 0, and every prediction in it (`n - 1` per window) is scored. `full` runs first at
//! every `n`: it is the reference of `ppl_ratio`, and its first window's Q, K, V at the
//! captured layers (first, middle, last) are the inputs on which every variant's attention
//! output is compared with dense attention's (`err_first`, `err_middle`, `err_last`).
//!
//! Rows go to `results/<stamp>-<label>.csv` (the schema of
//! [`crate::results::perplexity`]), rewritten whole after every row so that a killed run
//! keeps every finished row; the JSON records the model, the tokens and how the run ended.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ndarray::{Array3, Array4, Axis, Ix3, s};

use super::runfiles::{Ending, create_run_files, end_run, utc_iso, utc_stamp};
use super::thread_pool;
use crate::attention::{Attention, Options, Problem, reasons, run};
use crate::error::{Error, ErrorKind, Result};
use crate::model::gguf::Gguf;
use crate::model::llama::{Captured, Llama, LlamaConfig};
use crate::model::tokenizer::{PreTokenizer, Tokenizer};
use crate::results::artefacts::write_json;
use crate::results::perplexity::{ActivationCheck, BUCKETS, PerplexityMeta, PerplexityRecord};
use crate::results::record::{Machine, RunState};

/// Where the tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A 1-D `.npy` of token ids (`<i4` or `<i8`).
    Ids(PathBuf),
    /// A UTF-8 text file, tokenized with the model's own tokenizer, with its own
    /// pre-tokenizer unless one is given.
    Text(PathBuf, Option<PreTokenizer>),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Ids(p) => write!(f, "ids:{}", p.display()),
            TokenSource::Text(p, None) => write!(f, "text:{}", p.display()),
            TokenSource::Text(p, Some(pre)) => {
                let name = match pre {
                    PreTokenizer::Gpt2 => "gpt2",
                    PreTokenizer::Gpt2Digits => "smollm",
                };
                write!(f, "text:{} (pre-tokenizer {name})", p.display())
            }
        }
    }
}

/// A perplexity run's settings.
#[derive(Debug, Clone)]
pub struct PerplexityConfig {
    /// The GGUF model.
    pub model: PathBuf,
    /// The tokens.
    pub tokens: TokenSource,
    /// Context lengths (tokens per window).
    pub lengths: Vec<usize>,
    /// The first layer a variant replaces dense attention in.
    pub from_layer: usize,
    /// At most this many windows per length (all whole windows when `None`).
    pub max_windows: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Where the CSV and JSON go.
    pub out_dir: PathBuf,
    /// The run's label (file names).
    pub label: String,
    /// A directory of independently captured activations to check the model's against:
    /// `*_L<layer>_q.npy`, `_k.npy`, `_v.npy` of shapes `[heads, tokens, head_dim]`.
    pub check_activations: Option<PathBuf>,
    /// Refuse a run whose weights, activations and largest attention workspace would exceed
    /// this many bytes.
    pub max_memory: u64,
}

/// What a finished run wrote.
#[derive(Debug, Clone)]
pub struct PerplexityRun {
    /// The CSV.
    pub csv: PathBuf,
    /// The JSON metadata.
    pub json: PathBuf,
    /// Its rows.
    pub records: Vec<PerplexityRecord>,
    /// Its metadata.
    pub meta: PerplexityMeta,
}

impl Ending for PerplexityMeta {
    fn set_end(&mut self, state: RunState, error: Option<String>) {
        self.state = state;
        self.notes.extend(error);
    }
}

fn bad(option: &'static str, message: String) -> Error {
    Error::new(ErrorKind::BadOption { option, message })
}

/// Reads the tokens of `source`, with `g`'s tokenizer for text.
pub fn load_tokens(source: &TokenSource, g: &Gguf) -> Result<Vec<u32>> {
    match source {
        TokenSource::Ids(p) => crate::npy::read_token_ids(p),
        TokenSource::Text(p, pre) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let tok = Tokenizer::from_gguf_with(g, *pre)?;
            tok.encode(&text)
                .map_err(|m| Error::format(p, m, "tokenizing"))
        }
    }
}

/// The layers whose activations the error columns use: first, middle, last.
pub fn capture_layers(layers: usize) -> Vec<usize> {
    let mut l = vec![0, layers / 2, layers - 1];
    l.dedup();
    l
}

/// Runs the model with `full` and each of `variants` at every length; `progress` sees each
/// row as it is written. `variants` must not be empty; `full` is added first when it is not
/// there.
pub fn run_perplexity(
    cfg: &PerplexityConfig,
    variants: &[Box<dyn Attention>],
    full: Box<dyn Attention>,
    command_line: Vec<String>,
    progress: &mut (dyn FnMut(&PerplexityRecord) + Send),
) -> Result<PerplexityRun> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let model_bytes = std::fs::metadata(&cfg.model).map_or(0, |m| m.len());
    if model_bytes > cfg.max_memory {
        return Err(bad(
            "max-memory",
            format!(
                "the model file has {} MB, over --max-memory {} MB",
                model_bytes >> 20,
                cfg.max_memory >> 20
            ),
        ));
    }
    if cfg.max_windows == Some(0) {
        return Err(bad(
            "max-windows",
            "--max-windows must be at least 1".into(),
        ));
    }
    let g = Gguf::open(&cfg.model)?;
    let tokens = load_tokens(&cfg.tokens, &g)?;
    let c = LlamaConfig::from_gguf(&g)?;
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
        return Err(bad(
            "tokens",
            format!(
                "token id {t} is outside the model's vocabulary of {}",
                c.vocab
            ),
        ));
    }
    if let Some(n) = cfg
        .lengths
        .iter()
        .enumerate()
        .find_map(|(i, n)| cfg.lengths[..i].contains(n).then_some(n))
    {
        return Err(bad("n", format!("n = {n} is given twice")));
    }
    if let Some(dir) = &cfg.check_activations {
        let layers = capture_layers(c.layers);
        let found = activation_files(dir, &layers)?;
        if !found.iter().any(|f| f.iter().all(Option::is_some)) {
            return Err(bad(
                "check-activations",
                format!(
                    "{} holds no *_L<layer>_q.npy, _k.npy and _v.npy for any of layers {layers:?}",
                    dir.display()
                ),
            ));
        }
    }
    super::check_threads(cfg.threads)?;
    if cfg.lengths.is_empty() {
        return Err(bad("n", "no context lengths given".into()));
    }
    for &n in &cfg.lengths {
        if n < 2 || n > c.context {
            return Err(bad(
                "n",
                format!(
                    "n = {n} is outside 2..={}, the model's trained context",
                    c.context
                ),
            ));
        }
        if n > tokens.len() {
            return Err(bad(
                "n",
                format!(
                    "n = {n} is longer than the {} tokens of the text",
                    tokens.len()
                ),
            ));
        }
    }
    if cfg.from_layer >= c.layers {
        return Err(bad(
            "from-layer",
            format!(
                "--from-layer {} is not below the model's {} layers",
                cfg.from_layer, c.layers
            ),
        ));
    }
    let mut all: Vec<&dyn Attention> = vec![full.as_ref()];
    all.extend(
        variants
            .iter()
            .map(|v| v.as_ref())
            .filter(|v| v.to_string() != full.to_string()),
    );
    check_memory(cfg, &c, model_bytes, &all)?;
    let model = Llama::from_gguf(&g)?;
    let stamp = utc_stamp(started);
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
    let (run_id, csv, json, _file) = create_run_files(&cfg.out_dir, &stamp, &cfg.label)?;
    let capture = capture_layers(c.layers);
    let mut meta = PerplexityMeta {
        run_id: run_id.clone(),
        started_utc: utc_iso(started),
        duration_s: 0.0,
        machine: Machine::detect(),
        command_line,
        model_path: cfg.model.display().to_string(),
        model_bytes,
        model_name: g
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        model_shape: [
            c.layers, c.d_model, c.d_ff, c.heads, c.kv_heads, c.head_dim, c.vocab, c.context,
        ],
        tokens_source: cfg.tokens.to_string(),
        tokens: tokens.len(),
        lengths: cfg.lengths.clone(),
        variants: all.iter().map(|v| v.to_string()).collect(),
        from_layer: cfg.from_layer,
        capture_layers: capture.clone(),
        activation_check: Vec::new(),
        threads: cfg.threads,
        state: RunState::Running,
        notes: Vec::new(),
    };
    write_json(&json, &meta)?;
    let mut records = Vec::new();
    let pool = thread_pool(cfg.threads)?;
    let model_name = cfg
        .model
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let body = pool.install(|| -> Result<()> {
        for &n in &cfg.lengths {
            let windows = (tokens.len() / n).min(cfg.max_windows.unwrap_or(usize::MAX));
            let mut reference: Option<Reference> = None;
            let shape = model.shape(n)?;
            for (i, variant) in all.iter().enumerate() {
                let why = reasons(*variant, &shape, &Options::new().causal(true), false);
                let row = if why.is_empty() {
                    Ok(())
                } else {
                    Err(why.join("; "))
                };
                let row = row.map(|()| {
                    cell(
                        &model,
                        &tokens,
                        n,
                        windows,
                        *variant,
                        all[0],
                        i == 0,
                        cfg.from_layer,
                        &capture,
                        &mut reference,
                    )
                });
                let mut r = PerplexityRecord {
                    run_id: run_id.clone(),
                    model: model_name.clone(),
                    n,
                    windows,
                    scored: windows * (n - 1),
                    variant: variant.to_string(),
                    fidelity: variant.fidelity().to_string(),
                    from_layer: cfg.from_layer,
                    status: "ok".into(),
                    ppl: f64::NAN,
                    ppl_ratio: f64::NAN,
                    nll: f64::NAN,
                    ppl_0_256: None,
                    ppl_256_1k: None,
                    ppl_1k_2k: None,
                    ppl_2k_4k: None,
                    ppl_4k_8k: None,
                    ppl_8k_up: None,
                    forward_s: f64::NAN,
                    attention_s: f64::NAN,
                    attention_share: f64::NAN,
                    err_first: None,
                    err_middle: None,
                    err_last: None,
                    threads: cfg.threads,
                    note: String::new(),
                };
                match row {
                    Ok(Ok(cell)) => cell.fill(&mut r, reference.as_ref().map(|x| x.nll), c.layers),
                    Ok(Err(e)) => {
                        r.status = "error".into();
                        r.note = e.to_string();
                    }
                    Err(why) => {
                        r.status = "unsupported".into();
                        r.note = why;
                    }
                }
                if let (Some(dir), Some(reference)) = (&cfg.check_activations, &reference)
                    && meta.activation_check.is_empty()
                {
                    meta.activation_check = check_activations(dir, &reference.captured)?;
                    write_json(&json, &meta)?;
                }
                progress(&r);
                records.push(r);
                super::runfiles::replace_csv(&csv, &records)?;
            }
        }
        Ok(())
    });
    meta.duration_s = clock.elapsed().as_secs_f64();
    end_run(&json, &mut meta, body)?;
    Ok(PerplexityRun {
        csv,
        json,
        records,
        meta,
    })
}

/// The measurements of one (length, variant).
struct Cell {
    nll: Vec<Vec<f64>>,
    forward: Vec<Duration>,
    attention: Vec<Duration>,
    /// `(layer, error)` per captured layer.
    errors: Vec<(usize, f64)>,
}

impl Cell {
    fn fill(&self, r: &mut PerplexityRecord, full_nll: Option<f64>, layers: usize) {
        let all: Vec<f64> = self.nll.iter().flatten().copied().collect();
        r.nll = mean(&all);
        r.ppl = r.nll.exp();
        r.ppl_ratio = full_nll.map_or(f64::NAN, |f| (r.nll - f).exp());
        let buckets = BUCKETS.map(|(a, b, _)| {
            let xs: Vec<f64> = self
                .nll
                .iter()
                .flat_map(|w| w.iter().enumerate())
                .filter(|(p, _)| (a..b).contains(p))
                .map(|(_, &x)| x)
                .collect();
            (!xs.is_empty()).then(|| mean(&xs).exp())
        });
        [
            r.ppl_0_256,
            r.ppl_256_1k,
            r.ppl_1k_2k,
            r.ppl_2k_4k,
            r.ppl_4k_8k,
            r.ppl_8k_up,
        ] = buckets;
        r.forward_s = median(&self.forward);
        r.attention_s = median(&self.attention);
        r.attention_share = r.attention_s / r.forward_s;
        let err = |layer: usize| {
            self.errors
                .iter()
                .find(|(l, _)| *l == layer)
                .map(|&(_, e)| e)
        };
        (r.err_first, r.err_middle, r.err_last) = (err(0), err(layers / 2), err(layers - 1));
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn median(xs: &[Duration]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut s: Vec<f64> = xs.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The reference of one length: dense attention's mean NLL, its first window's captured
/// Q, K, V, and dense attention's output on them.
struct Reference {
    nll: f64,
    captured: Vec<Captured>,
    outputs: Vec<Array4<f32>>,
}

/// Runs `variant` over the windows of `n` tokens, with `dense` in the layers before
/// `from_layer`. When `is_reference`, `variant` is the dense reference itself (`full`): its
/// mean NLL, its first window's activations at `capture` and its outputs on them become
/// `reference`. Otherwise the variant's attention is compared with the reference's, when
/// there is one (there is none when `full` failed at this length).
#[allow(clippy::too_many_arguments)]
fn cell(
    model: &Llama,
    tokens: &[u32],
    n: usize,
    windows: usize,
    variant: &dyn Attention,
    dense: &dyn Attention,
    is_reference: bool,
    from_layer: usize,
    capture: &[usize],
    reference: &mut Option<Reference>,
) -> Result<Cell> {
    let plan: Vec<&dyn Attention> = (0..model.cfg.layers)
        .map(|l| if l < from_layer { dense } else { variant })
        .collect();
    let mut out = Cell {
        nll: Vec::new(),
        forward: Vec::new(),
        attention: Vec::new(),
        errors: Vec::new(),
    };
    let mut captured = Vec::new();
    for w in 0..windows {
        let window = &tokens[w * n..(w + 1) * n];
        let grab: &[usize] = if is_reference && w == 0 { capture } else { &[] };
        let f = model.forward(window, &plan, grab)?;
        if w == 0 {
            captured = f.captured;
        }
        out.nll.push(f.nll);
        out.forward.push(f.total);
        out.attention.push(f.attention);
    }
    match reference {
        None if is_reference => {
            let outputs = captured
                .iter()
                .map(|c| attend(dense, c))
                .collect::<Result<Vec<_>>>()?;
            *reference = Some(Reference {
                nll: mean(&out.nll.iter().flatten().copied().collect::<Vec<_>>()),
                captured,
                outputs,
            });
        }
        Some(r) if !is_reference => {
            for (c, d) in r.captured.iter().zip(&r.outputs) {
                out.errors
                    .push((c.layer, rel_frobenius(&attend(variant, c)?, d)));
            }
        }
        _ => {}
    }
    Ok(out)
}

/// `variant`'s causal attention output on captured activations.
fn attend(variant: &dyn Attention, c: &Captured) -> Result<Array4<f32>> {
    let (q, k, v) = (
        c.q.view().insert_axis(Axis(0)),
        c.k.view().insert_axis(Axis(0)),
        c.v.view().insert_axis(Axis(0)),
    );
    let problem = Problem::new(q, k, v, Options::new().causal(true))?;
    let mut out = Array4::zeros(problem.shape().out_dims());
    run(variant, &problem, out.view_mut())?;
    Ok(out)
}

/// `||a - b|| / ||b||`.
fn rel_frobenius<D: ndarray::Dimension>(
    a: &ndarray::Array<f32, D>,
    b: &ndarray::Array<f32, D>,
) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b.iter()) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    (num / den).sqrt()
}

/// Compares the captured layers with `dir/*_L<layer>_{q,k,v}.npy` (their first `n` tokens);
/// layers without files are left out.
fn check_activations(dir: &Path, caps: &[Captured]) -> Result<Vec<ActivationCheck>> {
    let mut out = Vec::new();
    let layers: Vec<usize> = caps.iter().map(|c| c.layer).collect();
    for (c, [q, k, v]) in caps.iter().zip(activation_files(dir, &layers)?) {
        let (Some(q), Some(k), Some(v)) = (q, k, v) else {
            continue;
        };
        let n = c.q.shape()[1];
        let cmp = |path: &Path, mine: &Array3<f32>| -> Result<f64> {
            let r = crate::npy::read_f32(path)?;
            let r = r
                .into_dimensionality::<Ix3>()
                .map_err(|_| Error::format(path, "expected [heads, tokens, head_dim]", "rank"))?;
            let (h, t, d) = r.dim();
            if h != mine.shape()[0] || d != mine.shape()[2] || t < n {
                return Err(Error::format(
                    path,
                    format!(
                        "shape {:?} does not hold the model's {:?}",
                        r.shape(),
                        mine.shape()
                    ),
                    "shape",
                ));
            }
            Ok(rel_frobenius(mine, &r.slice(s![.., ..n, ..]).to_owned()))
        };
        out.push(ActivationCheck {
            layer: c.layer,
            n,
            q: cmp(&q, &c.q)?,
            k: cmp(&k, &c.k)?,
            v: cmp(&v, &c.v)?,
        });
    }
    Ok(out)
}

/// The `*_L<layer>_q.npy`, `_k.npy`, `_v.npy` files of `dir` for each of `layers`.
fn activation_files(dir: &Path, layers: &[usize]) -> Result<Vec<[Option<PathBuf>; 3]>> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    Ok(layers
        .iter()
        .map(|l| {
            ["q", "k", "v"].map(|what| {
                let suffix = format!("_L{l}_{what}.npy");
                entries
                    .iter()
                    .find(|p| p.to_string_lossy().ends_with(&suffix))
                    .cloned()
            })
        })
        .collect())
}

/// Refuses a run that would not fit in `cfg.max_memory`, before any weight is decoded: the
/// file (held whole), the `f32` weights, the activations of the longest window, and the
/// largest attention workspace.
fn check_memory(
    cfg: &PerplexityConfig,
    c: &LlamaConfig,
    file_bytes: u64,
    variants: &[&dyn Attention],
) -> Result<()> {
    let n = *cfg.lengths.iter().max().expect("checked non-empty");
    let shape = crate::shape::Shape::new(1, c.heads, c.kv_heads, n, n, c.head_dim, c.head_dim)?;
    let opts = Options::new().causal(true);
    let workspace = variants
        .iter()
        .map(|v| v.cost(&shape, &opts, cfg.threads).workspace_bytes)
        .max()
        .unwrap_or(0);
    // Residual, normed copy, Q/K/V and output, the MLP's two hidden layers, 256 rows of
    // logits; the captured layers.
    let width = (4 * c.d_model + 2 * (c.heads + c.kv_heads) * c.head_dim + 3 * c.d_ff) as u64;
    let activations = 4 * (n as u64 * width + 256 * c.vocab as u64)
        + 3 * 4 * n as u64 * ((c.heads + 2 * c.kv_heads) * c.head_dim) as u64 * 2;
    let need = file_bytes + c.weight_bytes() + activations + workspace;
    if need > cfg.max_memory {
        return Err(bad(
            "max-memory",
            format!(
                "the model (its file and {} MB of f32 weights), its activations at n = {n} and the largest attention workspace need {} MB, over --max-memory {} MB",
                c.weight_bytes() >> 20,
                need >> 20,
                cfg.max_memory >> 20
            ),
        ));
    }
    Ok(())
}
