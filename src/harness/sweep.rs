//! The sweep: every variant at every length, measured for time, peak memory and error, one
//! CSV row per cell, written as it goes.
//!
//! Per length: inputs are made (or cut from the `.npy` workload), the same-run GEMM ceiling is
//! measured, and the f64 oracle of dense attention is computed once (all rows up to
//! [`SweepConfig::dense_oracle_max`], else a seeded sample of rows, first and last always
//! included). Per variant: guard rails first (unsupported shape, analytic memory above the
//! budget, previous length over the time budget: `skipped`), then one warm-up call, one call
//! under the counting allocator (peak heap bytes), timed calls, and the error against the
//! oracle of dense attention and, for exact variants, of their own pattern (`flagged` above
//! [`FLAG_TOLERANCE`]). A variant that errors or panics is recorded as `error`; the sweep goes
//! on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ndarray::{Array2, Array3, Array4, Axis};

use super::artefacts::{Previews, patterns_path, write_gallery, write_json as write_artefact};
use super::machine::Machine;
use super::memory;
use super::record::{Record, RunMeta, Status};
use super::timing::{TimingConfig, time};
use crate::attention::{Attention, Fidelity, Options, Problem};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::gemm::gemm;
use crate::layer::{LayerConfig, MultiHeadAttention, Weights};
use crate::oracle::{compare, dropped_mass, oracle_rows, sample_rows};
use crate::pattern::Pattern;
use crate::shape::Shape;
use crate::workload::{NpyData, Qkv, Workload, gaussian, load_npy_dir};

/// Above this error against its own pattern's oracle, an exact variant's row is `flagged`.
pub const FLAG_TOLERANCE: f64 = 1e-5;

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
    /// Warm-up and repeats.
    pub timing: TimingConfig,
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
    /// Pattern previews written beside the results for the report
    /// ([`artefacts::pattern_previews`](super::artefacts::pattern_previews) of the swept
    /// variants; the CLI fills it from its registry). Default: none.
    pub previews: Previews,
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
            max_memory: super::machine::total_memory().map_or(8 << 30, |m| m / 2),
            max_seconds: 30.0,
            dense_oracle_max: 1024,
            sampled_rows: 64,
            out_dir: PathBuf::from("results"),
            label: "sweep".into(),
            command_line: std::env::args().collect(),
            previews: Previews::default(),
        }
    }
}

impl SweepConfig {
    /// A smoke run: [`SweepConfig::default`] at n = 256, 512, 1024 with one timed call per
    /// cell (`attnbench run --quick`).
    pub fn quick() -> Self {
        Self {
            lengths: vec![256, 512, 1024],
            timing: TimingConfig {
                min_repeats: 1,
                min_time: Duration::ZERO,
                ..TimingConfig::default()
            },
            ..Self::default()
        }
    }
}

/// Progress reports during a sweep.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The sweep starts `cells` cells.
    Start {
        /// Number of (variant, length) cells.
        cells: usize,
    },
    /// A cell starts.
    Cell {
        /// The variant spec.
        variant: &'a str,
        /// The length.
        n: usize,
    },
    /// A cell is done.
    Done(&'a Record),
    /// A message for the user.
    Note(&'a str),
}

/// The files a sweep wrote and its rows.
#[derive(Debug, Clone)]
pub struct SweepOutput {
    /// The CSV.
    pub csv: PathBuf,
    /// The JSON metadata.
    pub json: PathBuf,
    /// Every row written.
    pub records: Vec<Record>,
    /// The metadata written.
    pub meta: RunMeta,
}

/// Runs the sweep and writes `<out_dir>/<run id>.csv` and `.json`, never overwriting an
/// earlier run, and the report's [artefacts](super::artefacts) beside them.
pub fn run_sweep(
    cfg: &SweepConfig,
    variants: &[Box<dyn Attention>],
    progress: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<SweepOutput> {
    validate(cfg, variants)?;
    let npy = match &cfg.workload {
        Workload::Npy { dir } => Some(load_npy_dir(dir)?),
        Workload::Gaussian { .. } => None,
    };
    if let Some(data) = &npy
        && let Some(&n) = cfg.lengths.iter().find(|&&n| n > data.max_len())
    {
        return Err(Error::new(ErrorKind::BadOption {
            option: "lengths",
            message: format!(
                "length {n} exceeds the {} positions of the npy workload",
                data.max_len()
            ),
        }));
    }
    // Options are checked before any file is created.
    let head_dim = match (&npy, cfg.layer) {
        (Some(data), _) => data.qkv.q.shape()[3],
        (None, Some(d_model)) => d_model / cfg.heads,
        (None, None) => cfg.head_dim,
    };
    cfg.opts.check(head_dim)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| {
            Error::new(ErrorKind::BadOption {
                option: "threads",
                message: e.to_string(),
            })
        })?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| io_error(&cfg.out_dir, e))?;
    let started = SystemTime::now();
    let (run_id, csv_path, json_path, csv_file) =
        create_run_files(&cfg.out_dir, &utc_stamp(started), &cfg.label)?;
    let mut meta = RunMeta {
        run_id: run_id.clone(),
        started_utc: utc_iso(started),
        duration_s: 0.0,
        machine: Machine::detect(),
        command_line: cfg.command_line.clone(),
        seed: cfg.seed,
        threads: cfg.threads,
        workload: cfg.workload.to_string(),
        variants: variants.iter().map(|v| v.to_string()).collect(),
        lengths: cfg.lengths.clone(),
        gemm_gflops: Vec::new(),
        limits: None,
    };
    write_json(&json_path, &meta)?;
    let mut writer = csv::Writer::from_writer(csv_file);
    let clock = Instant::now();
    progress(Event::Start {
        cells: cfg.lengths.len() * variants.len(),
    });
    let mut records = Vec::new();
    let mut last_seconds: Vec<Option<(usize, f64)>> = vec![None; variants.len()];
    pool.install(|| -> Result<()> {
        progress(Event::Note(
            "measuring the machine's FMA peak and read bandwidth",
        ));
        let limits = super::machine::measure_limits();
        let peak = limits.fma_gflops_all_threads;
        let limits_bandwidth = limits.read_gbytes_per_s;
        meta.limits = Some(limits);
        for &n in &cfg.lengths {
            let io = input_bytes(cfg, npy.as_ref(), n);
            if io > cfg.max_memory {
                for v in variants {
                    let r = too_big(&run_id, cfg, v.as_ref(), n, io)?;
                    writer.serialize(&r).map_err(|e| csv_error(&csv_path, e))?;
                    writer.flush().map_err(|e| io_error(&csv_path, e))?;
                    progress(Event::Done(&r));
                    records.push(r);
                }
                continue;
            }
            let layer = layer_inputs(cfg, n)?;
            let qkv = match &layer {
                Some(l) => l.qkv()?,
                None => inputs(cfg, npy.as_ref(), n),
            };
            let problem = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), cfg.opts)?;
            let gemm_rate = measure_gemm(n, problem.shape().head_dim());
            meta.gemm_gflops.push((n, gemm_rate));
            let n_q = problem.shape().n_q();
            let rows = if n_q <= cfg.dense_oracle_max {
                (0..n_q).collect()
            } else {
                sample_rows(n_q, cfg.sampled_rows, cfg.seed)
            };
            let dense = oracle_rows(&problem, None, &rows);
            for (v, last) in variants.iter().zip(last_seconds.iter_mut()) {
                let spec = v.to_string();
                progress(Event::Cell { variant: &spec, n });
                let cell = Cell {
                    cfg,
                    run_id: &run_id,
                    problem: &problem,
                    rows: &rows,
                    dense: &dense,
                    gemm_rate,
                    peak,
                    bandwidth: limits_bandwidth,
                    layer: layer.as_ref(),
                };
                // A variant or pattern that panics anywhere (cost, patterns, forward) becomes
                // an error row; the sweep goes on.
                let record = catch_unwind(AssertUnwindSafe(|| cell.measure(v.as_ref(), *last)))
                    .unwrap_or_else(|panic| {
                        let mut r = cell.record(v.as_ref());
                        r.status = Status::Error;
                        r.note = format!("{spec} panicked: {}", panic_message(&panic));
                        r
                    });
                if let Some(t) = record.time_median_ms {
                    // The slowest call at a shorter length decides the time guard.
                    *last = Some(last.map_or((n, t / 1e3), |(ln, lt)| {
                        if t / 1e3 > lt { (n, t / 1e3) } else { (ln, lt) }
                    }));
                }
                writer
                    .serialize(&record)
                    .map_err(|e| csv_error(&csv_path, e))?;
                writer.flush().map_err(|e| io_error(&csv_path, e))?;
                progress(Event::Done(&record));
                records.push(record);
            }
        }
        Ok(())
    })?;
    // The report's artefacts, outside every timed region.
    write_artefact(&patterns_path(&csv_path), &cfg.previews)?;
    if let Some(data) = &npy {
        progress(Event::Note(
            "drawing the attention maps of the real activations",
        ));
        write_gallery(&csv_path, data, &cfg.workload, variants, cfg.opts.causal)?;
    }
    meta.duration_s = clock.elapsed().as_secs_f64();
    write_json(&json_path, &meta)?;
    Ok(SweepOutput {
        csv: csv_path,
        json: json_path,
        records,
        meta,
    })
}

fn validate(cfg: &SweepConfig, variants: &[Box<dyn Attention>]) -> Result<()> {
    let bad = |option: &'static str, message: String| {
        Err(Error::new(ErrorKind::BadOption { option, message }))
    };
    if variants.is_empty() {
        return bad("variants", "no variants to sweep".into());
    }
    if cfg.lengths.is_empty() || cfg.lengths.contains(&0) {
        return bad(
            "lengths",
            format!("lengths must be at least 1, got {:?}", cfg.lengths),
        );
    }
    if cfg.threads == 0 {
        return bad("threads", "must be at least 1".into());
    }
    if cfg.timing.min_repeats == 0 {
        return bad("repeats", "must be at least 1".into());
    }
    if !cfg.max_seconds.is_finite() || cfg.max_seconds <= 0.0 {
        return bad(
            "max-seconds",
            format!("must be positive, got {}", cfg.max_seconds),
        );
    }
    if cfg.n_q == Some(0) {
        return bad("n-q", "must be at least 1".into());
    }
    if let Some(&n) = cfg.n_q.and_then(|q| cfg.lengths.iter().find(|&&n| n < q)) {
        return bad(
            "n-q",
            format!(
                "{} queries are more than the {n} keys of length {n}; decoding needs n_q <= n",
                cfg.n_q.unwrap_or(0)
            ),
        );
    }
    if let Some(d_model) = cfg.layer {
        if matches!(cfg.workload, Workload::Npy { .. }) {
            return bad(
                "layer",
                "a layer sweep projects Gaussian X; the npy workload holds Q, K and V already"
                    .into(),
            );
        }
        LayerConfig::new(d_model, cfg.heads)?.with_kv_heads(cfg.kv_heads)?;
    }
    if matches!(cfg.workload, Workload::Gaussian { .. }) {
        Shape::new(
            cfg.batch,
            cfg.heads,
            cfg.kv_heads,
            1,
            1,
            cfg.head_dim,
            cfg.head_dim,
        )?;
    }
    Ok(())
}

fn inputs(cfg: &SweepConfig, npy: Option<&NpyData>, n: usize) -> Qkv {
    let n_q = cfg.n_q.unwrap_or(n);
    match (npy, &cfg.workload) {
        (Some(data), _) => {
            let mut qkv = data.prefix(n);
            // Decoding queries are the last positions.
            qkv.q = qkv.q.slice(ndarray::s![.., .., n - n_q.., ..]).to_owned();
            qkv
        }
        (None, Workload::Gaussian { scale }) => {
            let shape = Shape::new(
                cfg.batch,
                cfg.heads,
                cfg.kv_heads,
                n_q,
                n,
                cfg.head_dim,
                cfg.head_dim,
            )
            .expect("validated in run_sweep");
            gaussian(&shape, *scale, cfg.seed ^ n as u64)
        }
        (None, Workload::Npy { .. }) => unreachable!("run_sweep loads npy workloads first"),
    }
}

/// The multi-head layer of a layer sweep at one length, with its inputs.
struct LayerInputs {
    layer: MultiHeadAttention,
    x: Array3<f32>,
    memory: Option<Array3<f32>>,
}

impl LayerInputs {
    /// The core's inputs: the projections of `x` (and `memory`).
    fn qkv(&self) -> Result<Qkv> {
        let (q, k, v) = self
            .layer
            .project_qkv(self.x.view(), self.memory.as_ref().map(|m| m.view()))?;
        Ok(Qkv { q, k, v })
    }
}

fn layer_inputs(cfg: &SweepConfig, n: usize) -> Result<Option<LayerInputs>> {
    let Some(d_model) = cfg.layer else {
        return Ok(None);
    };
    let lc = LayerConfig::new(d_model, cfg.heads)?.with_kv_heads(cfg.kv_heads)?;
    let layer = MultiHeadAttention::new(lc, Weights::xavier(&lc, cfg.seed))?;
    let scale = match cfg.workload {
        Workload::Gaussian { scale } => scale,
        Workload::Npy { .. } => unreachable!("validated: layer sweeps use the Gaussian workload"),
    };
    let x = |len: usize, seed: u64| {
        let shape = Shape::new(cfg.batch, 1, 1, 1, len, d_model, d_model).expect("validated");
        let g = gaussian(&shape, scale, seed);
        g.k.index_axis_move(Axis(1), 0)
    };
    let seed = cfg.seed ^ n as u64;
    Ok(Some(match cfg.n_q {
        None => LayerInputs {
            layer,
            x: x(n, seed),
            memory: None,
        },
        Some(n_q) => LayerInputs {
            layer,
            x: x(n_q, seed),
            memory: Some(x(n, seed.wrapping_add(1))),
        },
    }))
}

/// Bytes of Q, K, V and the output at length `n`.
fn input_bytes(cfg: &SweepConfig, npy: Option<&NpyData>, n: usize) -> u64 {
    let (b, h, h_kv, d) = match npy {
        Some(data) => {
            let s = data.qkv.q.shape();
            (s[0], s[1], data.qkv.k.shape()[1], s[3])
        }
        None => (cfg.batch, cfg.heads, cfg.kv_heads, cfg.head_dim),
    };
    let n_q = cfg.n_q.unwrap_or(n) as u128;
    let elems = (b as u128) * (d as u128) * (2 * h as u128 * n_q + 2 * h_kv as u128 * n as u128);
    u64::try_from(elems * 4).unwrap_or(u64::MAX)
}

/// The run's modifiers as a record column: `alibi;softcap=30;rope=10000`.
fn modifiers(opts: &Options) -> String {
    let mut m = Vec::new();
    if opts.alibi {
        m.push("alibi".to_string());
    }
    if let Some(c) = opts.softcap {
        m.push(format!("softcap={c}"));
    }
    if let Some(b) = opts.rope {
        m.push(format!("rope={b}"));
    }
    m.join(";")
}

/// A `skipped` row for a length whose inputs alone exceed the memory budget.
fn too_big(
    run_id: &str,
    cfg: &SweepConfig,
    v: &dyn Attention,
    n: usize,
    bytes: u64,
) -> Result<Record> {
    let shape = Shape::new(
        cfg.batch,
        cfg.heads,
        cfg.kv_heads,
        cfg.n_q.unwrap_or(n),
        n,
        cfg.head_dim,
        cfg.head_dim,
    )?;
    let mut r = Record::unmeasured(
        run_id,
        v,
        &shape,
        cfg.opts.causal,
        cfg.threads,
        cfg.workload.to_string(),
    );
    r.modifiers = modifiers(&cfg.opts);
    r.d_model = cfg.layer;
    r.status = Status::Skipped;
    r.note = format!(
        "the inputs and output alone need ~{} MB, over --max-memory {} MB",
        bytes >> 20,
        cfg.max_memory >> 20
    );
    Ok(r)
}

/// Everything one (variant, length) cell is measured against.
struct Cell<'a> {
    cfg: &'a SweepConfig,
    run_id: &'a str,
    problem: &'a Problem<'a>,
    rows: &'a [usize],
    dense: &'a Array4<f64>,
    gemm_rate: f64,
    peak: f64,
    /// The measured read bandwidth, GB/s.
    bandwidth: f64,
    layer: Option<&'a LayerInputs>,
}

impl Cell<'_> {
    fn record(&self, v: &dyn Attention) -> Record {
        let mut r = Record::unmeasured(
            self.run_id,
            v,
            &self.problem.shape(),
            self.problem.opts().causal,
            rayon::current_num_threads(),
            self.cfg.workload.to_string(),
        );
        r.gemm_gflops = Some(self.gemm_rate);
        r.modifiers = modifiers(&self.problem.opts());
        r.d_model = self.layer.map(|l| l.layer.config().d_model);
        r
    }

    fn measure(&self, v: &dyn Attention, last: Option<(usize, f64)>) -> Record {
        let mut r = self.record(v);
        let p = self.problem;
        let shape = p.shape();
        let mask = p.mask(v.pattern());
        let g = shape.geometry();
        let density = mask.density(g);
        r.density = Some(density);
        let cost = v.cost(&shape, &p.opts(), self.cfg.threads);
        r.workspace_bytes = Some(cost.workspace_bytes);

        let skip = |mut r: Record, note: String| {
            r.status = Status::Skipped;
            r.note = note;
            r
        };
        let reasons = crate::attention::reasons(v, &shape, &p.opts(), false);
        if !reasons.is_empty() {
            return skip(r, reasons.join("; "));
        }
        let n_now = p.shape().n_q();
        if let Some((n, secs)) = last.filter(|&(n, s)| s > self.cfg.max_seconds && n < n_now) {
            return skip(
                r,
                format!(
                    "at n={n} one call took {secs:.1} s, over --max-seconds {}",
                    self.cfg.max_seconds
                ),
            );
        }
        let io_bytes = 4
            * (p.q().len() + p.k().len() + p.v().len() + shape.out_dims().iter().product::<usize>())
                as u64;
        let needed = cost.workspace_bytes + io_bytes;
        if needed > self.cfg.max_memory {
            return skip(
                r,
                format!(
                    "needs ~{} MB (workspace + inputs + output), over --max-memory {} MB",
                    needed >> 20,
                    self.cfg.max_memory >> 20
                ),
            );
        }

        let mut out = Array4::<f32>::zeros(shape.out_dims());
        let run = |out: &mut Array4<f32>| -> Result<()> {
            match catch_unwind(AssertUnwindSafe(|| {
                crate::attention::run(v, p, out.view_mut())
            })) {
                Ok(r) => r,
                Err(panic) => Err(Error::new(ErrorKind::Panicked {
                    variant: v.to_string(),
                    message: panic_message(&panic),
                })),
            }
        };
        let fail = |mut r: Record, e: Error| {
            r.status = Status::Error;
            r.note = e.to_string();
            r
        };
        // Warm-up (thread pool, caches), then one call under the counting allocator.
        if let Err(e) = run(&mut out) {
            return fail(r, e);
        }
        let (res, peak) = memory::measure(|| run(&mut out));
        if let Err(e) = res {
            return fail(r, e);
        }
        r.peak_bytes = peak.map(|b| b as u64);
        let timing = TimingConfig {
            warmup: self.cfg.timing.warmup.saturating_sub(1),
            ..self.cfg.timing
        };
        let t = match time(&timing, || run(&mut out)) {
            Ok(t) => t,
            Err(e) => return fail(r, e),
        };
        let secs = t.median.as_secs_f64();
        r.time_median_ms = Some(secs * 1e3);
        r.time_min_ms = Some(t.min.as_secs_f64() * 1e3);
        r.time_max_ms = Some(t.max.as_secs_f64() * 1e3);
        r.repeats = Some(t.repeats);
        let flops = if v.fidelity() == Fidelity::Exact {
            let per_pair = 2.0 * (shape.head_dim() + shape.v_dim()) as f64;
            per_pair * (shape.n_q() * shape.n_kv() * shape.batch() * shape.heads()) as f64 * density
        } else {
            cost.flops
        };
        r.flops = Some(flops);
        r.gflops = Some(flops / secs / 1e9);
        r.pct_of_gemm = Some(100.0 * flops / secs / 1e9 / self.gemm_rate);
        r.pct_of_peak = Some(100.0 * flops / secs / 1e9 / self.peak);
        if self.cfg.n_q.is_some() {
            // Decoding is bound by reading K and V: the keys the mask allows, or all of them
            // for variants that read every key.
            let kv = (shape.batch()
                * shape.kv_heads()
                * shape.n_kv()
                * (shape.head_dim() + shape.v_dim())) as f64
                * 4.0;
            let read = if v.fidelity() == Fidelity::Exact {
                kv * density
            } else {
                kv
            };
            r.pct_of_bandwidth = Some(100.0 * read / secs / 1e9 / self.bandwidth);
        }
        if let Some(layer) = self.layer {
            match time_layer(self.cfg, layer, v) {
                Ok((total, proj, core)) => {
                    r.layer_ms = Some(total);
                    r.proj_ms = Some(proj);
                    r.core_ms = Some(core);
                }
                Err(e) => return fail(r, e),
            }
        }

        // Errors on the oracle rows.
        let got = out.select(Axis(2), self.rows);
        let dense = compare(got.view(), self.dense.view());
        r.err_dense_rel = Some(dense.rel_frobenius);
        r.err_dense_max_abs = Some(dense.max_abs);
        r.err_dense_cosine = Some(dense.mean_cosine);
        r.oracle_rows = Some(self.rows.len());
        if v.fidelity() == Fidelity::Exact {
            let own = match v.pattern() {
                None => dense,
                Some(pat) => compare(got.view(), oracle_rows(p, Some(pat), self.rows).view()),
            };
            r.err_own_rel = Some(own.rel_frobenius);
            r.err_own_max_abs = Some(own.max_abs);
            if own.rel_frobenius.is_nan() || own.rel_frobenius > FLAG_TOLERANCE {
                r.status = Status::Flagged;
                r.note = format!(
                    "error {:.2e} against its own pattern's oracle exceeds {FLAG_TOLERANCE:e}: a kernel bug",
                    own.rel_frobenius
                );
            }
        }
        if let Some(pat) = v.pattern() {
            let rows: Vec<usize> = if self.rows.len() > 64 {
                sample_rows(shape.n_q(), 64, self.cfg.seed)
            } else {
                self.rows.to_vec()
            };
            r.dropped_mass = Some(dropped_mass(p, pat as &dyn Pattern, &rows));
        }
        r
    }
}

/// Medians of a whole layer call, its projections and its core, milliseconds.
fn time_layer(
    cfg: &SweepConfig,
    layer: &LayerInputs,
    core: &dyn Attention,
) -> Result<(f64, f64, f64)> {
    let mut proj = Vec::new();
    let mut cores = Vec::new();
    let mut call = || -> Result<()> {
        let memory = layer.memory.as_ref().map(|m| m.view());
        let (_, t) = layer
            .layer
            .forward_timed(core, layer.x.view(), memory, &cfg.opts, None)?;
        proj.push(t.projections.as_secs_f64() * 1e3);
        cores.push(t.core.as_secs_f64() * 1e3);
        Ok(())
    };
    let t = time(&cfg.timing, &mut call)?;
    let median = |v: &mut Vec<f64>| {
        // The warm-up calls come first; only the timed ones count.
        let mut timed = v.split_off(v.len() - t.repeats);
        timed.sort_by(f64::total_cmp);
        timed[timed.len() / 2]
    };
    Ok((
        t.median.as_secs_f64() * 1e3,
        median(&mut proj),
        median(&mut cores),
    ))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The GEMM ceiling of attention at length `n`: GFLOP/s of [`gemm()`] running the two products
/// of one head, scores `[r, d] x [d, c]` then `[r, c] x [c, d]`, with `r = min(n, 1024)` query
/// rows and `c = min(n, 16384)` keys, one head per thread at once (capped so the measurement
/// stays small at any length; the rate no longer changes at those sizes). `full` runs exactly
/// these two products plus its softmax, so this is the rate it cannot beat.
pub fn measure_gemm(n: usize, d: usize) -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let rows = n.min(1024);
    let n = n.min(16384);
    let q = Array2::<f32>::from_elem((rows, d), 0.5);
    let k = Array2::<f32>::from_elem((n, d), 0.25);
    let mut work: Vec<(Array2<f32>, Array2<f32>)> = (0..threads)
        .map(|_| (Array2::zeros((rows, n)), Array2::zeros((rows, d))))
        .collect();
    let mut round = || {
        work.par_iter_mut().for_each(|(s, o)| {
            gemm(1.0, &q.view(), &k.t(), 0.0, &mut s.view_mut());
            gemm(1.0, &s.view(), &k.view(), 0.0, &mut o.view_mut());
        });
    };
    round();
    let cfg = TimingConfig {
        warmup: 0,
        min_repeats: 3,
        min_time: Duration::from_millis(100),
        max_repeats: 1000,
    };
    // A ceiling: the best of three medians, so that a neighbour's burst on a shared machine
    // during one of them (seen: 104 GFLOP/s against 160-185 in every other trial) does not
    // lower it.
    let best = (0..3)
        .map(|_| {
            time(&cfg, || {
                round();
                Ok::<(), ()>(())
            })
            .expect("infallible")
            .median
        })
        .min()
        .expect("three trials");
    4.0 * (threads * rows * d * n) as f64 / best.as_secs_f64() / 1e9
}

/// Creates `<dir>/<stamp>-<label>.csv` and `.json`, adding `-2`, `-3`, ... when a run of the
/// same name exists. Files are created with `create_new`, so nothing is ever overwritten.
fn create_run_files(
    dir: &Path,
    stamp: &str,
    label: &str,
) -> Result<(String, PathBuf, PathBuf, File)> {
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    for attempt in 1..10_000 {
        let id = if attempt == 1 {
            format!("{stamp}-{label}")
        } else {
            format!("{stamp}-{label}-{attempt}")
        };
        let csv = dir.join(format!("{id}.csv"));
        let json = dir.join(format!("{id}.json"));
        if json.exists() {
            continue;
        }
        match OpenOptions::new().write(true).create_new(true).open(&csv) {
            Ok(file) => match OpenOptions::new().write(true).create_new(true).open(&json) {
                Ok(_) => return Ok((id, csv, json, file)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&csv);
                    continue;
                }
                Err(e) => return Err(io_error(&json, e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&csv, e)),
        }
    }
    Err(io_error(
        dir,
        std::io::Error::other("too many runs with the same name"),
    ))
}

fn write_json(path: &Path, meta: &RunMeta) -> Result<()> {
    let text = serde_json::to_string_pretty(meta).expect("metadata serializes");
    let mut f = File::create(path).map_err(|e| io_error(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    Error::io(path, e)
}

/// `(year, month, day, hour, minute, second)` in UTC.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `YYYYMMDDTHHMMSSZ`.
pub fn utc_stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_iso(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(0);
        assert_eq!(utc_iso(t), "1970-01-01T00:00:00Z");
        // 2024-02-29 12:34:56 UTC.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(utc_iso(t), "2024-02-29T12:34:56Z");
        assert_eq!(utc_stamp(t), "20240229T123456Z");
    }

    #[test]
    fn run_files_are_never_reused() {
        let dir = std::env::temp_dir().join(format!("attnbench-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = create_run_files(&dir, "20240101T000000Z", "x").unwrap();
        let b = create_run_files(&dir, "20240101T000000Z", "x").unwrap();
        assert_ne!(a.1, b.1);
        assert!(b.0.ends_with("-x-2"), "{}", b.0);
        let c = create_run_files(&dir, "20240101T000000Z", "a/b").unwrap();
        assert!(c.0.ends_with("-a_b"), "{}", c.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
