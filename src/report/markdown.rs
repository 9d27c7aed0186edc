//! `report.md`: the run, a summary, the figures, scaling fits and crossovers, the layer
//! breakdown, per-length tables and every skipped, failed or flagged cell.

use std::fmt::Write as _;

use super::data::{self, Results, Series};
use super::figures::FIGURES;
use super::fit::{self, Crossover, crossover, upper_half_fit};
use super::format::{fmt_bytes, fmt_err, fmt_ms, opt};
use crate::results::record::{Record, Status};

/// Fitted slopes and crossovers of one series.
struct Scaling {
    time: Option<fit::Fit>,
    memory: Option<fit::Fit>,
    vs_full: Crossover,
    vs_flash: Crossover,
}

fn scaling(s: &Series, all: &[Series]) -> Scaling {
    let times: Vec<(f64, f64)> = s.points.iter().map(|p| (p.n as f64, p.time_ms)).collect();
    let mems: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter_map(|p| p.peak_bytes.map(|b| (p.n as f64, b)))
        .collect();
    let cross = |name: &str| match data::reference(all, name, &s.group) {
        Some(r) if r.label != s.label => crossover(&s.times(), &r.times()),
        _ => Crossover::NoCommonLengths,
    };
    Scaling {
        time: upper_half_fit(&times),
        memory: upper_half_fit(&mems),
        vs_full: cross("full"),
        vs_flash: cross("flash"),
    }
}

/// Whether `s` is the baseline of `name` in its group ([`data::reference`]).
fn is_reference(all: &[Series], s: &Series, name: &str) -> bool {
    data::reference(all, name, &s.group).is_some_and(|r| r.label == s.label)
}

fn fmt_fit(f: Option<fit::Fit>) -> String {
    opt(f, |f| format!("{:.2} ({} pts)", f.slope, f.points))
}

fn fmt_cross(c: Crossover, same: bool) -> String {
    if same { "-".into() } else { c.to_string() }
}

/// Lengths whose same-run GEMM ceiling fell below 70% of the run's median ceiling: the GEMM
/// is the same code at every length, so such a drop means the machine itself was slower
/// while that length ran (a busy neighbour on a shared host), and every time measured there
/// is inflated.
pub fn slow_lengths(gemm: &[(usize, f64)]) -> Vec<String> {
    let mut rates: Vec<f64> = gemm.iter().map(|&(_, g)| g).collect();
    if rates.len() < 3 {
        return Vec::new();
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    gemm.iter()
        .filter(|&&(_, g)| g < 0.7 * median)
        .map(|&(n, g)| {
            format!(
                "the GEMM ceiling at n = {n} measured {g:.0} GFLOP/s, {:.0}% below the run's median of {median:.0}: the machine was slower while that length ran, and its times are inflated.",
                100.0 * (1.0 - g / median)
            )
        })
        .collect()
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
        if let Some(l) = &meta.limits {
            let _ = writeln!(
                md,
                "- measured limits ({}): FMA peak {:.0} GFLOP/s on one core, {:.0} GFLOP/s on {} threads; read bandwidth {:.1} GB/s",
                l.isa,
                l.fma_gflops_one_core,
                l.fma_gflops_all_threads,
                l.threads,
                l.read_gbytes_per_s
            );
        }
    }
    let slow: Vec<String> = results
        .metas
        .iter()
        .flat_map(|m| slow_lengths(&m.gemm_gflops))
        .collect();
    for line in &slow {
        let _ = writeln!(md, "- **machine slowdown**: {line}");
    }
    if results.metas.is_empty() {
        let _ = writeln!(md, "- no run metadata (.json) beside the CSV files");
    }
    if let Some(r) = recs.first() {
        let _ = writeln!(
            md,
            "- shape: batch {}, heads {}, kv_heads {}, head_dim {}, {}",
            r.batch,
            r.heads,
            r.kv_heads,
            r.head_dim,
            if r.causal { "causal" } else { "bidirectional" }
        );
    }
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

    // Fits.
    let _ = writeln!(md, "## Scaling fits and crossovers\n");
    let _ = writeln!(
        md,
        "Least-squares slope of log(time) and log(peak bytes) against log(n) over the larger half of the lengths (1 = linear, 2 = quadratic), and the length from which each variant is faster than `full` and than `flash` (interpolated in log space).\n"
    );
    if !slow.is_empty() {
        let _ = writeln!(
            md,
            "The machine was measurably slower at some lengths (see Run): fits that span them are unreliable.\n"
        );
    }
    let _ = writeln!(
        md,
        "| variant | fidelity | time slope | memory slope | faster than full | faster than flash |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in all {
        let sc = scaling(s, all);
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} |",
            s.label,
            s.fidelity,
            fmt_fit(sc.time),
            fmt_fit(sc.memory),
            fmt_cross(sc.vs_full, is_reference(all, s, "full")),
            fmt_cross(sc.vs_flash, is_reference(all, s, "flash"))
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
    for n in ns {
        let _ = writeln!(md, "### n = {n}\n");
        let _ = writeln!(
            md,
            "| variant | time ms (min-max) | GFLOP/s | % of GEMM | % of FMA peak | {}peak memory | error vs dense | own check | status |",
            if decoding {
                "% of read bandwidth | "
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "|---|---|---|---|---|{}---|---|---|---|",
            if decoding { "---|" } else { "" }
        );
        for (r, group) in recs.iter().zip(&groups).filter(|(r, _)| r.n_kv == n) {
            let own = match (r.err_own_rel, r.status) {
                (Some(e), Status::Flagged) => format!("**{e:.1e} FLAGGED**"),
                (Some(e), _) => format!("{e:.1e} ok"),
                (None, _) => "-".into(),
            };
            let bandwidth = if decoding {
                format!("{} | ", opt(r.pct_of_bandwidth, |p| format!("{p:.0}%")))
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| `{}{group}` | {} | {} | {} | {} | {bandwidth}{} | {} | {} | {} |",
                r.variant,
                match (r.time_median_ms, r.time_min_ms, r.time_max_ms) {
                    (Some(m), Some(lo), Some(hi)) =>
                        format!("{} ({}-{})", fmt_ms(m), fmt_ms(lo), fmt_ms(hi)),
                    _ => "-".into(),
                },
                opt(r.gflops, |g| format!("{g:.1}")),
                opt(r.pct_of_gemm, |p| format!("{p:.0}%")),
                opt(r.pct_of_peak, |p| format!("{p:.0}%")),
                opt(r.peak_bytes, fmt_bytes),
                opt(r.err_dense_rel, fmt_err),
                own,
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
        let rt = r.points.last().expect("non-empty").time_ms;
        for s in in_group().filter(|s| s.label != r.label) {
            let Some(p) = s.points.iter().find(|p| p.n == n) else {
                continue;
            };
            let ratio = rt / p.time_ms;
            let times = |x: f64| {
                if x < 10.0 {
                    format!("{x:.2}x")
                } else {
                    format!("{x:.0}x")
                }
            };
            let speed = if ratio >= 1.0 {
                format!("{} faster than", times(ratio))
            } else {
                format!("{} slower than", times(1.0 / ratio))
            };
            lines.push(format!(
                "at n={n}, `{}` is {speed} `{}` ({} vs {} ms), relative error vs dense attention {}",
                s.label,
                r.label,
                fmt_ms(p.time_ms),
                fmt_ms(rt),
                opt(p.err_dense, fmt_err)
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
    use super::slow_lengths;

    #[test]
    fn a_drop_in_the_gemm_ceiling_is_reported_as_a_slowdown() {
        // The reference run that motivated it: n = 2048 at about half the others.
        let run = [
            (256, 207.0),
            (512, 221.0),
            (1024, 212.0),
            (2048, 104.0),
            (4096, 173.0),
            (8192, 191.0),
        ];
        let slow = slow_lengths(&run);
        assert_eq!(slow.len(), 1, "{slow:?}");
        assert!(
            slow[0].contains("n = 2048") && slow[0].contains("104"),
            "{slow:?}"
        );
        // Ordinary variation (here 173 against a median of 207) is not flagged.
        assert!(slow_lengths(&run[..3]).is_empty());
        assert!(slow_lengths(&[(256, 207.0), (512, 173.0), (1024, 190.0)]).is_empty());
        assert!(
            slow_lengths(&[(256, 10.0)]).is_empty(),
            "too few lengths to judge"
        );
    }
}
