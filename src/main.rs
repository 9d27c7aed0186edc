//! The `attnbench` command line.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use attnbench::check::{self, Outcome};
use attnbench::harness::memory::CountingAlloc;
use attnbench::harness::record::Record;
use attnbench::harness::sweep::{Event, SweepConfig, SweepOutput, run_sweep};
use attnbench::harness::timing::TimingConfig;
use attnbench::workload::Workload;
use attnbench::{Attention, Fidelity, Options, Registry};
use clap::{Args, Parser, Subcommand};

/// Peak heap bytes of every variant call are measured through this allocator.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

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
    /// Measure time, peak memory and error of variants across sequence lengths; write
    /// results/<UTC time>-<label>.csv and .json.
    Sweep(Box<SweepArgs>),
    /// Turn results CSVs into charts (SVG and PNG) and a markdown report.
    Report {
        /// Results CSV files (several are combined into one report).
        #[arg(required = true, value_name = "RESULTS.csv")]
        csv: Vec<PathBuf>,
        /// Output directory; default: reports/<run id of the first file>.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sweep, then report: the main job. Takes every `sweep` flag.
    Run(Box<SweepArgs>),
    /// Draw each head's attention weights under full attention and under each variant, with
    /// per-head entropy, local and first-token mass; write PNGs, maps.csv and maps.md.
    Maps(MapsArgs),
}

#[derive(Debug, Args)]
struct MapsArgs {
    /// Inputs: `npy:DIR` (real activations, e.g. npy:tests/data/qkv) or `gaussian`.
    #[arg(long, default_value = "npy:tests/data/qkv", value_parser = parse_workload)]
    workload: Workload,
    /// Comma-separated variant specs drawn next to full attention.
    #[arg(
        long,
        value_name = "SPEC,...",
        default_value = "window(w=32),linear(phi=elu1)"
    )]
    variants: String,
    /// Heads to draw, e.g. `0,1,2`; default: all.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    heads: Option<Vec<usize>>,
    /// Sequence length (a prefix); default: the workload's length, up to 512.
    #[arg(long)]
    n: Option<usize>,
    /// Causal masking.
    #[arg(long)]
    causal: bool,
    /// Log colour scale (four decades), which shows the tails of the weights.
    #[arg(long)]
    log: bool,
    /// Output directory; default: reports/maps-<UTC time>.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SweepArgs {
    /// Comma-separated variant specs, e.g. `full,flash,window(w=128)`.
    /// Default: every registered variant's presets.
    #[arg(long, value_name = "SPEC,...")]
    variants: Option<String>,
    /// Sequence lengths: a list `256,512,1000` or a doubling range `256..8192` (A, 2A, 4A, ...
    /// up to B).
    /// Default: 256..8192 (256..1024 with --quick).
    #[arg(long, value_name = "LIST|A..B", value_parser = parse_lengths)]
    lengths: Option<Lengths>,
    /// Batch size (Gaussian workload).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Query heads (Gaussian workload).
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Key/value heads (Gaussian workload); default: --heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Head dimension (Gaussian workload).
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    /// Causal masking (bottom-right aligned).
    #[arg(long)]
    causal: bool,
    /// ALiBi position biases (per-head slopes 2^(-8k/h)).
    #[arg(long)]
    alibi: bool,
    /// tanh soft-capping of the scores at +-C, e.g. 30.
    #[arg(long, value_name = "C")]
    softcap: Option<f32>,
    /// Rotary position embedding of Q and K (base 10000 unless given).
    #[arg(long, value_name = "BASE", num_args = 0..=1, default_missing_value = "10000")]
    rope: Option<f32>,
    /// Decoding: this many queries (the last positions) against each length of keys; rows
    /// then report their fraction of the measured read bandwidth.
    #[arg(long, value_name = "N")]
    n_q: Option<usize>,
    /// Measure the whole multi-head layer (projections + core) around each variant, with
    /// Gaussian X of width --d-model.
    #[arg(long)]
    layer: bool,
    /// The layer's model width (with --layer); head_dim becomes d_model / heads.
    #[arg(long, value_name = "N", default_value_t = 512, requires = "layer")]
    d_model: usize,
    /// Worker threads; default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Inputs: `gaussian`, `gaussian(scale=2)` or `npy:DIR` (real activations, e.g.
    /// npy:tests/data/qkv; shape taken from the files).
    #[arg(long, default_value = "gaussian", value_parser = parse_workload)]
    workload: Workload,
    /// Seed of the inputs and of the oracle's row sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Minimum timed calls per cell (default 3; 1 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Minimum total timed seconds per cell (default 0.3; 0 with --quick).
    #[arg(long, value_name = "SECONDS")]
    min_time: Option<f64>,
    /// Skip cells whose analytic memory exceeds this many bytes (suffixes K, M, G);
    /// default: half the machine's RAM.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_memory: Option<u64>,
    /// Skip a variant's longer lengths once one call took longer than this.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    max_seconds: f64,
    /// Directory for the CSV and JSON.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Label appended to the run id.
    #[arg(long, default_value = "sweep")]
    label: String,
    /// Few lengths and repeats, for a smoke run (under 30 s).
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Clone)]
struct Lengths(Vec<usize>);

fn parse_lengths(text: &str) -> Result<Lengths, String> {
    if let Some((a, b)) = text.split_once("..") {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' is not a length"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a == 0 || a > b {
            return Err(format!("range {a}..{b} must have 1 <= start <= end"));
        }
        let mut v = Vec::new();
        let mut n = Some(a);
        while let Some(x) = n.filter(|&x| x <= b) {
            v.push(x);
            n = x.checked_mul(2);
        }
        return Ok(Lengths(v));
    }
    let v = text
        .split(',')
        .map(|s| match s.trim().parse::<usize>() {
            Ok(0) => Err("lengths must be at least 1".to_string()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("'{s}' is not a length")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Lengths(v))
}

fn parse_workload(text: &str) -> Result<Workload, String> {
    text.parse().map_err(|e: attnbench::Error| e.to_string())
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{text}' is not a byte count (e.g. 2000000, 512M, 4G)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let registry = Registry::builtin();
    let result = match cli.command {
        Command::List => list(&registry),
        Command::Check { variants, seed } => check_cmd(&registry, variants.as_deref(), seed),
        Command::Sweep(args) => sweep_cmd(&registry, *args, false),
        Command::Run(args) => sweep_cmd(&registry, *args, true),
        Command::Report { csv, out } => report_cmd(&registry, &csv, out.as_deref()),
        Command::Maps(args) => maps_cmd(&registry, args),
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

fn build_variants(
    registry: &Registry,
    list: Option<&str>,
) -> Result<Vec<Box<dyn Attention>>, String> {
    match list {
        Some(list) => registry.build_list(list).map_err(|e| e.to_string()),
        None => Ok(registry.defaults()),
    }
}

fn sweep_config(args: &SweepArgs) -> SweepConfig {
    let defaults = SweepConfig::default();
    let lengths = match (&args.lengths, args.quick) {
        (Some(l), _) => l.0.clone(),
        (None, true) => vec![256, 512, 1024],
        (None, false) => defaults.lengths.clone(),
    };
    let repeats = args.repeats.unwrap_or(if args.quick { 1 } else { 3 });
    let min_time = args.min_time.unwrap_or(if args.quick { 0.0 } else { 0.3 });
    SweepConfig {
        lengths,
        batch: args.batch,
        heads: args.heads,
        kv_heads: args.kv_heads.unwrap_or(args.heads),
        head_dim: args.head_dim,
        opts: {
            let mut o = Options::new().causal(args.causal).alibi(args.alibi);
            o.softcap = args.softcap;
            o.rope = args.rope;
            o
        },
        n_q: args.n_q,
        layer: args.layer.then_some(args.d_model),
        threads: args.threads.unwrap_or(defaults.threads),
        workload: args.workload.clone(),
        seed: args.seed,
        timing: TimingConfig {
            warmup: 1,
            min_repeats: repeats,
            min_time: Duration::from_secs_f64(min_time.max(0.0)),
            max_repeats: 100,
        },
        max_memory: args.max_memory.unwrap_or(defaults.max_memory),
        max_seconds: args.max_seconds,
        out_dir: args.out.clone(),
        label: args.label.clone(),
        ..defaults
    }
}

fn maps_cmd(registry: &Registry, args: MapsArgs) -> io::Result<ExitCode> {
    let variants = match registry.build_list(&args.variants) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let out_dir = args.out.unwrap_or_else(|| {
        let stamp = attnbench::harness::sweep::utc_stamp(std::time::SystemTime::now());
        PathBuf::from("reports").join(format!("maps-{stamp}"))
    });
    let cfg = attnbench::maps::MapsConfig {
        workload: args.workload,
        variants,
        heads: args.heads,
        n: args.n,
        causal: args.causal,
        log: args.log,
        out_dir,
        seed: 0,
    };
    match attnbench::maps::write_maps(&cfg) {
        Ok(out) => {
            for kind in ["previous-token", "first-token", "local"] {
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
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn report_cmd(
    registry: &Registry,
    csvs: &[PathBuf],
    out: Option<&std::path::Path>,
) -> io::Result<ExitCode> {
    match attnbench::report::write_report(csvs, out, registry) {
        Ok(report) => {
            println!("report: {}", report.markdown.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn sweep_cmd(registry: &Registry, args: SweepArgs, report: bool) -> io::Result<ExitCode> {
    let variants = match build_variants(registry, args.variants.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if !args.min_time.is_none_or(|t| t.is_finite() && t >= 0.0) {
        eprintln!("error: --min-time must be a non-negative number of seconds");
        return Ok(ExitCode::from(2));
    }
    let cfg = sweep_config(&args);
    match run_with_progress(&cfg, &variants) {
        Ok(output) => {
            print_summary(&output)?;
            let code = if report {
                report_cmd(registry, std::slice::from_ref(&output.csv), None)?
            } else {
                ExitCode::SUCCESS
            };
            // An exact variant off its own definition is a kernel bug: fail loudly.
            let flagged = output
                .records
                .iter()
                .filter(|r| r.status == "flagged")
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
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Runs a sweep with a progress bar on a terminal, or one line per cell otherwise.
fn run_with_progress(
    cfg: &SweepConfig,
    variants: &[Box<dyn Attention>],
) -> attnbench::Result<SweepOutput> {
    let terminal = io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::hidden();
    let started = std::time::Instant::now();
    let mut done = 0usize;
    let mut total = 0usize;
    let mut progress = |event: Event<'_>| match event {
        Event::Start { cells } => {
            total = cells;
            if terminal {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(cells as u64);
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
                bar.set_message(format!("{variant} n={n}"));
            }
        }
        Event::Done(r) => {
            done += 1;
            if terminal {
                bar.inc(1);
            } else {
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
        Some(ms) if r.status == "ok" => format!("{ms:.2} ms"),
        Some(ms) => format!("{ms:.2} ms, {}: {}", r.status, r.note),
        None => format!("{}: {}", r.status, r.note),
    }
}

fn fmt_opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "-".to_string(), f)
}

fn print_summary(output: &SweepOutput) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<56} {:>6} {:>10} {:>8} {:>7} {:>10} {:>10} {:>10}  status",
        "variant", "n_kv", "median ms", "GFLOP/s", "% gemm", "peak MiB", "err dense", "err own"
    )?;
    for r in &output.records {
        writeln!(
            out,
            "{:<56} {:>6} {:>10} {:>8} {:>7} {:>10} {:>10} {:>10}  {}{}",
            r.variant,
            r.n_kv,
            fmt_opt(r.time_median_ms, |x| format!("{x:.2}")),
            fmt_opt(r.gflops, |x| format!("{x:.1}")),
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
