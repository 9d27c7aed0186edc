//! The `attnbench` command line.

use std::io::{self, Write};
use std::process::ExitCode;

use attnbench::check::{self, Outcome};
use attnbench::{Attention, Fidelity, Registry};
use clap::{Parser, Subcommand};

/// Reference CPU benchmark suite for efficient attention.
#[derive(Debug, Parser)]
#[command(name = "attnbench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every registered variant with its parameters and defaults.
    List,
    /// Check variants against the f64 oracle on a fixed set of small cases.
    Check {
        /// Comma-separated variant specs, e.g. `full,flash(bq=32,bk=64)`.
        /// Default: every registered variant with default parameters.
        #[arg(long, value_name = "SPEC,...")]
        variants: Option<String>,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let registry = Registry::builtin();
    let result = match cli.command {
        Command::List => list(&registry),
        Command::Check { variants, seed } => check_cmd(&registry, variants.as_deref(), seed),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn list(registry: &Registry) -> io::Result<ExitCode> {
    let mut out = io::stdout().lock();
    for (info, variant) in registry.iter().zip(registry.defaults()) {
        writeln!(
            out,
            "{:<12} {:<12} {}",
            info.name,
            variant.fidelity(),
            info.summary
        )?;
        writeln!(out, "{:<12} default spec: {variant}", "")?;
        for p in info.params {
            writeln!(out, "{:<12}   {}={:<8} {}", "", p.name, p.default, p.help)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_cmd(registry: &Registry, variants: Option<&str>, seed: u64) -> io::Result<ExitCode> {
    let variants: Vec<Box<dyn Attention>> = match variants {
        Some(list) => match registry.build_list(list) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
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
    let mut failures = 0;
    let mut total = 0;
    for variant in &variants {
        for case in &cases {
            let outcome = check::check(variant.as_ref(), case, seed);
            total += 1;
            failures += usize::from(outcome.is_failure());
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
    }
    writeln!(
        out,
        "\n{} of {total} checks passed (exact variants: relative Frobenius error <= {:e} against the f64 oracle under their own pattern; approximate and other-kernel variants: finite output, error reported)",
        total - failures,
        check::EXACT_TOLERANCE
    )?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
