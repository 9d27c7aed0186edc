//! The report's charts, one builder each, and [`FIGURES`]: the one list of what a report
//! draws, with the stem, the caption and the builder of every figure.

use std::path::Path;

use plotters::style::RGBColor;

use super::charts::{Bubble, Chart, Line, Stroke, save};
use super::data::{self, Series};
use super::heatmaps::save_heatmaps;
use crate::error::Result;
use crate::results::artefacts::Previews;
use crate::results::record::Record;

/// What the figures are drawn from: the series with their colours, every row, and the
/// pattern previews of the runs' artefacts.
pub(super) struct Inputs<'a> {
    pub(super) series: &'a [(Series, RGBColor)],
    pub(super) records: &'a [Record],
    pub(super) previews: &'a Previews,
}

/// One figure of a report: `<stem>.svg` and `<stem>.png`, shown in `report.md` under its
/// caption.
pub struct Figure {
    /// The file stem.
    pub stem: &'static str,
    /// Its heading in `report.md`.
    pub caption: &'static str,
    draw: fn(&Inputs<'_>, &Path, &'static str) -> Result<()>,
}

impl std::fmt::Debug for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Figure")
            .field("stem", &self.stem)
            .field("caption", &self.caption)
            .finish_non_exhaustive()
    }
}

/// Every figure a report draws, in the order of `report.md`.
pub const FIGURES: [Figure; 7] = [
    Figure {
        stem: "time_vs_n",
        caption: "Time per call (log-log), with reference slopes n and n^2",
        draw: |i, dir, stem| save(&time_chart(i.series), dir, stem),
    },
    Figure {
        stem: "memory_vs_n",
        caption: "Peak heap bytes per call (log-log); dotted: analytic workspace",
        draw: |i, dir, stem| save(&memory_chart(i.series), dir, stem),
    },
    Figure {
        stem: "error_vs_n",
        caption: "Relative error against dense attention",
        draw: |i, dir, stem| save(&error_chart(i.series), dir, stem),
    },
    Figure {
        stem: "speedup_vs_full",
        caption: "Speedup over full attention",
        draw: |i, dir, stem| save(&speedup_chart(i.series), dir, stem),
    },
    Figure {
        stem: "throughput",
        caption: "Executed GFLOP/s and the same-run GEMM reference (a reference, not a ceiling)",
        draw: |i, dir, stem| save(&throughput_chart(i.series, i.records), dir, stem),
    },
    Figure {
        stem: "pareto",
        caption: "Error vs time (bubble: peak memory)",
        draw: |i, dir, stem| save(&pareto_chart(i.series), dir, stem),
    },
    Figure {
        stem: "patterns",
        caption: "What each sparse pattern attends at n = 64",
        draw: |i, dir, stem| {
            let panels: Vec<(String, Vec<Vec<bool>>)> = i
                .previews
                .panels
                .iter()
                .map(|p| (p.title.clone(), p.cells()))
                .collect();
            let title = if panels.is_empty() {
                "No pattern previews were recorded with these results".to_string()
            } else {
                format!(
                    "Allowed (query, key) pairs at n = {} (rows: queries, columns: keys)",
                    i.previews.n
                )
            };
            save_heatmaps(&panels, 4, &title, dir, stem)
        },
    },
];

/// Draws every figure of [`FIGURES`] into `dir`, and the layer chart when a series has layer
/// timings.
pub(super) fn draw_all(inputs: &Inputs<'_>, dir: &Path) -> Result<()> {
    for f in &FIGURES {
        (f.draw)(inputs, dir, f.stem)?;
    }
    let layered = inputs
        .series
        .iter()
        .any(|(s, _)| s.points.iter().any(|p| p.layer.is_some()));
    if layered {
        save(&layer_chart(inputs.series), dir, "layer_core_share")?;
    }
    Ok(())
}

fn line(s: &Series, color: RGBColor, pts: Vec<(f64, f64)>) -> Line {
    Line {
        label: s.label.clone(),
        color,
        points: pts,
        stroke: Stroke::Solid,
    }
}

fn enough(chart: &mut Chart) {
    let points: usize = chart
        .lines
        .iter()
        .filter(|l| l.stroke == Stroke::Solid)
        .map(|l| l.points.len())
        .sum();
    if points == 0 {
        chart.note = Some("not enough points: no measured cells".into());
        chart.lines.clear();
    }
}

pub(super) fn time_chart(series: &[(Series, RGBColor)]) -> Chart {
    let mut chart = Chart {
        title: "Time per call vs sequence length".into(),
        x_desc: "sequence length n (log scale)".into(),
        x_pow2: true,
        y_desc: "median time per call, ms (log)".into(),
        log_x: true,
        log_y: true,
        ..Chart::default()
    };
    for (s, c) in series {
        chart.lines.push(line(
            s,
            *c,
            s.points.iter().map(|p| (p.n as f64, p.time_ms)).collect(),
        ));
    }
    // Reference slopes through the median time at the smallest length.
    let firsts: Vec<(f64, f64)> = series
        .iter()
        .filter_map(|(s, _)| s.points.first().map(|p| (p.n as f64, p.time_ms)))
        .collect();
    let n_max = series
        .iter()
        .filter_map(|(s, _)| s.points.last().map(|p| p.n as f64))
        .fold(0.0, f64::max);
    if let Some(n0) = firsts.iter().map(|p| p.0).reduce(f64::min) {
        let mut at_n0: Vec<f64> = firsts.iter().filter(|p| p.0 == n0).map(|p| p.1).collect();
        at_n0.sort_by(f64::total_cmp);
        let y0 = at_n0[at_n0.len() / 2];
        if n_max > n0 {
            for (label, power, color) in [
                (
                    "reference slope: proportional to n",
                    1.0,
                    RGBColor(120, 120, 120),
                ),
                (
                    "reference slope: proportional to n^2",
                    2.0,
                    RGBColor(0, 0, 0),
                ),
            ] {
                chart.lines.push(Line {
                    label: label.into(),
                    color,
                    points: vec![(n0, y0), (n_max, y0 * (n_max / n0).powf(power))],
                    stroke: Stroke::Dashed,
                });
            }
        }
    }
    enough(&mut chart);
    chart
}

pub(super) fn layer_chart(series: &[(Series, RGBColor)]) -> Chart {
    let mut chart = Chart {
        title: "Multi-head layer: share of the attention core in the layer's time".into(),
        x_desc: "sequence length n (log scale)".into(),
        x_pow2: true,
        y_desc: "core time / (core + projections), %".into(),
        log_x: true,
        ..Chart::default()
    };
    for (s, c) in series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| {
                p.layer
                    .map(|(_, proj, core)| (p.n as f64, 100.0 * core / (core + proj)))
            })
            .collect();
        if !pts.is_empty() {
            chart.lines.push(line(s, *c, pts));
        }
    }
    let xs: Vec<f64> = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .collect();
    if let (Some(lo), Some(hi)) = (
        xs.iter().cloned().reduce(f64::min),
        xs.iter().cloned().reduce(f64::max),
    ) {
        chart.lines.push(Line {
            label: "50%: the core dominates above".into(),
            color: RGBColor(120, 120, 120),
            points: vec![(lo, 50.0), (hi, 50.0)],
            stroke: Stroke::Dashed,
        });
    }
    enough(&mut chart);
    chart
}

pub(super) fn memory_chart(series: &[(Series, RGBColor)]) -> Chart {
    let mut chart = Chart {
        title: "Peak heap memory per call vs sequence length".into(),
        x_desc: "sequence length n (log scale)".into(),
        x_pow2: true,
        y_desc: "bytes above baseline (log); dotted: analytic workspace".into(),
        log_x: true,
        log_y: true,
        ..Chart::default()
    };
    let mut missing = false;
    for (s, c) in series {
        let peak: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| p.peak_bytes.filter(|&b| b > 0.0).map(|b| (p.n as f64, b)))
            .collect();
        missing |= peak.len() < s.points.len();
        chart.lines.push(line(s, *c, peak));
        let ws: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| {
                p.workspace_bytes
                    .filter(|&b| b > 0.0)
                    .map(|b| (p.n as f64, b))
            })
            .collect();
        chart.lines.push(Line {
            label: format!("{} (analytic)", s.label),
            color: *c,
            points: ws,
            stroke: Stroke::Dotted,
        });
    }
    if missing {
        chart.note = Some("cells with no or zero measured bytes are left out".into());
    }
    enough(&mut chart);
    chart
}

pub(super) fn error_chart(series: &[(Series, RGBColor)]) -> Chart {
    let mut chart = Chart {
        title: "Relative error against dense softmax attention".into(),
        x_desc: "sequence length n (log scale)".into(),
        x_pow2: true,
        y_desc: "relative Frobenius error (log)".into(),
        log_x: true,
        log_y: true,
        ..Chart::default()
    };
    let mut zeros = false;
    for (s, c) in series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| p.err_dense.map(|e| (p.n as f64, e)))
            .collect();
        zeros |= pts.iter().any(|p| p.1 <= 0.0);
        chart
            .lines
            .push(line(s, *c, pts.into_iter().filter(|p| p.1 > 0.0).collect()));
    }
    if zeros {
        chart.note =
            Some("exactly-zero errors cannot be shown on a log axis and are left out".into());
    }
    enough(&mut chart);
    chart
}

pub(super) fn speedup_chart(series: &[(Series, RGBColor)]) -> Chart {
    let mut chart = Chart {
        title: "Speedup over full attention".into(),
        x_desc: "sequence length n (log scale)".into(),
        x_pow2: true,
        y_desc: "time(full) / time(variant) (log)".into(),
        log_x: true,
        log_y: true,
        ..Chart::default()
    };
    if !series.iter().any(|(s, _)| s.name == "full") {
        chart.note = Some("not enough points: no full attention in these results".into());
        return chart;
    }
    let mut ns = Vec::new();
    for (s, c) in series {
        // Each series against the full attention of its own run and configuration.
        let Some(full) = data::reference(series.iter().map(|(f, _)| f), "full", &s.group) else {
            continue;
        };
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| {
                full.points
                    .iter()
                    .find(|f| f.n == p.n)
                    .map(|f| (p.n as f64, f.time_ms / p.time_ms))
            })
            .collect();
        ns.extend(pts.iter().map(|p| p.0));
        chart.lines.push(line(s, *c, pts));
    }
    if let (Some(lo), Some(hi)) = (
        ns.iter().copied().reduce(f64::min),
        ns.iter().copied().reduce(f64::max),
    ) {
        chart.lines.push(Line {
            label: "1x (as fast as full)".into(),
            color: RGBColor(0, 0, 0),
            points: vec![(lo, 1.0), (hi, 1.0)],
            stroke: Stroke::Dashed,
        });
    }
    enough(&mut chart);
    chart
}

pub(super) fn throughput_chart(series: &[(Series, RGBColor)], records: &[Record]) -> Chart {
    let mut chart = Chart {
        title: "Executed throughput and the same-run GEMM reference".into(),
        x_desc: "sequence length n (log scale)".into(),
        x_pow2: true,
        y_desc: "executed GFLOP/s (cost() flops / time)".into(),
        log_x: true,
        log_y: false,
        ..Chart::default()
    };
    for (s, c) in series {
        let pts = s
            .points
            .iter()
            .filter_map(|p| p.executed_gflops.map(|g| (p.n as f64, g)))
            .collect();
        chart.lines.push(line(s, *c, pts));
    }
    // One reference line per run: each run measured its own.
    let mut runs: Vec<&str> = records.iter().map(|r| r.run_id.as_str()).collect();
    runs.sort_unstable();
    runs.dedup();
    for run in &runs {
        let mut gemm: Vec<(usize, f64)> = Vec::new();
        for r in records.iter().filter(|r| r.run_id == *run) {
            if let Some(g) = r.gemm_gflops
                && !gemm.iter().any(|e| e.0 == r.n_kv)
            {
                gemm.push((r.n_kv, g));
            }
        }
        gemm.sort_by_key(|e| e.0);
        chart.lines.push(Line {
            label: if runs.len() > 1 {
                format!("GEMM reference of the two products, run {run}")
            } else {
                "GEMM reference of the two products, same run".into()
            },
            color: RGBColor(0, 0, 0),
            points: gemm.iter().map(|&(n, g)| (n as f64, g)).collect(),
            stroke: Stroke::Dashed,
        });
    }
    enough(&mut chart);
    chart
}

/// The largest length every measured series has; else the largest with at least two.
pub(super) fn common_length(series: &[(Series, RGBColor)]) -> Option<usize> {
    let measured: Vec<&Series> = series
        .iter()
        .map(|(s, _)| s)
        .filter(|s| !s.points.is_empty())
        .collect();
    let mut ns: Vec<usize> = measured
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.n))
        .collect();
    ns.sort_unstable();
    ns.dedup();
    let count = |n: usize| {
        measured
            .iter()
            .filter(|s| s.points.iter().any(|p| p.n == n))
            .count()
    };
    ns.iter()
        .rev()
        .find(|&&n| count(n) == measured.len())
        .or_else(|| ns.iter().rev().find(|&&n| count(n) >= 2))
        .copied()
}

pub(super) fn pareto_chart(series: &[(Series, RGBColor)]) -> Chart {
    let n = common_length(series);
    let mut chart = Chart {
        title: format!(
            "Error vs time at n = {} (bubble area: peak memory)",
            n.map_or("-".into(), |n| n.to_string())
        ),
        x_desc: "median time per call, ms (log)".into(),
        y_desc: "relative error vs dense attention (log)".into(),
        log_x: true,
        log_y: true,
        ..Chart::default()
    };
    let Some(n) = n else {
        chart.note = Some("not enough points: no length shared by two variants".into());
        return chart;
    };
    let pts: Vec<(&Series, RGBColor, f64, f64, f64)> = series
        .iter()
        .filter_map(|(s, c)| {
            let p = s.points.iter().find(|p| p.n == n)?;
            let err = p.err_dense.filter(|&e| e > 0.0)?;
            Some((s, *c, p.time_ms, err, p.peak_bytes.unwrap_or(0.0).max(1.0)))
        })
        .collect();
    let (lo, hi) = pts.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (lo.min(p.4.ln()), hi.max(p.4.ln()))
    });
    for (s, c, t, err, mem) in pts {
        let frac = if hi > lo {
            (mem.ln() - lo) / (hi - lo)
        } else {
            0.5
        };
        chart.bubbles.push(Bubble {
            label: if s.label.chars().count() > 26 {
                s.label.chars().take(24).chain("..".chars()).collect()
            } else {
                s.label.clone()
            },
            color: c,
            at: (t, err),
            radius: 4.0 + 16.0 * frac,
        });
    }
    if chart.bubbles.is_empty() {
        chart.note = Some("not enough points".into());
    }
    chart
}
