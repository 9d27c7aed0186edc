//! The report of a perplexity run ([`crate::harness::perplexity`]): per context length, each
//! variant's perplexity (overall and by position in the window) beside its attention time and
//! its error against dense attention on the same model's activations; the cheapest variant
//! within 5% of full attention's perplexity; charts of perplexity against the context length
//! and against attention time.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::charts::{Chart, Line, Stroke, palette, save};
use super::data::text;
use crate::error::{Error, ErrorKind, Result};
use crate::results::artefacts::read_json;
use crate::results::perplexity::{PerplexityMeta, PerplexityRecord, read_perplexity_csv};
use crate::results::record::RunState;

/// How far above full attention's perplexity a variant may be and still count as keeping the
/// model's quality, for the report's verdict.
pub const WITHIN: f64 = 1.05;

fn num(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".into(),
    }
}

fn sci(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.1e}"),
        _ => "-".into(),
    }
}

/// Writes `report.md` and the charts for the perplexity CSVs `csvs` into `dir`; returns the
/// markdown's path.
pub fn write(csvs: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    let mut records: Vec<PerplexityRecord> = Vec::new();
    let mut metas: Vec<PerplexityMeta> = Vec::new();
    for path in csvs {
        let these = read_perplexity_csv(path)?;
        for r in &these {
            if records
                .iter()
                .any(|o| (o.n, &o.variant) == (r.n, &r.variant))
            {
                return Err(Error::new(ErrorKind::BadOption {
                    option: "csv",
                    message: format!(
                        "{}: {} at n = {} is already in an earlier file; report such runs separately",
                        path.display(),
                        r.variant,
                        r.n
                    ),
                }));
            }
        }
        records.extend(these);
        if let Some(m) = read_json::<PerplexityMeta>(&path.with_extension("json"))? {
            metas.push(m);
        }
    }
    if records.is_empty() {
        return Err(Error::new(ErrorKind::NoInput {
            what: "perplexity rows to report",
        }));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut md = String::new();
    let model = &records[0].model;
    let _ = writeln!(
        md,
        "# Perplexity of {} with each attention variant\n",
        text(model)
    );
    for m in &metas {
        let [layers, d, ff, h, kvh, hd, vocab, ctx] = m.model_shape;
        let _ = writeln!(
            md,
            "- run `{}`: model **{}** (`{}`, {layers} layers, d_model {d}, d_ff {ff}, {h} query heads, {kvh} KV heads, head_dim {hd}, vocabulary {vocab}, context {ctx}); tokens `{}` ({} tokens); {} thread(s) on {}; variants replace dense attention from layer {} on",
            text(&m.run_id),
            text(&m.model_name),
            text(model),
            text(&m.tokens_source),
            m.tokens,
            m.threads,
            text(&m.machine.cpu_model),
            m.from_layer,
        );
        if m.state != RunState::Complete {
            let _ = writeln!(
                md,
                "- **incomplete run**: {}",
                match m.state {
                    RunState::Failed => format!("failed: {}", text(&m.notes.join("; "))),
                    _ => "it ended without recording why (interrupted or killed); rows after the last one were not measured".into(),
                }
            );
        }
        for c in &m.activation_check {
            let _ = writeln!(
                md,
                "- the model's own activations against the captured ones, layer {} (first {} tokens): relative error Q {:.1e}, K {:.1e}, V {:.1e}",
                c.layer, c.n, c.q, c.k, c.v
            );
        }
    }
    let layers = metas
        .first()
        .map(|m| {
            m.capture_layers
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let err_head = |i: usize| {
        layers
            .get(i)
            .map_or_else(|| "err".to_string(), |l| format!("err L{l}"))
    };
    md.push_str(
        "\nPerplexity is `exp` of the mean next-token negative log-likelihood over every prediction of every window of `n` tokens (consecutive windows from the first token); the position columns split it by the predicting token's position in its window. `x full` is the ratio to full attention's perplexity at the same `n`. Attention and forward times are the median over the windows of one pass each, on a shared machine: differences under about 10% are noise. `err` is the relative Frobenius error of the variant's attention output against dense attention, on the Q, K, V that dense attention's own forward pass produced at that layer (first window).\n",
    );
    let lengths: BTreeSet<usize> = records.iter().map(|r| r.n).collect();
    for &n in &lengths {
        let rows: Vec<&PerplexityRecord> = records.iter().filter(|r| r.n == n).collect();
        let windows = rows.first().map_or(0, |r| r.windows);
        let _ = writeln!(
            md,
            "\n## n = {n} ({windows} window(s), {} predictions)\n",
            rows.first().map_or(0, |r| r.scored)
        );
        let _ = writeln!(
            md,
            "| variant | fidelity | ppl | x full | 0-256 | 256-1K | 1K-2K | 2K-4K | 4K-8K | attention s | forward s | attention share | {} | {} | {} |",
            err_head(0),
            err_head(1),
            err_head(2)
        );
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &rows {
            if r.status != "ok" {
                let _ = writeln!(
                    md,
                    "| {} | {} | {}: {} |  |  |  |  |  |  |  |  |  |  |  |  |",
                    text(&r.variant),
                    r.fidelity,
                    r.status,
                    text(&r.note)
                );
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}% | {} | {} | {} |",
                text(&r.variant),
                r.fidelity,
                num(Some(r.ppl), 3),
                num(Some(r.ppl_ratio), 4),
                num(r.ppl_0_256, 2),
                num(r.ppl_256_1k, 2),
                num(r.ppl_1k_2k, 2),
                num(r.ppl_2k_4k, 2),
                num(r.ppl_4k_8k, 2),
                num(Some(r.attention_s), 2),
                num(Some(r.forward_s), 2),
                num(Some(100.0 * r.attention_share), 0),
                sci(r.err_first),
                sci(r.err_middle),
                sci(r.err_last),
            );
        }
        md.push_str(&verdict(&rows));
    }
    charts(&records, &lengths, dir)?;
    md.push_str("\n![perplexity against the context length](perplexity_vs_n.svg)\n\n![perplexity against attention time](perplexity_vs_time.svg)\n");
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Relative perplexity difference below which a variant counts as dense attention itself:
/// the 4 significant digits exact variants are held to.
pub const SAME: f64 = 5e-5;

/// The verdicts of one length: which variants give full attention's perplexity (the exact
/// dense ones, and patterns that cover every pair at this `n`), and the cheapest of the
/// others within [`WITHIN`] of it, its attention time against the fastest of the dense ones.
fn verdict(rows: &[&PerplexityRecord]) -> String {
    let mut out = String::new();
    let ok: Vec<&PerplexityRecord> = rows.iter().copied().filter(|r| r.status == "ok").collect();
    let Some(full) = ok.iter().find(|r| r.variant == "full") else {
        return out;
    };
    let same = |r: &PerplexityRecord| (r.ppl - full.ppl).abs() / full.ppl < SAME;
    for r in ok.iter().filter(|r| r.variant != "full") {
        let rel = (r.ppl - full.ppl).abs() / full.ppl;
        if r.variant.starts_with("flash") || same(r) {
            let _ = writeln!(
                out,
                "\n- {} gives full attention's perplexity to a relative {:.1e} ({}).",
                text(&r.variant),
                rel,
                if rel < SAME {
                    "equal to 4 significant digits"
                } else {
                    "**not** equal to 4 significant digits"
                }
            );
        }
    }
    let dense = ok
        .iter()
        .filter(|r| same(r))
        .min_by(|a, b| a.attention_s.total_cmp(&b.attention_s))
        .expect("full itself");
    let within: Vec<&&PerplexityRecord> = ok
        .iter()
        .filter(|r| !same(r) && r.ppl_ratio <= WITHIN)
        .collect();
    match within
        .iter()
        .min_by(|a, b| a.attention_s.total_cmp(&b.attention_s))
    {
        Some(best) if best.attention_s >= 0.9 * dense.attention_s => {
            let _ = writeln!(
                out,
                "\n- No variant within {:.0}% of full attention's perplexity ({} of the {} that differ from it) is shown faster than {} ({:.2} s of attention per forward); the fastest of them, {}, takes {:.2} s.",
                100.0 * (WITHIN - 1.0),
                within.len(),
                ok.iter().filter(|r| !same(r)).count(),
                text(&dense.variant),
                dense.attention_s,
                text(&best.variant),
                best.attention_s,
            );
        }
        Some(best) => {
            let ratio = best.attention_s / dense.attention_s;
            let _ = writeln!(
                out,
                "\n- **Cheapest within {:.0}% of full attention's perplexity** ({} of the {} variants that differ from it {} within): {} (ppl {:.3}, x{:.4}), attention {:.2} s per forward against {:.2} s for {}, the fastest that gives full attention's perplexity ({:.0}%).",
                100.0 * (WITHIN - 1.0),
                within.len(),
                ok.iter().filter(|r| !same(r)).count(),
                if within.len() == 1 { "is" } else { "are" },
                text(&best.variant),
                best.ppl,
                best.ppl_ratio,
                best.attention_s,
                dense.attention_s,
                text(&dense.variant),
                100.0 * ratio,
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\n- No variant that differs from full attention is within {:.0}% of its perplexity.",
                100.0 * (WITHIN - 1.0)
            );
        }
    }
    out
}

/// Variants whose perplexity exceeds this multiple of full attention's at some length are
/// left out of the charts (and named in their note), so the useful range stays legible.
pub const CHART_CAP: f64 = 3.0;

fn charts(records: &[PerplexityRecord], lengths: &BTreeSet<usize>, dir: &Path) -> Result<()> {
    let mut order: Vec<&str> = Vec::new();
    for r in records {
        if !order.contains(&r.variant.as_str()) {
            order.push(&r.variant);
        }
    }
    let ok = |r: &&PerplexityRecord| r.status == "ok" && r.ppl_ratio.is_finite();
    let off: Vec<&str> = order
        .iter()
        .copied()
        .filter(|v| {
            records
                .iter()
                .filter(ok)
                .any(|r| r.variant == *v && r.ppl_ratio > CHART_CAP)
        })
        .collect();
    let note = (!off.is_empty()).then(|| {
        format!(
            "{} variant(s) above {CHART_CAP}x full's perplexity left out",
            off.len()
        )
    });
    let lines = |x: &dyn Fn(&PerplexityRecord) -> f64| -> Vec<Line> {
        order
            .iter()
            .enumerate()
            .filter(|(_, v)| !off.contains(v))
            .map(|(i, v)| {
                let mut points: Vec<(f64, f64)> = records
                    .iter()
                    .filter(ok)
                    .filter(|r| r.variant == *v)
                    .map(|r| (x(r), r.ppl_ratio))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line {
                    label: v.to_string(),
                    color: palette(i),
                    points,
                    stroke: Stroke::Solid,
                }
            })
            .filter(|l| !l.points.is_empty())
            .collect()
    };
    let y_desc = "perplexity / full attention's at the same n";
    save(
        &Chart {
            title: "Perplexity against the context length".into(),
            x_desc: "context length n (tokens per window)".into(),
            y_desc: y_desc.into(),
            x_pow2: true,
            lines: lines(&|r| r.n as f64),
            note: if lengths.len() < 2 {
                Some("one context length: each variant is a single point".into())
            } else {
                note.clone()
            },
            ..Chart::default()
        },
        dir,
        "perplexity_vs_n",
    )?;
    save(
        &Chart {
            title: "Perplexity against attention time (points: context lengths)".into(),
            x_desc: "attention seconds per forward pass (all layers)".into(),
            y_desc: y_desc.into(),
            log_x: true,
            lines: lines(&|r| r.attention_s),
            note,
            ..Chart::default()
        },
        dir,
        "perplexity_vs_time",
    )
}
