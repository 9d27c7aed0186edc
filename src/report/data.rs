//! Reading results CSVs and grouping their rows into one series per variant.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::results::record::{BaselineMeta, Record, RunMeta, RunState};

/// Rows read from one or more results CSVs, with any run metadata found beside them.
#[derive(Debug, Clone)]
pub struct Results {
    /// Every row, in file order.
    pub records: Vec<Record>,
    /// The CSV files read.
    pub files: Vec<PathBuf>,
    /// The JSON metadata beside each CSV, where present.
    pub metas: Vec<RunMeta>,
    /// The metadata of CSVs of external baselines (`baselines/run.py`).
    pub baselines: Vec<BaselineMeta>,
    /// What a reader must know before trusting the figures: runs that ended early (and
    /// the planned cells they lack), a last row cut short, unreadable metadata.
    pub warnings: Vec<String>,
}

/// Reads results CSVs. A malformed file, or a row with a value outside its physical range,
/// is an error naming the file, the line and the column. A last line cut short by an
/// interrupted write is left out with a warning, as are the cells an incomplete run lacks.
pub fn read_results(paths: &[PathBuf]) -> Result<Results> {
    let mut records = Vec::new();
    let mut metas = Vec::new();
    let mut baselines = Vec::new();
    let mut warnings = Vec::new();
    for path in paths {
        let (rows, cut) = read_csv(path)?;
        if cut {
            warnings.push(format!(
                "`{}`: its last line was cut short (an interrupted write) and is left out",
                text(&path.display().to_string())
            ));
        }
        let json = path.with_extension("json");
        let no_rows = |why: Option<&str>| {
            Error::new(ErrorKind::Format {
                path: path.display().to_string(),
                message: why.map_or("no result rows".into(), |w| format!("no result rows: {w}")),
            })
        };
        match std::fs::read_to_string(&json) {
            Ok(t) if is_baselines(&t) => match serde_json::from_str::<BaselineMeta>(&t) {
                Ok(mut meta) if !rows.is_empty() => {
                    sanitize_baselines(&mut meta);
                    baselines.push(meta);
                }
                Ok(_) => return Err(no_rows(None)),
                Err(e) => warnings.push(format!(
                    "`{}` is unreadable ({}): the baselines' metadata is not shown",
                    text(&json.display().to_string()),
                    text(&e.to_string())
                )),
            },
            Ok(t) => match serde_json::from_str::<RunMeta>(&t) {
                Ok(mut meta) => {
                    let ended_early = completeness(&meta, &rows);
                    if rows.is_empty() {
                        return Err(no_rows(ended_early.as_deref()));
                    }
                    warnings.extend(ended_early);
                    sanitize_meta(&mut meta);
                    metas.push(meta);
                }
                Err(e) => warnings.push(format!(
                    "`{}` is unreadable ({}): the run's metadata is not shown",
                    text(&json.display().to_string()),
                    text(&e.to_string())
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if rows.is_empty() {
                    return Err(no_rows(None));
                }
            }
            Err(e) => warnings.push(format!(
                "`{}` is unreadable: {}",
                text(&json.display().to_string()),
                text(&e.to_string())
            )),
        }
        records.extend(rows);
    }
    Ok(Results {
        records,
        files: paths.to_vec(),
        metas,
        baselines,
        warnings,
    })
}

/// Whether a JSON text is a baselines file (its `kind`), not a sweep's metadata.
fn is_baselines(json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .is_ok_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some(BaselineMeta::KIND))
}

fn sanitize_baselines(meta: &mut BaselineMeta) {
    for s in [
        &mut meta.run_id,
        &mut meta.source,
        &mut meta.started_utc,
        &mut meta.python,
    ] {
        *s = text(s);
    }
    for s in meta.command_line.iter_mut().chain(&mut meta.skipped) {
        *s = text(s);
    }
    for lib in &mut meta.libraries {
        lib.name = text(&lib.name);
        for s in lib
            .variants
            .iter_mut()
            .chain(&mut lib.versions)
            .chain(&mut lib.notes)
        {
            *s = text(s);
        }
    }
}

/// A warning when `meta`'s run did not end normally, naming the planned cells without a row.
fn completeness(meta: &RunMeta, rows: &[Record]) -> Option<String> {
    let how = match meta.state {
        RunState::Complete => return None,
        RunState::Running => {
            "ended before its end without recording why (interrupted, killed, out of disk)"
                .to_string()
        }
        RunState::Failed => format!("failed: {}", meta.notes.join("; ")),
    };
    let (mut missing, mut lacking) = (Vec::new(), 0);
    for v in &meta.variants {
        let lengths: Vec<String> = meta
            .lengths
            .iter()
            .filter(|&&n| {
                !rows
                    .iter()
                    .any(|r| r.run_id == meta.run_id && &r.variant == v && r.n_kv == n)
            })
            .map(|n| n.to_string())
            .collect();
        lacking += lengths.len();
        if !lengths.is_empty() {
            missing.push(format!("`{}` at n = {}", text(v), lengths.join(", ")));
        }
    }
    let planned = meta.variants.len() * meta.lengths.len();
    Some(format!(
        "**incomplete run** `{}`: it {}; {lacking} of its {planned} planned cells have no row{}",
        text(&meta.run_id),
        text(&how),
        if missing.is_empty() {
            String::new()
        } else {
            format!(": {}", missing.join("; "))
        }
    ))
}

/// Text from a results file made safe for markdown tables and chart labels: control
/// characters become spaces, `|` is escaped, `<`, `>` and `` ` `` cannot open HTML or code.
pub(crate) fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn sanitize_meta(meta: &mut RunMeta) {
    let m = &mut meta.machine;
    for s in [
        &mut meta.run_id,
        &mut meta.started_utc,
        &mut meta.workload,
        &mut m.cpu_model,
        &mut m.os,
        &mut m.rustc,
        &mut m.crate_version,
        &mut m.host,
    ] {
        *s = text(s);
    }
    for s in meta
        .command_line
        .iter_mut()
        .chain(&mut meta.variants)
        .chain(&mut meta.notes)
        .chain(&mut m.simd)
        .chain(&mut m.caches)
        .chain(m.git_commit.as_mut())
        .chain(m.thp.as_mut())
    {
        *s = text(s);
    }
}

/// The bytes of `path` up to its last newline, and whether anything followed it (a last
/// row cut short by an interrupted write).
fn whole_lines(path: &Path) -> Result<(Vec<u8>, bool)> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let cut = keep < bytes.len();
    bytes.truncate(keep);
    Ok((bytes, cut))
}

fn read_csv(path: &Path) -> Result<(Vec<Record>, bool)> {
    let format = |message: String| {
        Error::new(ErrorKind::Format {
            path: path.display().to_string(),
            message,
        })
    };
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(format("a directory; expected a results CSV file".into()));
    }
    let (bytes, cut) = whole_lines(path)?;
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| Error::format(path, format!("header: {e}"), e))?
        .clone();
    let mut rows = Vec::new();
    for (i, row) in reader.records().enumerate() {
        // Data rows count from 1 (the header is row 0).
        let at = format!("row {}", i + 1);
        let row = row.map_err(|e| Error::format(path, format!("{at}: {e}"), e))?;
        let mut record: Record = row
            .deserialize(Some(&headers))
            .map_err(|e| Error::format(path, format!("{at}: {e}"), e))?;
        record
            .validate()
            .map_err(|m| format(format!("{at}: {m}")))?;
        for s in [
            &mut record.run_id,
            &mut record.variant,
            &mut record.name,
            &mut record.workload,
            &mut record.modifiers,
            &mut record.note,
            &mut record.err_by_input,
        ] {
            *s = text(s);
        }
        rows.push(record);
    }
    Ok((rows, cut))
}

/// One measured point of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Sequence length swept (`n_kv`; equal to `n_q` for self-attention).
    pub n: usize,
    /// Median time, milliseconds.
    pub time_ms: f64,
    /// The median of each round, milliseconds (empty for files written before rounds).
    pub rounds: Vec<f64>,
    /// Peak heap bytes, when measured.
    pub peak_bytes: Option<f64>,
    /// Analytic workspace bytes.
    pub workspace_bytes: Option<f64>,
    /// Relative error against dense attention (the mean over seeds for random features).
    pub err_dense: Option<f64>,
    /// Its standard deviation over seeds, for random-feature variants.
    pub err_dense_sd: Option<f64>,
    /// Executed GFLOP/s (`Attention::cost` flops per second).
    pub executed_gflops: Option<f64>,
    /// The same-run GEMM reference rate, GFLOP/s.
    pub gemm_gflops: Option<f64>,
    /// Layer sweeps: median ms of the whole layer, its projections and its core.
    pub layer: Option<(f64, f64, f64)>,
    /// Exact variants: the (query, key) pairs their mask allows (density x n_q x n_kv), the
    /// work their time should follow.
    pub pairs: Option<f64>,
}

/// One line of the charts: a variant (per run, causal flag and workload where these vary).
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend label.
    pub label: String,
    /// The variant spec.
    pub variant: String,
    /// The registry name.
    pub name: String,
    /// The run its rows come from.
    pub run_id: String,
    /// The fidelity column.
    pub fidelity: crate::attention::Fidelity,
    /// What distinguishes this series' run from others in a combined report (run id, causal
    /// flag, workload); empty for a single run. Comparisons stay within a group.
    pub group: String,
    /// Measured points (status `ok` or `flagged`), by increasing `n`.
    pub points: Vec<Point>,
    /// Rows of an external baseline (`baselines/run.py`), timed in other processes after
    /// the sweep: its rounds are not paired with the sweep's, so comparisons use unpaired
    /// intervals (see [`mark_external`]).
    pub external: bool,
}

impl Series {
    /// `(n, time_ms)` pairs.
    pub fn times(&self) -> Vec<(usize, f64)> {
        self.points.iter().map(|p| (p.n, p.time_ms)).collect()
    }
}

/// The per-round medians of a row (its `round_medians_ms`); empty when absent or malformed.
pub fn round_medians(r: &Record) -> Vec<f64> {
    let parsed: Option<Vec<f64>> = r
        .round_medians_ms
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().ok())
        .collect();
    parsed.unwrap_or_default()
}

/// Each row's group (see [`Series::group`]): what distinguishes its run, causal flag and
/// workload from the other rows', or empty.
pub fn groups(records: &[Record]) -> Vec<String> {
    let distinct = |f: fn(&Record) -> String| {
        let mut v: Vec<String> = records.iter().map(f).collect();
        v.sort();
        v.dedup();
        v.len() > 1
    };
    let many_runs = distinct(|r| r.run_id.clone());
    let many_causal = distinct(|r| r.causal.to_string());
    let many_workloads = distinct(|r| r.workload.clone());
    let many_modifiers = distinct(|r| r.modifiers.clone());
    let many_queries = distinct(|r| {
        if r.n_q == r.n_kv {
            "self".into()
        } else {
            r.n_q.to_string()
        }
    });
    let many_layers = distinct(|r| format!("{:?}", r.d_model));
    records
        .iter()
        .map(|r| {
            let mut group = String::new();
            if many_causal && r.causal {
                group.push_str(" causal");
            }
            if many_workloads {
                group.push_str(&format!(" [{}]", r.workload));
            }
            if many_modifiers && !r.modifiers.is_empty() {
                group.push_str(&format!(" [{}]", r.modifiers));
            }
            if many_queries && r.n_q != r.n_kv {
                group.push_str(&format!(" [n_q={}]", r.n_q));
            }
            if many_layers && let Some(d) = r.d_model {
                group.push_str(&format!(" [layer d_model={d}]"));
            }
            if many_runs {
                group.push_str(&format!(" [{}]", r.run_id));
            }
            group
        })
        .collect()
}

/// Groups rows into series, in order of first appearance.
pub fn series(records: &[Record]) -> Vec<Series> {
    let groups = groups(records);
    let mut out: Vec<Series> = Vec::new();
    for (r, group) in records.iter().zip(groups) {
        let label = format!("{}{group}", r.variant);
        let idx = match out.iter().position(|s| s.label == label) {
            Some(i) => i,
            None => {
                out.push(Series {
                    label,
                    variant: r.variant.clone(),
                    name: r.name.clone(),
                    run_id: r.run_id.clone(),
                    fidelity: r.fidelity,
                    group,
                    points: Vec::new(),
                    external: false,
                });
                out.len() - 1
            }
        };
        let measured = r.status.is_measured();
        if let (true, Some(time_ms)) = (measured, r.time_median_ms) {
            out[idx].points.push(Point {
                n: r.n_kv,
                time_ms,
                rounds: round_medians(r),
                peak_bytes: r.peak_bytes.map(|b| b as f64),
                workspace_bytes: r.workspace_bytes.map(|b| b as f64),
                err_dense: r.err_dense_rel,
                err_dense_sd: r.err_dense_rel_sd,
                executed_gflops: r.executed_gflops,
                gemm_gflops: r.gemm_gflops,
                layer: match (r.layer_ms, r.proj_ms, r.core_ms) {
                    (Some(l), Some(p), Some(c)) => Some((l, p, c)),
                    _ => None,
                },
                pairs: r
                    .density
                    .filter(|_| r.fidelity == crate::attention::Fidelity::Exact)
                    .map(|d| d * r.n_q as f64 * r.n_kv as f64),
            });
        }
    }
    for s in &mut out {
        s.points.sort_by_key(|p| p.n);
    }
    out
}

/// Marks the series of the external baselines among `all` (those of a baselines file's run
/// and library variants).
pub fn mark_external(all: &mut [Series], baselines: &[BaselineMeta]) {
    for s in all {
        s.external = baselines.iter().any(|b| {
            b.run_id == s.run_id && b.libraries.iter().any(|l| l.variants.contains(&s.variant))
        });
    }
}

/// The baseline a comparison in `group` is made against: the series of registry name `name`
/// (e.g. `full`) in that group with the shortest spec, i.e. the variant at its defaults when
/// several configurations of it were swept (`full` before `full(gemm=matrixmultiply)`).
pub fn reference<'a>(
    all: impl IntoIterator<Item = &'a Series>,
    name: &str,
    group: &str,
) -> Option<&'a Series> {
    all.into_iter()
        .filter(|s| s.name == name && s.group == group && !s.points.is_empty())
        .min_by_key(|s| s.variant.len())
}
