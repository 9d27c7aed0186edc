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
    /// A dashed line (reference slopes and rates).
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

/// Registers the bundled font (DejaVu Sans) as plotters' `sans-serif`, once per process.
/// Plotters is built here with `ab_glyph`, which has no system fonts: anything that draws
/// text with plotters (the report, and criterion's HTML report in the benches) calls this
/// first, or drawing fails with `FontUnavailable`.
pub fn register_font() {
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

pub(super) fn draw_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io {
        path: path.display().to_string(),
        message: format!("drawing failed: {e}"),
    })
}

/// Writes `chart` as `<dir>/<stem>.svg` and `<dir>/<stem>.png`.
pub fn save(chart: &Chart, dir: &Path, stem: &str) -> Result<()> {
    register_font();
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
    let bounds = if log {
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
    };
    // Values near f64::MAX would overflow the padding; such an axis cannot be drawn.
    (bounds.0.is_finite() && bounds.1.is_finite() && bounds.0 < bounds.1).then_some(bounds)
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
