//! The generation benchmark: per context length, prefill a prompt of that many tokens, then
//! generate (attend) `tokens` more one at a time, for each variant and KV store, measuring
//! the time of every step, the decoder's state bytes, the bytes each step read (as a
//! fraction of the same-run measured read bandwidth) and the error of every generated output
//! against dense f64 attention over the same tokens.
//!
//! Variants without a [`Decoder`] are decoded by [`Stateless`]: the cache kept as arrays and
//! the whole of it passed to [`attention::run`] with one query per call, which is what
//! decoding through the batch interface costs (`mode = stateless` in the results).
//!
//! Inputs are one stream of keys and values of the longest context plus `tokens`, of which
//! every context takes a prefix (so the contexts share their tokens), and the queries of the
//! generated positions: Gaussian, the structured LLM-like generator, or real activations
//! (`npy:`), whose contexts end at the data's length.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, ArrayViewMut3, Axis, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use super::machine::{ReadProbe, measure_limits};
use super::runfiles::{create_run_files, end_run, utc_iso, utc_stamp};
use super::thread_pool;
use crate::attention::{self, Attention, Fidelity, Problem};
use crate::decode::{DecodeOptions, Decoder, KvStore};
use crate::error::panic_message;
use crate::error::{Error, ErrorKind, Result};
use crate::options::Options;
use crate::results::artefacts::write_json;
use crate::results::decode::csv_error;
pub use crate::results::decode::{DecodeMeta, DecodeRecord, read_decode_csv};
use crate::results::record::{Machine, RunState};
use crate::shape::Shape;
use crate::workload::structured::Calibration;
use crate::workload::{Workload, load_npy_dir_within};

/// What a generation benchmark runs.
#[derive(Debug, Clone)]
pub struct DecodeConfig {
    /// Prompt lengths (the context each generated token sees, up to `tokens` more).
    pub contexts: Vec<usize>,
    /// Tokens generated per cell (each one timed).
    pub tokens: usize,
    /// Query heads, KV heads and head dimension of Gaussian inputs (the structured and npy
    /// workloads have their own).
    pub heads: usize,
    /// KV heads (Gaussian).
    pub kv_heads: usize,
    /// Head dimension (Gaussian).
    pub head_dim: usize,
    /// Where the inputs come from.
    pub workload: Workload,
    /// KV stores to run (stores a decoder refuses are recorded as skipped).
    pub stores: Vec<KvStore>,
    /// Decode every variant statelessly (for comparison), not through its decoder.
    pub stateless: bool,
    /// Cells whose state or inputs would exceed this many bytes are skipped.
    pub memory_budget: u64,
    /// A cell whose first step implies more than this many seconds for all `tokens` times
    /// fewer tokens (at least 3), recorded in its row.
    pub cell_budget_s: f64,
    /// The input seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// Where results go.
    pub out_dir: PathBuf,
    /// The run's label (file names).
    pub label: String,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            contexts: vec![1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20],
            tokens: 32,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            workload: Workload::Gaussian { scale: 1.0 },
            stores: vec![KvStore::F32, KvStore::F16],
            stateless: false,
            memory_budget: 6 << 30,
            cell_budget_s: 20.0,
            seed: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            out_dir: PathBuf::from("results"),
            label: "decode".into(),
        }
    }
}

/// The files a run wrote.
#[derive(Debug, Clone)]
pub struct DecodeRun {
    /// Run id.
    pub run_id: String,
    /// The CSV.
    pub csv: PathBuf,
    /// The JSON metadata.
    pub json: PathBuf,
}

/// Decodes any variant through [`attention::run`]: the cache as `[batch, kv_heads, cap,
/// d]` arrays and every step one causal call with one query over all of it.
pub struct Stateless<'a> {
    variant: &'a dyn Attention,
    shape: Shape,
    scale: Option<f32>,
    k: Array4<f32>,
    v: Array4<f32>,
    len: usize,
}

impl<'a> Stateless<'a> {
    /// A stateless decoder of `variant` holding up to `capacity` tokens (it grows beyond).
    pub fn new(variant: &'a dyn Attention, shape: &Shape, opts: &DecodeOptions) -> Result<Self> {
        opts.check()?;
        opts.refuse_store(&variant.to_string())?;
        let cap = opts.capacity.max(1);
        let (b, hk) = (shape.batch(), shape.kv_heads());
        Ok(Self {
            variant,
            shape: *shape,
            scale: opts.scale,
            k: Array4::zeros((b, hk, cap, shape.head_dim())),
            v: Array4::zeros((b, hk, cap, shape.v_dim())),
            len: 0,
        })
    }

    fn reserve(&mut self, n: usize) {
        let cap = self.k.dim().2;
        if n <= cap {
            return;
        }
        let new = n.max(2 * cap);
        let grow = |a: &Array4<f32>| {
            let (b, h, _, d) = a.dim();
            let mut g = Array4::zeros((b, h, new, d));
            g.slice_mut(s![.., .., ..cap, ..]).assign(a);
            g
        };
        self.k = grow(&self.k);
        self.v = grow(&self.v);
    }
}

impl Decoder for Stateless<'_> {
    fn prefill(&mut self, k: ArrayView4<'_, f32>, v: ArrayView4<'_, f32>) -> Result<()> {
        crate::decode::check_prefill(&self.shape, &k, &v)?;
        let p = k.dim().2;
        self.reserve(self.len + p);
        self.k
            .slice_mut(s![.., .., self.len..self.len + p, ..])
            .assign(&k);
        self.v
            .slice_mut(s![.., .., self.len..self.len + p, ..])
            .assign(&v);
        self.len += p;
        Ok(())
    }

    fn step(
        &mut self,
        q: ArrayView3<'_, f32>,
        k: ArrayView3<'_, f32>,
        v: ArrayView3<'_, f32>,
        mut out: ArrayViewMut3<'_, f32>,
    ) -> Result<()> {
        crate::decode::check_step(&self.shape, &q, &k, &v, &out)?;
        self.reserve(self.len + 1);
        self.k.slice_mut(s![.., .., self.len, ..]).assign(&k);
        self.v.slice_mut(s![.., .., self.len, ..]).assign(&v);
        self.len += 1;
        let mut opts = Options::new().causal(true);
        if let Some(sc) = self.scale {
            opts = opts.scale(sc);
        }
        let n = self.len;
        let problem = Problem::new(
            q.insert_axis(Axis(2)),
            self.k.slice(s![.., .., ..n, ..]),
            self.v.slice(s![.., .., ..n, ..]),
            opts,
        )?;
        let (b, h, dv) = out.dim();
        let mut o = Array4::zeros((b, h, 1, dv));
        attention::run(self.variant, &problem, o.view_mut())?;
        out.assign(&o.index_axis(Axis(2), 0));
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn state_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }

    fn bytes_read(&self) -> usize {
        self.len
            * self.shape.batch()
            * self.shape.kv_heads()
            * (self.shape.head_dim() + self.shape.v_dim())
            * 4
    }
}

/// The token stream: keys and values of every position, queries of the generated ones.
struct Stream {
    shape: Shape,
    k: Array4<f32>,
    v: Array4<f32>,
    /// Queries at `context..context + tokens` for one context at a time.
    queries: Box<dyn Fn(usize, usize) -> Array4<f32> + Sync>,
    name: String,
}

fn stream(cfg: &DecodeConfig, len: usize) -> Result<Stream> {
    let t = cfg.tokens;
    match &cfg.workload {
        Workload::Gaussian { scale } => {
            let shape = Shape::new(1, cfg.heads, cfg.kv_heads, 1, 1, cfg.head_dim, cfg.head_dim)?;
            let draw = |dims: (usize, usize, usize, usize), sc: f32, seed: u64| {
                let mut r = StdRng::seed_from_u64(seed);
                Array4::from_shape_simple_fn(dims, || {
                    let x: f32 = StandardNormal.sample(&mut r);
                    x * sc
                })
            };
            let (h, hk, d, sc, seed) = (cfg.heads, cfg.kv_heads, cfg.head_dim, *scale, cfg.seed);
            Ok(Stream {
                shape,
                k: draw((1, hk, len, d), sc, seed),
                v: draw((1, hk, len, d), 1.0, seed.wrapping_add(1)),
                queries: Box::new(move |ctx, n| {
                    draw((1, h, n, d), sc, seed.wrapping_add(2 + ctx as u64))
                }),
                name: cfg.workload.to_string(),
            })
        }
        Workload::Structured { layer } => {
            let cal = Calibration::builtin().layer(*layer).ok_or_else(|| {
                Error::bad_spec(cfg.workload.to_string(), "no such calibrated layer")
            })?;
            let (h, hk) = (cal.heads(), cal.kv_heads());
            let shape = Shape::new(1, h, hk, 1, 1, 64, 64)?;
            let mut k = Array4::zeros((1, hk, len, 64));
            let mut v = Array4::zeros((1, hk, len, 64));
            for g in 0..hk {
                k.slice_mut(s![0, g, .., ..])
                    .assign(&cal.keys(cfg.seed, g, len));
                v.slice_mut(s![0, g, .., ..])
                    .assign(&cal.values(cfg.seed, g, len));
            }
            let cal = cal.clone();
            let seed = cfg.seed;
            Ok(Stream {
                shape,
                k,
                v,
                queries: Box::new(move |ctx, n| {
                    let rows: Vec<usize> = (ctx..ctx + n).collect();
                    let mut q = Array4::zeros((1, h, n, 64));
                    for head in 0..h {
                        q.slice_mut(s![0, head, .., ..]).assign(&cal.queries(
                            &cal.heads[head],
                            seed,
                            head,
                            &rows,
                        ));
                    }
                    q
                }),
                name: cfg.workload.to_string(),
            })
        }
        Workload::Npy { dir } => {
            let data = load_npy_dir_within(dir, cfg.memory_budget)?;
            let qkv = data.qkv;
            let (b, h, n, d) = qkv.q.dim();
            let (_, hk, _, dv) = qkv.v.dim();
            let shape = Shape::new(b, h, hk, 1, 1, d, dv)?;
            let len = len.min(n);
            let q = qkv.q;
            let _ = t;
            Ok(Stream {
                shape,
                k: qkv.k.slice(s![.., .., ..len, ..]).to_owned(),
                v: qkv.v.slice(s![.., .., ..len, ..]).to_owned(),
                queries: Box::new(move |ctx, m| q.slice(s![.., .., ctx..ctx + m, ..]).to_owned()),
                name: cfg.workload.to_string(),
            })
        }
    }
}

/// `bytes` in MiB or GiB for messages.
fn fmt_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// `||got - want||_F / ||want||_F` (the absolute norm when `want` is zero).
fn rel_frobenius(got: &Array4<f32>, want: &Array4<f64>) -> f64 {
    let (mut e, mut w) = (0.0f64, 0.0f64);
    for (&a, &b) in got.iter().zip(want) {
        e += (f64::from(a) - b).powi(2);
        w += b * b;
    }
    if w > 0.0 { (e / w).sqrt() } else { e.sqrt() }
}

/// The error of each output row relative to its reference's norm: `(max, median)`.
fn row_errors(got: &Array4<f32>, want: &Array4<f64>) -> (f64, f64) {
    let dv = want.dim().3;
    let mut errs: Vec<f64> = got
        .to_shape((got.len() / dv, dv))
        .expect("contiguous")
        .outer_iter()
        .zip(
            want.to_shape((want.len() / dv, dv))
                .expect("contiguous")
                .outer_iter(),
        )
        .map(|(a, b)| {
            let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            let e = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (f64::from(x) - y).powi(2))
                .sum::<f64>()
                .sqrt();
            if nb > 0.0 { e / nb } else { e }
        })
        .collect();
    errs.sort_by(f64::total_cmp);
    (
        errs.last().copied().unwrap_or(f64::NAN),
        crate::stats::median(&errs).unwrap_or(f64::NAN),
    )
}

/// The median of `xs` with a 95% distribution-free interval: the order statistics of
/// 1-based ranks `floor((n - 1.96 sqrt n) / 2)` and `ceil(1 + (n + 1.96 sqrt n) / 2)` (the
/// binomial's normal approximation). Below 6 samples even the extremes cover less than 95%,
/// and the interval is NaN (no verdict rests on it).
pub fn median_interval(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = crate::stats::median(&v).unwrap_or(f64::NAN);
    if n < 6 {
        return (median, f64::NAN, f64::NAN);
    }
    let z = 1.96 * (n as f64).sqrt();
    let lo = ((n as f64 - z) / 2.0).floor().max(1.0) as usize - 1;
    let hi = ((1.0 + (n as f64 + z) / 2.0).ceil() as usize).min(n) - 1;
    (median, v[lo], v[hi])
}

/// Runs the benchmark over `variants`, writing `<out_dir>/<stamp>-<label>.csv` and `.json`
/// (never overwriting), one CSV row per cell as it completes. `progress` is told each cell.
pub fn run_decode(
    cfg: &DecodeConfig,
    variants: &[Box<dyn Attention>],
    progress: impl FnMut(&DecodeRecord) + Send,
) -> Result<DecodeRun> {
    if cfg.contexts.is_empty() || cfg.tokens == 0 || variants.is_empty() {
        return Err(ErrorKind::NoInput {
            what: "contexts, tokens and variants to decode",
        }
        .into());
    }
    super::check_threads(cfg.threads)?;
    if cfg.stores.is_empty() {
        return Err(ErrorKind::NoInput {
            what: "KV stores to decode with",
        }
        .into());
    }
    let longest = cfg.contexts.iter().max().copied().unwrap_or(0) + cfg.tokens;
    // The inputs are the run's first allocation: refuse a stream beyond the budget.
    let (kv_heads, head_dim) = match &cfg.workload {
        Workload::Gaussian { .. } => (cfg.kv_heads, cfg.head_dim),
        Workload::Structured { .. } => (3, crate::workload::structured::HEAD_DIM),
        // Files already in memory bound their own size.
        Workload::Npy { .. } => (0, 0),
    };
    let stream_bytes = longest as u64 * kv_heads as u64 * 2 * head_dim as u64 * 4;
    if stream_bytes > cfg.memory_budget {
        return Err(ErrorKind::BadOption {
            option: "contexts",
            message: format!(
                "the inputs of {longest} tokens need {}, beyond the memory budget of {}",
                fmt_bytes(stream_bytes),
                fmt_bytes(cfg.memory_budget)
            ),
        }
        .into());
    }
    thread_pool(cfg.threads)?.install(|| run_in_pool(cfg, variants, progress))
}

fn run_in_pool(
    cfg: &DecodeConfig,
    variants: &[Box<dyn Attention>],
    mut progress: impl FnMut(&DecodeRecord),
) -> Result<DecodeRun> {
    let longest = cfg.contexts.iter().max().copied().unwrap_or(0) + cfg.tokens;
    let st = stream(cfg, longest)?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
    let started = SystemTime::now();
    let t0 = Instant::now();
    let limits = measure_limits();
    let (run_id, csv_path, json_path, file) =
        create_run_files(&cfg.out_dir, &utc_stamp(started), &cfg.label)?;
    let mut writer = csv::Writer::from_writer(file);
    let shape = st.shape;
    let mut meta = DecodeMeta {
        run_id: run_id.clone(),
        started_utc: utc_iso(started),
        duration_s: 0.0,
        machine: Machine::detect(),
        limits: limits.clone(),
        command_line: std::env::args().collect(),
        workload: st.name.clone(),
        shape: [
            shape.batch(),
            shape.heads(),
            shape.kv_heads(),
            shape.head_dim(),
            shape.v_dim(),
        ],
        contexts: cfg.contexts.clone(),
        tokens: cfg.tokens,
        variants: variants.iter().map(|v| v.to_string()).collect(),
        threads: rayon::current_num_threads(),
        seed: cfg.seed,
        state: RunState::Running,
        notes: Vec::new(),
    };
    write_json(&json_path, &meta)?;
    // Everything after the files exist: an error ends the run as `failed` in its metadata.
    let body = (|| -> Result<()> {
        let available = st.k.dim().2;
        let inputs = ((st.k.len() + st.v.len()) * 4) as u64;
        for &ctx in &cfg.contexts {
            let end = ctx + cfg.tokens;
            let base = DecodeRecord {
                variant: String::new(),
                fidelity: String::new(),
                mode: String::new(),
                kv: String::new(),
                context: ctx,
                tokens: 0,
                prefill_s: f64::NAN,
                us_per_token: f64::NAN,
                us_lo: f64::NAN,
                us_hi: f64::NAN,
                state_bytes: 0,
                bytes_per_token: 0,
                read_gbytes_per_s: f64::NAN,
                probe_bytes: 0,
                read_fraction: f64::NAN,
                err_max: f64::NAN,
                err_median: f64::NAN,
                err_own: f64::NAN,
                status: "skipped".into(),
                reason: String::new(),
            };
            if end > available {
                for v in variants {
                    for &store in &cfg.stores {
                        let r = DecodeRecord {
                            variant: v.to_string(),
                            fidelity: v.fidelity().to_string(),
                            kv: store.to_string(),
                            reason: format!(
                                "the workload has {available} tokens, the cell needs {end}"
                            ),
                            ..base.clone()
                        };
                        writer.serialize(&r).map_err(|e| csv_error(&csv_path, e))?;
                        progress(&r);
                    }
                }
                continue;
            }
            let q = (st.queries)(ctx, cfg.tokens);
            let k = st.k.slice(s![.., .., ..end, ..]);
            let v = st.v.slice(s![.., .., ..end, ..]);
            let problem = Problem::new(q.view(), k, v, Options::new().causal(true))?;
            let dense = crate::oracle::oracle(&problem, None);
            // Exact variants are also measured against their own pattern.
            let owns: Vec<Option<Array4<f64>>> = variants
                .iter()
                .map(|variant| match (variant.fidelity(), variant.pattern()) {
                    (Fidelity::Exact, Some(p)) => Some(crate::oracle::oracle(&problem, Some(p))),
                    (Fidelity::Exact, None) => Some(dense.clone()),
                    _ => None,
                })
                .collect();
            // Every cell of the context is built and prefilled, then all are stepped in
            // interleaved rounds, so a slow spell of the shared machine lands on a few tokens of
            // every cell rather than on all tokens of one.
            let mut held = 0u64;
            let mut cells: Vec<Cell<'_>> = Vec::new();
            for (variant, own) in variants.iter().zip(&owns) {
                for &store in &cfg.stores {
                    let input = CellInput {
                        cfg,
                        shape: &shape,
                        ctx,
                        k,
                        v,
                        dense: &dense,
                        own: own.as_ref(),
                    };
                    cells.push(open_cell(
                        &input,
                        variant.as_ref(),
                        store,
                        inputs + held,
                        &base,
                    ));
                    if let Cell::Live(live) = cells.last().expect("pushed") {
                        held += live.dec.state_bytes() as u64;
                    }
                }
            }
            let rounds = ROUNDS.min(cfg.tokens);
            let per_round = cfg.tokens.div_ceil(rounds);
            // The probe buffer counts against the budget: at most what the cells leave.
            let room = cfg.memory_budget.saturating_sub(inputs + held);
            let mut probe = ReadProbe::default();
            for round in 0..rounds {
                let n = cells.len();
                for i in 0..n {
                    let c = &mut cells[(i + round) % n];
                    if let Cell::Live(live) = c {
                        let upto = ((round + 1) * per_round).min(live.planned);
                        if let Err(rec) = live.advance(upto, &q, k, v, ctx) {
                            *c = Cell::Done(rec);
                        }
                    }
                }
                probe_round(&mut cells, &mut probe, room);
            }
            drop(probe);
            for c in cells {
                let r = match c {
                    Cell::Done(r) => *r,
                    Cell::Live(live) => live.finish(),
                };
                writer.serialize(&r).map_err(|e| csv_error(&csv_path, e))?;
                writer.flush().map_err(|e| Error::io(&csv_path, e))?;
                progress(&r);
            }
        }
        writer.flush().map_err(|e| Error::io(&csv_path, e))?;
        let mut file = writer
            .into_inner()
            .map_err(|e| Error::io(&csv_path, std::io::Error::other(e.to_string())))?;
        file.flush().map_err(|e| Error::io(&csv_path, e))?;
        Ok(())
    })();
    meta.duration_s = t0.elapsed().as_secs_f64();
    end_run(&json_path, &mut meta, body)?;
    Ok(DecodeRun {
        run_id,
        csv: csv_path,
        json: json_path,
    })
}

/// Rounds a context's cells are stepped in, interleaved.
const ROUNDS: usize = 4;

/// The largest buffer a read probe reads: beyond every last-level cache seen, so a larger
/// state reads from memory at the rate this measures.
const PROBE_MAX_BYTES: u64 = 1 << 30;

/// Bytes a cell's read probe reads: the bytes its last step read, rounded up to whole MiB
/// (so that a cache growing by a token per step keeps one probe), at most
/// [`PROBE_MAX_BYTES`] and `room` (what the memory budget leaves; at least 1 MiB).
fn probe_bytes(read: u64, room: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    read.max(1)
        .next_multiple_of(MIB)
        .min(PROBE_MAX_BYTES)
        .min(room.max(MIB) / MIB * MIB)
}

/// After a round: probes the read bandwidth once per distinct footprint of the live cells
/// and gives each cell the rate of its own.
fn probe_round(cells: &mut [Cell<'_>], probe: &mut ReadProbe, room: u64) {
    let mut rates: Vec<(u64, f64)> = Vec::new();
    for c in cells {
        if let Cell::Live(live) = c {
            let bytes = probe_bytes(live.dec.bytes_read() as u64, room);
            let rate = match rates.iter().find(|(b, _)| *b == bytes) {
                Some(&(_, r)) => r,
                None => {
                    let r = probe.rate(bytes, 4);
                    rates.push((bytes, r));
                    r
                }
            };
            live.probe_bytes = bytes;
            live.rates.push(rate);
        }
    }
}

/// What every cell of one context shares.
struct CellInput<'a> {
    cfg: &'a DecodeConfig,
    shape: &'a Shape,
    ctx: usize,
    k: ArrayView4<'a, f32>,
    v: ArrayView4<'a, f32>,
    dense: &'a Array4<f64>,
    own: Option<&'a Array4<f64>>,
}

/// A cell: finished (skipped, failed) or live, with a prefilled decoder.
enum Cell<'a> {
    Done(Box<DecodeRecord>),
    Live(Box<Live<'a>>),
}

/// A prefilled decoder and its tokens so far.
struct Live<'a> {
    rec: DecodeRecord,
    store: KvStore,
    tokens: usize,
    dec: Box<dyn Decoder + 'a>,
    dense: &'a Array4<f64>,
    own: Option<&'a Array4<f64>>,
    outs: Array4<f32>,
    times: Vec<f64>,
    planned: usize,
    cell_budget_s: f64,
    /// The read probes after each round, GB/s, and the bytes the last one read.
    rates: Vec<f64>,
    probe_bytes: u64,
}

/// Why a run of a decoder stopped, as the cell's record.
fn failed(mut r: DecodeRecord, outcome: std::thread::Result<Error>) -> DecodeRecord {
    match outcome {
        Ok(e) => {
            let refused = matches!(e.kind(), ErrorKind::Unsupported { .. });
            r.status = if refused { "skipped" } else { "error" }.into();
            r.reason = e.to_string();
        }
        Err(p) => {
            r.status = "error".into();
            r.reason = format!("panicked: {}", panic_message(&p));
        }
    }
    r
}

/// Builds and prefills one cell's decoder, unless its cache would not fit beside the
/// `held` bytes (inputs and the context's other decoders).
fn open_cell<'a>(
    input: &CellInput<'a>,
    variant: &'a dyn Attention,
    store: KvStore,
    held: u64,
    base: &DecodeRecord,
) -> Cell<'a> {
    let (cfg, shape, ctx) = (input.cfg, input.shape, input.ctx);
    let mut r = DecodeRecord {
        variant: variant.to_string(),
        fidelity: variant.fidelity().to_string(),
        kv: store.to_string(),
        ..base.clone()
    };
    let opts = DecodeOptions {
        kv: store,
        capacity: ctx + cfg.tokens,
        ..DecodeOptions::default()
    };
    // Guard rail: a cache of every token must fit beside what is held. Which decoders keep
    // one is known before building any (a decoder allocates its capacity): all but the
    // recurrent states and the ring buffers of streaming patterns. The stateless fallback
    // always keeps one, in f32.
    let bounded = variant.pattern().is_some_and(|p| p.streaming().is_some())
        || matches!(
            variant.fidelity(),
            Fidelity::OtherKernel | Fidelity::Approximate
        );
    let per_token = (shape.batch() * shape.kv_heads() * (shape.head_dim() + shape.v_dim())) as u64;
    let fits = |bytes: u64| -> std::result::Result<(), String> {
        let need = per_token * (ctx + cfg.tokens) as u64 * bytes;
        if need + held <= cfg.memory_budget {
            Ok(())
        } else {
            Err(format!(
                "its cache of {} beside the inputs and the context's other decoders ({}) exceeds the memory budget of {}",
                fmt_bytes(need),
                fmt_bytes(held),
                fmt_bytes(cfg.memory_budget)
            ))
        }
    };
    if cfg.stateless {
        r.mode = "stateless".into();
        if let Err(reason) = fits(4) {
            r.reason = reason;
            return Cell::Done(Box::new(r));
        }
    } else if !bounded && let Err(reason) = fits(store.bytes() as u64) {
        // A stateful cache of this store does not fit, nor would the f32 fallback.
        r.mode = "not built".into();
        r.reason = reason;
        return Cell::Done(Box::new(r));
    }
    let stateful = if cfg.stateless {
        None
    } else {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            variant.decoder(shape, &opts)
        })) {
            Ok(d) => d,
            Err(p) => {
                r.mode = "stateful".into();
                return Cell::Done(Box::new(failed(r, Err(p))));
            }
        }
    };
    r.mode = if stateful.is_some() {
        "stateful"
    } else {
        "stateless"
    }
    .into();
    // A variant without a decoder falls back to f32 arrays of every token, bounded or not.
    if stateful.is_none()
        && !cfg.stateless
        && let Err(reason) = fits(4)
    {
        r.reason = reason;
        return Cell::Done(Box::new(r));
    }
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<(Box<dyn Decoder + 'a>, f64)> {
            let mut dec: Box<dyn Decoder + 'a> = match stateful {
                Some(d) => d?,
                None => Box::new(Stateless::new(variant, shape, &opts)?),
            };
            let t = Instant::now();
            dec.prefill(
                input.k.slice(s![.., .., ..ctx, ..]),
                input.v.slice(s![.., .., ..ctx, ..]),
            )?;
            Ok((dec, t.elapsed().as_secs_f64()))
        },
    ));
    match opened {
        Ok(Ok((dec, prefill_s))) => {
            let (b, h, _, dv) = input.dense.dim();
            r.prefill_s = prefill_s;
            Cell::Live(Box::new(Live {
                rec: r,
                store,
                tokens: cfg.tokens,
                dec,
                dense: input.dense,
                own: input.own,
                outs: Array4::zeros((b, h, cfg.tokens, dv)),
                times: Vec::with_capacity(cfg.tokens),
                planned: cfg.tokens,
                cell_budget_s: cfg.cell_budget_s,
                rates: Vec::new(),
                probe_bytes: 0,
            }))
        }
        Ok(Err(e)) => Cell::Done(Box::new(failed(r, Ok(e)))),
        Err(p) => Cell::Done(Box::new(failed(r, Err(p)))),
    }
}

impl Live<'_> {
    /// Generates tokens up to `upto` (of the queries `q` after the prompt of `ctx`), timing
    /// each; the record of the failure if the decoder fails or panics.
    fn advance(
        &mut self,
        upto: usize,
        q: &Array4<f32>,
        k: ArrayView4<'_, f32>,
        v: ArrayView4<'_, f32>,
        ctx: usize,
    ) -> std::result::Result<(), Box<DecodeRecord>> {
        let (b, h, _, dv) = self.outs.dim();
        let mut o = Array3::zeros((b, h, dv));
        while self.times.len() < upto.min(self.planned) {
            let i = self.times.len();
            let pos = ctx + i;
            let t = Instant::now();
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.dec.step(
                    q.slice(s![.., .., i, ..]),
                    k.slice(s![.., .., pos, ..]),
                    v.slice(s![.., .., pos, ..]),
                    o.view_mut(),
                )
            }));
            let dt = t.elapsed().as_secs_f64();
            match stepped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Box::new(failed(self.rec.clone(), Ok(e)))),
                Err(p) => return Err(Box::new(failed(self.rec.clone(), Err(p)))),
            }
            self.times.push(dt);
            self.outs.slice_mut(s![.., .., i, ..]).assign(&o);
            if i == 0 && dt * self.tokens as f64 > self.cell_budget_s {
                self.planned = ((self.cell_budget_s / dt) as usize).max(3).min(self.tokens);
            }
        }
        Ok(())
    }

    /// The cell's record: times, state, read fraction against the median of its probes and
    /// errors.
    fn finish(mut self) -> DecodeRecord {
        self.rates.sort_by(f64::total_cmp);
        let bandwidth = self
            .rates
            .get(self.rates.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        let n = self.times.len();
        let (med, lo, hi) = median_interval(&self.times);
        let got = self.outs.slice(s![.., .., ..n, ..]).to_owned();
        let (emax, emed) = row_errors(&got, &self.dense.slice(s![.., .., ..n, ..]).to_owned());
        let err_own = self.own.map_or(f64::NAN, |own| {
            rel_frobenius(&got, &own.slice(s![.., .., ..n, ..]).to_owned())
        });
        // NaN (an own reference but no finite error) is flagged too.
        let within = err_own <= crate::check::EXACT_TOLERANCE;
        let flagged = self.store == KvStore::F32 && self.own.is_some() && !within;
        let read = self.dec.bytes_read() as u64;
        DecodeRecord {
            tokens: n,
            us_per_token: med * 1e6,
            us_lo: lo * 1e6,
            us_hi: hi * 1e6,
            state_bytes: self.dec.state_bytes() as u64,
            bytes_per_token: read,
            read_gbytes_per_s: bandwidth,
            probe_bytes: self.probe_bytes,
            read_fraction: read as f64 / med / (bandwidth * 1e9),
            err_max: emax,
            err_median: emed,
            err_own,
            status: if flagged { "flagged" } else { "ok" }.into(),
            reason: if n < self.tokens {
                format!(
                    "{n} of {} tokens: the first took {:.2} s",
                    self.tokens, self.times[0]
                )
            } else {
                String::new()
            },
            ..self.rec
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_reads_the_footprint_in_whole_mib_within_its_caps() {
        const MIB: u64 = 1 << 20;
        let room = 64 << 30;
        assert_eq!(probe_bytes(0, room), MIB);
        assert_eq!(probe_bytes(1, room), MIB);
        assert_eq!(probe_bytes(MIB, room), MIB);
        assert_eq!(probe_bytes(MIB + 1, room), 2 * MIB);
        // A cache growing by a token per step keeps its probe.
        assert_eq!(
            probe_bytes(300 * MIB + 1024, room),
            probe_bytes(300 * MIB + 9000, room)
        );
        assert_eq!(probe_bytes(5 << 30, room), PROBE_MAX_BYTES);
        // What the budget leaves, rounded down to MiB, and never below 1 MiB.
        assert_eq!(probe_bytes(900 * MIB, 100 * MIB + 5), 100 * MIB);
        assert_eq!(probe_bytes(900 * MIB, 0), MIB);
    }
}
