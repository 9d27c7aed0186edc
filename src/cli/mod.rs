//! The `attnbench` command line as a library entry point.
//!
//! [`main`] runs the whole CLI (`list`, `check`, `sweep`, `report`, `compare`, `run`, `maps`, `decode`) over any
//! [`Registry`], so a crate that registers its own variants gets every command for them in a
//! few lines, as `criterion_main!` does for benches:
//!
//! ```no_run
//! let mut registry = attnbench::Registry::builtin();
//! // registry.register(my_variant::INFO)?;
//! std::process::exit(match attnbench::cli::main(registry) {
//!     code if code == std::process::ExitCode::SUCCESS => 0,
//!     _ => 1,
//! });
//! ```
//!
//! [`attnbench_main!`](crate::attnbench_main) writes that `main` and also installs the
//! counting allocator that peak-memory measurement needs (`src/main.rs` is one line of it).
//!
//! - `args`: the clap definitions, value parsers and the sweep flags overlaid on
//!   [`SweepConfig::default`](crate::harness::sweep::SweepConfig::default) or
//!   [`SweepConfig::quick`](crate::harness::sweep::SweepConfig::quick);
//! - `commands`: one function per subcommand;
//! - `progress`: the progress bar and the summary table of a sweep.

mod args;
mod commands;
mod progress;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::registry::Registry;
use args::{Cli, Command};

/// Runs the CLI on the process's arguments over `registry`. Exit codes: 0 on success, 1 when
/// a check fails or a sweep flags a cell, 2 on a usage or run error.
pub fn main(registry: Registry) -> ExitCode {
    main_from(std::env::args_os(), registry)
}

/// Like [`main`] with explicit arguments (the first is the program name).
pub fn main_from<I, T>(args: I, registry: Registry) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    ignore_file_size_signal();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // clap echoes the bad value: line by line, made readable as our own errors are.
            for line in e.to_string().lines() {
                eprintln!("{}", readable(line));
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Command::List { markdown } => list(&registry, markdown),
        Command::Check {
            variants,
            seed,
            max_memory,
        } => commands::check(
            &registry,
            variants.as_deref(),
            seed,
            max_memory.unwrap_or_else(crate::harness::machine::default_budget),
        ),
        Command::Sweep(args) => commands::sweep(&registry, *args, false),
        Command::Run(args) => commands::sweep(&registry, *args, true),
        Command::Report { csv, out } => commands::report(&csv, out.as_deref()),
        Command::Compare(args) => commands::compare(args),
        Command::Maps(args) => commands::maps(&registry, args),
        Command::Decode(args) => commands::decode(&registry, *args),
        Command::Perplexity(args) => commands::perplexity(&registry, *args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            print_error(&e);
            ExitCode::from(2)
        }
    }
}

/// Prints `error: <message>` to stderr as one readable line: control characters (a
/// terminal escape in a spec) are shown escaped, and a word of more than 100 characters (a
/// 100k-character spec echoed back) is shortened.
pub(crate) fn print_error(e: &dyn std::fmt::Display) {
    eprintln!("error: {}", readable(&e.to_string()));
}

/// `message` with control characters escaped and words over 100 characters shortened.
fn readable(message: &str) -> String {
    let escaped: String = message
        .chars()
        .flat_map(|c| {
            let e: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            e
        })
        .collect();
    escaped
        .split(' ')
        .map(|word| {
            let n = word.chars().count();
            if n > 100 {
                let head: String = word.chars().take(60).collect();
                format!("{head}...({} more characters)", n - 60)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes a write beyond the file-size limit (`ulimit -f`) fail with `EFBIG`, like a full
/// disk, instead of killing the process with SIGXFSZ: the run then ends with an error and
/// its metadata says so.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: `signal` with `SIG_IGN` installs no handler code (nothing runs in signal
    // context); it only changes the disposition of SIGXFSZ, which no other part of this
    // process relies on.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Writes a binary's `main` that runs [`cli::main`](crate::cli::main) over the registry
/// expression, and installs [`CountingAlloc`](crate::harness::memory::CountingAlloc) as the
/// global allocator so that peak heap bytes are measured.
///
/// ```ignore
/// attnbench::attnbench_main!({
///     let mut registry = attnbench::Registry::builtin();
///     registry.register(my_variant::INFO).expect("a new name");
///     registry
/// });
/// ```
#[macro_export]
macro_rules! attnbench_main {
    ($registry:expr) => {
        #[global_allocator]
        static ALLOC: $crate::harness::memory::CountingAlloc =
            $crate::harness::memory::CountingAlloc;

        fn main() -> ::std::process::ExitCode {
            $crate::cli::main($registry)
        }
    };
}

/// The markdown table of every variant in `registry`: its default specs, fidelity, what it
/// computes, time and extra memory (`attnbench list --markdown`; README's table is this
/// output, which a test checks).
pub fn variants_markdown(registry: &Registry) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut t = String::from(
        "| spec | fidelity | what it computes | time | extra memory |\n|---|---|---|---|---|\n",
    );
    for info in registry.iter() {
        let variants: Vec<_> = info
            .default_specs()
            .iter()
            .map(|s| registry.build(s).expect("registered presets build"))
            .collect();
        let mut fidelity: Vec<String> = Vec::new();
        for v in &variants {
            let f = v.fidelity().to_string();
            if !fidelity.contains(&f) {
                fidelity.push(f);
            }
        }
        let specs: Vec<String> = variants.iter().map(|v| format!("`{v}`")).collect();
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            specs.join(", "),
            fidelity.join(" / "),
            esc(info.summary),
            esc(info.time),
            esc(info.memory)
        ));
    }
    t
}

fn list(registry: &Registry, markdown: bool) -> io::Result<ExitCode> {
    let text = if markdown {
        variants_markdown(registry)
    } else {
        variants_text(registry)
    };
    io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `attnbench list`: each variant with its fidelity, summary, default specs and parameters.
fn variants_text(registry: &Registry) -> String {
    let mut t = String::new();
    for info in registry.iter() {
        // Each variant with its own presets (a variant may have several, e.g. linear).
        let variants: Vec<_> = info
            .default_specs()
            .iter()
            .map(|s| registry.build(s).expect("registered presets build"))
            .collect();
        let fidelity = variants.first().map(|v| v.fidelity().to_string());
        let _ = writeln!(
            t,
            "{:<12} {:<12} {}",
            info.name,
            fidelity.unwrap_or_default(),
            info.summary
        );
        for v in &variants {
            let _ = writeln!(t, "{:<12} default spec: {v} ({})", "", v.fidelity());
        }
        for p in info.params {
            let param = format!("{}={}", p.name, p.default);
            let _ = writeln!(t, "{:<12}   {param:<20} {}", "", p.help);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pairs_each_variant_with_its_own_presets() {
        // A variant registered after one with several presets (linear) keeps its own spec.
        let mut reg = Registry::builtin();
        let mut extra = crate::variants::window::INFO;
        extra.name = "window2";
        reg.register(extra).unwrap();
        let text = variants_text(&reg);
        let block = &text[text.find("window2 ").expect("listed")..];
        assert!(
            block.contains("default spec: window(w=256) (exact)"),
            "{block}"
        );
        assert!(!block.contains("linear("), "{block}");
        assert!(text.contains("default spec: linear(phi=favor"), "{text}");
    }
}
