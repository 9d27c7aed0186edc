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
        flops: time_ms.map(|_| 4.0 * (n * n * 64 * 8) as f64),
        gflops: time_ms.map(|t| 4.0 * (n * n * 64 * 8) as f64 / t / 1e6),
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
        density: Some(1.0),
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
    // Exact power laws: slopes 2 and 1 over the upper 3 lengths.
    assert!(
        md.contains("| `full` | exact | 2.00 (3 pts) | 2.00 (3 pts) | - |"),
        "{md}"
    );
    assert!(
        md.contains("| `window(w=256)` | exact | 1.00 (3 pts) | 0.00 (3 pts) |"),
        "{md}"
    );
    // window: 4x vs 10x^2 crosses at x = 0.4 (n ~ 410); vs 5x^2 at x = 0.8 (n ~ 819).
    assert!(md.contains("n ~ 410 | n ~ 819 |"), "{md}");
    assert!(
        md.contains("at n=4096, `window(w=256)` is 10x faster than `full` (16.00 vs 160 ms)"),
        "{md}"
    );
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
        md.contains("`window(w=256) [fixture]` is 10x faster than `full [fixture]`"),
        "{md}"
    );
    assert!(
        md.contains("`window(w=256) [other]` is 20x faster than `full [other]`"),
        "{md}"
    );
    assert!(
        md.contains("| `window(w=256) [other]` | 16.00"),
        "tables name the run; {md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_csv_names_the_line() {
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
    assert!(e.contains("bad.csv") && e.contains("line 3"), "{e}");
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
