//! `report.md`: the run, a summary, the figures, scaling fits and crossovers with their
//! intervals, the layer breakdown, per-length tables and every skipped, failed or flagged
//! cell.

use std::fmt::Write as _;

use super::data::{self, Results, Series};
use super::figures::FIGURES;
use super::fit::{self, Comparison, Order, Ratio, upper_half, upper_half_fit};
use super::format::{fmt_bytes, fmt_err, fmt_ms, opt};
use crate::results::record::{Record, RunMeta, Status};

/// Fitted slopes and comparisons of one series.
struct Scaling {
    time: Option<fit::Fit>,
    memory: Option<fit::Fit>,
    /// Exact variants: the slope of their allowed pairs, the time slope their pattern implies.
    pairs: Option<fit::Fit>,
    vs_full: Option<Comparison>,
    vs_flash: Option<Comparison>,
    /// Drifting lengths among those the time fit uses.
    drift: Vec<usize>,
}

/// `(n, time)` points of a series: one per round where rounds were recorded.
fn time_points(s: &Series) -> Vec<(f64, f64)> {
    s.points
        .iter()
        .flat_map(|p| {
            let n = p.n as f64;
            if p.rounds.is_empty() {
                vec![(n, p.time_ms)]
            } else {
                p.rounds.iter().map(|&t| (n, t)).collect()
            }
        })
        .collect()
}

/// `(n, per-round medians, median)` of a series, for [`Comparison::new`].
fn timings(s: &Series) -> Vec<(usize, &[f64], f64)> {
    s.points
        .iter()
        .map(|p| (p.n, p.rounds.as_slice(), p.time_ms))
        .collect()
}

fn scaling(s: &Series, all: &[Series], drifting: &[(String, usize)]) -> Scaling {
    let times = time_points(s);
    let mems: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter_map(|p| p.peak_bytes.map(|b| (p.n as f64, b)))
        .collect();
    let pairs: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter_map(|p| p.pairs.map(|x| (p.n as f64, x)))
        .collect();
    let compare = |name: &str| match data::reference(all, name, &s.group) {
        Some(r) if r.label != s.label && (s.external || r.external) => {
            Some(Comparison::unpaired(&timings(s), &timings(r)))
        }
        Some(r) if r.label != s.label => Some(Comparison::new(&timings(s), &timings(r))),
        _ => None,
    };
    let fitted = upper_half(&times);
    let drift = drifting
        .iter()
        .filter(|(run, n)| *run == s.run_id && fitted.contains(&(*n as f64)))
        .map(|&(_, n)| n)
        .collect();
    Scaling {
        time: upper_half_fit(&times),
        memory: upper_half_fit(&mems),
        pairs: upper_half_fit(&pairs),
        vs_full: compare("full"),
        vs_flash: compare("flash"),
        drift,
    }
}

fn fmt_fit(f: Option<fit::Fit>) -> String {
    opt(f, |f| match f.interval {
        Some(ci) => format!(
            "{:.2} [{:.2}, {:.2}] ({} pts)",
            f.slope, ci.lo, ci.hi, f.points
        ),
        None => format!("{:.2} (no interval: {} pts)", f.slope, f.points),
    })
}

fn fmt_comparison(c: &Option<Comparison>) -> String {
    opt(c.as_ref(), |c| c.to_string())
}

/// A row's time: median and 95% interval, or median and min-max without rounds.
fn fmt_time(r: &Record) -> String {
    match (r.time_median_ms, r.time_ci_lo_ms, r.time_ci_hi_ms) {
        (Some(m), Some(lo), Some(hi)) => format!("{} [{}-{}]", fmt_ms(m), fmt_ms(lo), fmt_ms(hi)),
        (Some(m), ..) => match (r.time_min_ms, r.time_max_ms) {
            (Some(lo), Some(hi)) => format!("{} ({}-{})", fmt_ms(m), fmt_ms(lo), fmt_ms(hi)),
            _ => fmt_ms(m),
        },
        _ => "-".into(),
    }
}

/// The comparison cell of `s` against the baseline `name`: `-` for the baseline itself.
fn same_or(all: &[Series], s: &Series, name: &str, c: &Option<Comparison>) -> String {
    if data::reference(all, name, &s.group).is_some_and(|r| r.label == s.label) {
        "-".into()
    } else {
        fmt_comparison(c)
    }
}

/// The drift probe's verdict per length: `(run id, n)` of the lengths where the machine was
/// measurably slower or unsteady, each with a sentence. A length drifts when its median probe
/// rate is more than 10% below the run's median, or its rounds' probes spread by more than
/// 10% of their median: the probe is the same work at every length, so either means the
/// machine changed while that length ran.
pub fn drifting_lengths(meta: &RunMeta) -> Vec<((String, usize), String)> {
    let medians: Vec<f64> = meta
        .probes
        .iter()
        .filter_map(|p| crate::stats::median(&p.gflops))
        .collect();
    let Some(run_median) = crate::stats::median(&medians) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in &meta.probes {
        let Some(m) = crate::stats::median(&p.gflops) else {
            continue;
        };
        let lo = p.gflops.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p.gflops.iter().copied().fold(0.0, f64::max);
        let spread = (hi - lo) / m;
        let rates = p
            .gflops
            .iter()
            .map(|g| format!("{g:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let why = if m < 0.9 * run_median {
            format!(
                "{:.0}% below the run's median of {run_median:.0}",
                100.0 * (1.0 - m / run_median)
            )
        } else if spread > 0.1 {
            format!("spread {:.0}% across its rounds", 100.0 * spread)
        } else {
            continue;
        };
        out.push((
            (meta.run_id.clone(), p.n),
            format!(
                "the drift probe at n = {} measured {rates} GFLOP/s in its rounds, {why}: the machine changed while that length ran, and fits using it are less reliable.",
                p.n
            ),
        ));
    }
    out
}

/// The SIMD target features among a build's compiled-in ones, or a note that only the
/// baseline was compiled in (kernels then choose wider paths at run time).
fn compiled_simd(features: &str) -> String {
    let simd: Vec<&str> = features
        .split(',')
        .filter(|f| f.starts_with("avx") || f.starts_with("fma"))
        .collect();
    if simd.is_empty() {
        "baseline only (wider kernels are chosen at run time)".into()
    } else {
        simd.join(" ")
    }
}

/// One run's shape, as the report states it.
fn shape_line(r: &Record) -> String {
    format!(
        "batch {}, heads {}, kv_heads {}, head_dim {}, {}",
        r.batch,
        r.heads,
        r.kv_heads,
        r.head_dim,
        if r.causal { "causal" } else { "bidirectional" }
    )
}

/// Ways the merged runs differ that a combined report must not hide.
fn merge_warnings(metas: &[RunMeta]) -> Vec<String> {
    let differ = |what: &str, f: &dyn Fn(&RunMeta) -> String| {
        let mut v: Vec<String> = metas.iter().map(f).collect();
        v.sort();
        v.dedup();
        (v.len() > 1).then(|| {
            format!(
                "the merged runs differ in {what} ({}): compare their rows with care",
                v.join(" / ")
            )
        })
    };
    [
        differ("machine", &|m| {
            format!("{} on {}", m.machine.cpu_model, m.machine.host)
        }),
        differ("commit", &|m| {
            m.machine
                .git_commit
                .clone()
                .unwrap_or_else(|| "none".into())
        }),
        differ("threads", &|m| m.threads.to_string()),
        differ("workload", &|m| m.workload.clone()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// What causal masking costs each variant, where the report holds the same cell causal and
/// bidirectional (e.g. two runs differing only in `--causal`): the time ratio at the largest
/// length both have, per variant and thread count. Empty otherwise.
fn causal_section(recs: &[Record]) -> String {
    let mut md = String::new();
    let cell = |r: &Record| {
        (
            r.variant.clone(),
            r.threads,
            r.workload.clone(),
            (r.batch, r.heads, r.kv_heads, r.head_dim),
            r.n_q == r.n_kv,
            r.modifiers.clone(),
            r.d_model,
        )
    };
    let measured = |r: &&Record| r.status.is_measured() && r.time_median_ms.is_some();
    let mut lines = Vec::new();
    let mut done = Vec::new();
    for c in recs.iter().filter(measured).filter(|r| r.causal) {
        let key = cell(c);
        if done.contains(&key) {
            continue;
        }
        // The largest length with both a causal and a bidirectional row.
        let best = recs
            .iter()
            .filter(measured)
            .filter(|b| !b.causal && cell(b) == key)
            .filter_map(|b| {
                let c = recs
                    .iter()
                    .filter(measured)
                    .find(|c| c.causal && cell(c) == key && c.n_kv == b.n_kv)?;
                Some((c, b))
            })
            .max_by_key(|(_, b)| b.n_kv);
        done.push(key);
        let Some((c, b)) = best else { continue };
        let ratio = Ratio::unpaired(
            b.n_kv,
            (
                &data::round_medians(c),
                c.time_median_ms.unwrap_or(f64::NAN),
            ),
            (
                &data::round_medians(b),
                b.time_median_ms.unwrap_or(f64::NAN),
            ),
        );
        lines.push(format!(
            "| `{}` | {} | {} | {:.3} | {:.3} | {:.2}{} |",
            c.variant,
            c.threads,
            c.n_kv,
            c.time_median_ms.unwrap_or(f64::NAN),
            b.time_median_ms.unwrap_or(f64::NAN),
            ratio.ratio,
            ratio
                .interval
                .map_or(String::new(), |ci| format!(" [{:.2}, {:.2}]", ci.lo, ci.hi))
        ));
    }
    if lines.is_empty() {
        return md;
    }
    let _ = writeln!(md, "## Causal masking\n");
    let _ = writeln!(
        md,
        "Time of the causal cell over the bidirectional one at the largest length both have, with the 95% interval of the ratio (Welch's, on the two runs' round medians). Causal masking leaves about half the (query, key) pairs: a kernel that skips the masked ones approaches 0.5; one that masks a full score matrix stays near 1 or above.\n"
    );
    let _ = writeln!(
        md,
        "| variant | threads | n | causal ms | bidirectional ms | causal / bidirectional [95% CI] |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for l in lines {
        let _ = writeln!(md, "{l}");
    }
    let _ = writeln!(md);
    md
}

/// The libraries of the external baselines among `results`, what they are and what was
/// measured about them; empty without baselines.
fn baselines_section(results: &Results) -> String {
    let mut md = String::new();
    if results.baselines.is_empty() {
        return md;
    }
    let _ = writeln!(md, "## External baselines\n");
    let _ = writeln!(
        md,
        "Rows from `baselines/run.py`: other libraries on the sweep's own exported inputs, scored against the same f64 oracle rows, with the same rounds, repeats and threads. Each library runs in its own process per round (its rounds interleave with the other libraries', not with the sweep's variants, which ran before: drift between the two runs is not inside their intervals). Their time includes allocating the output (attnbench's variants write into a buffer allocated once); their `peak_bytes` is the growth of the peak RSS over the first call in a fresh process (output and whatever the library initialises lazily included), where attnbench's is heap bytes above the baseline. Each process warms up with at least two calls (until a call is within 10% of the fastest before it), because one is not enough for every library.\n"
    );
    let _ = writeln!(md, "| library | rows | versions | measured |");
    let _ = writeln!(md, "|---|---|---|---|");
    for b in &results.baselines {
        for lib in &b.libraries {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                lib.name,
                lib.variants
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                lib.versions.join(", "),
                if lib.notes.is_empty() {
                    "-".to_string()
                } else {
                    lib.notes.join("; ")
                }
            );
        }
    }
    let _ = writeln!(md);
    for b in &results.baselines {
        let source = results.metas.iter().find(|m| m.run_id == b.run_id);
        match source {
            None => {
                let _ = writeln!(
                    md,
                    "- **warning**: the baselines of run `{}` are shown without that run's own results",
                    b.run_id
                );
            }
            Some(m) if m.threads != b.threads => {
                let _ = writeln!(
                    md,
                    "- **warning**: the baselines of run `{}` ran on {} threads, the run on {}",
                    b.run_id, b.threads, m.threads
                );
            }
            Some(_) => {}
        }
        let _ = writeln!(
            md,
            "- baselines of run `{}`: Python {}, {} threads, started {}, {:.0} s",
            b.run_id, b.python, b.threads, b.started_utc, b.duration_s
        );
        for s in &b.skipped {
            let _ = writeln!(md, "- not run: {s}");
        }
    }
    let _ = writeln!(md);
    md
}

/// `report.md` of `results` (its series `all`), without the gallery.
pub(super) fn markdown_report(
    results: &Results,
    all: &[Series],
    pareto_n: Option<usize>,
) -> String {
    let mut md = String::new();
    let recs = &results.records;
    let mut run_ids: Vec<&str> = recs.iter().map(|r| r.run_id.as_str()).collect();
    run_ids.dedup();
    let _ = writeln!(md, "# attnbench report: {}\n", run_ids.join(", "));

    // Run metadata.
    let _ = writeln!(md, "## Run\n");
    for w in &results.warnings {
        let _ = writeln!(md, "- {w}");
    }
    for meta in &results.metas {
        let m = &meta.machine;
        let _ = writeln!(
            md,
            "- run `{}`, started {}, {:.0} s",
            meta.run_id, meta.started_utc, meta.duration_s
        );
        let _ = writeln!(
            md,
            "- machine: {} ({} logical CPUs, SIMD: {}, RAM {}), {}",
            m.cpu_model,
            m.cores,
            m.simd.join(" "),
            opt(m.memory_bytes, fmt_bytes),
            m.os
        );
        let _ = writeln!(
            md,
            "- build: attnbench {} ({}), {}",
            m.crate_version,
            m.git_commit.as_deref().unwrap_or("no git commit"),
            m.rustc
        );
        let _ = writeln!(md, "- command: `{}`", meta.command_line.join(" "));
        let _ = writeln!(
            md,
            "- threads {}, seed {}, workload `{}`",
            meta.threads, meta.seed, meta.workload
        );
        if let Some(b) = &m.build {
            let _ = writeln!(
                md,
                "- build settings: profile {}, opt-level {}, RUSTFLAGS `{}`, compiled-in target features {}",
                b.profile,
                b.opt_level,
                b.rustflags,
                compiled_simd(&b.target_features)
            );
        }
        if !m.host.is_empty() || m.thp.is_some() || !m.caches.is_empty() {
            let _ = writeln!(
                md,
                "- host `{}`; transparent huge pages `{}`; caches {}",
                m.host,
                m.thp.as_deref().unwrap_or("unknown"),
                if m.caches.is_empty() {
                    "unknown".into()
                } else {
                    m.caches.join(", ")
                }
            );
        }
        if let Some(st) = &meta.settings {
            let _ = writeln!(
                md,
                "- timing: {} interleaved rounds over the whole sweep (lengths ascending and descending in turn, each length's variants in a rotating order), at least {} calls and {:.2} s per cell over all rounds, {} warm-up call(s); random-feature errors over {} seeds",
                st.rounds,
                st.min_repeats,
                st.min_time_s,
                st.warmup.max(1),
                st.error_seeds
            );
        }
        if let Some(l) = &meta.limits {
            let spread = |t: &[f64]| {
                let lo = t.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = t.iter().copied().fold(0.0, f64::max);
                if t.is_empty() {
                    String::new()
                } else {
                    format!(" (best of {} trials, {lo:.0}-{hi:.0})", t.len())
                }
            };
            let _ = writeln!(
                md,
                "- measured limits ({}): FMA peak {:.0} GFLOP/s on one core{}, {:.0} GFLOP/s on {} threads{}; read bandwidth {:.1} GB/s",
                l.isa,
                l.fma_gflops_one_core,
                spread(&l.fma_trials_one_core),
                l.fma_gflops_all_threads,
                l.threads,
                spread(&l.fma_trials_all_threads),
                l.read_gbytes_per_s
            );
            if let (Some(per_cycle), Some(mhz)) = (l.fma_per_cycle(), l.clock_mhz) {
                let _ = writeln!(
                    md,
                    "- the one-core peak is {per_cycle:.2} FMA instructions per cycle at the reported {mhz:.0} MHz (current x86 cores issue 1 or 2; more means the core clocks above the reported figure)"
                );
            }
        }
        let mut shapes: Vec<String> = recs
            .iter()
            .filter(|r| r.run_id == meta.run_id)
            .map(shape_line)
            .collect();
        shapes.dedup();
        for line in shapes {
            let _ = writeln!(md, "- shape: {line}");
        }
    }
    let drift: Vec<((String, usize), String)> =
        results.metas.iter().flat_map(drifting_lengths).collect();
    for (_, line) in &drift {
        let _ = writeln!(md, "- **drift**: {line}");
    }
    for line in merge_warnings(&results.metas) {
        let _ = writeln!(md, "- **warning**: {line}");
    }
    if results.metas.is_empty() {
        let _ = writeln!(md, "- no run metadata (.json) beside the CSV files");
        let mut shapes: Vec<String> = recs.iter().map(shape_line).collect();
        shapes.sort();
        shapes.dedup();
        for line in shapes {
            let _ = writeln!(md, "- shape: {line}");
        }
    }
    let drifting: Vec<(String, usize)> = drift.into_iter().map(|(k, _)| k).collect();
    // File names only: the same run reports the same text wherever its files are.
    let files: Vec<String> = results
        .files
        .iter()
        .map(|f| {
            format!(
                "`{}`",
                f.file_name().map_or(f.as_os_str(), |n| n).to_string_lossy()
            )
        })
        .collect();
    let _ = writeln!(md, "- results: {}\n", files.join(", "));
    md.push_str(&baselines_section(results));
    md.push_str(&causal_section(recs));

    // Summary.
    let _ = writeln!(md, "## Summary\n");
    for line in summary(all, recs) {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "\nFidelity: `exact` variants compute softmax attention restricted to their pattern (checked against an f64 oracle: \"own check\"); their error against dense attention is the price of their sparsity. `approximate` variants estimate softmax attention. `other-kernel` variants (e.g. linear attention with elu+1) compute a different attention: their difference from softmax attention is model mismatch, not approximation error.\n"
    );

    // Charts.
    let _ = writeln!(md, "## Charts\n");
    for f in &FIGURES {
        let _ = writeln!(
            md,
            "### {}\n\n![{}]({}.svg)\n",
            f.caption, f.caption, f.stem
        );
    }
    if let Some(n) = pareto_n {
        let _ = writeln!(
            md,
            "The error-vs-time chart uses n = {n}, the largest length measured for every variant.\n"
        );
    }

    md.push_str(&error_by_input(recs));

    // Fits.
    let _ = writeln!(md, "## Scaling fits and crossovers\n");
    let _ = writeln!(
        md,
        "Least-squares slope of log(time) and log(peak bytes) against log(n) over the larger half of the lengths (1 = linear, 2 = quadratic), every round's median a point, with the slope's 95% interval [lo, hi] (Student t on the fit's residuals). Pair slope: the same fit of the (query, key) pairs an exact variant's mask allows, the time slope its pattern implies (a time slope well above it is the engine's cost, not the pattern's). Against `full` and `flash`, each length's time ratio is paired by round (the two ran in the same round, close in time) and has a 95% interval (external baselines, timed after the sweep in other processes, are not paired: Welch's interval on the two sets of round medians); a variant is faster or slower at a length only where that interval excludes 1, and a crossover is stated only between a length where it is established slower and one where it is established faster (its length interpolated in log space); elsewhere the two are indistinguishable.\n"
    );
    if !drifting.is_empty() {
        let _ = writeln!(
            md,
            "The machine drifted at some lengths (see Run): fits marked *drift* use them.\n"
        );
    }
    let _ = writeln!(
        md,
        "| variant | fidelity | time slope [95%] | pair slope | memory slope | vs full | vs flash |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for s in all {
        let sc = scaling(s, all, &drifting);
        let drift = if sc.drift.is_empty() {
            String::new()
        } else {
            format!(
                " *drift at n = {}*",
                sc.drift
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {}{drift} | {} | {} | {} | {} |",
            s.label,
            s.fidelity,
            fmt_fit(sc.time),
            opt(sc.pairs, |f| format!("{:.2}", f.slope)),
            opt(sc.memory, |f| format!("{:.2}", f.slope)),
            same_or(all, s, "full", &sc.vs_full),
            same_or(all, s, "flash", &sc.vs_flash)
        );
    }
    let _ = writeln!(md);

    // Layer breakdown.
    let layered: Vec<&Series> = all
        .iter()
        .filter(|s| s.points.iter().any(|p| p.layer.is_some()))
        .collect();
    if !layered.is_empty() {
        let d_models: Vec<String> = recs
            .iter()
            .filter_map(|r| r.d_model.map(|d| d.to_string()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(
            md,
            "## Multi-head layer
"
        );
        let _ = writeln!(
            md,
            "Each variant as the core of a multi-head layer (d_model = {}, Xavier weights, Gaussian X): the median time of the four projections (GEMM, including the reshapes to and from heads) and of the core within the same calls. The core's share grows with n for quadratic variants; for linear-time ones the projections can dominate at every length.\n",
            d_models.join(", ")
        );
        let caption = "Share of the attention core in the layer's time";
        let _ = writeln!(md, "![{caption}](layer_core_share.svg)\n");
        let _ = writeln!(
            md,
            "| variant | n | layer ms | projections ms | core ms | core share |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for s in &layered {
            for p in &s.points {
                if let Some((layer, proj, core)) = p.layer {
                    let _ = writeln!(
                        md,
                        "| `{}` | {} | {} | {} | {} | {:.0}% |",
                        s.label,
                        p.n,
                        fmt_ms(layer),
                        fmt_ms(proj),
                        fmt_ms(core),
                        100.0 * core / (core + proj)
                    );
                }
            }
        }
        let _ = writeln!(
            md,
            "\n| variant | the core takes longer than the projections from |"
        );
        let _ = writeln!(md, "|---|---|");
        for s in &layered {
            let _ = writeln!(md, "| `{}` | {} |", s.label, core_dominates_from(s));
        }
        let _ = writeln!(md);
    }

    // Per-length tables.
    let groups = data::groups(recs);
    let _ = writeln!(md, "## Results by length\n");
    let mut ns: Vec<usize> = recs.iter().map(|r| r.n_kv).collect();
    ns.sort_unstable();
    ns.dedup();
    let decoding = recs.iter().any(|r| r.pct_of_bandwidth.is_some());
    let _ = writeln!(
        md,
        "Time: the median of every timed call, with the 95% interval from the rounds (min-max of the calls for files without rounds). GFLOP/s: useful (the softmax-pair work of the pairs an exact variant's mask allows) and executed (`cost()` flops, every variant; for sparse variants it includes the masked-out pairs of partial tiles). The GEMM reference (the two products at this shape in the GEMM library) and the FMA peak are divided into the executed rate; the reference is not a ceiling. Page faults: minor faults per call (a buffer above the allocator's mmap threshold is faulted in again on every call). Own check: error against the oracle of the variant's own pattern, within the tolerance of twice a plain f32 implementation's error plus 1e-6.\n"
    );
    for n in ns {
        let _ = writeln!(md, "### n = {n}\n");
        let _ = writeln!(
            md,
            "| variant | time ms [95%] | GFLOP/s useful / executed | % of GEMM ref. | % of FMA peak | {}peak memory | page faults | error vs dense | own check | status |",
            if decoding {
                "% of read bandwidth | "
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "|---|---|---|---|---|{}---|---|---|---|---|",
            if decoding { "---|" } else { "" }
        );
        for (r, group) in recs.iter().zip(&groups).filter(|(r, _)| r.n_kv == n) {
            let own = match (r.err_own_rel, r.status, r.tolerance) {
                (Some(e), Status::Flagged, _) => format!("**{e:.1e} FLAGGED**"),
                (Some(e), _, Some(t)) => format!("{e:.1e} ok (tol {t:.1e})"),
                (Some(e), _, None) => format!("{e:.1e} ok"),
                (None, ..) => "-".into(),
            };
            let bandwidth = if decoding {
                format!("{} | ", opt(r.pct_of_bandwidth, |p| format!("{p:.0}%")))
            } else {
                String::new()
            };
            let error = match (r.err_dense_rel, r.err_dense_rel_sd, r.err_seeds) {
                (Some(e), Some(sd), Some(k)) => {
                    format!("{} ± {} ({k} seeds)", fmt_err(e), fmt_err(sd))
                }
                (e, ..) => opt(e, fmt_err),
            };
            let _ = writeln!(
                md,
                "| `{}{group}` | {} | {} / {} | {} | {} | {bandwidth}{} | {} | {error} | {own} | {} |",
                r.variant,
                fmt_time(r),
                opt(r.useful_gflops, |g| format!("{g:.1}")),
                opt(r.executed_gflops, |g| format!("{g:.1}")),
                opt(r.pct_of_gemm, |p| format!("{p:.0}%")),
                opt(r.pct_of_peak, |p| format!("{p:.0}%")),
                opt(r.peak_bytes, fmt_bytes),
                opt(r.page_faults, |f| format!("{f:.0}")),
                r.status
            );
        }
        let _ = writeln!(md);
    }

    // Problems.
    let problems = recs.iter().filter(|r| r.status != Status::Ok).count();
    let _ = writeln!(md, "## Skipped, failed and flagged cells\n");
    if problems == 0 {
        let _ = writeln!(
            md,
            "None: every cell was measured and every exact variant matched its own definition."
        );
    } else {
        let _ = writeln!(md, "| variant | n | status | reason |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (r, group) in recs
            .iter()
            .zip(&groups)
            .filter(|(r, _)| r.status != Status::Ok)
        {
            let _ = writeln!(
                md,
                "| `{}{group}` | {} | {} | {} |",
                r.variant,
                r.n_kv,
                r.status,
                r.note.replace('|', "/")
            );
        }
    }
    md
}

/// The per-input errors of a record (`err_by_input`), in batch order.
pub(super) fn inputs_of(r: &Record) -> Vec<(&str, f64)> {
    r.err_by_input
        .split(';')
        .filter_map(|pair| pair.rsplit_once('='))
        .filter_map(|(name, e)| Some((name, e.parse().ok()?)))
        .collect()
}

/// Short column names for inputs: the names without their common leading part up to an
/// underscore (`smollm2_licenses_L0`, `smollm2_licenses_L15` -> `L0`, `L15`).
pub(super) fn short_names(names: &[&str]) -> Vec<String> {
    let first = names.first().copied().unwrap_or_default();
    let mut common = first.len();
    for n in names {
        common = common.min(
            first
                .bytes()
                .zip(n.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let cut = first[..common].rfind('_').map_or(0, |i| i + 1);
    names
        .iter()
        .map(|n| {
            let short = &n[cut.min(n.len())..];
            if short.is_empty() { n } else { short }.to_string()
        })
        .collect()
}

/// `## Error by input`: where a workload stacks several inputs (an npy directory's layers),
/// every variant's error against dense attention on each input at the longest length that
/// has them; empty when no record has per-input errors.
fn error_by_input(recs: &[Record]) -> String {
    let mut md = String::new();
    let with: Vec<&Record> = recs
        .iter()
        .filter(|r| r.status.is_measured() && !inputs_of(r).is_empty())
        .collect();
    let Some(n) = with.iter().map(|r| r.n_kv).max() else {
        return md;
    };
    let at_n: Vec<&Record> = with.into_iter().filter(|r| r.n_kv == n).collect();
    let names: Vec<&str> = inputs_of(at_n[0])
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let _ = writeln!(
        md,
        "## Error by input
"
    );
    let _ = writeln!(
        md,
        "Relative error against dense attention on each input of `{}` separately at n = {n} (the summary and charts pool them): a variant that is fine on one layer can fail on another.\n",
        at_n[0].workload
    );
    let short = short_names(&names);
    let _ = writeln!(md, "| variant | {} |", short.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(short.len()));
    for r in at_n {
        let errs = inputs_of(r);
        if errs.iter().map(|(name, _)| *name).ne(names.iter().copied()) {
            continue; // a merged run over other inputs
        }
        let cells: Vec<String> = errs.iter().map(|&(_, e)| fmt_err(e)).collect();
        let _ = writeln!(md, "| `{}` | {} |", r.variant, cells.join(" | "));
    }
    let _ = writeln!(md);
    md
}

/// Automatically generated sentences about the largest length.
fn summary(all: &[Series], recs: &[Record]) -> Vec<String> {
    let mut lines = Vec::new();
    let largest = |s: &Series| s.points.last().map(|p| p.n);
    let mut groups: Vec<&str> = all.iter().map(|s| s.group.as_str()).collect();
    groups.dedup();
    for group in groups {
        let in_group = || all.iter().filter(move |s| s.group == group);
        let reference =
            data::reference(all, "full", group).or_else(|| data::reference(all, "flash", group));
        let Some(r) = reference else { continue };
        let Some(n) = largest(r) else { continue };
        let rp = r.points.last().expect("non-empty");
        for s in in_group().filter(|s| s.label != r.label) {
            let Some(p) = s.points.iter().find(|p| p.n == n) else {
                continue;
            };
            let between = if s.external || r.external {
                Ratio::unpaired
            } else {
                Ratio::paired
            };
            let ratio = between(n, (&p.rounds, p.time_ms), (&rp.rounds, rp.time_ms));
            // Three significant digits.
            let times = |x: f64| {
                if x < 9.995 {
                    format!("{x:.2}x")
                } else if x < 99.95 {
                    format!("{x:.1}x")
                } else {
                    format!("{x:.0}x")
                }
            };
            // Speedup = reference time / time: the interval's ends swap.
            let speedup = |c: Option<crate::stats::Interval>| {
                opt(c, |c| {
                    format!("95% interval {}-{}", times(1.0 / c.hi), times(1.0 / c.lo))
                })
            };
            let slowdown = |c: Option<crate::stats::Interval>| {
                opt(c, |c| {
                    format!("95% interval {}-{}", times(c.lo), times(c.hi))
                })
            };
            let speed = match ratio.order() {
                Order::Faster => format!(
                    "is {} faster than `{}` ({})",
                    times(1.0 / ratio.ratio),
                    r.label,
                    speedup(ratio.interval)
                ),
                Order::Slower => format!(
                    "is {} slower than `{}` ({})",
                    times(ratio.ratio),
                    r.label,
                    slowdown(ratio.interval)
                ),
                Order::Indistinguishable => match ratio.interval {
                    Some(c) => format!(
                        "is indistinguishable from `{}` (time ratio {:.2}, 95% interval {:.2}-{:.2})",
                        r.label, ratio.ratio, c.lo, c.hi
                    ),
                    None => format!(
                        "takes {:.2}x the time of `{}` (one round: no interval, no verdict)",
                        ratio.ratio, r.label
                    ),
                },
            };
            let error = match (p.err_dense, p.err_dense_sd) {
                (Some(e), Some(sd)) => format!("{} ± {} over seeds", fmt_err(e), fmt_err(sd)),
                (e, _) => opt(e, fmt_err),
            };
            lines.push(format!(
                "at n={n}, `{}` {speed}; {} vs {} ms; relative error vs dense attention {error}",
                s.label,
                fmt_ms(p.time_ms),
                fmt_ms(rp.time_ms),
            ));
        }
    }
    if lines.is_empty() {
        lines.push("no full or flash attention measured: no speed comparison".into());
    }
    if recs.iter().any(|r| r.workload.starts_with("gaussian")) {
        lines.push(
            "on Gaussian inputs attention is nearly uniform, so the dense output is an average of many random values with a small norm: relative errors of sparse and linear variants are large there; the npy workload of real activations shows their error on peaked, local attention"
                .into(),
        );
    }
    let mut structured: Vec<(&str, usize, usize)> = Vec::new();
    for r in recs.iter().filter(|r| r.workload.starts_with("structured")) {
        match structured.iter_mut().find(|s| s.0 == r.workload) {
            Some(s) => {
                s.1 = s.1.min(r.n_kv);
                s.2 = s.2.max(r.n_kv);
            }
            None => structured.push((&r.workload, r.n_kv, r.n_kv)),
        }
    }
    for (workload, lo, hi) in structured {
        lines.push(format!(
            "n = {lo} to {hi} use **synthetic** `{workload}` inputs, not real activations: generated to reproduce a real LLM layer's per-head sink mass, locality profile and entropy (fitted at n = 8192; README, *Workloads*), so their errors are an extrapolation of that layer's character, not a measurement on a model"
        ));
    }
    let flagged = recs.iter().filter(|r| r.status == Status::Flagged).count();
    let skipped = recs.iter().filter(|r| r.status == Status::Skipped).count();
    let errors = recs.iter().filter(|r| r.status == Status::Error).count();
    lines.push(format!(
        "{} cells: {} measured, {flagged} flagged (exact variant off its own definition), {skipped} skipped, {errors} failed",
        recs.len(),
        recs.len() - skipped - errors
    ));
    lines
}

/// The length from which a layer's core takes more time than its projections, interpolated
/// in log space between the measured lengths that straddle it.
fn core_dominates_from(s: &Series) -> String {
    let pts: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter_map(|p| p.layer.map(|(_, proj, core)| (p.n as f64, core / proj)))
        .collect();
    let Some(&(n0, r0)) = pts.first() else {
        return "-".into();
    };
    if r0 >= 1.0 {
        return format!("already at n = {n0}");
    }
    for w in pts.windows(2) {
        let ((na, ra), (nb, rb)) = (w[0], w[1]);
        if ra < 1.0 && rb >= 1.0 {
            let t = (0.0 - ra.ln()) / (rb.ln() - ra.ln());
            let n = (na.ln() + t * (nb.ln() - na.ln())).exp();
            return format!("n ≈ {n:.0}");
        }
    }
    let (n_last, _) = pts[pts.len() - 1];
    format!("not up to n = {n_last}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::record::{Machine, Probe};

    fn meta(run: &str, probes: &[(usize, [f64; 3])]) -> RunMeta {
        RunMeta {
            run_id: run.into(),
            started_utc: String::new(),
            duration_s: 0.0,
            machine: Machine::detect(),
            command_line: Vec::new(),
            seed: 0,
            threads: 2,
            workload: "gaussian(scale=1)".into(),
            variants: Vec::new(),
            lengths: probes.iter().map(|p| p.0).collect(),
            gemm_gflops: Vec::new(),
            probes: probes
                .iter()
                .map(|&(n, g)| Probe {
                    n,
                    gflops: g.to_vec(),
                })
                .collect(),
            settings: None,
            limits: None,
            state: Default::default(),
            notes: Vec::new(),
            inputs_dir: None,
        }
    }

    #[test]
    fn the_drift_probe_flags_slow_and_unsteady_lengths_only() {
        let m = meta(
            "r",
            &[
                (256, [200.0, 204.0, 198.0]),
                (512, [202.0, 199.0, 205.0]),
                // Slower throughout: a neighbour for the whole length.
                (1024, [150.0, 152.0, 149.0]),
                // One slow round.
                (2048, [201.0, 120.0, 203.0]),
                // Ordinary 4% jitter is not drift.
                (4096, [196.0, 204.0, 200.0]),
            ],
        );
        let drift = drifting_lengths(&m);
        let ns: Vec<usize> = drift.iter().map(|((_, n), _)| *n).collect();
        assert_eq!(ns, vec![1024, 2048], "{drift:?}");
        assert!(
            drift[0].1.contains("25% below the run's median of 200"),
            "{drift:?}"
        );
        assert!(
            drift[1].1.contains("spread 41% across its rounds"),
            "{drift:?}"
        );
        // No probes (files written before rounds): nothing to say.
        assert!(drifting_lengths(&meta("old", &[])).is_empty());
    }

    #[test]
    fn merged_runs_that_differ_are_warned_about() {
        let a = meta("a", &[]);
        let mut b = meta("b", &[]);
        assert!(merge_warnings(&[a.clone(), b.clone()]).is_empty());
        b.threads = 1;
        b.machine.host = "elsewhere".into();
        let w = merge_warnings(&[a, b]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("machine") && w[1].contains("threads (1 / 2)"),
            "{w:?}"
        );
    }
}
