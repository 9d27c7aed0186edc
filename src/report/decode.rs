//! The report of a generation benchmark ([`crate::harness::decode`]): time per generated
//! token against the context (log-log, with O(n) and O(1) references), the decoder's state,
//! the fraction of the measured read bandwidth each step achieves, the error against dense
//! f64 attention, and per variant the speed of the half-precision stores over f32 with the
//! verdict stated only where the intervals separate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::charts::{Chart, Line, Stroke, palette, save};
use super::fit::{Fit, loglog_fit, upper_half_fit};
use super::format::{fmt_bytes, fmt_err};
use crate::error::{Error, ErrorKind, Result};
use crate::results::artefacts::read_json;
use crate::results::decode::{DecodeMeta, DecodeRecord, read_decode_csv};
use crate::results::record::RunState;

/// Whether `path` is a generation benchmark's CSV (its header names `us_per_token`).
pub fn is_decode_csv(path: &Path) -> Result<bool> {
    crate::results::has_column(path, "us_per_token")
}

/// One line of the charts: a (variant, mode, store) over the contexts, `ok` cells only.
struct Series {
    label: String,
    variant: String,
    kv: String,
    rows: Vec<DecodeRecord>,
}

fn series(records: &[DecodeRecord]) -> Vec<Series> {
    let mut by: BTreeMap<(String, String, String), Vec<DecodeRecord>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.status == "ok" || r.status == "flagged")
    {
        by.entry((r.variant.clone(), r.mode.clone(), r.kv.clone()))
            .or_default()
            .push(r.clone());
    }
    // Keep the variants in the order they ran.
    let mut order: Vec<&str> = Vec::new();
    for r in records {
        if !order.contains(&r.variant.as_str()) {
            order.push(&r.variant);
        }
    }
    let mut out: Vec<Series> = by
        .into_iter()
        .map(|((variant, mode, kv), mut rows)| {
            rows.sort_by_key(|r| r.context);
            let label = if mode == "stateless" {
                format!("{variant} {kv} (stateless)")
            } else {
                format!("{variant} {kv}")
            };
            Series {
                label,
                variant,
                kv,
                rows,
            }
        })
        .collect();
    out.sort_by_key(|s| {
        (
            order.iter().position(|v| *v == s.variant),
            s.label.contains("stateless"),
            ["f32", "f16", "bf16"].iter().position(|k| *k == s.kv),
        )
    });
    out
}

/// Writes the charts and `report.md` of the decode CSVs `csvs` into `dir`; returns the
/// markdown's path.
pub fn write(csvs: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    let mut records: Vec<DecodeRecord> = Vec::new();
    let mut meta: Option<DecodeMeta> = None;
    let mut ended_early: Vec<String> = Vec::new();
    for path in csvs {
        let these = read_decode_csv(path)?;
        // Runs combine only when they measured the same inputs, each cell once.
        let m: Option<DecodeMeta> = read_json(&path.with_extension("json"))?;
        if let Some(m) = m.as_ref().filter(|m| m.state != RunState::Complete) {
            ended_early.push(format!(
                "- **incomplete run** `{}`: {}; the contexts after the last one shown were not measured\n",
                crate::report::data::text(&m.run_id),
                match m.state {
                    RunState::Failed => format!("failed: {}", crate::report::data::text(&m.notes.join("; "))),
                    _ => "it ended before its end without recording why (interrupted, killed, out of disk)".into(),
                }
            ));
        }
        if let (Some(a), Some(b)) = (&meta, &m)
            && (a.workload != b.workload || a.shape != b.shape || a.tokens != b.tokens)
        {
            return Err(mixed(
                path,
                "another workload, shape or token count than the first file",
            ));
        }
        for r in &these {
            if records.iter().any(|o| {
                (&o.variant, &o.mode, &o.kv, o.context) == (&r.variant, &r.mode, &r.kv, r.context)
            }) {
                return Err(mixed(
                    path,
                    &format!(
                        "`{}` {} at context {} appears in more than one file; report the runs separately",
                        r.variant, r.kv, r.context
                    ),
                ));
            }
        }
        records.extend(these);
        meta = meta.or(m);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let all = series(&records);
    let line = |s: &Series, i: usize, y: &dyn Fn(&DecodeRecord) -> f64| Line {
        label: s.label.clone(),
        color: palette(i),
        points: s
            .rows
            .iter()
            .map(|r| (r.context as f64, y(r)))
            .filter(|p| p.1.is_finite() && p.1 > 0.0)
            .collect(),
        stroke: Stroke::Solid,
    };
    let chart = |title: &str, y_desc: &str, log_y: bool, lines: Vec<Line>| Chart {
        title: title.into(),
        x_desc: "context (tokens in the cache)".into(),
        y_desc: y_desc.into(),
        x_pow2: true,
        log_y,
        lines,
        ..Chart::default()
    };

    let mut lines: Vec<Line> = all
        .iter()
        .enumerate()
        .map(|(i, s)| line(s, i, &|r| r.us_per_token))
        .collect();
    lines.extend(references(&lines));
    save(
        &chart(
            "Time per generated token",
            "microseconds per token (median)",
            true,
            lines,
        ),
        dir,
        "decode_time",
    )?;
    let lines = all
        .iter()
        .enumerate()
        .map(|(i, s)| line(s, i, &|r| r.state_bytes as f64))
        .collect();
    save(
        &chart("Decoder state after the last token", "bytes", true, lines),
        dir,
        "decode_state",
    )?;
    let lines = all
        .iter()
        .enumerate()
        .map(|(i, s)| line(s, i, &|r| 100.0 * r.read_fraction))
        .collect();
    save(
        &chart(
            "Bytes read per token over time, as % of the measured read bandwidth",
            "% of read bandwidth",
            false,
            lines,
        ),
        dir,
        "decode_read",
    )?;
    let lines = all
        .iter()
        .enumerate()
        .map(|(i, s)| line(s, i, &|r| r.err_median))
        .collect();
    save(
        &chart(
            "Error against dense f64 attention (median row, relative)",
            "relative error",
            true,
            lines,
        ),
        dir,
        "decode_error",
    )?;

    let path = dir.join("report.md");
    let mut text = markdown(&records, &all, meta.as_ref(), csvs);
    if !ended_early.is_empty() {
        // Right under the title, before any figure.
        let at = text.find("\n\n").map_or(0, |i| i + 2);
        text.insert_str(at, &(ended_early.concat() + "\n"));
    }
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

fn mixed(path: &Path, why: &str) -> Error {
    Error::new(ErrorKind::BadOption {
        option: "csv",
        message: format!("{} cannot join this report: {why}", path.display()),
    })
}

/// Dashed O(n) and O(1) lines through the first point of the slowest and the fastest series
/// at the shortest context.
fn references(lines: &[Line]) -> Vec<Line> {
    let firsts: Vec<(f64, f64)> = lines
        .iter()
        .filter_map(|l| l.points.first().copied())
        .collect();
    let x0 = firsts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = lines
        .iter()
        .filter_map(|l| l.points.last().map(|p| p.0))
        .fold(0.0, f64::max);
    let at_x0: Vec<f64> = firsts.iter().filter(|p| p.0 == x0).map(|p| p.1).collect();
    if at_x0.is_empty() || x1 <= x0 {
        return Vec::new();
    }
    let hi = at_x0.iter().copied().fold(0.0, f64::max);
    let lo = at_x0.iter().copied().fold(f64::INFINITY, f64::min);
    let gray = plotters::style::RGBColor(120, 120, 120);
    vec![
        Line {
            label: "O(n) reference".into(),
            color: gray,
            points: vec![(x0, hi), (x1, hi * x1 / x0)],
            stroke: Stroke::Dashed,
        },
        Line {
            label: "O(1) reference".into(),
            color: gray,
            points: vec![(x0, lo), (x1, lo)],
            stroke: Stroke::Dotted,
        },
    ]
}

/// The range of the per-cell bandwidth probes.
fn spread(records: &[DecodeRecord]) -> String {
    let bw: Vec<f64> = records
        .iter()
        .map(|r| r.read_gbytes_per_s)
        .filter(|x| x.is_finite())
        .collect();
    let lo = bw.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = bw.iter().copied().fold(0.0, f64::max);
    if bw.is_empty() {
        "no cell ran".into()
    } else {
        format!("{lo:.1} to {hi:.1} GB/s")
    }
}

fn fmt_us(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn markdown(
    records: &[DecodeRecord],
    all: &[Series],
    meta: Option<&DecodeMeta>,
    csvs: &[PathBuf],
) -> String {
    let mut t = String::from("# Generation benchmark\n\n");
    let files: Vec<String> = csvs.iter().map(|p| format!("`{}`", p.display())).collect();
    let _ = writeln!(t, "Results: {}.", files.join(", "));
    // Runs before per-cell probes (no `probe_bytes`) read 256 MiB before every round.
    let own_probes = records.iter().any(|r| r.probe_bytes > 0);
    if let Some(m) = meta {
        let [b, h, hk, d, dv] = m.shape;
        let probe_mib = m.limits.read_probe_bytes.unwrap_or(256 << 20) >> 20;
        let again = if own_probes {
            "each cell's own footprint probed after every round of its context"
        } else {
            "probed again before every round of every context"
        };
        let _ = writeln!(
            t,
            "Workload `{}`: batch {b}, {h} query heads over {hk} KV heads, d = {d}, dv = {dv}; {} tokens generated per cell after a prompt of each context; {} threads on {} ({}). Read bandwidth at the start of the run: {:.1} GB/s (median of passes over {probe_mib} MiB); {again}: {}.\n",
            m.workload,
            m.tokens,
            m.threads,
            m.machine.cpu_model,
            m.limits.isa,
            m.limits.read_gbytes_per_s,
            spread(records),
        );
    }
    t.push_str(
        "Each step appends one token's key and value and attends its query over the decoder's state: a KV cache (f32 or a half-precision store) for exact attention, a ring of the last keys (and the sinks) for window and sinks, a d x d state for linear attention and retention. `stateless` cells decode through the batch call with one query over the whole cache. Times are the median of the per-token times with a 95% order-statistic interval; slopes are log-log least-squares fits of the medians with 95% intervals, over every context and over the longer half of them (1 = linear in the context, 0 = constant). ",
    );
    t.push_str(if own_probes {
        "The read fraction is the bytes a step reads (the state it scans) per time, over the rate of a plain streaming read (software-prefetched, every thread its share) of a buffer of that many bytes, rounded up to whole MiB and at most 1 GiB: the median of the probes after each of the cell's rounds (on a shared machine the rate moves by tens of percent within minutes; the cells of a context are stepped in four interleaved rounds). A state that fits in a cache is thus compared with reading as much from that cache; 100% is the read loop's rate.\n\n"
    } else {
        "The read fraction is the bytes a step reads (the state it scans) per time, over the median read bandwidth probed before each of the cell's rounds (on a shared machine it moves by tens of percent within minutes; the cells of a context are stepped in four interleaved rounds); above 100% the state fits in the caches.\n\n"
    });
    t.push_str("![time per token](decode_time.svg)\n\n");
    t.push_str("| decoder | mode | slope, all contexts | slope, longer half | us/token at the shortest | at the longest context | state at the longest | read % at the longest | error vs dense (median row) | error vs own definition (max) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for s in all {
        let pts: Vec<(f64, f64)> = s
            .rows
            .iter()
            .map(|r| (r.context as f64, r.us_per_token))
            .collect();
        let fmt_fit = |f: Option<Fit>| match f {
            Some(f) => match f.interval {
                Some(i) => format!("{:.2} ({:.2}, {:.2})", f.slope, i.lo, i.hi),
                None => format!("{:.2} (two points)", f.slope),
            },
            None => "-".into(),
        };
        let slope = format!(
            "{} | {}",
            fmt_fit(loglog_fit(&pts)),
            fmt_fit(upper_half_fit(&pts))
        );
        let (first, last) = (s.rows.first(), s.rows.last());
        let cell = |r: Option<&DecodeRecord>| {
            r.map_or("-".into(), |r| {
                format!(
                    "{} [{}, {}] at {}",
                    fmt_us(r.us_per_token),
                    fmt_us(r.us_lo),
                    fmt_us(r.us_hi),
                    r.context
                )
            })
        };
        let own = s
            .rows
            .iter()
            .map(|r| r.err_own)
            .filter(|e| e.is_finite())
            .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.max(e))));
        let _ = writeln!(
            t,
            "| `{}` {} | {} | {slope} | {} | {} | {} | {} | {} | {} |",
            s.variant,
            s.kv,
            last.map_or("-", |r| r.mode.as_str()),
            cell(first),
            cell(last),
            last.map_or("-".into(), |r| fmt_bytes(r.state_bytes)),
            last.map_or("-".into(), |r| format!("{:.0}", 100.0 * r.read_fraction)),
            last.map_or("-".into(), |r| fmt_err(r.err_median)),
            own.map_or("-".into(), fmt_err),
        );
    }
    t.push('\n');
    stores(&mut t, all);
    t.push_str("![state](decode_state.svg)\n\n![read bandwidth](decode_read.svg)\n\n![error](decode_error.svg)\n\n");
    let flagged: Vec<&DecodeRecord> = records.iter().filter(|r| r.status == "flagged").collect();
    if !flagged.is_empty() {
        t.push_str("## Flagged\n\nExact decoders with an f32 cache off the oracle under their own pattern:\n\n");
        for r in flagged {
            let _ = writeln!(
                t,
                "- `{}` at context {}: {:.2e}",
                r.variant, r.context, r.err_own
            );
        }
        t.push('\n');
    }
    // Cells left out for the same reason are listed once, with their contexts.
    let same = |a: &DecodeRecord, b: &DecodeRecord| {
        (&a.variant, &a.kv, &a.mode, &a.status, &a.reason)
            == (&b.variant, &b.kv, &b.mode, &b.status, &b.reason)
    };
    let mut left: Vec<(&DecodeRecord, Vec<usize>)> = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.status == "skipped" || r.status == "error" || !r.reason.is_empty())
    {
        match left.iter_mut().find(|(k, _)| same(k, r)) {
            Some((_, ctxs)) => ctxs.push(r.context),
            None => left.push((r, vec![r.context])),
        }
    }
    if !left.is_empty() {
        t.push_str("## Skipped, failed or shortened cells\n\n");
        for (r, ctxs) in left {
            let ctxs: Vec<String> = ctxs.iter().map(usize::to_string).collect();
            let _ = writeln!(
                t,
                "- `{}` {} ({}) at context {}: {}: {}",
                r.variant,
                r.kv,
                r.mode,
                ctxs.join(", "),
                r.status,
                r.reason
            );
        }
        t.push('\n');
    }
    t
}

/// Half-precision stores against f32 for each decoder with both: the ratio of the medians
/// with the conservative interval from the two intervals' ends, called faster or slower only
/// where that interval excludes 1.
fn stores(t: &mut String, all: &[Series]) {
    let mut header = false;
    for s in all.iter().filter(|s| s.kv != "f32") {
        let Some(base) = all.iter().find(|b| {
            b.kv == "f32"
                && b.variant == s.variant
                && b.label.contains("stateless") == s.label.contains("stateless")
        }) else {
            continue;
        };
        let mut cells = Vec::new();
        for r in &s.rows {
            let Some(b) = base.rows.iter().find(|b| b.context == r.context) else {
                continue;
            };
            let ratio = b.us_per_token / r.us_per_token;
            let (lo, hi) = (b.us_lo / r.us_hi, b.us_hi / r.us_lo);
            let verdict = if lo > 1.0 {
                "faster"
            } else if hi < 1.0 {
                "slower"
            } else {
                "indistinguishable"
            };
            cells.push(format!(
                "{}: {ratio:.2}x ({lo:.2}-{hi:.2}, {verdict})",
                r.context
            ));
        }
        if cells.is_empty() {
            continue;
        }
        if !header {
            t.push_str("**Half-precision stores** (f32 time over the store's time per token, with the interval from the ends of the two intervals):\n\n");
            header = true;
        }
        let _ = writeln!(t, "- `{}` {}: {}", s.variant, s.kv, cells.join("; "));
    }
    if header {
        t.push('\n');
    }
}
