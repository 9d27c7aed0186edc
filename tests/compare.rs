//! `attnbench compare`: verdicts from known round medians, the `--fail-on` gate and its exit
//! code, unmatched cells, and the refusal of runs from different machines.

use std::path::{Path, PathBuf};
use std::process::Command;

use attnbench::Fidelity;
use attnbench::report::compare::{CompareConfig, FailOn, TimeVerdict, compare, parse_rename};
use attnbench::results::record::{Record, Status};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-compare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A measured row whose rounds took `rounds` ms.
fn row(variant: &str, n: usize, rounds: &[f64], err: f64) -> Record {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(f64::total_cmp);
    Record {
        run_id: "r".into(),
        variant: variant.into(),
        name: variant.into(),
        fidelity: Fidelity::Exact,
        batch: 1,
        heads: 8,
        kv_heads: 8,
        n_q: n,
        n_kv: n,
        head_dim: 64,
        threads: 2,
        workload: "gaussian(scale=1)".into(),
        time_median_ms: Some(sorted[sorted.len() / 2]),
        rounds: Some(rounds.len()),
        round_medians_ms: rounds
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(";"),
        peak_bytes: Some(1 << 20),
        err_dense_rel: Some(err),
        err_own_rel: Some(err),
        status: Status::Ok,
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

/// A minimal run JSON of `host`.
fn write_meta(csv: &Path, host: &str) {
    let json = format!(
        r#"{{"run_id":"r","started_utc":"2026-12-04T00:00:00Z","duration_s":1.0,
        "machine":{{"cpu_model":"Test CPU","cores":2,"simd":[],"memory_bytes":null,"os":"linux",
        "rustc":"rustc 1.95.0","crate_version":"0.1.0","git_commit":"abc","host":"{host}"}},
        "command_line":[],"seed":0,"threads":2,"workload":"gaussian(scale=1)",
        "variants":["flash","full"],"lengths":[1024,2048],"gemm_gflops":[]}}"#
    );
    std::fs::write(csv.with_extension("json"), json).unwrap();
}

fn cfg(base: &Path, new: &Path) -> CompareConfig {
    CompareConfig {
        base: vec![base.to_path_buf()],
        new: vec![new.to_path_buf()],
        min_effect: 0.05,
        fail_on: vec![FailOn::Slower(0.05), FailOn::Error],
        allow_other_machine: false,
        rename: Vec::new(),
    }
}

#[test]
fn verdicts_follow_the_intervals_and_the_minimum_effect() {
    let dir = temp_dir("verdicts");
    let (base, new) = (dir.join("base.csv"), dir.join("new.csv"));
    let steady = [100.0, 101.0, 99.0];
    write_csv(
        &base,
        &[
            row("full", 1024, &steady, 2e-7),
            row("flash", 1024, &steady, 2e-7),
            row("flash", 2048, &[100.0, 100.2, 99.8], 2e-7),
            row("window", 1024, &steady, 0.3),
            row("sinks", 1024, &steady, 0.2),
        ],
    );
    write_csv(
        &new,
        &[
            // Same times: indistinguishable.
            row("full", 1024, &[100.5, 99.5, 100.0], 2e-7),
            // 40% slower, tight rounds: slower.
            row("flash", 1024, &[140.0, 141.0, 139.0], 2e-7),
            // 2% slower, resolved by the interval but under the 5% minimum effect.
            row("flash", 2048, &[102.0, 102.2, 101.8], 2e-7),
            // Twice as fast.
            row("window", 1024, &[50.0, 50.5, 49.5], 0.3),
            // Same time, error up from 0.2 to 0.3.
            row("sinks", 1024, &steady, 0.3),
        ],
    );
    let c = compare(&cfg(&base, &new)).unwrap();
    let verdict = |cell: &str| {
        c.cells
            .iter()
            .find(|x| x.cell.starts_with(cell))
            .unwrap_or_else(|| panic!("{cell} matched"))
            .verdict
    };
    assert_eq!(verdict("full n=1024"), TimeVerdict::Indistinguishable);
    assert_eq!(verdict("flash n=1024"), TimeVerdict::Slower);
    assert_eq!(verdict("flash n=2048"), TimeVerdict::Indistinguishable);
    assert_eq!(verdict("window n=1024"), TimeVerdict::Faster);
    let regressed: Vec<&str> = c
        .cells
        .iter()
        .filter(|x| x.error_regressed)
        .map(|x| x.cell.as_str())
        .collect();
    assert_eq!(regressed.len(), 1, "{regressed:?}");
    assert!(regressed[0].starts_with("sinks"));
    // The 40% cell's ratio and interval.
    let slow = c
        .cells
        .iter()
        .find(|x| x.cell.starts_with("flash n=1024"))
        .unwrap();
    let small = c
        .cells
        .iter()
        .find(|x| x.cell.starts_with("flash n=2048"))
        .unwrap();
    assert!(
        small.interval.unwrap().lo > 1.0,
        "the 2% change is resolved"
    );
    assert!((slow.ratio - 1.4).abs() < 0.01, "{}", slow.ratio);
    let ci = slow.interval.unwrap();
    assert!(ci.lo > 1.3 && ci.hi < 1.5, "{ci:?}");
    let failures = c.failures(&[FailOn::Slower(0.05), FailOn::Error]);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures[0].contains("flash n=1024") && !failures[0].contains("n=2048"));
    // A 50% threshold lets the 40% regression pass.
    assert_eq!(c.failures(&[FailOn::Slower(0.5)]).len(), 0);
    let md = c.markdown(0.05);
    assert!(
        md.contains("5 cells compared: 1 slower, 1 faster, 3 indistinguishable"),
        "{md}"
    );
}

#[test]
fn unmatched_cells_are_listed_and_can_fail() {
    let dir = temp_dir("missing");
    let (base, new) = (dir.join("base.csv"), dir.join("new.csv"));
    let t = [10.0, 10.1, 9.9];
    write_csv(
        &base,
        &[row("full", 1024, &t, 1e-7), row("flash", 1024, &t, 1e-7)],
    );
    let mut skipped = row("flash", 1024, &t, 1e-7);
    skipped.status = Status::Skipped;
    skipped.time_median_ms = None;
    write_csv(
        &new,
        &[
            row("full", 1024, &t, 1e-7),
            skipped,
            row("lsh", 1024, &t, 0.1),
        ],
    );
    let c = compare(&cfg(&base, &new)).unwrap();
    assert_eq!(c.cells.len(), 1);
    assert_eq!(c.missing.len(), 1);
    assert!(c.missing[0].starts_with("flash n=1024"));
    assert_eq!(c.added.len(), 1);
    assert!(c.failures(&[FailOn::Slower(0.0)]).is_empty());
    assert_eq!(c.failures(&[FailOn::Missing]).len(), 1);
    // Without metadata, the machines cannot be checked: said, not silently assumed.
    assert!(c.warnings.iter().any(|w| w.contains("no metadata")));
}

#[test]
fn one_round_gives_no_verdict() {
    let dir = temp_dir("one-round");
    let (base, new) = (dir.join("base.csv"), dir.join("new.csv"));
    write_csv(&base, &[row("full", 1024, &[10.0], 1e-7)]);
    write_csv(&new, &[row("full", 1024, &[30.0], 1e-7)]);
    let c = compare(&cfg(&base, &new)).unwrap();
    assert_eq!(c.cells[0].verdict, TimeVerdict::NoInterval);
    assert!((c.cells[0].ratio - 3.0).abs() < 1e-12);
    assert!(c.failures(&[FailOn::Slower(0.0)]).is_empty());
}

#[test]
fn runs_of_different_machines_are_refused_unless_allowed() {
    let dir = temp_dir("machines");
    let (base, new) = (dir.join("base.csv"), dir.join("new.csv"));
    let t = [10.0, 10.1, 9.9];
    write_csv(&base, &[row("full", 1024, &t, 1e-7)]);
    write_csv(&new, &[row("full", 1024, &t, 1e-7)]);
    write_meta(&base, "alpha");
    write_meta(&new, "beta");
    let err = compare(&cfg(&base, &new)).unwrap_err().to_string();
    assert!(
        err.contains("different machines") && err.contains("--allow-other-machine"),
        "{err}"
    );
    let mut allowed = cfg(&base, &new);
    allowed.allow_other_machine = true;
    let c = compare(&allowed).unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("different machines")));
    // The same machine: no refusal, and the commit is named.
    write_meta(&new, "alpha");
    let c = compare(&cfg(&base, &new)).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("both runs are of commit abc"))
    );
}

#[test]
fn the_cli_exits_1_on_a_regression_and_0_without() {
    let dir = temp_dir("cli");
    let (base, new) = (dir.join("base.csv"), dir.join("new.csv"));
    write_csv(&base, &[row("flash", 1024, &[100.0, 101.0, 99.0], 1e-7)]);
    write_csv(&new, &[row("flash", 1024, &[150.0, 151.0, 149.0], 1e-7)]);
    let bin = env!("CARGO_BIN_EXE_attnbench");
    let run = |args: &[&str]| {
        Command::new(bin)
            .arg("compare")
            .arg(&base)
            .arg(&new)
            .args(args)
            .output()
            .unwrap()
    };
    let gated = run(&["--fail-on", "slower>5%"]);
    assert_eq!(gated.status.code(), Some(1), "{gated:?}");
    let stderr = String::from_utf8_lossy(&gated.stderr);
    assert!(stderr.contains("slower by more than 5%"), "{stderr}");
    let stdout = String::from_utf8_lossy(&gated.stdout);
    assert!(stdout.contains("**slower**"), "{stdout}");
    // Without a gate, or with a looser one, the same comparison passes.
    assert_eq!(run(&[]).status.code(), Some(0));
    assert_eq!(run(&["--fail-on", "slower>60%"]).status.code(), Some(0));
    // A bad condition is a usage error.
    let bad = run(&["--fail-on", "quicker"]);
    assert_eq!(bad.status.code(), Some(2));
    // --out writes the markdown once, and never over an existing file.
    let out = dir.join("cmp.md");
    assert_eq!(
        run(&["--out", out.to_str().unwrap()]).status.code(),
        Some(0)
    );
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("# attnbench compare")
    );
    let again = run(&["--out", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn a_renamed_candidate_is_compared_as_the_base_cell() {
    let dir = temp_dir("rename");
    let (base, new) = (dir.join("base.csv"), dir.join("new.csv"));
    write_csv(
        &base,
        &[row("flash(bq=64,bk=128)", 1024, &[10.0, 10.1, 9.9], 1e-7)],
    );
    write_csv(
        &new,
        &[row("flash(bq=8,bk=8)", 1024, &[30.0, 30.3, 29.7], 1e-7)],
    );
    let c = compare(&cfg(&base, &new)).unwrap();
    assert!(c.cells.is_empty() && c.missing.len() == 1 && c.added.len() == 1);
    let mut renamed = cfg(&base, &new);
    renamed.rename = vec![parse_rename("flash(bq=8,bk=8)=flash(bq=64,bk=128)").unwrap()];
    let c = compare(&renamed).unwrap();
    assert_eq!(c.cells.len(), 1);
    assert_eq!(c.cells[0].verdict, TimeVerdict::Slower);
    assert!(c.warnings.iter().any(|w| w.contains("compared as")));
    // A name the new run lacks is an error, not a silent no-op.
    renamed.rename = vec![("lsh".into(), "flash".into())];
    assert!(
        compare(&renamed)
            .unwrap_err()
            .to_string()
            .contains("no variant 'lsh'")
    );
    for bad in ["flash", "=flash", "flash(bq=8)=", "(a=b)"] {
        assert!(parse_rename(bad).is_err(), "{bad}");
    }
}

#[test]
fn fail_on_conditions_parse() {
    assert_eq!("slower".parse::<FailOn>(), Ok(FailOn::Slower(0.0)));
    assert_eq!("slower>5%".parse::<FailOn>(), Ok(FailOn::Slower(0.05)));
    assert_eq!(" memory>10% ".parse::<FailOn>(), Ok(FailOn::Memory(0.1)));
    assert_eq!("error".parse::<FailOn>(), Ok(FailOn::Error));
    assert_eq!("missing".parse::<FailOn>(), Ok(FailOn::Missing));
    for bad in [
        "slower>5",
        "slower>-1%",
        "slower>nan%",
        "faster",
        "memory",
        "",
    ] {
        assert!(bad.parse::<FailOn>().is_err(), "{bad}");
    }
}
