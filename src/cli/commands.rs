//! One function per subcommand. Each returns the process exit code, or an I/O error of
//! writing to the terminal; run errors are printed and give exit code 2.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::args::{
    CompareArgs, DecodeArgs, MapsArgs, PerplexityArgs, SweepArgs, decode_config, sweep_config,
};
use super::print_error;
use super::progress::{print_summary, run_with_progress};
use crate::attention::{Attention, Fidelity, Options};
use crate::check::{self, Outcome};
use crate::maps::HeadKind;
use crate::registry::Registry;
use crate::results::record::Status;

pub(super) fn check(
    registry: &Registry,
    variants: Option<&str>,
    seed: u64,
    max_memory: u64,
) -> io::Result<ExitCode> {
    let variants: Vec<Box<dyn Attention>> = match variants {
        Some(list) => match registry.build_list(list) {
            Ok(v) => v,
            Err(e) => {
                print_error(&e);
                return Ok(ExitCode::from(2));
            }
        },
        None => registry.defaults(),
    };
    let cases = check::cases();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<22} {:<34} {:>11} {:>11} {:>9}  result",
        "variant", "case", "max abs", "rel frob", "cosine"
    )?;
    let (mut failures, mut total, mut skipped) = (0, 0, 0);
    let mut never_ran = Vec::new();
    for variant in &variants {
        let mut ran = 0;
        for case in &cases {
            let outcome = check::check_within(variant.as_ref(), case, seed, max_memory);
            total += 1;
            failures += usize::from(outcome.is_failure());
            if matches!(outcome, Outcome::Unsupported(_)) {
                skipped += 1;
            } else {
                ran += 1;
            }
            let name = format!("{} ({})", case.name, case.shape);
            match outcome {
                Outcome::Ran { stats, passed } => writeln!(
                    out,
                    "{:<22} {:<34} {:>11.3e} {:>11.3e} {:>9.6}  {}",
                    variant.to_string(),
                    case.name,
                    stats.max_abs,
                    stats.rel_frobenius,
                    stats.mean_cosine,
                    match (variant.fidelity(), passed) {
                        (Fidelity::Exact, true) => "pass".to_string(),
                        (Fidelity::Exact, false) => "FAIL".to_string(),
                        (Fidelity::Selected, true) => "pass (under the keys it chose)".to_string(),
                        (Fidelity::Selected, false) => {
                            "FAIL (under the keys it chose)".to_string()
                        }
                        (f, true) => format!("reported ({f}: error vs dense attention)"),
                        (f, false) => format!("FAIL ({f}: non-finite output)"),
                    }
                )?,
                Outcome::Unsupported(reasons) => writeln!(
                    out,
                    "{:<22} {:<34} {:>11} {:>11} {:>9}  skipped: {}",
                    variant.to_string(),
                    name,
                    "-",
                    "-",
                    "-",
                    reasons.join("; ")
                )?,
                Outcome::Failed(e) => writeln!(
                    out,
                    "{:<22} {:<34} {:>11} {:>11} {:>9}  FAIL: {e}",
                    variant.to_string(),
                    name,
                    "-",
                    "-",
                    "-"
                )?,
            }
        }
        if ran == 0 {
            never_ran.push(variant.to_string());
        }
    }
    let ran = total - skipped;
    writeln!(
        out,
        "\n{} of {ran} checks passed, {skipped} of {total} skipped (exact variants: relative Frobenius error <= {:e} against the f64 oracle under their own pattern; approximate and other-kernel variants: finite output, error reported)",
        ran - failures,
        check::EXACT_TOLERANCE
    )?;
    drop(out);
    if !never_ran.is_empty() {
        // A variant that ran on no case was not checked: that is no pass.
        eprintln!(
            "error: {} ran on none of the {} cases (every case skipped; reasons above)",
            never_ran.join(", "),
            cases.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn build_variants(
    registry: &Registry,
    list: Option<&str>,
) -> Result<Vec<Box<dyn Attention>>, String> {
    match list {
        Some(list) => registry.build_list(list).map_err(|e| e.to_string()),
        None => Ok(registry.defaults()),
    }
}

pub(super) fn maps(registry: &Registry, args: MapsArgs) -> io::Result<ExitCode> {
    let variants = match registry.build_list(&args.variants) {
        Ok(v) => v,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    let out_dir = args.out.unwrap_or_else(|| {
        let stamp = crate::harness::runfiles::utc_stamp(std::time::SystemTime::now());
        PathBuf::from("reports").join(format!("maps-{stamp}"))
    });
    let causal = args.causal || args.workload.is_causal_data();
    let cfg = crate::harness::maps::MapsConfig {
        workload: args.workload,
        variants: variants.iter().map(|v| v.as_ref()).collect(),
        heads: args.heads,
        n: args.n,
        opts: Options::new().causal(causal),
        log: args.log,
        out_dir,
        seed: 0,
        max_memory: args
            .max_memory
            .unwrap_or_else(crate::harness::machine::default_budget),
    };
    match crate::harness::maps::write_maps(&cfg) {
        Ok(out) => {
            for kind in [
                HeadKind::PreviousToken,
                HeadKind::FirstToken,
                HeadKind::Local,
            ] {
                let heads: Vec<String> = out
                    .rows
                    .iter()
                    .filter(|r| r.variant == "full" && r.stats.kind() == kind)
                    .map(|r| format!("{} h{}", r.sequence, r.head))
                    .collect();
                if !heads.is_empty() {
                    println!("{kind} heads: {}", heads.join(", "));
                }
            }
            println!(
                "{} images, statistics: {}, summary: {}",
                out.images.len(),
                out.csv.display(),
                out.markdown.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::from(2))
        }
    }
}

pub(super) fn report(csvs: &[PathBuf], out: Option<&Path>) -> io::Result<ExitCode> {
    match crate::report::write_report(csvs, out) {
        Ok(report) => {
            println!("report: {}", report.markdown.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::from(2))
        }
    }
}

pub(super) fn compare(args: CompareArgs) -> io::Result<ExitCode> {
    use crate::report::compare::{CompareConfig, compare};
    let cfg = CompareConfig {
        base: args.base,
        new: args.new,
        min_effect: args.min_effect / 100.0,
        fail_on: args.fail_on,
        allow_other_machine: args.allow_other_machine,
        rename: args.rename,
    };
    let comparison = match compare(&cfg) {
        Ok(c) => c,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    let md = comparison.markdown(cfg.min_effect);
    if let Some(out) = &args.out {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .and_then(|mut f| f.write_all(md.as_bytes()));
        if let Err(e) = written {
            print_error(&crate::error::Error::io(out, e));
            return Ok(ExitCode::from(2));
        }
    }
    io::stdout().write_all(md.as_bytes())?;
    let failures = comparison.failures(&cfg.fail_on);
    for f in &failures {
        eprintln!("fail: {f}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(super) fn sweep(
    registry: &Registry,
    args: SweepArgs,
    then_report: bool,
) -> io::Result<ExitCode> {
    let variants = match build_variants(registry, args.variants.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    if !args.min_time.is_none_or(|t| t.is_finite() && t >= 0.0) {
        eprintln!("error: --min-time must be a non-negative number of seconds");
        return Ok(ExitCode::from(2));
    }
    let mut cfg = match sweep_config(&args, then_report) {
        Ok(cfg) => cfg,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    cfg.previews = registry.previews(&variants);
    match run_with_progress(&cfg, &variants) {
        Ok(output) => {
            print_summary(&output)?;
            let code = if then_report {
                report(std::slice::from_ref(&output.csv), None)?
            } else {
                ExitCode::SUCCESS
            };
            // An exact variant off its own definition is a kernel bug: fail loudly.
            let flagged = output
                .records
                .iter()
                .filter(|r| r.status == Status::Flagged)
                .count();
            if flagged > 0 {
                eprintln!(
                    "error: {flagged} cell(s) flagged: an exact variant differs from the oracle under its own pattern (see the status column)"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(code)
        }
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::from(2))
        }
    }
}

pub(super) fn decode(registry: &Registry, args: DecodeArgs) -> io::Result<ExitCode> {
    let variants = match registry.build_list(&args.variants) {
        Ok(v) => v,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    let cfg = match decode_config(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    let width = variants
        .iter()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(7);
    println!(
        "{:<width$} {:<9} {:<4} {:>8} {:>26} {:>10} {:>6} {:>9} {:>9}  status",
        "variant",
        "mode",
        "kv",
        "context",
        "us/token [95% interval]",
        "state MiB",
        "read %",
        "err own",
        "err dense"
    );
    let line = |r: &crate::harness::decode::DecodeRecord| {
        let time = if r.us_per_token.is_finite() {
            format!("{:.1} [{:.1}, {:.1}]", r.us_per_token, r.us_lo, r.us_hi)
        } else {
            "-".into()
        };
        let num = |x: f64, f: &dyn Fn(f64) -> String| if x.is_finite() { f(x) } else { "-".into() };
        let status = if r.reason.is_empty() {
            r.status.clone()
        } else {
            format!("{}: {}", r.status, r.reason)
        };
        println!(
            "{:<width$} {:<9} {:<4} {:>8} {:>26} {:>10.2} {:>6} {:>9} {:>9}  {status}",
            r.variant,
            r.mode,
            r.kv,
            r.context,
            time,
            r.state_bytes as f64 / (1u64 << 20) as f64,
            num(r.read_fraction, &|x| format!("{:.0}", 100.0 * x)),
            num(r.err_own, &|x| format!("{x:.2e}")),
            num(r.err_median, &|x| format!("{x:.2e}")),
        );
    };
    let mut flagged = 0;
    let run = crate::harness::decode::run_decode(&cfg, &variants, |r| {
        flagged += usize::from(r.status == "flagged");
        line(r)
    });
    match run {
        Ok(run) => {
            println!("results: {} ({})", run.csv.display(), run.json.display());
            let code = if args.no_report {
                ExitCode::SUCCESS
            } else {
                report(std::slice::from_ref(&run.csv), None)?
            };
            if flagged > 0 {
                eprintln!(
                    "error: {flagged} cell(s) flagged: an exact decoder with an f32 cache differs from the oracle under its own pattern"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(code)
        }
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::from(2))
        }
    }
}

pub(super) fn perplexity(registry: &Registry, args: PerplexityArgs) -> io::Result<ExitCode> {
    use crate::harness::perplexity::{PerplexityConfig, TokenSource, run_perplexity};
    let built = registry
        .build_list(&args.variants)
        .and_then(|v| Ok((v, registry.build("full")?)));
    let (variants, full) = match built {
        Ok(v) => v,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    let tokens = match (args.tokens, args.text) {
        (Some(p), None) => TokenSource::Ids(p),
        (None, Some(p)) => {
            use crate::model::tokenizer::PreTokenizer;
            let pre = match args.pre_tokenizer.as_str() {
                "gpt2" => Some(PreTokenizer::Gpt2),
                "smollm" => Some(PreTokenizer::Gpt2Digits),
                _ => None,
            };
            TokenSource::Text(p, pre)
        }
        _ => unreachable!("clap requires exactly one of --tokens and --text"),
    };
    let cfg = PerplexityConfig {
        model: args.model,
        tokens,
        lengths: args.n,
        from_layer: args.from_layer,
        max_windows: args.max_windows,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        out_dir: args.out_dir,
        label: args.label,
        check_activations: args.check_activations,
        max_memory: args
            .max_memory
            .unwrap_or_else(crate::harness::machine::default_budget),
    };
    let width = variants
        .iter()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:>6} {:<width$} {:>9} {:>7} {:>10} {:>10} {:>6} {:>9}  status",
        "n", "variant", "ppl", "x full", "forward s", "attn s", "attn %", "err mid"
    );
    let num = |x: f64, f: &dyn Fn(f64) -> String| if x.is_finite() { f(x) } else { "-".into() };
    let mut line = |r: &crate::results::perplexity::PerplexityRecord| {
        let status = if r.note.is_empty() {
            r.status.clone()
        } else {
            format!("{}: {}", r.status, r.note)
        };
        println!(
            "{:>6} {:<width$} {:>9} {:>7} {:>10} {:>10} {:>6} {:>9}  {status}",
            r.n,
            r.variant,
            num(r.ppl, &|x| format!("{x:.3}")),
            num(r.ppl_ratio, &|x| format!("{x:.4}")),
            num(r.forward_s, &|x| format!("{x:.2}")),
            num(r.attention_s, &|x| format!("{x:.2}")),
            num(r.attention_share, &|x| format!("{:.0}", 100.0 * x)),
            num(r.err_middle.unwrap_or(f64::NAN), &|x| format!("{x:.2e}")),
        );
    };
    let command_line = std::env::args().collect();
    match run_perplexity(&cfg, &variants, full, command_line, &mut line) {
        Ok(run) => {
            for c in &run.meta.activation_check {
                println!(
                    "activations of layer {} (n = {}) against {}: relative error q {:.2e}, k {:.2e}, v {:.2e}",
                    c.layer,
                    c.n,
                    cfg.check_activations
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display(),
                    c.q,
                    c.k,
                    c.v
                );
            }
            println!("results: {} ({})", run.csv.display(), run.json.display());
            if args.no_report {
                Ok(ExitCode::SUCCESS)
            } else {
                report(std::slice::from_ref(&run.csv), None)
            }
        }
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::from(2))
        }
    }
}
