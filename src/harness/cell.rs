//! One (variant, length) cell of a sweep: its guard rails, the peak-heap call, the timed
//! calls, the errors against the oracle and the record.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ndarray::{Array4, Axis};

use super::config::{FLAG_TOLERANCE, SweepConfig};
use super::inputs::LayerInputs;
use super::memory;
use super::timing::{TimingConfig, time};
use crate::attention::{Attention, Fidelity, Options, Problem};
use crate::error::{Error, ErrorKind, Result};
use crate::oracle::{compare, dropped_mass, oracle_rows};
use crate::pattern::Pattern;
use crate::results::record::{Record, Status};
use crate::shape::Shape;

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
        "the inputs and output alone need ~{} MB, over --max-memory {} MB",
        bytes >> 20,
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
    pub(super) gemm_rate: f64,
    pub(super) peak: f64,
    /// The measured read bandwidth, GB/s.
    pub(super) bandwidth: f64,
    pub(super) layer: Option<&'a LayerInputs>,
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

    pub(super) fn measure(&self, v: &dyn Attention, last: Option<(usize, f64)>) -> Record {
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
            // Over the oracle rows, as the errors (and as the column is documented).
            r.dropped_mass = Some(dropped_mass(p, pat as &dyn Pattern, self.rows));
        }
        r
    }
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

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
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
