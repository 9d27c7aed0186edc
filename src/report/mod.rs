//! Reports: charts (SVG and PNG), scaling fits, crossovers and `report.md`, from a run's
//! files alone: the results CSVs, the JSON metadata beside them and the run's
//! [artefacts](crate::results::artefacts) (pattern previews, the attention-map gallery). A
//! report never builds a variant or reads a workload, so old runs re-plot identically on any
//! machine and runs combine.
//!
//! - [`data`]: reading CSVs and grouping rows into series.
//! - [`fit`]: log-log slopes with intervals, round-paired comparisons and crossovers.
//! - [`charts`]: plotters rendering with a bundled font.
//! - `figures`: one builder per chart and [`FIGURES`], the list of what a report draws.
//! - `markdown`: `report.md`; `format`: number formatting.
//! - [`decode`]: the report of a generation benchmark (`attnbench decode`).
//! - [`compare`]: two runs cell by cell, for regressions (`attnbench compare`).
//! - `gallery`: the pattern previews and the attention-map gallery from the artefacts.
//!
//! [`write_report`] is the entry point.

pub mod charts;
pub mod compare;
pub mod data;
pub mod decode;
mod figures;
pub mod fit;
mod format;
pub mod frontier;
mod gallery;
pub mod heatmaps;
mod markdown;
pub mod perplexity;

use std::path::{Path, PathBuf};

use charts::palette;
use data::{Series, read_results, series};

use crate::error::{Error, ErrorKind, Result};

pub use figures::{FIGURES, Figure};
pub use markdown::drifting_lengths;

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

/// Whether every one of `csvs` is of the schema `is` tells (`what` names it in the error
/// when only some are); `false` when none is.
fn of_kind(csvs: &[PathBuf], is: fn(&Path) -> Result<bool>, what: &str) -> Result<bool> {
    let kinds = csvs.iter().map(|p| is(p)).collect::<Result<Vec<bool>>>()?;
    if kinds.iter().any(|&k| k) && !kinds.iter().all(|&k| k) {
        return Err(Error::new(ErrorKind::BadOption {
            option: "csv",
            message: format!("{what} and a sweep's cannot share one report"),
        }));
    }
    Ok(kinds.iter().any(|&k| k))
}

/// Reads `csvs` (and the metadata and artefacts beside them) and writes every figure of
/// [`FIGURES`] and `report.md` into `out` (default: [`default_dir`]).
pub fn write_report(csvs: &[PathBuf], out: Option<&Path>) -> Result<ReportOutput> {
    if csvs.is_empty() {
        return Err(Error::new(ErrorKind::NoInput {
            what: "results CSV files to report",
        }));
    }
    let dir = || out.map_or_else(|| default_dir(csvs), Path::to_path_buf);
    if of_kind(
        csvs,
        crate::results::perplexity::is_perplexity_csv,
        "a perplexity run's results (attnbench perplexity)",
    )? {
        let dir = dir();
        let markdown = perplexity::write(csvs, &dir)?;
        return Ok(ReportOutput { dir, markdown });
    }
    if of_kind(
        csvs,
        decode::is_decode_csv,
        "a generation benchmark's results (attnbench decode)",
    )? {
        let dir = dir();
        let markdown = decode::write(csvs, &dir)?;
        return Ok(ReportOutput { dir, markdown });
    }
    let results = read_results(csvs)?;
    let previews = gallery::previews(csvs)?;
    let dir = dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut all = series(&results.records);
    data::mark_external(&mut all, &results.baselines);
    let colored: Vec<(Series, plotters::style::RGBColor)> = all
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, s)| (s, palette(i)))
        .collect();
    let inputs = figures::Inputs {
        series: &colored,
        records: &results.records,
        previews: &previews,
    };
    figures::draw_all(&inputs, &dir)?;
    let gallery = gallery::gallery(csvs, &dir)?;
    let path = dir.join("report.md");
    let pareto_n = figures::common_length(&colored);
    let mut text = markdown::markdown_report(&results, &all, pareto_n);
    text.push_str(&frontier::write(&results.records, &dir)?);
    text.push_str(&gallery);
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(ReportOutput {
        dir,
        markdown: path,
    })
}
