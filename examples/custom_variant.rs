//! Plugging variants in from outside the crate, then checking, sweeping and reporting them.
//!
//! Two plug-in paths:
//! 1. a new kernel: `TopK`, which keeps the k largest scores of each row (an approximation of
//!    softmax attention), implements [`Attention`] itself;
//! 2. a new sparsity pattern only: `Checker` implements [`Pattern`] (one method), and
//!    [`Sparse`] runs it exactly on the crate's tiled engine, with no kernel code.
//!
//! Both join a [`Registry`] at run time, so spec strings such as `topk(k=8)` work, the
//! conformance check covers them, and the sweep and report include them.
//!
//! ```text
//! cargo run --release --example custom_variant
//! ```

use std::fmt;

use attnbench::check::{self, Outcome};
use attnbench::harness::memory::CountingAlloc;
use attnbench::harness::sweep::{SweepConfig, run_sweep};
use attnbench::harness::timing::TimingConfig;
use attnbench::registry::{ParamInfo, VariantInfo};
use attnbench::report::write_report;
use attnbench::variants::sparse::Sparse;
use attnbench::{
    Attention, Call, Cost, Fidelity, Geometry, Options, Out, Pattern, Registry, Shape,
};
use ndarray::s;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Path 1: top-k attention, softmax over the k largest scores of each row.
#[derive(Debug)]
struct TopK {
    k: usize,
}

impl fmt::Display for TopK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topk(k={})", self.k)
    }
}

impl Attention for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Approximate
    }

    fn unsupported(&self, _shape: &Shape, opts: &Options) -> Vec<String> {
        if opts.causal {
            vec!["this example implements bidirectional top-k only".into()]
        } else {
            Vec::new()
        }
    }

    fn cost(&self, s: &Shape, _: &Options, _threads: usize) -> Cost {
        let pairs = (s.batch() * s.heads() * s.n_q() * s.n_kv()) as f64;
        Cost {
            flops: 2.0 * pairs * s.head_dim() as f64,
            workspace_bytes: (s.n_kv() * 8) as u64,
        }
    }

    fn forward(&self, p: &Call<'_>, out: Out<'_>) -> attnbench::Result<()> {
        let mut out = out.into_view();
        let sh = p.shape();
        let mut scores: Vec<(f32, usize)> = Vec::with_capacity(sh.n_kv());
        for b in 0..sh.batch() {
            for h in 0..sh.heads() {
                let kvh = sh.kv_head_of(h);
                let (k, v) = (
                    p.k().slice_move(s![b, kvh, .., ..]),
                    p.v().slice_move(s![b, kvh, .., ..]),
                );
                for i in 0..sh.n_q() {
                    let q = p.q().slice_move(s![b, h, i, ..]);
                    scores.clear();
                    scores.extend((0..sh.n_kv()).map(|j| (p.scale() * q.dot(&k.row(j)), j)));
                    let keep = self.k.min(sh.n_kv());
                    scores.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
                    let top = &scores[..keep];
                    let m = top.iter().map(|s| s.0).fold(f32::NEG_INFINITY, f32::max);
                    let total: f32 = top.iter().map(|s| (s.0 - m).exp()).sum();
                    let mut row = out.slice_mut(s![b, h, i, ..]);
                    row.fill(0.0);
                    for &(score, j) in top {
                        row.scaled_add((score - m).exp() / total, &v.row(j));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Path 2: a pattern only. Query block and key block of equal parity (a checkerboard of
/// 16 x 16 blocks), which includes the diagonal.
#[derive(Debug)]
struct Checker;

impl Pattern for Checker {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        let p = g.pos(i).max(0) as usize;
        (p / 16 + j / 16).is_multiple_of(2)
    }
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("checker")
    }
}

fn main() -> attnbench::Result<()> {
    let mut registry = Registry::builtin();
    registry.register(VariantInfo {
        name: "topk",
        summary: "softmax over the k largest scores of each row",
        params: &[ParamInfo {
            name: "k",
            default: "32",
            help: "scores kept per row",
        }],
        presets: &[],
        preview: "",
        build: |p| {
            Ok(Box::new(TopK {
                k: p.positive("k")?,
            }))
        },
    })?;
    registry.register(VariantInfo {
        name: "checker",
        summary: "checkerboard of 16 x 16 blocks, on the tiled engine",
        params: &[],
        presets: &[],
        preview: "",
        build: |_| Ok(Box::new(Sparse::new("checker", Checker))),
    })?;

    // Conformance: the exact pattern variant must match the oracle; top-k reports its error.
    let variants = registry.build_list("checker,topk(k=8)")?;
    for v in &variants {
        let mut worst: f64 = 0.0;
        let mut failures = 0;
        for case in check::cases() {
            match check::check(v.as_ref(), &case, 0) {
                Outcome::Ran { stats, passed } => {
                    worst = worst.max(stats.rel_frobenius);
                    failures += usize::from(!passed);
                }
                Outcome::Unsupported(_) => {}
                Outcome::Failed(e) => return Err(attnbench::Error::bad_spec(v.to_string(), e)),
            }
        }
        println!(
            "check {v}: {failures} failures, worst relative error {worst:.2e} ({})",
            v.fidelity()
        );
        assert_eq!(failures, 0, "{v} failed its conformance check");
    }

    // A small sweep with the built-in baselines, then a report.
    let mut variants = registry.build_list("full,flash")?;
    variants.extend(registry.build_list("checker,topk(k=8)")?);
    let out_dir = std::env::temp_dir().join("attnbench-custom-variant");
    let cfg = SweepConfig {
        lengths: vec![128, 256, 512],
        heads: 2,
        kv_heads: 2,
        head_dim: 32,
        timing: TimingConfig {
            warmup: 1,
            min_repeats: 2,
            min_time: std::time::Duration::ZERO,
            max_repeats: 2,
        },
        out_dir: out_dir.join("results"),
        label: "custom".into(),
        ..SweepConfig::default()
    };
    let sweep = run_sweep(&cfg, &variants, &mut |_| {})?;
    for r in &sweep.records {
        println!(
            "{:<20} n={:<4} {:>8.3} ms  error vs dense {:.2e}  {}",
            r.variant,
            r.n_q,
            r.time_median_ms.unwrap_or(f64::NAN),
            r.err_dense_rel.unwrap_or(f64::NAN),
            r.status
        );
    }
    let report = write_report(
        std::slice::from_ref(&sweep.csv),
        Some(&out_dir.join("report")),
        &registry,
    )?;
    println!("report: {}", report.markdown.display());
    Ok(())
}
