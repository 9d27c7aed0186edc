//! Grid figures: boolean heatmaps (pattern previews) and attention-weight panels, written as
//! SVG and PNG (weight maps as PNG) with the same bundled font as [`charts`](super::charts).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::charts::{draw_error, register_font};
use crate::error::Result;

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
    register_font();
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

/// The colour ramp position of weight `w` on a panel whose brightest value is `max`.
fn shade(w: f64, max: f64, log: bool) -> f64 {
    if max <= 0.0 || w <= 0.0 {
        0.0
    } else if log {
        1.0 + (w / max).log10() / 4.0
    } else {
        w / max
    }
}

/// Writes `panels` side by side as `<dir>/<stem>.png` (PNG only: an n x n map as SVG
/// rectangles would be megabytes). Each pixel shows the largest weight of the cells it
/// covers, on a linear scale from 0 to the panel's `max`, or with `log` over four decades
/// below it; a down-sampled panel has a strip on its left repeating the first key's column.
pub fn save_weight_maps(
    panels: &[WeightPanel],
    title: &str,
    log: bool,
    dir: &Path,
    stem: &str,
) -> Result<std::path::PathBuf> {
    register_font();
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
            // Down-sampled, the first key's column (an attention sink) is one pixel wide:
            // a strip left of the panel repeats it four pixels wide.
            let strip = cols > side as usize;
            for py in 0..side {
                let r = span(py, rows);
                if strip {
                    let w = r.clone().map(|i| p.weights[[i, 0]]).fold(0.0f64, f64::max);
                    let colour = ramp(shade(w, p.max, log));
                    for sx in x0 - 7..x0 - 3 {
                        root.draw_pixel((sx, y0 + py), &colour).map_err(e)?;
                    }
                }
                for px in 0..side {
                    let c = span(px, cols);
                    let mut w = 0.0f64;
                    for i in r.clone() {
                        for j in c.clone() {
                            w = w.max(p.weights[[i, j]]);
                        }
                    }
                    root.draw_pixel((x0 + px, y0 + py), &ramp(shade(w, p.max, log)))
                        .map_err(e)?;
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
