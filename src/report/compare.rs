//! `attnbench compare BASE.csv NEW.csv`: a regression check between two runs.
//!
//! Cells are matched on everything that defines them (variant, shape, length, causal flag,
//! threads, workload, modifiers, layer width). Per cell: the time ratio `new / base` with
//! its 95% interval (Welch's t on the log round medians of the two runs: the runs are
//! independent, so rounds are not paired), a verdict, the change of the errors and of peak
//! memory. A cell is `slower` (`faster`) only when the whole interval lies above (below) 1
//! *and* the ratio is at least [`CompareConfig::min_effect`] away from 1: a 2% difference
//! that the intervals resolve is still below what two runs of one build on a shared machine
//! reproduce. `--fail-on` turns verdicts into a non-zero exit for CI.
//!
//! The two runs' metadata must describe the same machine (CPU model and host) unless
//! [`CompareConfig::allow_other_machine`]; different build settings or thread counts are
//! printed as warnings at the top of the table.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::data::{Results, read_results, round_medians};
use crate::error::{Error, ErrorKind, Result};
use crate::results::record::{Record, RunMeta};
use crate::stats::{Interval, welch_ratio};

/// What `compare` is asked.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The reference run's CSV files.
    pub base: Vec<PathBuf>,
    /// The run checked against it.
    pub new: Vec<PathBuf>,
    /// The smallest time change that counts as a verdict, as a fraction (0.05: 5%).
    pub min_effect: f64,
    /// Conditions that make the comparison fail.
    pub fail_on: Vec<FailOn>,
    /// Compare runs from different machines (a loud warning instead of an error).
    pub allow_other_machine: bool,
    /// `(from, to)`: the new run's variant `from` is compared as the base's `to` (a candidate
    /// configuration against the current one, e.g. `flash(bq=32,bk=32)` as `flash`'s default).
    pub rename: Vec<(String, String)>,
}

/// Parses `FROM=TO` of `--rename`, splitting at the first `=` outside parentheses (specs
/// hold `=` inside theirs).
pub fn parse_rename(text: &str) -> std::result::Result<(String, String), String> {
    let mut depth = 0i32;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '=' if depth == 0 => {
                let (from, to) = (text[..i].trim(), text[i + 1..].trim());
                if from.is_empty() || to.is_empty() {
                    break;
                }
                return Ok((from.to_string(), to.to_string()));
            }
            _ => {}
        }
    }
    Err(format!(
        "'{text}': expected NEW_SPEC=BASE_SPEC, e.g. flash(bq=8,bk=8)=flash(bq=64,bk=128)"
    ))
}

/// A condition of `--fail-on`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailOn {
    /// A cell `slower` by more than this fraction (`slower>5%`; `slower` alone: any).
    Slower(f64),
    /// A cell whose error regressed (`error`).
    Error,
    /// A cell whose peak memory grew by more than this fraction (`memory>10%`).
    Memory(f64),
    /// A cell of the base run missing from the new one, or no longer measured (`missing`).
    Missing,
}

impl std::str::FromStr for FailOn {
    type Err = String;

    /// `slower`, `slower>5%`, `error`, `memory>10%`, `missing`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let percent = |t: &str| -> std::result::Result<f64, String> {
            let t = t.trim();
            let v: f64 = t
                .strip_suffix('%')
                .ok_or_else(|| format!("'{t}': expected a percentage such as 5%"))?
                .trim()
                .parse()
                .map_err(|_| format!("'{t}' is not a percentage"))?;
            if !(v.is_finite() && (0.0..=1000.0).contains(&v)) {
                return Err(format!("'{t}': expected a percentage in 0..1000%"));
            }
            Ok(v / 100.0)
        };
        match s.split_once('>') {
            None if s == "slower" => Ok(FailOn::Slower(0.0)),
            None if s == "error" => Ok(FailOn::Error),
            None if s == "missing" => Ok(FailOn::Missing),
            Some(("slower", p)) => Ok(FailOn::Slower(percent(p)?)),
            Some(("memory", p)) => Ok(FailOn::Memory(percent(p)?)),
            _ => Err(format!(
                "'{s}': expected slower, slower>P%, error, memory>P% or missing"
            )),
        }
    }
}

/// The time verdict of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeVerdict {
    /// The interval lies below 1 and the ratio is at least `min_effect` below it.
    Faster,
    /// The interval lies above 1 and the ratio is at least `min_effect` above it.
    Slower,
    /// The interval contains 1, or the change is smaller than `min_effect`.
    Indistinguishable,
    /// No interval: one of the runs has a single round.
    NoInterval,
}

impl std::fmt::Display for TimeVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeVerdict::Faster => "faster",
            TimeVerdict::Slower => "slower",
            TimeVerdict::Indistinguishable => "indistinguishable",
            TimeVerdict::NoInterval => "no interval (one round)",
        })
    }
}

/// One matched cell.
#[derive(Debug, Clone)]
pub struct CellChange {
    /// The cell, in words: `flash n=4096 causal t2`.
    pub cell: String,
    /// Base and new median times, ms.
    pub times: (f64, f64),
    /// `new / base` (ratio of the geometric means of the round medians, or of the medians
    /// without rounds).
    pub ratio: f64,
    /// Its 95% interval.
    pub interval: Option<Interval>,
    /// The time verdict.
    pub verdict: TimeVerdict,
    /// Base and new error against dense attention.
    pub errors: (Option<f64>, Option<f64>),
    /// Whether the error regressed (see [`error_regressed`]).
    pub error_regressed: bool,
    /// `new / base` peak bytes, when both were measured.
    pub memory_ratio: Option<f64>,
    /// The drift probe (the same small GEMM, timed at the start of every round of every
    /// length in both runs) at this length: its rate in the base run over that in the new
    /// one (geometric means over the rounds), i.e. how much slower the machine itself ran the new run (1.1: 10% slower).
    /// A time ratio near it is the machine, not the code.
    pub machine_ratio: Option<f64>,
}

/// The comparison of two runs.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Matched cells, in the base run's order.
    pub cells: Vec<CellChange>,
    /// Cells measured in the base run and missing (or not measured) in the new one.
    pub missing: Vec<String>,
    /// Cells only the new run has.
    pub added: Vec<String>,
    /// Differences between the runs a reader must see first.
    pub warnings: Vec<String>,
}

/// Everything that defines a cell, beyond its run.
fn key(r: &Record) -> String {
    let mut k = format!(
        "{} n={}",
        r.variant,
        if r.n_q == r.n_kv {
            r.n_kv.to_string()
        } else {
            format!("{}x{}", r.n_q, r.n_kv)
        }
    );
    let _ = write!(
        k,
        " b{} h{}/{} d{}{} t{} [{}]",
        r.batch,
        r.heads,
        r.kv_heads,
        r.head_dim,
        if r.causal { " causal" } else { "" },
        r.threads,
        r.workload
    );
    if !r.modifiers.is_empty() {
        let _ = write!(k, " [{}]", r.modifiers);
    }
    if let Some(d) = r.d_model {
        let _ = write!(k, " [layer {d}]");
    }
    k
}

/// Whether the new error is worse than the base beyond numerical noise: more than 10% above
/// it and more than `1e-7` (an f32 rounding step of a unit-sized output) in absolute terms.
pub fn error_regressed(base: Option<f64>, new: Option<f64>) -> bool {
    match (base, new) {
        (Some(b), Some(n)) => n.is_nan() || n > 1.1 * b && n - b > 1e-7,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Compares two runs' results.
pub fn compare(cfg: &CompareConfig) -> Result<Comparison> {
    if !(cfg.min_effect.is_finite() && (0.0..10.0).contains(&cfg.min_effect)) {
        return Err(Error::new(ErrorKind::BadOption {
            option: "min-effect",
            message: format!("{} is not a fraction in 0..10", cfg.min_effect),
        }));
    }
    let base = read_results(&cfg.base)?;
    let mut new = read_results(&cfg.new)?;
    let mut warnings = Vec::new();
    for (from, to) in &cfg.rename {
        let mut renamed = 0;
        for r in new.records.iter_mut().filter(|r| r.variant == *from) {
            r.variant.clone_from(to);
            renamed += 1;
        }
        if renamed == 0 {
            return Err(Error::new(ErrorKind::BadOption {
                option: "rename",
                message: format!("the new run has no variant '{from}'"),
            }));
        }
        warnings.push(format!(
            "the new run's `{from}` is compared as `{to}` ({renamed} rows renamed)"
        ));
    }
    warnings.splice(0..0, run_warnings(&base, &new, cfg.allow_other_machine)?);
    for (name, r) in [("base", &base), ("new", &new)] {
        for w in &r.warnings {
            warnings.push(format!("{name}: {w}"));
        }
    }
    let measured = |r: &Record| r.status.is_measured() && r.time_median_ms.is_some();
    let mut cells = Vec::new();
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for b in base.records.iter().filter(|r| measured(r)) {
        let k = key(b);
        if !seen.insert(k.clone()) {
            warnings.push(format!(
                "base: the cell `{k}` appears twice; its first row is compared"
            ));
            continue;
        }
        let Some(n) = new.records.iter().find(|r| key(r) == k && measured(r)) else {
            missing.push(k);
            continue;
        };
        let mut c = change(k, b, n, cfg.min_effect);
        c.machine_ratio = match (probe_rate(&base, b), probe_rate(&new, n)) {
            (Some(pb), Some(pn)) => Some(pb / pn),
            _ => None,
        };
        cells.push(c);
    }
    let machine: Vec<f64> = cells.iter().filter_map(|c| c.machine_ratio).collect();
    if let Some((m, _)) =
        crate::stats::geometric_interval(&machine).filter(|(m, _)| (m.ln()).abs() > 0.05f64.ln_1p())
    {
        warnings.push(format!(
            "**the machine itself ran {:.2}x {} in the new run** (the drift probe, a fixed GEMM timed in every round of both runs, geometric mean over the cells): time ratios near that are the machine, not the change",
            if m > 1.0 { m } else { 1.0 / m },
            if m > 1.0 { "slower" } else { "faster" }
        ));
    }
    let added = new
        .records
        .iter()
        .filter(|r| measured(r))
        .map(key)
        .filter(|k| !seen.contains(k))
        .collect();
    Ok(Comparison {
        cells,
        missing,
        added,
        warnings,
    })
}

fn change(cell: String, b: &Record, n: &Record, min_effect: f64) -> CellChange {
    let (tb, tn) = (
        b.time_median_ms.unwrap_or(f64::NAN),
        n.time_median_ms.unwrap_or(f64::NAN),
    );
    let (rb, rn) = (round_medians(b), round_medians(n));
    let (ratio, interval) = match welch_ratio(&rn, &rb) {
        Some((r, ci)) => (r, Some(ci)),
        None => (tn / tb, None),
    };
    let verdict = match interval {
        None => TimeVerdict::NoInterval,
        Some(ci) if ci.lo > 1.0 && ratio >= 1.0 + min_effect => TimeVerdict::Slower,
        Some(ci) if ci.hi < 1.0 && ratio <= 1.0 / (1.0 + min_effect) => TimeVerdict::Faster,
        Some(_) => TimeVerdict::Indistinguishable,
    };
    let errors = (b.err_dense_rel, n.err_dense_rel);
    let own_regressed = error_regressed(b.err_own_rel, n.err_own_rel);
    CellChange {
        cell,
        times: (tb, tn),
        ratio,
        interval,
        verdict,
        errors,
        error_regressed: error_regressed(errors.0, errors.1)
            || own_regressed
            || (b.status != n.status && n.status != crate::results::record::Status::Ok),
        memory_ratio: match (b.peak_bytes, n.peak_bytes) {
            (Some(pb), Some(pn)) if pb > 0 => Some(pn as f64 / pb as f64),
            _ => None,
        },
        machine_ratio: None,
    }
}

/// The drift probe's rate in `r`'s run at its length, from the run's metadata: the geometric
/// mean over its rounds (a slow round counts, as it does in the cell's times).
fn probe_rate(results: &Results, r: &Record) -> Option<f64> {
    let meta = results.metas.iter().find(|m| m.run_id == r.run_id)?;
    let probe = meta.probes.iter().find(|p| p.n == r.n_kv)?;
    crate::stats::geometric_interval(&probe.gflops).map(|(g, _)| g)
}

/// Refuses runs of different machines (unless allowed) and warns about other differences.
fn run_warnings(base: &Results, new: &Results, allow_other_machine: bool) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let describe = |metas: &[RunMeta], f: &dyn Fn(&RunMeta) -> String| -> Vec<String> {
        let mut v: Vec<String> = metas.iter().map(f).collect();
        v.sort();
        v.dedup();
        v
    };
    if base.metas.is_empty() || new.metas.is_empty() {
        warnings.push(
            "a run has no metadata (.json) beside its CSV: its machine and build are not checked"
                .into(),
        );
        return Ok(warnings);
    }
    let machine = |m: &RunMeta| format!("{} on host {}", m.machine.cpu_model, m.machine.host);
    let (mb, mn) = (
        describe(&base.metas, &machine),
        describe(&new.metas, &machine),
    );
    if mb != mn {
        let message = format!(
            "the runs come from different machines (base: {}; new: {})",
            mb.join(", "),
            mn.join(", ")
        );
        if !allow_other_machine {
            return Err(Error::new(ErrorKind::BadOption {
                option: "base",
                message: format!(
                    "{message}: their times are not comparable; pass --allow-other-machine to compare anyway"
                ),
            }));
        }
        warnings.push(format!(
            "**{message}**: time verdicts compare the machines too"
        ));
    }
    let build = |m: &RunMeta| match &m.machine.build {
        Some(b) => format!(
            "profile {}, opt-level {}, RUSTFLAGS '{}', {}",
            b.profile, b.opt_level, b.rustflags, m.machine.rustc
        ),
        None => format!("unknown settings, {}", m.machine.rustc),
    };
    let (bb, bn) = (describe(&base.metas, &build), describe(&new.metas, &build));
    if bb != bn {
        warnings.push(format!(
            "**the builds differ** (base: {}; new: {})",
            bb.join(" / "),
            bn.join(" / ")
        ));
    }
    let threads = |m: &RunMeta| m.threads.to_string();
    let (tb, tn) = (
        describe(&base.metas, &threads),
        describe(&new.metas, &threads),
    );
    if tb != tn {
        warnings.push(format!(
            "**the thread counts differ** (base: {}; new: {}): only cells of equal threads are matched",
            tb.join(", "),
            tn.join(", ")
        ));
    }
    let commit = |m: &RunMeta| {
        m.machine
            .git_commit
            .clone()
            .unwrap_or_else(|| "unknown".into())
    };
    let (cb, cn) = (
        describe(&base.metas, &commit),
        describe(&new.metas, &commit),
    );
    warnings.push(if cb == cn {
        format!("both runs are of commit {}", cb.join(", "))
    } else {
        format!("commits: base {}, new {}", cb.join(", "), cn.join(", "))
    });
    Ok(warnings)
}

impl Comparison {
    /// The markdown report: warnings, a table of every matched cell, the unmatched cells and
    /// a summary line.
    pub fn markdown(&self, min_effect: f64) -> String {
        let mut md = String::from("# attnbench compare\n\n");
        for w in &self.warnings {
            let _ = writeln!(md, "- {w}");
        }
        let _ = writeln!(
            md,
            "\nTime ratio `new / base` with its 95% interval (Welch's t on the log round medians); `slower`/`faster` when the interval excludes 1 and the change is at least {:.0}%. Machine: the drift probe's time in the new run over the base (a fixed GEMM timed in every round of both; 1.10: the machine ran 10% slower), to tell a change of the machine from one of the code. Error: relative error against dense attention; `regressed` above 1.1x the base and 1e-7.\n",
            100.0 * min_effect
        );
        let _ = writeln!(
            md,
            "| cell | base ms | new ms | new/base [95% CI] | verdict | machine new/base | error base -> new | peak memory new/base |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        let sci = |e: Option<f64>| e.map_or("-".into(), |e| format!("{e:.2e}"));
        for c in &self.cells {
            let _ = writeln!(
                md,
                "| `{}` | {:.3} | {:.3} | {:.3}{} | {} | {} | {} -> {}{} | {} |",
                c.cell,
                c.times.0,
                c.times.1,
                c.ratio,
                c.interval
                    .map_or(String::new(), |ci| format!(" [{:.3}, {:.3}]", ci.lo, ci.hi)),
                match c.verdict {
                    TimeVerdict::Slower | TimeVerdict::Faster => format!("**{}**", c.verdict),
                    v => v.to_string(),
                },
                c.machine_ratio.map_or("-".into(), |m| format!("{m:.2}")),
                sci(c.errors.0),
                sci(c.errors.1),
                if c.error_regressed {
                    " **regressed**"
                } else {
                    ""
                },
                c.memory_ratio.map_or("-".into(), |m| format!("{m:.2}")),
            );
        }
        for (what, list) in [
            ("measured in base, missing from new", &self.missing),
            ("only in new", &self.added),
        ] {
            if !list.is_empty() {
                let _ = writeln!(md, "\nCells {what}: {}", list.join("; "));
            }
        }
        let _ = writeln!(md, "\n{}", self.summary());
        md
    }

    /// One line: how many cells are faster, slower, indistinguishable; errors regressed.
    pub fn summary(&self) -> String {
        let count = |v: TimeVerdict| self.cells.iter().filter(|c| c.verdict == v).count();
        format!(
            "{} cells compared: {} slower, {} faster, {} indistinguishable, {} without an interval; {} with a regressed error; {} missing from the new run, {} new",
            self.cells.len(),
            count(TimeVerdict::Slower),
            count(TimeVerdict::Faster),
            count(TimeVerdict::Indistinguishable),
            count(TimeVerdict::NoInterval),
            self.cells.iter().filter(|c| c.error_regressed).count(),
            self.missing.len(),
            self.added.len()
        )
    }

    /// The `--fail-on` conditions that hold, each with the cells that trigger it.
    pub fn failures(&self, fail_on: &[FailOn]) -> Vec<String> {
        let mut out = Vec::new();
        for f in fail_on {
            let cells: Vec<String> = match *f {
                FailOn::Slower(p) => self
                    .cells
                    .iter()
                    .filter(|c| c.verdict == TimeVerdict::Slower && c.ratio > 1.0 + p)
                    .map(|c| format!("`{}` ({:.2}x)", c.cell, c.ratio))
                    .collect(),
                FailOn::Error => self
                    .cells
                    .iter()
                    .filter(|c| c.error_regressed)
                    .map(|c| format!("`{}`", c.cell))
                    .collect(),
                FailOn::Memory(p) => self
                    .cells
                    .iter()
                    .filter(|c| c.memory_ratio.is_some_and(|m| m > 1.0 + p))
                    .map(|c| format!("`{}` ({:.2}x)", c.cell, c.memory_ratio.unwrap_or(0.0)))
                    .collect(),
                FailOn::Missing => self.missing.iter().map(|k| format!("`{k}`")).collect(),
            };
            if !cells.is_empty() {
                let what = match *f {
                    FailOn::Slower(p) => format!("slower by more than {:.0}%", 100.0 * p),
                    FailOn::Error => "error regressed".into(),
                    FailOn::Memory(p) => format!("peak memory up by more than {:.0}%", 100.0 * p),
                    FailOn::Missing => "missing from the new run".into(),
                };
                out.push(format!("{what}: {}", cells.join(", ")));
            }
        }
        out
    }
}
