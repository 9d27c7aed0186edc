//! The sweep: every variant at every length, measured for time, peak memory and error, one
//! CSV row per cell.
//!
//! First, per length: inputs are made (or cut from the `.npy` workload), the same-run GEMM
//! reference rate is measured, and the f64 oracle of dense attention is computed once (all
//! rows up to [`SweepConfig::dense_oracle_max`], else a seeded sample of rows, first and last
//! always included). Per variant: guard rails (unsupported shape, analytic memory above the
//! budget, a call at a shorter length over the time budget: `skipped`), then a warm-up call,
//! one call under the counting allocator (peak heap bytes), and the error against the oracle
//! of dense attention and, for exact variants, of their own pattern (`flagged` above twice a
//! plain f32 implementation's error plus [`FLAG_FLOOR`]).
//!
//! Then [`SweepConfig::rounds`] rounds over the whole sweep, the lengths ascending in even
//! rounds and descending in odd ones; at each length the round starts with the drift probe and
//! times every variant's share of the repeats, the variants in an order rotated by one each
//! round. A slow spell of the machine thus falls on different lengths and variants in
//! different rounds, where the intervals see it, instead of biasing one length's slope. The
//! JSON with every setting is written first; the CSV is rewritten whole after every length
//! of every round, so an interrupted run keeps what it measured. A variant that errors or
//! panics is recorded as `error`; the sweep goes on. With [`SweepConfig::export_inputs`],
//! each length's inputs and oracle rows are written beside the run (module `export`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use ndarray::Array4;

use super::artefacts::write_gallery;
use super::cell::{Cell, Prepared, failed, spec_of, too_big};
pub use super::config::{FLAG_FLOOR, SweepConfig};
use super::inputs::{LayerInputs, input_shape, inputs, layer_inputs};
use super::machine::{measure_gemm, probe_gflops};
use super::runfiles::{create_run_files, end_run, replace_csv, utc_iso, utc_stamp};
use super::timing::TimingConfig;
use crate::attention::{Attention, Problem};
use crate::error::panic_message;
use crate::error::{Error, ErrorKind, Result};
use crate::layer::LayerConfig;
use crate::oracle::{oracle_rows, sample_rows};
use crate::results::artefacts::{patterns_path, write_json};
use crate::results::record::{Machine, Probe, Record, RunMeta, RunState, Settings, Status};
use crate::shape::Shape;
use crate::workload::{Workload, load_npy_dir_within};

/// Progress reports during a sweep.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The sweep starts `cells` cells.
    Start {
        /// Number of (variant, length) cells.
        cells: usize,
        /// Steps of work: each cell's untimed measurements and each of its rounds.
        steps: usize,
    },
    /// A round of one length starts.
    Round {
        /// The round, from 0.
        round: usize,
        /// Rounds in all.
        rounds: usize,
        /// The length.
        n: usize,
    },
    /// A step of a cell starts (its untimed measurements, or one round of its timing).
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
        Workload::Npy { dir } => Some(load_npy_dir_within(dir, cfg.max_memory)?),
        Workload::Gaussian { .. } | Workload::Structured { .. } => None,
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
    let head_dim = match (&npy, cfg.layer, &cfg.workload) {
        (Some(data), ..) => data.qkv.q.shape()[3],
        (None, _, Workload::Structured { .. }) => crate::workload::structured::HEAD_DIM,
        (None, Some(d_model), _) => d_model / cfg.heads,
        (None, None, _) => cfg.head_dim,
    };
    cfg.opts.check(head_dim)?;
    match &npy {
        Some(data) => data.meta.check(&cfg.opts)?,
        None => cfg.workload.meta()?.check(&cfg.opts)?,
    }
    let pool = super::thread_pool(cfg.threads)?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
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
        probes: Vec::new(),
        settings: Some(settings(cfg)),
        limits: None,
        state: RunState::Running,
        notes: Vec::new(),
        inputs_dir: cfg.export_inputs.then(|| super::export::dir_name(&run_id)),
    };
    write_json(&json_path, &meta)?;
    let clock = Instant::now();
    let mut records = Vec::new();
    // Everything after the files exist: an error ends the run as `failed` in its metadata.
    let body =
        (|| -> Result<()> {
            // The CSV is rewritten whole (atomically) as cells gain rounds.
            drop(csv_file);
            let export = if cfg.export_inputs {
                Some(super::export::create(&cfg.out_dir, &run_id)?)
            } else {
                None
            };
            progress(Event::Start {
                cells: cfg.lengths.len() * variants.len(),
                steps: cfg.lengths.len() * variants.len() * (1 + cfg.rounds),
            });
            pool.install(|| -> Result<()> {
                progress(Event::Note(
                    "measuring the machine's FMA peak and read bandwidth",
                ));
                let limits = super::machine::measure_limits();
                meta.limits = Some(limits.clone());
                // Each round times its share of the cell's repeats and time.
                let per_round = TimingConfig {
                    warmup: 0,
                    min_repeats: cfg.timing.min_repeats.div_ceil(cfg.rounds),
                    min_time: cfg.timing.min_time / cfg.rounds as u32,
                    max_repeats: (cfg.timing.max_repeats / cfg.rounds).max(1),
                };
                // Inputs of every length first: the rounds revisit every length, so they stay alive
                // (the memory guard counts one length's inputs, as before; the default sweep holds
                // ~100 MB of inputs at once).
                let mut too_big_rows: Vec<(usize, Vec<Record>)> = Vec::new();
                let mut held = Vec::new();
                let mut held_bytes = 0u64;
                for &n in &cfg.lengths {
                    let shape = input_shape(cfg, npy.as_ref(), n)?;
                    // This length's inputs and its oracle's f64 rows, beside those held.
                    let oracle_rows = if shape.n_q() <= cfg.dense_oracle_max {
                        shape.n_q()
                    } else {
                        cfg.sampled_rows.min(shape.n_q())
                    };
                    let oracle = (8 * oracle_rows as u64)
                        .saturating_mul((shape.batch() * shape.heads() * shape.v_dim()) as u64);
                    let io = shape
                        .input_bytes()
                        .saturating_add(shape.output_bytes())
                        .saturating_add(oracle);
                    if io.saturating_add(held_bytes) > cfg.max_memory {
                        let rows = variants
                            .iter()
                            .map(|v| too_big(&run_id, cfg, v.as_ref(), &shape, io, held_bytes))
                            .collect();
                        too_big_rows.push((n, rows));
                        continue;
                    }
                    let layer = layer_inputs(cfg, n)?;
                    let qkv = match &layer {
                        Some(l) => l.qkv()?,
                        None => inputs(cfg, npy.as_ref(), n),
                    };
                    held_bytes += io;
                    held.push((n, qkv, layer));
                }
                let mut lengths = Vec::with_capacity(held.len());
                for (n, qkv, layer) in &held {
                    let problem = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), cfg.opts)?;
                    let shape = problem.shape();
                    let gemm_rate = measure_gemm(shape.n_q(), shape.n_kv(), shape.head_dim());
                    meta.gemm_gflops.push((*n, gemm_rate));
                    let rows = if shape.n_q() <= cfg.dense_oracle_max {
                        (0..shape.n_q()).collect()
                    } else {
                        sample_rows(shape.n_q(), cfg.sampled_rows, cfg.seed)
                    };
                    let dense = oracle_rows(&problem, None, &rows);
                    if let Some(dir) = &export {
                        let e = super::export::Exported {
                            q: problem.q(),
                            k: problem.k(),
                            v: problem.v(),
                            rows: &rows,
                            oracle: &dense,
                        };
                        super::export::write_length(dir, *n, &e)?;
                    }
                    lengths.push(Length {
                        n: *n,
                        problem,
                        rows,
                        dense,
                        gemm_rate,
                        layer: layer.as_ref(),
                    });
                }
                let cells: Vec<Cell<'_>> = lengths
                    .iter()
                    .map(|l| Cell {
                        cfg,
                        run_id: &run_id,
                        problem: &l.problem,
                        rows: &l.rows,
                        dense: &l.dense,
                        inputs: npy.as_ref().map_or(&[], |d| &d.inputs[..]),
                        gemm_rate: l.gemm_rate,
                        peak: limits.peak_for(cfg.threads),
                        bandwidth: limits.read_gbytes_per_s,
                        layer: l.layer,
                    })
                    .collect();
                // Untimed measurements, length by length; the slowest single call at a shorter
                // length decides the time guard.
                let mut last_seconds: Vec<Option<(usize, f64)>> = vec![None; variants.len()];
                let mut prepared: Vec<Vec<Prepared<'_>>> = Vec::with_capacity(cells.len());
                for (cell, l) in cells.iter().zip(&lengths) {
                    let mut row = Vec::with_capacity(variants.len());
                    for (v, last) in variants.iter().zip(last_seconds.iter_mut()) {
                        let spec = v.to_string();
                        progress(Event::Cell {
                            variant: &spec,
                            n: l.n,
                        });
                        // A variant or pattern that panics anywhere (cost, patterns, forward)
                        // becomes an error row; the sweep goes on.
                        let p = catch_unwind(AssertUnwindSafe(|| cell.prepare(v.as_ref(), *last)))
                            .unwrap_or_else(|panic| {
                                let mut r = cell.record(v.as_ref());
                                r.status = Status::Error;
                                r.note = format!("{spec} panicked: {}", panic_message(&panic));
                                Prepared::Done(r)
                            });
                        if let Prepared::Timing(pending) = &p {
                            let t = pending.first_call_seconds();
                            *last = Some(last.map_or((l.n, t), |(ln, lt)| {
                                if t > lt { (l.n, t) } else { (ln, lt) }
                            }));
                        }
                        row.push(p);
                    }
                    prepared.push(row);
                }
                // The rows known so far (a cell's after its first round), rewritten whole after
                // every length of every round: a run cut short keeps what it measured.
                let rows_so_far = |prepared: &[Vec<Prepared<'_>>], all: bool| -> Vec<Record> {
                    let mut finished: Vec<(usize, Vec<Record>)> = too_big_rows.clone();
                    for ((cell, l), row) in cells.iter().zip(&lengths).zip(prepared) {
                        let rows = row
                            .iter()
                            .filter_map(|p| match p {
                                Prepared::Done(r) => Some(r.clone()),
                                Prepared::Timing(pending) if all || pending.rounds_done() > 0 => {
                                    Some(cell.finish(pending))
                                }
                                Prepared::Timing(_) => None,
                            })
                            .collect();
                        finished.push((l.n, rows));
                    }
                    // Rows in length order, then variant order.
                    finished.sort_by_key(|(n, _)| cfg.lengths.iter().position(|m| m == n));
                    finished.into_iter().flat_map(|(_, rows)| rows).collect()
                };
                replace_csv(&csv_path, &rows_so_far(&prepared, false))?;
                // The rounds span the whole sweep, lengths ascending in even rounds and descending
                // in odd ones, so a slow spell of the machine falls on different lengths in
                // different rounds (and shows in the intervals) instead of biasing one length.
                let mut probes: Vec<Vec<f64>> = vec![Vec::new(); lengths.len()];
                for round in 0..cfg.rounds {
                    let order: Vec<usize> = if round % 2 == 0 {
                        (0..lengths.len()).collect()
                    } else {
                        (0..lengths.len()).rev().collect()
                    };
                    for li in order {
                        progress(Event::Round {
                            round,
                            rounds: cfg.rounds,
                            n: lengths[li].n,
                        });
                        probes[li].push(probe_gflops());
                        time_round(
                            &cells[li],
                            &mut prepared[li],
                            round,
                            &per_round,
                            lengths[li].n,
                            progress,
                        );
                        replace_csv(&csv_path, &rows_so_far(&prepared, false))?;
                    }
                }
                for (l, p) in lengths.iter().zip(probes) {
                    meta.probes.push(Probe { n: l.n, gflops: p });
                }
                let all = rows_so_far(&prepared, true);
                replace_csv(&csv_path, &all)?;
                for record in all {
                    progress(Event::Done(&record));
                    records.push(record);
                }
                Ok(())
            })?;
            // The report's artefacts, outside every timed region.
            write_json(&patterns_path(&csv_path), &cfg.previews)?;
            if let Some(data) = &npy {
                progress(Event::Note(
                    "drawing the attention maps of the real activations",
                ));
                if let Err(e) = write_gallery(
                    &csv_path,
                    data,
                    &cfg.workload,
                    variants,
                    cfg.opts,
                    cfg.max_memory,
                ) {
                    meta.notes
                        .push(format!("attention-map gallery not drawn: {e}"));
                }
            }
            Ok(())
        })();
    meta.duration_s = clock.elapsed().as_secs_f64();
    end_run(&json_path, &mut meta, body)?;
    Ok(SweepOutput {
        csv: csv_path,
        json: json_path,
        records,
        meta,
    })
}

/// Every setting of `cfg` for the run's metadata.
fn settings(cfg: &SweepConfig) -> Settings {
    Settings {
        rounds: cfg.rounds,
        warmup: cfg.timing.warmup,
        min_repeats: cfg.timing.min_repeats,
        min_time_s: cfg.timing.min_time.as_secs_f64(),
        max_repeats: cfg.timing.max_repeats,
        batch: cfg.batch,
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        causal: cfg.opts.causal,
        modifiers: super::cell::modifiers(&cfg.opts),
        n_q: cfg.n_q,
        d_model: cfg.layer,
        max_memory: cfg.max_memory,
        max_seconds: cfg.max_seconds,
        dense_oracle_max: cfg.dense_oracle_max,
        sampled_rows: cfg.sampled_rows,
        error_seeds: cfg.error_seeds,
    }
}

/// One length's problem and what its cells are measured against.
struct Length<'a> {
    n: usize,
    problem: Problem<'a>,
    rows: Vec<usize>,
    dense: Array4<f64>,
    gemm_rate: f64,
    layer: Option<&'a LayerInputs>,
}

/// One round of one length: every cell still timing, in an order rotated by `round`; a cell
/// whose timing fails or panics becomes an error row.
fn time_round(
    cell: &Cell<'_>,
    cells: &mut [Prepared<'_>],
    round: usize,
    timing: &TimingConfig,
    n: usize,
    progress: &mut (dyn FnMut(Event<'_>) + Send),
) {
    let live: Vec<usize> = (0..cells.len())
        .filter(|&i| matches!(cells[i], Prepared::Timing(_)))
        .collect();
    for k in 0..live.len() {
        let i = live[(k + round) % live.len()];
        let Prepared::Timing(pending) = &mut cells[i] else {
            continue;
        };
        let spec = spec_of(pending);
        progress(Event::Cell { variant: &spec, n });
        let timed = catch_unwind(AssertUnwindSafe(|| cell.time_round(pending, timing)))
            .unwrap_or_else(|panic| {
                Err(Error::new(ErrorKind::Panicked {
                    variant: spec.clone(),
                    message: panic_message(&panic),
                }))
            });
        if let Err(e) = timed {
            let done = Prepared::Done(Record::default());
            if let Prepared::Timing(pending) = std::mem::replace(&mut cells[i], done) {
                cells[i] = Prepared::Done(failed(pending, e));
            }
        }
    }
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
    super::check_threads(cfg.threads)?;
    if cfg.rounds == 0 {
        return bad("rounds", "must be at least 1".into());
    }
    if cfg.error_seeds == 0 {
        return bad("error-seeds", "must be at least 1".into());
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
        if !matches!(cfg.workload, Workload::Gaussian { .. }) {
            return bad(
                "layer",
                format!(
                    "a layer sweep projects Gaussian X; the {} workload holds Q, K and V already",
                    cfg.workload
                ),
            );
        }
        let lc = LayerConfig::new(d_model, cfg.heads)?.with_kv_heads(cfg.kv_heads)?;
        // Every length keeps a layer of its own (its weights and X) alive for the rounds.
        let per_length = lc.weight_bytes().saturating_add(
            (4 * cfg.batch as u64)
                .saturating_mul(d_model as u64)
                .saturating_mul(2 * cfg.lengths.iter().max().copied().unwrap_or(0) as u64),
        );
        let needed = per_length.saturating_mul(cfg.lengths.len() as u64);
        if needed > cfg.max_memory {
            return bad(
                "d-model",
                format!(
                    "a layer of width {d_model} needs ~{} MB of weights and inputs for the {} lengths, over --max-memory {} MB",
                    needed >> 20,
                    cfg.lengths.len(),
                    cfg.max_memory >> 20
                ),
            );
        }
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
