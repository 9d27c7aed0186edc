//! The error-vs-time frontier at one length: every variant of a run as a point (median time,
//! relative error against dense attention), per input where the workload stacks several
//! (layers), each *family* (a variant with its numeric parameters free, e.g.
//! `blocktopk(score=mean)` over `k`) joined across its budget, the Pareto-optimal points
//! marked, and the answer to "within a time budget of a fraction of `flash`, which variant
//! loses the least?".

use std::fmt::Write as _;
use std::path::Path;

use plotters::style::RGBColor;

use super::charts::{Bubble, Chart, Line, Stroke, palette, save};
use super::format::fmt_err;
use super::markdown::{inputs_of, short_names};
use crate::attention::Fidelity;
use crate::error::Result;
use crate::results::record::{Record, Status};
use crate::spec::Spec;

/// The time budgets the report answers for, as fractions of `flash`'s time.
pub const BUDGETS: [f64; 3] = [0.5, 0.25, 0.125];

/// One variant at the frontier's length.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierPoint {
    /// The variant spec.
    pub variant: String,
    /// Its family: the spec without its numeric parameters.
    pub family: String,
    /// Median time per call, ms.
    pub time_ms: f64,
    /// The time's 95% interval, ms, where the run had rounds.
    pub time_ci: Option<(f64, f64)>,
    /// Relative error against dense attention, one per input (one in all for a single input).
    pub errors: Vec<f64>,
    /// Exact and selected variants: the keys a query attends, on average (density x n_kv).
    pub keys: Option<f64>,
    /// Pattern and selected variants: the dense softmax mass they drop (pooled over inputs).
    pub dropped_mass: Option<f64>,
}

/// The frontier of one run at one length.
#[derive(Debug, Clone, PartialEq)]
pub struct Frontier {
    /// The run.
    pub run_id: String,
    /// The length.
    pub n: usize,
    /// The inputs' names (one entry, `all`, for a single input).
    pub inputs: Vec<String>,
    /// Every measured variant with an error, by increasing time.
    pub points: Vec<FrontierPoint>,
    /// `flash`'s median time at this length, if it ran.
    pub flash_ms: Option<f64>,
}

/// A spec's family: its name and non-numeric parameters (`blocktopk(score=mean)`), so that
/// the points of one method across its budget are joined.
pub fn family(spec: &str) -> String {
    let Ok(parsed) = spec.parse::<Spec>() else {
        return spec.to_string();
    };
    let kept: Vec<String> = parsed
        .params
        .iter()
        .filter(|(_, v)| v.parse::<f64>().is_err())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if kept.is_empty() {
        parsed.name
    } else {
        format!("{}({})", parsed.name, kept.join(","))
    }
}

/// Whether point `i` of `points` is Pareto-optimal on input `e`: no other point is at least
/// as fast and at least as accurate, and better in one.
pub fn pareto(points: &[FrontierPoint], e: usize, i: usize) -> bool {
    let p = &points[i];
    !points.iter().enumerate().any(|(j, q)| {
        j != i
            && q.time_ms <= p.time_ms
            && q.errors[e] <= p.errors[e]
            && (q.time_ms < p.time_ms || q.errors[e] < p.errors[e])
    })
}

/// The frontiers of every run in `recs` at the largest length where at least three of its
/// variants have a time and an error; runs with fewer are left out.
pub fn frontiers(recs: &[Record]) -> Vec<Frontier> {
    let mut runs: Vec<&str> = Vec::new();
    for r in recs {
        if !runs.contains(&r.run_id.as_str()) {
            runs.push(&r.run_id);
        }
    }
    let mut out = Vec::new();
    for run in runs {
        // Only rows that passed their checks, with a finite error: a flagged row (a kernel
        // bug) is no candidate for "least error".
        let usable = |r: &&Record| {
            r.run_id == run
                && r.status == Status::Ok
                && r.time_median_ms.is_some()
                && r.err_dense_rel.is_some_and(f64::is_finite)
        };
        let mut ns: Vec<usize> = recs.iter().filter(usable).map(|r| r.n_kv).collect();
        ns.sort_unstable();
        ns.dedup();
        let count = |n: usize| recs.iter().filter(usable).filter(|r| r.n_kv == n).count();
        let Some(&n) = ns.iter().rev().find(|&&n| count(n) >= 3) else {
            continue;
        };
        let at_n: Vec<&Record> = recs.iter().filter(usable).filter(|r| r.n_kv == n).collect();
        let inputs: Vec<String> = match inputs_of(at_n[0]) {
            v if v.is_empty() => vec!["all".to_string()],
            v => v.iter().map(|(name, _)| name.to_string()).collect(),
        };
        let mut points: Vec<FrontierPoint> = at_n
            .iter()
            .filter_map(|r| {
                let per = inputs_of(r);
                let errors: Vec<f64> = if inputs.len() == 1 {
                    vec![r.err_dense_rel?]
                } else if per
                    .iter()
                    .map(|p| p.0)
                    .eq(inputs.iter().map(String::as_str))
                {
                    per.iter().map(|p| p.1).collect()
                } else {
                    return None;
                };
                if !errors.iter().all(|e| e.is_finite()) {
                    return None;
                }
                let exact = matches!(r.fidelity, Fidelity::Exact | Fidelity::Selected);
                Some(FrontierPoint {
                    variant: r.variant.clone(),
                    family: family(&r.variant),
                    time_ms: r.time_median_ms?,
                    time_ci: r.time_ci_lo_ms.zip(r.time_ci_hi_ms),
                    errors,
                    keys: r.density.filter(|_| exact).map(|d| d * r.n_kv as f64),
                    dropped_mass: r.dropped_mass,
                })
            })
            .collect();
        points.sort_by(|a, b| a.time_ms.total_cmp(&b.time_ms));
        let flash_ms = at_n
            .iter()
            .find(|r| r.name == "flash")
            .and_then(|r| r.time_median_ms);
        out.push(Frontier {
            run_id: run.to_string(),
            n,
            inputs,
            points,
            flash_ms,
        });
    }
    out
}

/// Groups of points of different families that attend about as many keys per query (within
/// 3% of the group's first, the fewest): selection, sinks and windows at the same count.
pub fn equal_keys(f: &Frontier) -> Vec<Vec<usize>> {
    let mut with: Vec<(usize, f64)> = (0..f.points.len())
        .filter_map(|i| Some((i, f.points[i].keys?)))
        .collect();
    with.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut groups: Vec<(f64, Vec<usize>)> = Vec::new();
    for (i, k) in with {
        match groups.last_mut() {
            Some((first, g)) if k <= 1.03 * *first => g.push(i),
            _ => groups.push((k, vec![i])),
        }
    }
    let mut groups: Vec<Vec<usize>> = groups.into_iter().map(|g| g.1).collect();
    groups.retain(|g| {
        let mut fams: Vec<&str> = g.iter().map(|&i| f.points[i].family.as_str()).collect();
        fams.sort_unstable();
        fams.dedup();
        fams.len() >= 2
    });
    groups
}

/// The point of least error on input `e` among those within `budget` (a fraction of
/// `flash`'s time), and the runner-up, when `flash` ran.
pub fn best_within(f: &Frontier, e: usize, budget: f64) -> Option<(usize, Option<usize>)> {
    let limit = f.flash_ms? * budget;
    let mut within: Vec<usize> = (0..f.points.len())
        .filter(|&i| f.points[i].time_ms <= limit)
        .collect();
    within.sort_by(|&a, &b| f.points[a].errors[e].total_cmp(&f.points[b].errors[e]));
    let best = *within.first()?;
    Some((best, within.get(1).copied()))
}

fn file_stem(f: &Frontier, e: usize, several_runs: bool) -> String {
    let input: String = f.inputs[e]
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if several_runs {
        format!("frontier_{}_{input}", f.run_id)
    } else {
        format!("frontier_{input}")
    }
}

/// The chart of input `e`: each family a line through its budget points, every point a
/// bubble, the Pareto-optimal ones labelled and larger.
fn chart(f: &Frontier, e: usize) -> Chart {
    let mut chart = Chart {
        title: format!(
            "Error vs time at n = {} on {} (labelled: Pareto-optimal)",
            f.n, f.inputs[e]
        ),
        x_desc: "median time per call, ms (log)".into(),
        y_desc: "relative error vs dense attention (log)".into(),
        log_x: true,
        log_y: true,
        ..Chart::default()
    };
    let mut families: Vec<&str> = f.points.iter().map(|p| p.family.as_str()).collect();
    families.sort_unstable();
    families.dedup();
    for (c, fam) in families.iter().enumerate() {
        let color = palette(c);
        let pts: Vec<(f64, f64)> = f
            .points
            .iter()
            .filter(|p| p.family == *fam && p.errors[e] > 0.0)
            .map(|p| (p.time_ms, p.errors[e]))
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart.lines.push(Line {
            label: (*fam).to_string(),
            color,
            points: pts,
            stroke: Stroke::Solid,
        });
        for (i, p) in f.points.iter().enumerate() {
            if p.family == *fam && p.errors[e] > 0.0 && pareto(&f.points, e, i) {
                chart.bubbles.push(Bubble {
                    label: short(&p.variant),
                    color,
                    at: (p.time_ms, p.errors[e]),
                    radius: 7.0,
                });
            }
        }
    }
    if let Some(t) = f.flash_ms {
        let (lo, hi) = f
            .points
            .iter()
            .map(|p| p.errors[e])
            .filter(|&x| x > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
        if lo.is_finite() {
            chart.lines.push(Line {
                label: "1/8 of flash's time".into(),
                color: RGBColor(120, 120, 120),
                points: vec![(t / 8.0, lo), (t / 8.0, hi)],
                stroke: Stroke::Dashed,
            });
        }
    }
    chart
}

/// The `error <input>` column headers of the tables.
fn error_columns(inputs: &[String]) -> String {
    inputs
        .iter()
        .map(|s| format!("error {s}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A point's time relative to `flash`'s, or `-` when `flash` did not run.
fn vs_flash(f: &Frontier, p: &FrontierPoint) -> String {
    f.flash_ms
        .map_or("-".to_string(), |t| format!("{:.3}", p.time_ms / t))
}

fn short(spec: &str) -> String {
    if spec.chars().count() > 34 {
        spec.chars().take(32).chain("..".chars()).collect()
    } else {
        spec.to_string()
    }
}

/// Draws every frontier's chart into `dir` and returns the report's section about them
/// (empty when no run has a frontier).
pub fn write(recs: &[Record], dir: &Path) -> Result<String> {
    let all = frontiers(recs);
    let mut md = String::new();
    if all.is_empty() {
        return Ok(md);
    }
    let several = all.len() > 1;
    let _ = writeln!(md, "\n## Error-vs-time frontier\n");
    let _ = writeln!(
        md,
        "Every variant at the largest length where at least three have a time and an error: its median time, its time relative to `flash` (median ratio), and its relative error against dense attention on each input. Families (a variant with its numeric parameters free) are joined across their budgets in the charts. A point is Pareto-optimal (*) on an input when no other is at least as fast and as accurate and better in one; times are medians, so neighbours closer than their intervals (the `time [95%]` column) may trade places in another run.\n"
    );
    for f in &all {
        if several {
            let _ = writeln!(md, "### Run `{}`\n", f.run_id);
        }
        let names: Vec<&str> = f.inputs.iter().map(String::as_str).collect();
        let short_inputs = short_names(&names);
        let _ = writeln!(md, "At n = {}:\n", f.n);
        let _ = writeln!(
            md,
            "| variant | time ms [95%] | vs flash | {} |",
            error_columns(&short_inputs)
        );
        let _ = writeln!(md, "|---|---|---|{}", "---|".repeat(short_inputs.len()));
        for (i, p) in f.points.iter().enumerate() {
            let ci = p
                .time_ci
                .map_or(String::new(), |(lo, hi)| format!(" [{lo:.3}, {hi:.3}]"));
            let vs = vs_flash(f, p);
            let errs: Vec<String> = (0..f.inputs.len())
                .map(|e| {
                    let mark = if pareto(&f.points, e, i) { " *" } else { "" };
                    format!("{}{mark}", fmt_err(p.errors[e]))
                })
                .collect();
            let _ = writeln!(
                md,
                "| `{}` | {:.3}{ci} | {vs} | {} |",
                p.variant,
                p.time_ms,
                errs.join(" | ")
            );
        }
        let _ = writeln!(md);
        if let Some(flash_ms) = f.flash_ms {
            let _ = writeln!(
                md,
                "Least error within a time budget (median time at most the fraction of `flash`'s median time), per input:\n"
            );
            let _ = writeln!(
                md,
                "| budget | input | least error | error | vs flash | runner-up | its error |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|");
            for budget in BUDGETS {
                for (e, name) in short_inputs.iter().enumerate() {
                    let row = match best_within(f, e, budget) {
                        Some((b, runner)) => {
                            let p = &f.points[b];
                            let (rv, re) = runner.map_or(("-".to_string(), "-".to_string()), |r| {
                                let q = &f.points[r];
                                (format!("`{}`", q.variant), fmt_err(q.errors[e]))
                            });
                            format!(
                                "`{}` | {} | {:.3} | {rv} | {re}",
                                p.variant,
                                fmt_err(p.errors[e]),
                                p.time_ms / flash_ms
                            )
                        }
                        None => "none within the budget | - | - | - | -".to_string(),
                    };
                    let _ = writeln!(md, "| 1/{:.0} | {name} | {row} |", 1.0 / budget);
                }
            }
            let _ = writeln!(md);
        }
        let groups = equal_keys(f);
        if !groups.is_empty() {
            let _ = writeln!(
                md,
                "At equal keys per query (exact and selected variants within 3% of each other's mean keys per query): what the choice of keys costs, per input, and the dense softmax mass each drops (pooled over inputs). `topk` keeps the most mass of any choice of as many keys per row; its output error need not be the least.\n"
            );
            let _ = writeln!(
                md,
                "| keys per query | variant | vs flash | {} | dropped mass |",
                error_columns(&short_inputs)
            );
            let _ = writeln!(md, "|---|---|---|{}---|", "---|".repeat(short_inputs.len()));
            for g in groups {
                for i in g {
                    let p = &f.points[i];
                    let errs: Vec<String> = p.errors.iter().map(|&e| fmt_err(e)).collect();
                    let vs = vs_flash(f, p);
                    let _ = writeln!(
                        md,
                        "| {:.0} | `{}` | {vs} | {} | {} |",
                        p.keys.expect("grouped points have keys"),
                        p.variant,
                        errs.join(" | "),
                        p.dropped_mass
                            .map_or("-".to_string(), |m| format!("{m:.3}"))
                    );
                }
            }
            let _ = writeln!(md);
        }
        for (e, name) in short_inputs.iter().enumerate() {
            let stem = file_stem(f, e, several);
            save(&chart(f, e), dir, &stem)?;
            let _ = writeln!(md, "![frontier on {name}]({stem}.svg)\n");
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(variant: &str, t: f64, e: f64) -> FrontierPoint {
        FrontierPoint {
            variant: variant.into(),
            family: family(variant),
            time_ms: t,
            time_ci: None,
            errors: vec![e],
            keys: None,
            dropped_mass: None,
        }
    }

    #[test]
    fn families_free_the_numeric_parameters() {
        assert_eq!(
            family("blocktopk(block=64,k=8,local=1,score=mean)"),
            "blocktopk(score=mean)"
        );
        assert_eq!(family("window(w=256)"), "window");
        assert_eq!(family("flash"), "flash");
        assert_eq!(
            family("linear(phi=favor,m=256,seed=0,orthogonal=true,chunk=64)"),
            "linear(phi=favor,orthogonal=true)"
        );
    }

    #[test]
    fn pareto_points_are_the_undominated_ones_and_budgets_pick_the_least_error() {
        let f = Frontier {
            run_id: "r".into(),
            n: 8,
            inputs: vec!["all".into()],
            points: vec![
                point("window(w=8)", 1.0, 0.5),
                point("window(w=16)", 2.0, 0.6), // dominated by w=8
                point("topk(k=4)", 3.0, 0.1),
                point("flash", 16.0, 1e-7),
            ],
            flash_ms: Some(16.0),
        };
        let on: Vec<bool> = (0..4).map(|i| pareto(&f.points, 0, i)).collect();
        assert_eq!(on, vec![true, false, true, true]);
        // Within 1/8 of 16 ms (2 ms): w=8 (0.5) beats w=16 (0.6).
        assert_eq!(best_within(&f, 0, 0.125), Some((0, Some(1))));
        // Within 1/4 (4 ms): topk.
        assert_eq!(best_within(&f, 0, 0.25), Some((2, Some(0))));
        assert_eq!(best_within(&f, 0, 0.01), None);
    }
}
