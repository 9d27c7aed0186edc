//! The command line: listing, checking, and clear errors on bad input.

use std::process::Command;

fn attnbench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_shows_every_variant_with_defaults() {
    let (code, out, _) = attnbench(&["list"]);
    assert_eq!(code, 0);
    for name in attnbench::Registry::builtin().names() {
        assert!(out.contains(&name), "{name} missing from:\n{out}");
    }
    assert!(out.contains("flash(bq=64,bk=128)"), "{out}");
    assert!(out.contains("bk=128"), "{out}");
}

#[test]
fn check_passes_and_prints_a_table() {
    let (code, out, err) = attnbench(&["check", "--variants", "full,flash(bq=16,bk=32)"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("flash(bq=16,bk=32)"));
    assert!(out.contains("gqa h=8/h_kv=2 causal"));
    assert!(out.contains("80 of 80 checks passed"), "{out}");
    assert!(!out.contains("FAIL"));
}

#[test]
fn check_rejects_unknown_variants_and_bad_params() {
    let (code, _, err) = attnbench(&["check", "--variants", "full,flashy"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown variant 'flashy'") && err.contains("known variants"),
        "{err}"
    );
    let (code, _, err) = attnbench(&["check", "--variants", "flash(bq=0)"]);
    assert_eq!(code, 2);
    assert!(err.contains("bq") && err.contains("at least 1"), "{err}");
}

#[test]
fn bad_flags_give_a_usage_error() {
    let (code, _, err) = attnbench(&["check", "--frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage"), "{err}");
    let (code, _, err) = attnbench(&["check", "--seed", "minus-one"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value"), "{err}");
    let (code, _, _) = attnbench(&[]);
    assert_eq!(code, 2);
}

#[test]
fn run_sweeps_then_reports() {
    let dir = std::env::temp_dir().join(format!("attnbench-cli-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args([
            "run",
            "--quick",
            "--variants",
            "full,flash,window(w=64)",
            "--workload",
            "gaussian",
            "--heads",
            "2",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("run prints where the report is");
    let md = std::fs::read_to_string(dir.join(report)).unwrap();
    assert!(md.contains("## Scaling fits and crossovers"));
    assert!(dir.join(report).with_file_name("time_vs_n.png").exists());
    // `report` re-plots the same CSV into another directory.
    let csv = stdout
        .lines()
        .find_map(|l| l.strip_prefix("results: "))
        .unwrap();
    let (code, stdout, stderr) = attnbench(&[
        "report",
        &dir.join(csv).display().to_string(),
        "--out",
        &dir.join("again").display().to_string(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(dir.join("again/report.md").exists());
    let (code, _, stderr) = attnbench(&["report"]);
    assert_eq!(code, 2, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_defaults_to_the_bundled_llm_data_and_says_so_where_it_is_missing() {
    let dir = std::env::temp_dir().join(format!("attnbench-cli-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_attnbench"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Away from the repository the default inputs are missing: a clear error, no files.
    let (code, err) = run(&["run", "--quick"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("npy:tests/data/lm") && err.contains("--workload"),
        "{err}"
    );
    // Shape flags would be ignored on npy data: refused, naming the flag and the way out.
    for flag in ["--heads", "--head-dim", "--batch", "--kv-heads"] {
        let (code, err) = run(&["run", "--quick", flag, "2"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(flag) && err.contains("--workload gaussian"),
            "{err}"
        );
    }
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/qkv");
    let (code, err) = run(&[
        "sweep",
        "--workload",
        &format!("npy:{data}"),
        "--heads",
        "4",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--heads"), "{err}");
    assert!(!dir.join("results").exists() && !dir.join("reports").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn decode_generates_then_reports_and_refuses_bad_flags() {
    let dir = std::env::temp_dir().join(format!("attnbench-cli-decode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args([
            "decode",
            "--variants",
            "flash,window(w=32),linear(phi=elu1)",
            "--contexts",
            "64..256",
            "--tokens",
            "3",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--head-dim",
            "16",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per (variant, store, context): 3 x 2 x 3.
    assert_eq!(
        stdout.lines().filter(|l| l.contains(" stateful ")).count(),
        18,
        "{stdout}"
    );
    let report = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("decode prints where the report is");
    let md = std::fs::read_to_string(dir.join(report)).unwrap();
    assert!(md.contains("| `window(w=32)` f16 | stateful |"), "{md}");
    assert!(dir.join(report).with_file_name("decode_time.png").exists());
    for bad in [
        &["decode", "--kv", "f8"][..],
        &["decode", "--contexts", "0"],
        &["decode", "--tokens", "0"],
        &["decode", "--variants", "nosuch"],
        &["decode", "--threads", "0"],
    ] {
        let (code, _, stderr) = attnbench(bad);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(stderr.contains("error"), "{bad:?}: {stderr}");
    }
}
