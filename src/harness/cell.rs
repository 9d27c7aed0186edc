//! One (variant, length) cell of a sweep: its guard rails, the peak-heap call and the errors
//! against the oracle ([`Cell::prepare`]), its timed rounds ([`Cell::time_round`]) and the
//! record ([`Cell::finish`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use ndarray::{Array4, Axis};

use super::config::{FLAG_FLOOR, SweepConfig};
use super::inputs::LayerInputs;
use super::memory;
use super::timing::{TimingConfig, minor_faults, samples, summarize, time};
use crate::attention::{Attention, Fidelity, Options, Precision, Problem};
use crate::error::{Error, ErrorKind, Result, panic_message};
use crate::oracle::{
    compare, dropped_mass, dropped_mass_chosen, oracle_chosen, oracle_rows, plain_bf16_rows,
    plain_f32_chosen, plain_f32_rows,
};
use crate::pattern::Pattern;
use crate::results::record::{Record, Status};
use crate::shape::Shape;
use crate::stats::geometric_interval;

/// The run's modifiers as a record column: `alibi;softcap=30;rope=10000`.
pub(super) fn modifiers(opts: &Options) -> String {
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
pub(super) fn too_big(
    run_id: &str,
    cfg: &SweepConfig,
    v: &dyn Attention,
    shape: &Shape,
    bytes: u64,
    held: u64,
) -> Record {
    let mut r = unmeasured(
        run_id,
        v,
        shape,
        cfg.opts.causal,
        cfg.threads,
        cfg.workload.to_string(),
    );
    r.modifiers = modifiers(&cfg.opts);
    r.d_model = cfg.layer;
    r.status = Status::Skipped;
    r.note = format!(
        "the inputs and oracle rows alone need ~{} MB{}, over --max-memory {} MB",
        bytes >> 20,
        if held > 0 {
            format!(" beside the {} MB held for the other lengths", held >> 20)
        } else {
            String::new()
        },
        cfg.max_memory >> 20
    );
    r
}

/// Everything one (variant, length) cell is measured against.
pub(super) struct Cell<'a> {
    pub(super) cfg: &'a SweepConfig,
    pub(super) run_id: &'a str,
    pub(super) problem: &'a Problem<'a>,
    pub(super) rows: &'a [usize],
    pub(super) dense: &'a Array4<f64>,
    /// The names of the batch entries when the workload stacks several inputs (an `npy:`
    /// directory's triples), for the per-input errors; empty otherwise.
    pub(super) inputs: &'a [String],
    /// The GEMM reference rate at this shape, GFLOP/s.
    pub(super) gemm_rate: f64,
    /// The FMA peak of the run's threads, GFLOP/s.
    pub(super) peak: f64,
    /// The measured read bandwidth, GB/s.
    pub(super) bandwidth: f64,
    pub(super) layer: Option<&'a LayerInputs>,
}

/// A cell that passed its guard rails and its untimed measurements, waiting for its rounds.
pub(super) struct Pending<'v> {
    v: &'v dyn Attention,
    record: Record,
    out: Array4<f32>,
    /// The timed calls of each round so far.
    rounds: Vec<Vec<Duration>>,
    /// Minor page faults during the timed calls, when readable.
    faults: Option<u64>,
    /// The duration of the peak-heap call (for the time guard of longer lengths).
    first_call: Duration,
}

impl Pending<'_> {
    /// Rounds timed so far.
    pub(super) fn rounds_done(&self) -> usize {
        self.rounds.len()
    }

    /// Seconds of the cell's one untimed measured call.
    pub(super) fn first_call_seconds(&self) -> f64 {
        self.first_call.as_secs_f64()
    }
}

/// What [`Cell::prepare`] leaves: a finished row (skipped, failed) or a cell to time.
pub(super) enum Prepared<'v> {
    Done(Record),
    Timing(Pending<'v>),
}

impl Cell<'_> {
    pub(super) fn record(&self, v: &dyn Attention) -> Record {
        let mut r = unmeasured(
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

    /// One call of `v` into `out`, a panic being an error.
    fn run(&self, v: &dyn Attention, out: &mut Array4<f32>) -> Result<()> {
        match catch_unwind(AssertUnwindSafe(|| {
            crate::attention::run(v, self.problem, out.view_mut())
        })) {
            Ok(r) => r,
            Err(panic) => Err(Error::new(ErrorKind::Panicked {
                variant: v.to_string(),
                message: panic_message(&panic),
            })),
        }
    }

    /// Guard rails, then everything but the timing: a warm-up call, one call under the
    /// counting allocator, the layer breakdown, and the errors against the oracle.
    pub(super) fn prepare<'v>(
        &self,
        v: &'v dyn Attention,
        last: Option<(usize, f64)>,
    ) -> Prepared<'v> {
        let mut r = self.record(v);
        let p = self.problem;
        let shape = p.shape();
        let mask = p.mask(v.pattern());
        let density = mask.density(shape.geometry());
        r.density = Some(density);
        let cost = v.cost(&shape, &p.opts(), self.cfg.threads);
        r.workspace_bytes = Some(cost.workspace_bytes);
        r.executed_flops = Some(cost.flops);

        let skip = |mut r: Record, note: String| {
            r.status = Status::Skipped;
            r.note = note;
            Prepared::Done(r)
        };
        let reasons = crate::attention::reasons(v, &shape, &p.opts(), false);
        if !reasons.is_empty() {
            return skip(r, reasons.join("; "));
        }
        // Lengths are key lengths (n_q = n_kv, or a fixed n_q when decoding).
        let n_now = p.shape().n_kv();
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
        match self.untimed(v, r) {
            Ok(pending) => Prepared::Timing(pending),
            Err(r) => Prepared::Done(*r),
        }
    }

    fn untimed<'v>(
        &self,
        v: &'v dyn Attention,
        mut r: Record,
    ) -> std::result::Result<Pending<'v>, Box<Record>> {
        let fail = |mut r: Record, e: Error| {
            r.status = Status::Error;
            r.note = e.to_string();
            Box::new(r)
        };
        let p = self.problem;
        let mut out = Array4::<f32>::zeros(p.shape().out_dims());
        // Warm-up (thread pool, caches), then one call under the counting allocator.
        for _ in 0..self.cfg.timing.warmup.max(1) {
            if let Err(e) = self.run(v, &mut out) {
                return Err(fail(r, e));
            }
        }
        let started = std::time::Instant::now();
        let (res, peak) = memory::measure(|| self.run(v, &mut out));
        let first_call = started.elapsed();
        if let Err(e) = res {
            return Err(fail(r, e));
        }
        r.peak_bytes = peak.map(|b| b as u64);
        if let Some(layer) = self.layer {
            match time_layer(self.cfg, layer, v) {
                Ok((total, proj, core)) => {
                    r.layer_ms = Some(total);
                    r.proj_ms = Some(proj);
                    r.core_ms = Some(core);
                }
                Err(e) => return Err(fail(r, e)),
            }
        }
        if let Err(e) = self.errors(v, &out, &mut r) {
            return Err(fail(r, e));
        }
        Ok(Pending {
            v,
            record: r,
            out,
            rounds: Vec::new(),
            faults: Some(0),
            first_call,
        })
    }

    /// The errors of `out` (from `v`) on the oracle rows; for random-feature variants the
    /// mean and spread over [`SweepConfig::error_seeds`] draws: the variant's own and others.
    fn errors(&self, v: &dyn Attention, out: &Array4<f32>, r: &mut Record) -> Result<()> {
        let p = self.problem;
        let got = out.select(Axis(2), self.rows);
        let dense = compare(got.view(), self.dense.view());
        r.err_dense_rel = Some(dense.rel_frobenius);
        r.err_dense_max_abs = Some(dense.max_abs);
        r.err_dense_cosine = Some(dense.mean_cosine);
        r.oracle_rows = Some(self.rows.len());
        let mut by_input = self.errors_by_input(got.view());
        if self.cfg.error_seeds > 1 && v.with_seed(0).is_some() {
            let mut errs = vec![dense.rel_frobenius];
            let mut max_abs = dense.max_abs;
            let mut cosine = vec![dense.mean_cosine];
            let mut other = Array4::<f32>::zeros(p.shape().out_dims());
            // The variant's own draw and `error_seeds - 1` others, from seeds far from the
            // small ones specs use.
            for s in 1..self.cfg.error_seeds as u64 {
                let seed = self
                    .cfg
                    .seed
                    .wrapping_add(s)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let seeded = v.with_seed(seed).expect("a seeded variant reseeds");
                self.run(seeded.as_ref(), &mut other)?;
                let other = other.select(Axis(2), self.rows);
                let e = compare(other.view(), self.dense.view());
                for (sum, e) in by_input.iter_mut().zip(self.errors_by_input(other.view())) {
                    *sum += e;
                }
                errs.push(e.rel_frobenius);
                max_abs = max_abs.max(e.max_abs);
                cosine.push(e.mean_cosine);
            }
            let n = errs.len() as f64;
            let mean = errs.iter().sum::<f64>() / n;
            let sd = (errs.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            r.err_dense_rel = Some(mean);
            r.err_dense_rel_sd = Some(sd);
            r.err_dense_max_abs = Some(max_abs);
            r.err_dense_cosine = Some(cosine.iter().sum::<f64>() / n);
            r.err_seeds = Some(errs.len());
            by_input.iter_mut().for_each(|e| *e /= n);
        }
        r.err_by_input = self
            .inputs
            .iter()
            .zip(&by_input)
            .map(|(name, e)| format!("{name}={e:.6e}"))
            .collect::<Vec<_>>()
            .join(";");
        match v.fidelity() {
            Fidelity::Exact => {
                // The dense oracle is the own one for dense variants; a pattern needs its own.
                let own_oracle = v.pattern().map(|pat| oracle_rows(p, Some(pat), self.rows));
                let reference = own_oracle.as_ref().unwrap_or(self.dense);
                // A bf16 variant is held to a plain bf16 computation (FlashAttention's rule
                // for low precision); err_f32_plain then holds that computation's error.
                let (plain, precision) = match v.precision() {
                    Precision::F32 => (plain_f32_rows(p, v.pattern(), self.rows), "f32"),
                    Precision::Bf16 => (plain_bf16_rows(p, v.pattern(), self.rows), "bf16"),
                };
                own_check(
                    r,
                    &got,
                    reference,
                    (&plain, precision),
                    "its own pattern's oracle",
                );
            }
            Fidelity::Selected => {
                let Some(chosen) = crate::attention::chosen(v, p, self.rows)? else {
                    return Err(Error::bad_spec(
                        v.to_string(),
                        "a selected variant must report the keys it chose (Attention::chosen)",
                    ));
                };
                let reference = oracle_chosen(p, &chosen);
                let plain = plain_f32_chosen(p, &chosen);
                own_check(
                    r,
                    &got,
                    &reference,
                    (&plain, "f32"),
                    "the oracle under the keys it chose",
                );
                r.dropped_mass = Some(dropped_mass_chosen(p, &chosen));
                // The density of the keys it chose over the oracle rows, for its useful flops.
                let shape = p.shape();
                let all = shape.batch() * shape.heads() * self.rows.len() * shape.n_kv();
                r.density = Some(chosen.pairs() as f64 / all.max(1) as f64);
            }
            Fidelity::Approximate | Fidelity::OtherKernel => {}
        }
        if let Some(pat) = v.pattern() {
            // Over the oracle rows, as the errors (and as the column is documented).
            r.dropped_mass = Some(dropped_mass(p, pat as &dyn Pattern, self.rows));
        }
        Ok(())
    }

    /// The relative error against the dense oracle of each batch entry of `got` (the oracle
    /// rows of the output), when the batch entries are named inputs; empty otherwise.
    fn errors_by_input(&self, got: ndarray::ArrayView4<f32>) -> Vec<f64> {
        if self.inputs.len() < 2 || self.inputs.len() != got.shape()[0] {
            return Vec::new();
        }
        (0..self.inputs.len())
            .map(|b| {
                let one = ndarray::s![b..b + 1, .., .., ..];
                compare(got.slice(one), self.dense.slice(one)).rel_frobenius
            })
            .collect()
    }

    /// One round of timed calls of a pending cell, under `timing` (the cell's share of the
    /// sweep's timing for one round). An error ends the cell as an error row.
    pub(super) fn time_round(
        &self,
        pending: &mut Pending<'_>,
        timing: &TimingConfig,
    ) -> Result<()> {
        let v = pending.v;
        let out = &mut pending.out;
        let before = minor_faults();
        let samples = samples(timing, || self.run(v, out))?;
        pending.faults = match (pending.faults, before, minor_faults()) {
            (Some(f), Some(a), Some(b)) => Some(f + b.saturating_sub(a)),
            _ => None,
        };
        pending.rounds.push(samples);
        Ok(())
    }

    /// The row of a cell after its rounds: pooled median, per-round medians and the interval,
    /// rates and fractions of the machine's limits.
    /// The cell's row from the rounds timed so far.
    pub(super) fn finish(&self, pending: &Pending<'_>) -> Record {
        let Pending {
            v,
            record,
            rounds,
            faults,
            ..
        } = pending;
        let (v, faults) = (*v, *faults);
        let mut record = record.clone();
        let r = &mut record;
        let all: Vec<Duration> = rounds.iter().flatten().copied().collect();
        if all.is_empty() {
            return record;
        }
        let shape = self.problem.shape();
        let t = summarize(&all);
        let secs = t.median.as_secs_f64();
        r.time_median_ms = Some(secs * 1e3);
        r.time_min_ms = Some(t.min.as_secs_f64() * 1e3);
        r.time_max_ms = Some(t.max.as_secs_f64() * 1e3);
        r.repeats = Some(t.repeats);
        let medians: Vec<f64> = rounds
            .iter()
            .map(|s| summarize(s).median.as_secs_f64() * 1e3)
            .collect();
        r.rounds = Some(medians.len());
        r.round_medians_ms = medians
            .iter()
            .map(|m| format!("{m:.6}"))
            .collect::<Vec<_>>()
            .join(";");
        if let Some((_, ci)) = geometric_interval(&medians) {
            r.time_ci_lo_ms = Some(ci.lo);
            r.time_ci_hi_ms = Some(ci.hi);
        }
        r.page_faults = faults.map(|f| f as f64 / t.repeats as f64);
        let density = r.density.unwrap_or(1.0);
        // From `cost()` in `prepare`.
        let executed = r.executed_flops.unwrap_or(0.0);
        r.executed_gflops = Some(executed / secs / 1e9);
        if matches!(v.fidelity(), Fidelity::Exact | Fidelity::Selected) {
            let per_pair = 2.0 * (shape.head_dim() + shape.v_dim()) as f64;
            let useful = per_pair
                * (shape.n_q() * shape.n_kv() * shape.batch() * shape.heads()) as f64
                * density;
            r.useful_flops = Some(useful);
            r.useful_gflops = Some(useful / secs / 1e9);
        }
        r.pct_of_gemm = Some(100.0 * executed / secs / 1e9 / self.gemm_rate);
        r.pct_of_peak = Some(100.0 * executed / secs / 1e9 / self.peak);
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
        record
    }
}

/// The own check of an exact or selected variant: its error on the oracle rows against its
/// own `reference`, flagged above twice the error of the `plain` implementation (at the
/// variant's precision, named by the pair's second element) under the same keys plus
/// [`FLAG_FLOOR`].
fn own_check(
    r: &mut Record,
    got: &Array4<f32>,
    reference: &Array4<f64>,
    (plain, precision): (&Array4<f32>, &str),
    what: &str,
) {
    let own = compare(got.view(), reference.view());
    let plain = compare(plain.view(), reference.view());
    let tolerance = 2.0 * plain.rel_frobenius + FLAG_FLOOR;
    r.err_own_rel = Some(own.rel_frobenius);
    r.err_own_max_abs = Some(own.max_abs);
    r.err_f32_plain = Some(plain.rel_frobenius);
    r.tolerance = Some(tolerance);
    if own.rel_frobenius.is_nan() || own.rel_frobenius > tolerance {
        r.status = Status::Flagged;
        r.note = format!(
            "error {:.2e} against {what} exceeds {tolerance:.2e} (twice a plain {precision} implementation's {:.2e}, plus {FLAG_FLOOR:e}): a kernel bug",
            own.rel_frobenius, plain.rel_frobenius
        );
    }
}

/// The error row of a pending cell whose timing failed.
pub(super) fn failed(pending: Pending<'_>, e: Error) -> Record {
    let mut r = pending.record;
    r.status = Status::Error;
    r.note = e.to_string();
    r
}

/// The spec of a pending cell's variant.
pub(super) fn spec_of(pending: &Pending<'_>) -> String {
    pending.v.to_string()
}

/// Medians of a whole layer call, its projections and its core, milliseconds.
pub(super) fn time_layer(
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

/// A row for `variant` on `shape` with every measurement empty, status `ok` and no note.
/// (`Record::default()` is blank: no variant, no shape, status `ok`.)
pub(super) fn unmeasured(
    run_id: &str,
    variant: &dyn crate::attention::Attention,
    shape: &crate::shape::Shape,
    causal: bool,
    threads: usize,
    workload: String,
) -> Record {
    Record {
        run_id: run_id.to_string(),
        variant: variant.to_string(),
        name: variant.name().to_string(),
        fidelity: variant.fidelity(),
        batch: shape.batch(),
        heads: shape.heads(),
        kv_heads: shape.kv_heads(),
        n_q: shape.n_q(),
        n_kv: shape.n_kv(),
        head_dim: shape.head_dim(),
        causal,
        threads,
        workload,
        ..Record::default()
    }
}
