//! Chart rendering with plotters: every chart is written as SVG and PNG.
//!
//! Text uses DejaVu Sans, bundled by the `dejavu` crate and registered with plotters' pure-Rust
//! `ab_glyph` renderer, so charts render on machines without system fonts. Legends sit in a
//! panel to the right of the plot, so they never cover data.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, ErrorKind, Result};

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 640;
const LEGEND_WIDTH: u32 = 330;

/// How a line is stroked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stroke {
    /// A solid line with markers at the points.
    Solid,
    /// A dashed line (reference slopes, ceilings).
    Dashed,
    /// A dotted line (analytic estimates).
    Dotted,
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Line {
    /// The legend label.
    pub label: String,
    /// The colour.
    pub color: RGBColor,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// The stroke.
    pub stroke: Stroke,
}

/// A bubble of a scatter chart.
#[derive(Debug, Clone)]
pub struct Bubble {
    /// The label drawn beside it.
    pub label: String,
    /// The colour.
    pub color: RGBColor,
    /// The position.
    pub at: (f64, f64),
    /// The radius in pixels.
    pub radius: f64,
}

/// A chart: lines and bubbles on linear or logarithmic axes.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// The title.
    pub title: String,
    /// The x-axis label, with units.
    pub x_desc: String,
    /// The y-axis label, with units.
    pub y_desc: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic x axis of sequence lengths, ticked at powers of two (overrides `log_x`).
    pub x_pow2: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub lines: Vec<Line>,
    /// The bubbles.
    pub bubbles: Vec<Bubble>,
    /// A note under the title (e.g. what was left out and why).
    pub note: Option<String>,
}

/// A fixed palette: series keep their colour across every chart of a report.
pub fn palette(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 16] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(0, 0, 128),
        RGBColor(128, 0, 0),
        RGBColor(0, 128, 128),
        RGBColor(128, 128, 0),
        RGBColor(255, 0, 255),
        RGBColor(60, 60, 60),
    ];
    COLORS[i % COLORS.len()]
}

fn ensure_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // The bundled font is valid OpenType; registration cannot fail for it.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io {
        path: path.display().to_string(),
        message: format!("drawing failed: {e}"),
    })
}

/// Writes `chart` as `<dir>/<stem>.svg` and `<dir>/<stem>.png`.
pub fn save(chart: &Chart, dir: &Path, stem: &str) -> Result<()> {
    ensure_font();
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, chart).map_err(|e| draw_error(&svg, e))?;
        root.present().map_err(|e| draw_error(&svg, e))?;
    }
    let png = dir.join(format!("{stem}.png"));
    let root = BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area();
    draw(&root, chart).map_err(|e| draw_error(&png, e))?;
    root.present().map_err(|e| draw_error(&png, e))?;
    Ok(())
}

fn all_points(chart: &Chart) -> Vec<(f64, f64)> {
    chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .chain(chart.bubbles.iter().map(|b| b.at))
        .filter(|&(x, y)| {
            x.is_finite() && y.is_finite() && (!chart.log_x || x > 0.0) && (!chart.log_y || y > 0.0)
        })
        .collect()
}

fn range(values: impl Iterator<Item = f64>, log: bool, include_zero: bool) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return None;
    }
    Some(if log {
        let (lo, hi) = if lo == hi {
            (lo / 2.0, hi * 2.0)
        } else {
            (lo, hi)
        };
        (lo / 1.3, hi * 1.3)
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.08
        } else {
            hi.abs().max(1.0) * 0.1
        };
        let lo = if include_zero && lo >= 0.0 {
            0.0
        } else {
            lo - pad
        };
        (lo, hi + pad)
    })
}

/// Moves x to log2(x) on a linear axis, so that ticks fall on powers of two.
fn to_pow2(chart: &Chart) -> Chart {
    let mut c = chart.clone();
    let t = |x: f64| if x > 0.0 { x.log2() } else { f64::NAN };
    for l in &mut c.lines {
        l.points = l.points.iter().map(|&(x, y)| (t(x), y)).collect();
    }
    for b in &mut c.bubbles {
        b.at.0 = t(b.at.0);
    }
    c.log_x = false;
    c
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let transformed;
    let chart = if chart.x_pow2 {
        transformed = to_pow2(chart);
        &transformed
    } else {
        chart
    };
    root.fill(&WHITE).map_err(e)?;
    let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let points = all_points(chart);
    let x = range(points.iter().map(|p| p.0), chart.log_x, false);
    let y = range(points.iter().map(|p| p.1), chart.log_y, true);
    let (Some(x), Some(y)) = (x, y) else {
        return draw_empty(&plot_area, chart);
    };
    match (chart.log_x, chart.log_y) {
        (true, true) => plot(
            &plot_area,
            chart,
            (x.0..x.1).log_scale(),
            (y.0..y.1).log_scale(),
        )?,
        (true, false) => plot(&plot_area, chart, (x.0..x.1).log_scale(), y.0..y.1)?,
        (false, true) => plot(&plot_area, chart, x.0..x.1, (y.0..y.1).log_scale())?,
        (false, false) => plot(&plot_area, chart, x.0..x.1, y.0..y.1)?,
    }
    draw_legend(&legend_area, chart)
}

fn draw_empty<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.draw(&Text::new(
        chart.title.clone(),
        (20, 20),
        ("sans-serif", 24).into_font(),
    ))
    .map_err(e)?;
    let msg = chart
        .note
        .clone()
        .unwrap_or_else(|| "not enough points to draw this chart".into());
    area.draw(&Text::new(
        msg,
        (40, (HEIGHT / 2) as i32),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(e)?;
    Ok(())
}

/// Numbers for axis labels: plain when moderate, scientific when tiny or huge.
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if (1e-2..1e6).contains(&a) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

fn plot<DB, X, Y>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    x: X,
    y: Y,
) -> std::result::Result<(), String>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut caption = chart.title.clone();
    if let Some(note) = &chart.note {
        caption = format!("{caption}  ({note})");
    }
    let mut ctx = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    ctx.configure_mesh()
        .x_desc(chart.x_desc.as_str())
        .y_desc(chart.y_desc.as_str())
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 14))
        .x_labels(if chart.x_pow2 { 12 } else { 10 })
        .x_label_formatter(&|v| {
            if !chart.x_pow2 {
                fmt_tick(*v)
            } else if (v - v.round()).abs() < 1e-6 {
                format!("{}", 2f64.powf(v.round()) as u64)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| fmt_tick(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(e)?;
    let keep = |&(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && (!chart.log_x || x > 0.0) && (!chart.log_y || y > 0.0)
    };
    for line in &chart.lines {
        let pts: Vec<(f64, f64)> = line.points.iter().copied().filter(keep).collect();
        match line.stroke {
            Stroke::Solid => {
                ctx.draw_series(LineSeries::new(pts.clone(), line.color.stroke_width(2)))
                    .map_err(e)?;
                ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 4, line.color.filled())))
                    .map_err(e)?;
            }
            Stroke::Dashed => {
                ctx.draw_series(DashedLineSeries::new(
                    pts,
                    10,
                    6,
                    line.color.stroke_width(2),
                ))
                .map_err(e)?;
            }
            Stroke::Dotted => {
                ctx.draw_series(DashedLineSeries::new(pts, 2, 5, line.color.stroke_width(2)))
                    .map_err(e)?;
            }
        }
    }
    for b in chart.bubbles.iter().filter(|b| keep(&b.at)) {
        ctx.draw_series(std::iter::once(Circle::new(
            b.at,
            b.radius.round() as i32,
            b.color.mix(0.55).filled(),
        )))
        .map_err(e)?;
        ctx.draw_series(std::iter::once(
            EmptyElement::at(b.at)
                + Text::new(
                    b.label.clone(),
                    (b.radius.round() as i32 + 3, -7),
                    ("sans-serif", 13).into_font(),
                ),
        ))
        .map_err(e)?;
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let entries: Vec<(&str, RGBColor, Stroke)> = chart
        .lines
        .iter()
        .map(|l| (l.label.as_str(), l.color, l.stroke))
        .chain(
            chart
                .bubbles
                .iter()
                .map(|b| (b.label.as_str(), b.color, Stroke::Solid)),
        )
        .collect();
    let row = 20;
    let font = ("sans-serif", 13).into_font();
    let mut y = 50;
    for (label, color, stroke) in entries {
        let shown: String = if label.chars().count() > 44 {
            label.chars().take(42).chain("..".chars()).collect()
        } else {
            label.to_string()
        };
        let style = color.stroke_width(2);
        match stroke {
            Stroke::Solid => {
                area.draw(&PathElement::new(vec![(6, y), (34, y)], style))
                    .map_err(e)?;
                area.draw(&Circle::new((20, y), 4, color.filled()))
                    .map_err(e)?;
            }
            Stroke::Dashed => {
                area.draw(&PathElement::new(vec![(6, y), (16, y)], style))
                    .map_err(e)?;
                area.draw(&PathElement::new(vec![(22, y), (34, y)], style))
                    .map_err(e)?;
            }
            Stroke::Dotted => {
                for x0 in (6..34).step_by(7) {
                    area.draw(&PathElement::new(vec![(x0, y), (x0 + 2, y)], style))
                        .map_err(e)?;
                }
            }
        }
        area.draw(&Text::new(shown, (40, y - 7), font.clone()))
            .map_err(e)?;
        y += row;
        if y > HEIGHT as i32 - row {
            area.draw(&Text::new("(more in report.md)", (40, y - 7), font.clone()))
                .map_err(e)?;
            break;
        }
    }
    Ok(())
}

/// A grid of boolean heatmaps (allowed cells in colour), one panel per `(title, cells)`,
/// `columns` panels per row, written as SVG and PNG. Runs of allowed cells in a row are drawn
/// as one rectangle to keep the SVG small.
pub fn save_heatmaps(
    panels: &[(String, Vec<Vec<bool>>)],
    columns: usize,
    title: &str,
    dir: &Path,
    stem: &str,
) -> Result<()> {
    ensure_font();
    let panel = 230u32;
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (panel * columns as u32 + 20, panel * rows as u32 + 60);
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_heatmaps(&root, panels, columns, panel, title).map_err(|e| draw_error(&svg, e))?;
        root.present().map_err(|e| draw_error(&svg, e))?;
    }
    let png = dir.join(format!("{stem}.png"));
    let root = BitMapBackend::new(&png, size).into_drawing_area();
    draw_heatmaps(&root, panels, columns, panel, title).map_err(|e| draw_error(&png, e))?;
    root.present().map_err(|e| draw_error(&png, e))?;
    Ok(())
}

fn draw_heatmaps<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[(String, Vec<Vec<bool>>)],
    columns: usize,
    panel: u32,
    title: &str,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    root.draw(&Text::new(
        title.to_string(),
        (12, 12),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(e)?;
    let on = RGBColor(31, 119, 180);
    for (k, (name, cells)) in panels.iter().enumerate() {
        let (r, c) = (k / columns, k % columns);
        let (x0, y0) = (10 + c as i32 * panel as i32, 50 + r as i32 * panel as i32);
        root.draw(&Text::new(
            name.clone(),
            (x0, y0),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(e)?;
        let n = cells.len().max(1);
        let side = (panel as i32 - 40).max(10);
        let cell = side as f64 / n as f64;
        let (gx, gy) = (x0 + 4, y0 + 20);
        root.draw(&Rectangle::new(
            [(gx, gy), (gx + side, gy + side)],
            RGBColor(180, 180, 180),
        ))
        .map_err(e)?;
        for (i, row) in cells.iter().enumerate() {
            let mut j = 0;
            while j < row.len() {
                if !row[j] {
                    j += 1;
                    continue;
                }
                let start = j;
                while j < row.len() && row[j] {
                    j += 1;
                }
                let px = |v: usize| (v as f64 * cell).round() as i32;
                root.draw(&Rectangle::new(
                    [(gx + px(start), gy + px(i)), (gx + px(j), gy + px(i + 1))],
                    on.filled(),
                ))
                .map_err(e)?;
            }
        }
    }
    Ok(())
}

/// One panel of a weight-map image: a non-negative matrix drawn against `max`.
#[derive(Debug, Clone)]
pub struct WeightPanel {
    /// The panel's title.
    pub title: String,
    /// A line of statistics under the title.
    pub caption: String,
    /// The matrix (rows: queries, columns: keys).
    pub weights: ndarray::Array2<f64>,
    /// The value drawn brightest (the same for panels that are compared).
    pub max: f64,
}

/// The perceptually ordered colour of `t` in `[0, 1]` (dark blue to yellow, like viridis).
fn ramp(t: f64) -> RGBColor {
    const ANCHORS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let x = t.clamp(0.0, 1.0) * (ANCHORS.len() - 1) as f64;
    let k = (x.floor() as usize).min(ANCHORS.len() - 2);
    let f = x - k as f64;
    let (a, b) = (ANCHORS[k], ANCHORS[k + 1]);
    let mix = |u: f64, v: f64| (u + (v - u) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Writes `panels` side by side as `<dir>/<stem>.png` (PNG only: an n x n map as SVG
/// rectangles would be megabytes). Each pixel shows the largest weight of the cells it
/// covers, on a linear scale from 0 to the panel's `max`, or with `log` over four decades
/// below it.
pub fn save_weight_maps(
    panels: &[WeightPanel],
    title: &str,
    log: bool,
    dir: &Path,
    stem: &str,
) -> Result<std::path::PathBuf> {
    ensure_font();
    let side = 256i32;
    let width = 20 + panels.len().max(1) as u32 * (side as u32 + 24);
    let png = dir.join(format!("{stem}.png"));
    let root = BitMapBackend::new(&png, (width, side as u32 + 72)).into_drawing_area();
    let draw = || -> std::result::Result<(), String> {
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let scale = if log {
            "colour: log scale, 4 decades below the panel maximum"
        } else {
            "colour: linear, 0 to the panel maximum"
        };
        root.draw(&Text::new(
            format!("{title}   ({scale})"),
            (10, 8),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(e)?;
        for (k, p) in panels.iter().enumerate() {
            let x0 = 10 + k as i32 * (side + 24);
            let y0 = 60;
            root.draw(&Text::new(
                p.title.clone(),
                (x0, 30),
                ("sans-serif", 12).into_font(),
            ))
            .map_err(e)?;
            root.draw(&Text::new(
                p.caption.clone(),
                (x0, 44),
                ("sans-serif", 10).into_font(),
            ))
            .map_err(e)?;
            let (rows, cols) = p.weights.dim();
            let span = |px: i32, n: usize| {
                let a = px as usize * n / side as usize;
                let b = ((px + 1) as usize * n).div_ceil(side as usize).max(a + 1);
                a..b.min(n)
            };
            for py in 0..side {
                let r = span(py, rows);
                for px in 0..side {
                    let c = span(px, cols);
                    let mut w = 0.0f64;
                    for i in r.clone() {
                        for j in c.clone() {
                            w = w.max(p.weights[[i, j]]);
                        }
                    }
                    let t = if p.max <= 0.0 || w <= 0.0 {
                        0.0
                    } else if log {
                        1.0 + (w / p.max).log10() / 4.0
                    } else {
                        w / p.max
                    };
                    root.draw_pixel((x0 + px, y0 + py), &ramp(t)).map_err(e)?;
                }
            }
        }
        root.present().map_err(e)?;
        Ok(())
    };
    let drawn = draw();
    drop(root);
    drawn.map_err(|e| draw_error(&png, e))?;
    Ok(png)
}
