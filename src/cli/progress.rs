//! A sweep's progress (a bar on a terminal, one line per cell otherwise) and its summary
//! table.

use std::io::{self, IsTerminal, Write};

use crate::attention::Attention;
use crate::harness::sweep::{Event, SweepConfig, SweepOutput, run_sweep};
use crate::results::record::{Record, Status};

/// Runs a sweep with a progress bar on a terminal, or one line per cell otherwise.
pub(super) fn run_with_progress(
    cfg: &SweepConfig,
    variants: &[Box<dyn Attention>],
) -> crate::Result<SweepOutput> {
    let terminal = io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::hidden();
    let started = std::time::Instant::now();
    let mut done = 0usize;
    let mut total = 0usize;
    let mut progress = |event: Event<'_>| match event {
        Event::Start { cells, steps } => {
            total = cells;
            if terminal {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(steps as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
            }
        }
        Event::Cell { variant, n } => {
            if terminal {
                bar.inc(1);
                bar.set_message(format!("{variant} n={n}"));
            }
        }
        Event::Round { round, rounds, n } => {
            if !terminal {
                eprintln!(
                    "[{:6.1}s] round {}/{rounds} at n={n}",
                    started.elapsed().as_secs_f64(),
                    round + 1
                );
            }
        }
        Event::Done(r) => {
            done += 1;
            if !terminal {
                eprintln!(
                    "[{done}/{total} {:6.1}s] {} n_kv={}: {}",
                    started.elapsed().as_secs_f64(),
                    r.variant,
                    r.n_kv,
                    cell_summary(r)
                );
            }
        }
        Event::Note(text) => bar.suspend(|| eprintln!("{text}")),
    };
    let result = run_sweep(cfg, variants, &mut progress);
    bar.finish_and_clear();
    result
}

fn cell_summary(r: &Record) -> String {
    match r.time_median_ms {
        Some(ms) if r.status == Status::Ok => format!("{ms:.2} ms"),
        Some(ms) => format!("{ms:.2} ms, {}: {}", r.status, r.note),
        None => format!("{}: {}", r.status, r.note),
    }
}

fn fmt_opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "-".to_string(), f)
}

pub(super) fn print_summary(output: &SweepOutput) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<56} {:>6} {:>10} {:>17} {:>9} {:>7} {:>10} {:>10} {:>10}  status",
        "variant",
        "n_kv",
        "median ms",
        "95% CI ms",
        "exec GF/s",
        "% gemm",
        "peak MiB",
        "err dense",
        "err own"
    )?;
    for r in &output.records {
        writeln!(
            out,
            "{:<56} {:>6} {:>10} {:>17} {:>9} {:>7} {:>10} {:>10} {:>10}  {}{}",
            r.variant,
            r.n_kv,
            fmt_opt(r.time_median_ms, |x| format!("{x:.2}")),
            match (r.time_ci_lo_ms, r.time_ci_hi_ms) {
                (Some(lo), Some(hi)) => format!("{lo:.2}-{hi:.2}"),
                _ => "-".into(),
            },
            fmt_opt(r.executed_gflops, |x| format!("{x:.1}")),
            fmt_opt(r.pct_of_gemm, |x| format!("{x:.0}%")),
            fmt_opt(r.peak_bytes.map(|b| b as f64), |x| format!(
                "{:.2}",
                x / 1048576.0
            )),
            fmt_opt(r.err_dense_rel, |x| format!("{x:.2e}")),
            fmt_opt(r.err_own_rel, |x| format!("{x:.1e}")),
            r.status,
            if r.note.is_empty() {
                String::new()
            } else {
                format!(": {}", r.note)
            }
        )?;
    }
    writeln!(
        out,
        "\n{} cells in {:.1} s on {} threads ({})",
        output.records.len(),
        output.meta.duration_s,
        output.meta.threads,
        output.meta.workload
    )?;
    writeln!(out, "results: {}", output.csv.display())?;
    writeln!(out, "metadata: {}", output.json.display())?;
    Ok(())
}
