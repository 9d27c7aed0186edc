//! Reading results CSVs and grouping their rows into one series per variant.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::results::record::{Record, RunMeta};

/// Rows read from one or more results CSVs, with any run metadata found beside them.
#[derive(Debug, Clone)]
pub struct Results {
    /// Every row, in file order.
    pub records: Vec<Record>,
    /// The CSV files read.
    pub files: Vec<PathBuf>,
    /// The JSON metadata beside each CSV, where present.
    pub metas: Vec<RunMeta>,
}

/// Reads results CSVs. A malformed file is an error naming the file and the line.
pub fn read_results(paths: &[PathBuf]) -> Result<Results> {
    let mut records = Vec::new();
    let mut metas = Vec::new();
    for path in paths {
        records.extend(read_csv(path)?);
        let json = path.with_extension("json");
        if let Ok(text) = std::fs::read_to_string(&json)
            && let Ok(meta) = serde_json::from_str::<RunMeta>(&text)
        {
            metas.push(meta);
        }
    }
    Ok(Results {
        records,
        files: paths.to_vec(),
        metas,
    })
}

fn read_csv(path: &Path) -> Result<Vec<Record>> {
    let format = |message: String| {
        Error::new(ErrorKind::Format {
            path: path.display().to_string(),
            message,
        })
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for row in reader.deserialize::<Record>() {
        let row = row.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            Error::format(path, format!("line {line}: {e}"), e)
        })?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(format("no result rows".into()));
    }
    Ok(rows)
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
