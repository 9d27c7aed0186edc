//! Reports: charts (SVG and PNG), scaling fits, crossovers and `report.md`, from results CSVs
//! alone, so old runs re-plot and runs combine.
//!
//! - [`data`]: reading CSVs and grouping rows into series.
//! - [`fit`]: log-log slopes and crossover lengths.
//! - [`charts`]: plotters rendering with a bundled font.
//!
//! [`write_report`] is the entry point: it writes `time_vs_n`, `memory_vs_n`, `error_vs_n`,
//! `speedup_vs_full`, `throughput`, `pareto` and `patterns` charts and `report.md` into one
//! directory.

pub mod charts;
pub mod data;
pub mod fit;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use charts::{Bubble, Chart, Line, Stroke, palette, save, save_heatmaps};
use data::{Results, Series, read_results, series};
use fit::{Crossover, crossover, upper_half_fit};

use crate::error::{Error, ErrorKind, Result};
use crate::harness::record::Record;
use crate::pattern::{Geometry, Mask, Pattern};
use crate::registry::Registry;
use crate::workload::Workload;

/// The chart stems a report writes, each as `.svg` and `.png`.
pub const CHARTS: [&str; 7] = [
    "time_vs_n",
    "memory_vs_n",
    "error_vs_n",
    "speedup_vs_full",
    "throughput",
    "pareto",
    "patterns",
];

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    /// The report directory.
    pub dir: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
}

/// The default report directory for some results files: `reports/<first file's stem>`, with
/// `+<k>` when `k` more files are combined.
pub fn default_dir(csvs: &[PathBuf]) -> PathBuf {
    let stem = csvs.first().and_then(|p| p.file_stem()).map_or_else(
        || "report".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let name = if csvs.len() > 1 {
        format!("{stem}+{}", csvs.len() - 1)
    } else {
        stem
    };
    PathBuf::from("reports").join(name)
}

/// Reads `csvs` and writes charts and `report.md` into `out` (default: [`default_dir`]).
/// Pattern heatmaps show `registry`'s pattern variants.
pub fn write_report(
    csvs: &[PathBuf],
    out: Option<&Path>,
    registry: &Registry,
) -> Result<ReportOutput> {
    if csvs.is_empty() {
        return Err(Error::new(ErrorKind::BadOption {
            option: "report",
            message: "no results CSV given".into(),
        }));
    }
    let results = read_results(csvs)?;
    let dir = out.map_or_else(|| default_dir(csvs), Path::to_path_buf);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::new(ErrorKind::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        })
    })?;
    let all = series(&results.records);
    let colored: Vec<(Series, plotters::style::RGBColor)> = all
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, s)| (s, palette(i)))
        .collect();
    save(&time_chart(&colored), &dir, "time_vs_n")?;
    save(&memory_chart(&colored), &dir, "memory_vs_n")?;
    save(&error_chart(&colored), &dir, "error_vs_n")?;
    save(&speedup_chart(&colored), &dir, "speedup_vs_full")?;
    save(
        &throughput_chart(&colored, &results.records),
        &dir,
        "throughput",
    )?;
    let (pareto, pareto_n) = pareto_chart(&colored);
    save(&pareto, &dir, "pareto")?;
    save_heatmaps(
        &pattern_panels(registry),
        4,
        "Allowed (query, key) pairs at n = 64 (rows: queries, columns: keys)",
        &dir,
        "patterns",
    )?;
    let layered = all
        .iter()
        .any(|s| s.points.iter().any(|p| p.layer.is_some()));
    if layered {
        save(&layer_chart(&colored), &dir, "layer_core_share")?;
    }
    let gallery = maps_gallery(&results.records, &dir, registry)?;
    let markdown = dir.join("report.md");
    let mut text = markdown_report(&results, &all, pareto_n);
    text.push_str(&gallery);
    std::fs::write(&markdown, text).map_err(|e| {
        Error::new(ErrorKind::Io {
            path: markdown.display().to_string(),
            message: e.to_string(),
        })
    })?;
    Ok(ReportOutput { dir, markdown })
}

/// For a run on real activations (`npy:DIR`, when DIR is still there): attention maps of
/// every head into `<dir>/maps`, and a gallery of one head of each kind for the report.
fn maps_gallery(records: &[Record], dir: &Path, registry: &Registry) -> Result<String> {
    let Some(npy) = records
        .iter()
        .find_map(|r| r.workload.strip_prefix("npy:"))
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
    else {
        return Ok(String::new());
    };
    // Variants whose maps differ from full attention's, as the run named them.
    let mut specs: Vec<&str> = records
        .iter()
        .filter(|r| !matches!(r.name.as_str(), "full" | "flash"))
        .map(|r| r.variant.as_str())
        .collect();
    specs.dedup();
    let variants = specs
        .iter()
        .take(3)
        .filter_map(|s| registry.build(s).ok())
        .collect();
    let n = records.iter().map(|r| r.n_kv).max().unwrap_or(256).min(256);
    let maps_dir = dir.join("maps");
    if maps_dir.join("maps.csv").exists() {
        // An earlier report into this directory drew them already.
        return Ok(String::new());
    }
    // Classify every head from its full-attention statistics, then draw one of each kind.
    let data = crate::workload::load_npy_dir(&npy)?;
    let n = n.min(data.max_len());
    let qkv = data.prefix(n);
    let causal = records.iter().any(|r| r.causal);
    let problem = crate::attention::Problem::new(
        qkv.q.view(),
        qkv.k.view(),
        qkv.v.view(),
        crate::attention::Options::new().causal(causal),
    )?;
    let mut picked: Vec<(String, usize)> = Vec::new();
    for kind in ["previous-token", "first-token", "local", "broad"] {
        'search: for (b, name) in data.prefixes.iter().enumerate() {
            for h in 0..qkv.q.shape()[1] {
                let w = crate::oracle::weights(&problem, None, b, h);
                if crate::maps::MapStats::of(&w).kind() == kind {
                    picked.push((name.clone(), h));
                    break 'search;
                }
            }
        }
    }
    let mut heads: Vec<usize> = picked.iter().map(|p| p.1).collect();
    heads.sort_unstable();
    heads.dedup();
    let out = crate::maps::write_maps(&crate::maps::MapsConfig {
        workload: Workload::Npy { dir: npy.clone() },
        variants,
        heads: Some(heads),
        n: Some(n),
        causal,
        log: true,
        out_dir: maps_dir,
        seed: 0,
    })?;
    let rows: Vec<crate::maps::MapRow> = out
        .rows
        .iter()
        .filter(|r| picked.contains(&(r.sequence.clone(), r.head)))
        .cloned()
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "## Attention maps of the real activations\n");
    let _ = writeln!(
        md,
        "What the heads of `{}` attend to at n = {n} (log colour scale), under full attention and under the run's variants: one head of each kind found (those heads of every sequence are in `maps/`, statistics in `maps/maps.csv`; `attnbench maps` draws all heads). Kinds are heuristics from the statistics: previous-token (> 0.3 of the weight on the previous token), first-token (> 0.3 on the first), local (> 0.6 within ±{}), else broad.\n",
        npy.display(),
        crate::maps::LOCAL_BAND
    );
    md.push_str(&crate::maps::maps_table(&rows, "maps/"));
    Ok(md)
}

fn line(s: &Series, color: plotters::style::RGBColor, pts: Vec<(f64, f64)>) -> Line {
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

fn time_chart(series: &[(Series, plotters::style::RGBColor)]) -> Chart {
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
                    plotters::style::RGBColor(120, 120, 120),
                ),
                (
                    "reference slope: proportional to n^2",
                    2.0,
                    plotters::style::RGBColor(0, 0, 0),
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

fn layer_chart(series: &[(Series, plotters::style::RGBColor)]) -> Chart {
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
            color: plotters::style::RGBColor(120, 120, 120),
            points: vec![(lo, 50.0), (hi, 50.0)],
            stroke: Stroke::Dashed,
        });
    }
    enough(&mut chart);
    chart
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

fn memory_chart(series: &[(Series, plotters::style::RGBColor)]) -> Chart {
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

fn error_chart(series: &[(Series, plotters::style::RGBColor)]) -> Chart {
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

fn speedup_chart(series: &[(Series, plotters::style::RGBColor)]) -> Chart {
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
        let Some((full, _)) = series
            .iter()
            .find(|(f, _)| f.name == "full" && f.group == s.group)
        else {
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
            color: plotters::style::RGBColor(0, 0, 0),
            points: vec![(lo, 1.0), (hi, 1.0)],
            stroke: Stroke::Dashed,
        });
    }
    enough(&mut chart);
    chart
}

fn throughput_chart(series: &[(Series, plotters::style::RGBColor)], records: &[Record]) -> Chart {
    let mut chart = Chart {
        title: "Useful throughput and the same-run GEMM ceiling".into(),
        x_desc: "sequence length n (log scale)".into(),
        x_pow2: true,
        y_desc: "GFLOP/s".into(),
        log_x: true,
        log_y: false,
        ..Chart::default()
    };
    for (s, c) in series {
        let pts = s
            .points
            .iter()
            .filter_map(|p| p.gflops.map(|g| (p.n as f64, g)))
            .collect();
        chart.lines.push(line(s, *c, pts));
    }
    let mut gemm: Vec<(usize, f64)> = Vec::new();
    for r in records {
        if let Some(g) = r.gemm_gflops {
            match gemm.iter_mut().find(|e| e.0 == r.n_kv) {
                Some(e) => e.1 = e.1.max(g),
                None => gemm.push((r.n_kv, g)),
            }
        }
    }
    gemm.sort_by_key(|e| e.0);
    chart.lines.push(Line {
        label: "GEMM of the two attention products, same run".into(),
        color: plotters::style::RGBColor(0, 0, 0),
        points: gemm.iter().map(|&(n, g)| (n as f64, g)).collect(),
        stroke: Stroke::Dashed,
    });
    enough(&mut chart);
    chart
}

/// The largest length every measured series has; else the largest with at least two.
fn common_length(series: &[(Series, plotters::style::RGBColor)]) -> Option<usize> {
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

fn pareto_chart(series: &[(Series, plotters::style::RGBColor)]) -> (Chart, Option<usize>) {
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
        return (chart, None);
    };
    let pts: Vec<(&Series, plotters::style::RGBColor, f64, f64, f64)> = series
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
    (chart, Some(n))
}

/// Heatmap panels of every registered pattern variant, bidirectional and causal, at n = 64.
fn pattern_panels(registry: &Registry) -> Vec<(String, Vec<Vec<bool>>)> {
    let n = 64;
    let g = Geometry::new(n, n);
    let mut panels = Vec::new();
    for info in registry.iter() {
        let spec = if info.preview.is_empty() {
            info.name
        } else {
            info.preview
        };
        let Ok(v) = registry.build(spec) else {
            continue;
        };
        let Some(pattern) = v.pattern() else { continue };
        if !pattern.unsupported(g).is_empty() {
            continue;
        }
        for causal in [false, true] {
            let mask = Mask::new(Some(pattern), causal);
            let cells = (0..n)
                .map(|i| (0..n).map(|j| mask.allows(g, i, j)).collect())
                .collect();
            panels.push((format!("{v}{}", if causal { " causal" } else { "" }), cells));
        }
    }
    panels
}

fn fmt_ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn fmt_err(e: f64) -> String {
    if e < 0.01 {
        format!("{e:.1e}")
    } else {
        format!("{e:.2}")
    }
}

fn opt<T>(x: Option<T>, f: impl Fn(T) -> String) -> String {
    x.map_or_else(|| "-".into(), f)
}

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
    let reference = |name: &str| {
        all.iter()
            .find(|r| r.name == name && r.group == s.group)
            .map(Series::times)
    };
    let cross = |name: &str| match reference(name) {
        Some(r) if s.name != name => crossover(&s.times(), &r),
        _ => Crossover::NoCommonLengths,
    };
    Scaling {
        time: upper_half_fit(&times),
        memory: upper_half_fit(&mems),
        vs_full: cross("full"),
        vs_flash: cross("flash"),
    }
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

fn markdown_report(results: &Results, all: &[Series], pareto_n: Option<usize>) -> String {
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
    let files: Vec<String> = results
        .files
        .iter()
        .map(|f| format!("`{}`", f.display()))
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
    for (stem, caption) in [
        (
            "time_vs_n",
            "Time per call (log-log), with reference slopes n and n^2",
        ),
        (
            "memory_vs_n",
            "Peak heap bytes per call (log-log); dotted: analytic workspace",
        ),
        ("error_vs_n", "Relative error against dense attention"),
        ("speedup_vs_full", "Speedup over full attention"),
        ("throughput", "Useful GFLOP/s and the same-run GEMM ceiling"),
        ("pareto", "Error vs time (bubble: peak memory)"),
        ("patterns", "What each sparse pattern attends at n = 64"),
    ] {
        let _ = writeln!(md, "### {caption}\n\n![{caption}]({stem}.svg)\n");
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
            fmt_cross(sc.vs_full, s.name == "full"),
            fmt_cross(sc.vs_flash, s.name == "flash")
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
            let own = match (r.err_own_rel, r.status.as_str()) {
                (Some(e), "flagged") => format!("**{e:.1e} FLAGGED**"),
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
    let problems = recs.iter().filter(|r| r.status != "ok").count();
    let _ = writeln!(md, "## Skipped, failed and flagged cells\n");
    if problems == 0 {
        let _ = writeln!(
            md,
            "None: every cell was measured and every exact variant matched its own definition."
        );
    } else {
        let _ = writeln!(md, "| variant | n | status | reason |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (r, group) in recs.iter().zip(&groups).filter(|(r, _)| r.status != "ok") {
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
        let reference = in_group()
            .find(|s| s.name == "full" && !s.points.is_empty())
            .or_else(|| in_group().find(|s| s.name == "flash" && !s.points.is_empty()));
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
    let flagged = recs.iter().filter(|r| r.status == "flagged").count();
    let skipped = recs.iter().filter(|r| r.status == "skipped").count();
    let errors = recs.iter().filter(|r| r.status == "error").count();
    lines.push(format!(
        "{} cells: {} measured, {flagged} flagged (exact variant off its own definition), {skipped} skipped, {errors} failed",
        recs.len(),
        recs.len() - skipped - errors
    ));
    lines
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
