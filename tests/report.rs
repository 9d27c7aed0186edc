//! Reports: every chart and report.md from a fixture, fits recovered from synthetic power
//! laws, degenerate inputs (skips, errors, one length), and malformed CSVs.

use std::path::{Path, PathBuf};

use attnbench::report::{FIGURES, write_report};
use attnbench::results::artefacts::{patterns_path, write_json};
use attnbench::results::record::Record;
use attnbench::{Fidelity, Registry};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rec(variant: &str, name: &str, n: usize, time_ms: Option<f64>, status: &str) -> Record {
    Record {
        run_id: "fixture".into(),
        variant: variant.into(),
        name: name.into(),
        fidelity: Fidelity::Exact,
        batch: 1,
        heads: 8,
        kv_heads: 8,
        n_q: n,
        n_kv: n,
        head_dim: 64,
        causal: false,
        threads: 2,
        workload: "gaussian(scale=1)".into(),
        time_median_ms: time_ms,
        time_min_ms: time_ms.map(|t| t * 0.9),
        time_max_ms: time_ms.map(|t| t * 1.1),
        repeats: time_ms.map(|_| 3),
        useful_flops: time_ms.map(|_| 4.0 * (n * n * 64 * 8) as f64),
        useful_gflops: time_ms.map(|t| 4.0 * (n * n * 64 * 8) as f64 / t / 1e6),
        executed_flops: time_ms.map(|_| 4.0 * (n * n * 64 * 8) as f64),
        executed_gflops: time_ms.map(|t| 4.0 * (n * n * 64 * 8) as f64 / t / 1e6),
        rounds: time_ms.map(|_| 3),
        round_medians_ms: time_ms.map_or(String::new(), |t| rounds_of(name, t)),
        gemm_gflops: Some(150.0),
        pct_of_gemm: Some(50.0),
        pct_of_peak: Some(25.0),
        peak_bytes: time_ms.map(|_| {
            if name == "full" {
                (n * n * 4) as u64
            } else {
                100_000
            }
        }),
        workspace_bytes: Some(90_000),
        // A window of 256 allows 2 * 256 + 1 keys per row (away from the edges).
        density: Some(if name == "window" {
            (513.0 / n as f64).min(1.0)
        } else {
            1.0
        }),
        err_dense_rel: time_ms.map(|_| if name == "window" { 0.3 } else { 2e-7 }),
        err_dense_max_abs: Some(1e-6),
        err_dense_cosine: Some(1.0),
        err_own_rel: Some(2e-7),
        err_own_max_abs: Some(1e-6),
        oracle_rows: Some(64),
        status: status.parse().unwrap(),
        note: if status == "ok" {
            String::new()
        } else {
            format!("{status} on purpose")
        },
        ..Record::default()
    }
}

/// Three rounds around `t` with +-1% noise, in an order that differs by variant name (so
/// paired ratios have a spread).
fn rounds_of(name: &str, t: f64) -> String {
    let noise = match name {
        "full" => [0.99, 1.0, 1.01],
        "flash" => [1.0, 1.01, 0.99],
        _ => [1.01, 0.99, 1.0],
    };
    noise
        .iter()
        .map(|e| (t * e).to_string())
        .collect::<Vec<_>>()
        .join(";")
}

fn write_csv(path: &Path, rows: &[Record]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    for r in rows {
        w.serialize(r).unwrap();
    }
    w.flush().unwrap();
}

/// full ~ n^2, flash ~ n^2 / 2, window ~ n: window crosses full and flash.
fn power_law_rows() -> Vec<Record> {
    let mut rows = Vec::new();
    for n in [256usize, 512, 1024, 2048, 4096] {
        let x = n as f64 / 1024.0;
        rows.push(rec("full", "full", n, Some(10.0 * x * x), "ok"));
        rows.push(rec(
            "flash(bq=64,bk=256)",
            "flash",
            n,
            Some(5.0 * x * x),
            "ok",
        ));
        rows.push(rec("window(w=256)", "window", n, Some(4.0 * x), "ok"));
    }
    rows
}

#[test]
fn a_report_has_every_chart_and_the_fits() {
    let dir = temp_dir("full");
    let csv = dir.join("fixture.csv");
    write_csv(&csv, &power_law_rows());
    // The previews a sweep of these variants would have recorded.
    let swept = Registry::builtin()
        .build_list("full,window(w=256)")
        .unwrap();
    let previews = Registry::builtin().previews(&swept);
    assert_eq!(previews.panels.len(), 2, "window, bidirectional and causal");
    write_json(&patterns_path(&csv), &previews).unwrap();
    let out = write_report(&[csv], Some(&dir.join("out"))).unwrap();
    for stem in FIGURES.iter().map(|f| f.stem) {
        for ext in ["svg", "png"] {
            let path = out.dir.join(format!("{stem}.{ext}"));
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(size > 1000, "{} is missing or empty", path.display());
        }
    }
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("## Scaling fits and crossovers"), "{md}");
    // Power laws with +-1% round noise: slopes 2 and 1 over the upper 3 lengths (9 points),
    // with intervals around them.
    assert!(
        md.contains("| `full` | exact | 2.00 [1.99, 2.01] (9 pts) | 2.00 | 2.00 | - |"),
        "{md}"
    );
    assert!(
        md.contains("| `window(w=256)` | exact | 1.00 [0.99, 1.01] (9 pts) | 1.00 | 0.00 |"),
        "{md}"
    );
    // window: 4x vs 10x^2 crosses at x = 0.4 (n ~ 410); vs 5x^2 at x = 0.8 (n ~ 819).
    assert!(
        md.contains(
            "| crosses at n ~ 410 (between 256 and 512) | crosses at n ~ 819 (between 512 and 1024) |"
        ),
        "{md}"
    );
    assert!(
        md.contains("at n=4096, `window(w=256)` is 10.0x faster than `full` (95% interval"),
        "{md}"
    );
    assert!(md.contains("; 16.00 vs 160 ms;"), "{md}");
    assert!(md.contains("![Time per call"));
    assert!(md.contains("### n = 256"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn degenerate_results_still_report() {
    let dir = temp_dir("degenerate");
    let csv = dir.join("one-length.csv");
    write_csv(
        &csv,
        &[
            rec("window(w=256)", "window", 512, Some(3.0), "ok"),
            rec("flash(bq=64,bk=256)", "flash", 512, None, "skipped"),
            rec("broken", "broken", 512, None, "error"),
        ],
    );
    let out = write_report(&[csv], Some(&dir.join("out"))).unwrap();
    let speedup = std::fs::read_to_string(out.dir.join("speedup_vs_full.svg")).unwrap();
    assert!(
        speedup.contains("not enough points"),
        "no full attention: say so"
    );
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(
        md.contains("| `broken` | 512 | error | error on purpose |"),
        "{md}"
    );
    assert!(
        md.contains("| `flash(bq=64,bk=256)` | 512 | skipped | skipped on purpose |"),
        "{md}"
    );
    assert!(
        md.contains("| `window(w=256)` | exact | - | - |"),
        "one length: no fit; {md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_combine_into_one_report() {
    let dir = temp_dir("combine");
    let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
    write_csv(&a, &power_law_rows());
    let mut other = power_law_rows();
    for r in &mut other {
        r.run_id = "other".into();
        // The other machine's full attention is twice as slow.
        if r.name == "full" {
            r.time_median_ms = r.time_median_ms.map(|t| t * 2.0);
            r.round_medians_ms = rounds_of("full", r.time_median_ms.unwrap());
        }
    }
    write_csv(&b, &other);
    let out = write_report(&[a, b], Some(&dir.join("out"))).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(
        md.contains("`full [fixture]`") && md.contains("`full [other]`"),
        "{md}"
    );
    // Each run is compared with its own full attention.
    assert!(
        md.contains("`window(w=256) [fixture]` is 10.0x faster than `full [fixture]`"),
        "{md}"
    );
    assert!(
        md.contains("`window(w=256) [other]` is 20.0x faster than `full [other]`"),
        "{md}"
    );
    assert!(
        md.contains("| `window(w=256) [other]` | 16.00"),
        "tables name the run; {md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A baselines CSV (rows of `baselines/run.py`, run id of the sweep they ran on) and its
/// JSON beside it.
fn write_baselines(csv: &Path, rows: &[Record]) {
    write_csv(csv, rows);
    let json = r#"{"kind":"attnbench-baselines","run_id":"fixture","source":"a.json",
        "started_utc":"2026-12-04T00:00:00Z","duration_s":12.0,"python":"3.11.7","threads":2,
        "libraries":[{"name":"torch","variants":["torch.sdpa"],"versions":["torch 2.15.0"],
        "notes":["torch.sdpa: does not materialise the score matrix"]}],
        "skipped":["ort is not importable"]}"#;
    std::fs::write(csv.with_extension("json"), json).unwrap();
}

#[test]
fn external_baselines_join_their_run_and_are_compared_unpaired() {
    let dir = temp_dir("baselines");
    let (a, b) = (dir.join("a.csv"), dir.join("a-baselines.csv"));
    let rows = power_law_rows();
    write_csv(&a, &rows);
    // torch.sdpa: half of full's time, with full's exact round pattern, so that a (wrong)
    // pairing by round would give a zero-width interval.
    let torch: Vec<Record> = rows
        .iter()
        .filter(|r| r.name == "full")
        .map(|r| {
            let mut t = r.clone();
            t.variant = "torch.sdpa".into();
            t.name = "torch.sdpa".into();
            t.time_median_ms = r.time_median_ms.map(|x| x / 2.0);
            t.round_medians_ms = rounds_of("full", t.time_median_ms.unwrap());
            t
        })
        .collect();
    write_baselines(&b, &torch);
    let out = write_report(&[a, b], Some(&dir.join("out"))).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("## External baselines"), "{md}");
    assert!(
        md.contains("torch.sdpa: does not materialise the score matrix"),
        "{md}"
    );
    assert!(md.contains("- not run: ort is not importable"), "{md}");
    // Same run id: compared with the run's own full attention, no run suffix on labels.
    assert!(
        md.contains("`torch.sdpa` is 2.00x faster than `full`"),
        "{md}"
    );
    assert!(!md.contains("[fixture]"), "{md}");
    // Unpaired: the interval has width although the round patterns are identical.
    assert!(!md.contains("95% interval 2.00x-2.00x"), "{md}");
    // The metadata is not reported as unreadable.
    assert!(!md.contains("unreadable"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn causal_and_bidirectional_runs_show_what_masking_costs() {
    let dir = temp_dir("causal");
    let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
    let rows = power_law_rows();
    write_csv(&a, &rows);
    let causal: Vec<Record> = rows
        .iter()
        .map(|r| {
            let mut c = r.clone();
            c.run_id = "causal".into();
            c.causal = true;
            c.time_median_ms = r.time_median_ms.map(|x| x * 0.6);
            c.round_medians_ms = rounds_of(&r.name, c.time_median_ms.unwrap());
            c
        })
        .collect();
    write_csv(&b, &causal);
    let out = write_report(&[a.clone(), b], Some(&dir.join("out"))).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("## Causal masking"), "{md}");
    let full = md
        .lines()
        .find(|l| l.starts_with("| `full` | 2 | 4096 |"))
        .unwrap_or_else(|| panic!("a causal row for full at n = 4096: {md}"));
    assert!(full.contains("| 0.60 ["), "{full}");
    // One run alone has no such section.
    let single = write_report(&[a], Some(&dir.join("single"))).unwrap();
    let md = std::fs::read_to_string(&single.markdown).unwrap();
    assert!(!md.contains("## Causal masking"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_csv_names_the_row() {
    let dir = temp_dir("malformed");
    let csv = dir.join("bad.csv");
    write_csv(&csv, &power_law_rows()[..3]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replacen(",8,8,", ",eight,8,", 1);
    std::fs::write(&csv, lines.join("\n")).unwrap();
    let err = write_report(std::slice::from_ref(&csv), Some(&dir.join("out"))).unwrap_err();
    assert!(
        matches!(err.kind(), attnbench::ErrorKind::Format { .. }),
        "{err}"
    );
    // The parser's own error is kept as the source.
    assert!(std::error::Error::source(&err).is_some(), "{err}");
    let e = err.to_string();
    assert!(e.contains("bad.csv") && e.contains("row 2"), "{e}");
    std::fs::write(&csv, "").unwrap();
    let e = write_report(&[csv], Some(&dir.join("out"))).unwrap_err();
    assert!(e.to_string().contains("no result rows"), "{e}");
    let missing = write_report(&[dir.join("nope.csv")], None).unwrap_err();
    assert!(missing.to_string().contains("nope.csv"));
    assert!(
        std::error::Error::source(&missing).is_some(),
        "the io::Error is kept"
    );
    // A malformed artefact beside a good CSV: a Format error naming it, with its source.
    let good = dir.join("good.csv");
    write_csv(&good, &power_law_rows());
    std::fs::write(patterns_path(&good), "{not json").unwrap();
    let e = write_report(&[good], Some(&dir.join("out2"))).unwrap_err();
    assert!(
        matches!(e.kind(), attnbench::ErrorKind::Format { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("patterns.json"), "{e}");
    assert!(std::error::Error::source(&e).is_some(), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rows of two variants over six lengths, three rounds each, with log-normal round noise of
/// standard deviation `noise`: `full` takes `n^2`, `other` takes `ratio(n)` times that.
fn noisy_pair(seed: u64, noise: f64, ratio: impl Fn(f64) -> f64) -> Vec<Record> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0, noise).unwrap();
    let mut rows = Vec::new();
    for n in [256usize, 512, 1024, 2048, 4096, 8192] {
        let x = n as f64 / 1024.0;
        for (variant, name, t) in [
            ("full", "full", 10.0 * x * x),
            ("other", "other", 10.0 * x * x * ratio(n as f64)),
        ] {
            let rounds: Vec<f64> = (0..3).map(|_| t * normal.sample(&mut rng).exp()).collect();
            let mut sorted = rounds.clone();
            sorted.sort_by(f64::total_cmp);
            let mut r = rec(variant, name, n, Some(sorted[1]), "ok");
            r.round_medians_ms = rounds
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(";");
            rows.push(r);
        }
    }
    rows
}

fn verdict_row(md: &str) -> String {
    md.lines()
        .find(|l| l.starts_with("| `other` |"))
        .unwrap_or_else(|| panic!("no row for other: {md}"))
        .to_string()
}

#[test]
fn a_one_percent_difference_under_five_percent_noise_is_indistinguishable() {
    let dir = temp_dir("indistinguishable");
    let csv = dir.join("noisy.csv");
    write_csv(&csv, &noisy_pair(7, 0.05, |_| 0.99));
    let out = write_report(std::slice::from_ref(&csv), Some(&dir.join("out"))).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    let row = verdict_row(&md);
    assert!(
        row.contains("indistinguishable at every n (256, 512, 1024, 2048, 4096, 8192)"),
        "{row}"
    );
    assert!(
        md.contains("`other` is indistinguishable from `full` (time ratio"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_threefold_difference_states_the_crossover() {
    // 3x slower at n = 256, 3x faster at n = 8192, log-linear between: crosses 1 at
    // n = 256 * sqrt(32) ~ 1448.
    let ratio = |n: f64| 3.0 * (n / 256.0).powf(-(9f64.ln()) / 32f64.ln());
    let dir = temp_dir("crossover");
    let csv = dir.join("noisy.csv");
    write_csv(&csv, &noisy_pair(7, 0.05, ratio));
    let out = write_report(std::slice::from_ref(&csv), Some(&dir.join("out"))).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    let row = verdict_row(&md);
    // The stated crossover lies between the lengths that bracket 1448.
    let stated = row
        .split("n ~ ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no crossover stated: {row}"));
    assert!((1024.0..=2048.0).contains(&stated), "{row}");
    assert!(
        md.contains("`other` is ") && md.contains("x faster than `full`"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn identical_variants_are_called_different_about_five_percent_of_the_time() {
    // The intervals' calibration, not one lucky seed: over many noise draws, two variants of
    // equal speed are declared faster or slower at a length about 5% of the time, and a 20%
    // difference under 2% noise almost always.
    use attnbench::report::fit::{Comparison, Order};
    let mut called = 0;
    let mut found = 0;
    let mut total = 0;
    for seed in 0..300 {
        for (ratio, noise, counter) in [(1.0, 0.05, &mut called), (0.8, 0.02, &mut found)] {
            let rows = noisy_pair(seed, noise, |_| ratio);
            let parse = |r: &Record| -> Vec<f64> {
                r.round_medians_ms
                    .split(';')
                    .map(|t| t.parse().unwrap())
                    .collect()
            };
            for pair in rows.chunks(2) {
                let (a, b) = (parse(&pair[1]), parse(&pair[0]));
                let n = pair[0].n_kv;
                let c = Comparison::new(
                    &[(n, &a[..], pair[1].time_median_ms.unwrap())],
                    &[(n, &b[..], pair[0].time_median_ms.unwrap())],
                );
                if c.ratios[0].order() != Order::Indistinguishable {
                    *counter += 1;
                }
            }
        }
        total += 6;
    }
    let rate = called as f64 / total as f64;
    assert!((0.02..0.08).contains(&rate), "false calls: {rate}");
    assert!(
        found as f64 / total as f64 > 0.95,
        "found {found} of {total}"
    );
}
