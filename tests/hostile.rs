//! Bad and extreme input, as a careless user or a hostile file would supply it: every case
//! ends in a clear one-line error (or a documented skip) with a non-zero exit, never a
//! panic, an abort, a hang or a silently wrong result. One test per class of the
//! reliability audit; each runs the binary under a deadline and a virtual-memory limit, so
//! a regression shows as a failure here rather than as a machine out of memory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_attnbench");

/// How a run of the binary ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ended {
    /// A clear error: exit `code`, no panic, and the last line of stderr starts with
    /// `error:` and contains `needle`.
    #[track_caller]
    fn error(&self, code: i32, needle: &str) {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert!(!self.stderr.contains("panicked"), "{self:?}");
        let last = self.stderr.lines().rfind(|l| !l.trim().is_empty());
        let last = last.unwrap_or_default();
        assert!(
            self.stderr
                .lines()
                .any(|l| l.starts_with("error:") && l.contains(needle)),
            "expected an error line containing {needle:?}; last line {last:?}; {self:?}"
        );
    }
}

/// Runs the binary in `dir` with `args`, under `ulimit -v` (8 GiB) and a deadline.
fn run_in(dir: &Path, args: &[&str], deadline: Duration) -> Ended {
    run_with(dir, args, deadline, "")
}

fn run_with(dir: &Path, args: &[&str], deadline: Duration, limits: &str) -> Ended {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v 8388608; {limits} exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary starts");
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("waitable") {
            break;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("killed");
            panic!(
                "hang: {args:?} still running after {deadline:?}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("ended");
    Ended {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const SHORT: Duration = Duration::from_secs(60);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// A small committed results CSV, rewritten with `edit` applied to each row's fields.
fn edited_csv(
    dir: &Path,
    name: &str,
    edit: impl Fn(usize, &mut Vec<String>, &csv::StringRecord),
) -> String {
    let src = repo("results/20261202T011523Z-minilm.csv");
    let mut reader = csv::Reader::from_path(&src).unwrap();
    let headers = reader.headers().unwrap().clone();
    let path = dir.join(name);
    let mut writer = csv::Writer::from_path(&path).unwrap();
    writer.write_record(&headers).unwrap();
    for (i, row) in reader.records().take(4).enumerate() {
        let mut fields: Vec<String> = row.unwrap().iter().map(str::to_string).collect();
        edit(i, &mut fields, &headers);
        writer.write_record(&fields).unwrap();
    }
    writer.flush().unwrap();
    path.display().to_string()
}

fn set(fields: &mut [String], headers: &csv::StringRecord, column: &str, value: &str) {
    let at = headers
        .iter()
        .position(|h| h == column)
        .expect("column exists");
    fields[at] = value.to_string();
}

const TINY: [&str; 8] = [
    "--lengths",
    "16",
    "--heads",
    "1",
    "--head-dim",
    "8",
    "--quick",
    "--variants",
];

#[test]
fn report_never_computes_from_a_rows_spec() {
    // 1. A row naming a real npy directory and a 25 GB feature map: the report draws from
    // the rows alone.
    let dir = temp_dir("report-spec");
    let csv = edited_csv(&dir, "spec.csv", |_, f, h| {
        set(f, h, "workload", &format!("npy:{}", repo("tests/data/qkv")));
        set(f, h, "variant", "linear(phi=favor,m=100000000)");
    });
    let e = run_in(&dir, &["report", &csv, "--out", "rep"], SHORT);
    assert_eq!(e.code, Some(0), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn thread_counts_are_bounded() {
    // 2. Unbounded --threads started OS threads until the machine gave out.
    let dir = temp_dir("threads");
    for threads in ["18446744073709551615", "1000", "0"] {
        let mut args = vec!["sweep", "--threads", threads, "--out", "o"];
        args.extend(TINY);
        args.push("full");
        let e = run_in(&dir, &args, SHORT);
        e.error(2, "threads");
        let mut args = vec!["decode", "--threads", threads, "--quick", "--out", "o"];
        args.extend(["--variants", "flash"]);
        run_in(&dir, &args, SHORT).error(2, "threads");
    }
    assert!(!dir.join("o").exists(), "no run files for a refused run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn maps_have_a_memory_budget_and_refuse_repeats() {
    // 3. and 16.
    let dir = temp_dir("maps");
    run_in(
        &dir,
        &[
            "maps",
            "--workload",
            "gaussian",
            "--n",
            "100000",
            "--out",
            "m",
        ],
        SHORT,
    )
    .error(2, "over the budget");
    let qkv = format!("npy:{}", repo("tests/data/qkv"));
    run_in(
        &dir,
        &[
            "maps",
            "--workload",
            &qkv,
            "--n",
            "16",
            "--variants",
            "linear(phi=favor,m=100000000)",
            "--out",
            "m",
        ],
        SHORT,
    )
    .error(2, "over the budget");
    run_in(
        &dir,
        &[
            "maps",
            "--workload",
            &qkv,
            "--n",
            "16",
            "--heads",
            "0,0",
            "--out",
            "m",
        ],
        SHORT,
    )
    .error(2, "head 0 is listed twice");
    run_in(
        &dir,
        &[
            "maps",
            "--workload",
            &qkv,
            "--n",
            "16",
            "--variants",
            "full",
            "--out",
            "m",
        ],
        SHORT,
    )
    .error(2, "always drawn");
    run_in(
        &dir,
        &[
            "maps",
            "--workload",
            &qkv,
            "--n",
            "16",
            "--variants",
            "window(w=4),window(w=4)",
            "--out",
            "m",
        ],
        SHORT,
    )
    .error(2, "listed twice");
    assert!(!dir.join("m").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_has_a_budget_and_counts_what_ran() {
    // 4. and 12.
    let dir = temp_dir("check");
    let e = run_in(
        &dir,
        &["check", "--variants", "linear(phi=favor,m=100000000)"],
        SHORT,
    );
    e.error(1, "ran on none of the 40 cases");
    assert!(e.stdout.contains("over --max-memory"), "{e:?}");
    let e = run_in(
        &dir,
        &["check", "--variants", "longformer(g=1099511627776)"],
        SHORT,
    );
    e.error(1, "ran on none");
    assert!(
        e.stdout.contains("0 of 0 checks passed, 40 of 40 skipped"),
        "{e:?}"
    );
    // A variant that runs on some cases: the summary counts only those.
    let e = run_in(&dir, &["check", "--variants", "window(w=256)"], SHORT);
    assert_eq!(e.code, Some(0), "{e:?}");
    assert!(
        e.stdout.contains("40 of 40 checks passed, 0 of 40 skipped"),
        "{e:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layer_weights_are_in_the_budget() {
    // 5.
    let dir = temp_dir("layer");
    let e = run_in(
        &dir,
        &[
            "sweep",
            "--layer",
            "--d-model",
            "65536",
            "--max-memory",
            "1G",
            "--variants",
            "full",
            "--lengths",
            "16",
            "--quick",
            "--out",
            "o",
        ],
        SHORT,
    );
    e.error(2, "over --max-memory");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_disk_leaves_whole_rows_and_readable_metadata() {
    // 6. `ulimit -f 4` (2 KiB): the CSV fills up after a few rows.
    let dir = temp_dir("disk");
    let args = [
        "sweep",
        "--variants",
        "full,flash",
        "--lengths",
        "64..2048",
        "--heads",
        "1",
        "--head-dim",
        "8",
        "--quick",
        "--out",
        "o",
    ];
    let e = run_with(&dir, &args, SHORT, "ulimit -f 4;");
    e.error(2, "File too large");
    let csv = std::fs::read_dir(dir.join("o"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "csv"))
        .expect("the CSV exists");
    let json = csv.with_extension("json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("whole JSON");
    // The failure is recorded when the metadata still fits; else the start's stays.
    match meta["state"].as_str() {
        Some("failed") => assert!(
            meta["notes"][0]
                .as_str()
                .unwrap()
                .contains("File too large"),
            "{meta}"
        ),
        state => assert_eq!(state, Some("running"), "{meta}"),
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.ends_with('\n') && text.lines().count() >= 2, "{text}");
    let e = run_in(
        &dir,
        &["report", csv.to_str().unwrap(), "--out", "rep"],
        SHORT,
    );
    assert_eq!(e.code, Some(0), "{e:?}");
    let md = std::fs::read_to_string(dir.join("rep/report.md")).unwrap();
    assert!(md.contains("**incomplete run**"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_of_range_flags_are_errors() {
    // 7. and 9.
    let dir = temp_dir("flags");
    let mut args = vec!["sweep", "--min-time", "1e20", "--out", "o"];
    args.extend(TINY);
    args.push("full");
    run_in(&dir, &args, SHORT).error(2, "--min-time");
    let mut args = vec!["sweep", "--workload", "gaussian(scale=-1)", "--out", "o"];
    args.extend(TINY);
    args.push("full");
    run_in(&dir, &args, SHORT).error(2, "scale must be a positive number");
    assert!(!dir.join("o").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_refuses_values_outside_their_physical_range() {
    // 8. and 13.
    let dir = temp_dir("ranges");
    for (column, value, needle) in [
        ("time_median_ms", "1e307", "time_median_ms is 1e307"),
        ("time_median_ms", "NaN", "time_median_ms is NaN"),
        ("time_median_ms", "-1", "time_median_ms is -1"),
        ("time_median_ms", "0", "time_median_ms is 0"),
        ("time_median_ms", "inf", "time_median_ms is inf"),
        ("err_dense_rel", "1e308", "err_dense_rel is 1e308"),
        ("n_kv", "0", "n_kv is 0"),
        ("density", "2", "density is 2"),
        ("round_medians_ms", "1;x;2", "not a number"),
    ] {
        let csv = edited_csv(&dir, "bad.csv", |i, f, h| {
            if i == 1 {
                set(f, h, column, value);
            }
        });
        let e = run_in(&dir, &["report", &csv, "--out", "rep"], SHORT);
        e.error(2, needle);
        assert!(e.stderr.contains("row 2"), "{e:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts a sweep of several lengths, waits for its first rows, and sends `signal`.
fn interrupted_run(dir: &Path, signal: &str) -> PathBuf {
    let mut child = Command::new(BIN)
        .args([
            "sweep",
            "--variants",
            "full,flash",
            "--lengths",
            "64..1024",
            "--heads",
            "1",
            "--head-dim",
            "16",
            "--rounds",
            "3",
            "--min-time",
            "4",
            "--out",
            "o",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let csv = loop {
        let found = std::fs::read_dir(dir.join("o")).ok().and_then(|d| {
            d.map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "csv"))
        });
        if let Some(csv) = found
            && std::fs::read_to_string(&csv).unwrap().lines().count() >= 3
        {
            break csv;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no rows appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let ended = child.wait().unwrap();
    assert!(!ended.success(), "the run was cut short");
    csv
}

#[test]
fn an_interrupted_run_is_marked_incomplete() {
    // 9. SIGINT and SIGKILL mid-sweep.
    for signal in ["-INT", "-KILL"] {
        let dir = temp_dir(&format!("kill{signal}"));
        let csv = interrupted_run(&dir, signal);
        let json = csv.with_extension("json");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(meta["state"], "running", "{meta}");
        let e = run_in(
            &dir,
            &["report", csv.to_str().unwrap(), "--out", "rep"],
            SHORT,
        );
        assert_eq!(e.code, Some(0), "{e:?}");
        let md = std::fs::read_to_string(dir.join("rep/report.md")).unwrap();
        assert!(md.contains("**incomplete run**"), "{md}");
        assert!(md.contains("planned cells have no row: "), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn maps_name_each_batch_entry_of_a_4d_file() {
    // 10. Two entries in one file, one in another: a[0], a[1], b.
    let dir = temp_dir("4d");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (prefix, batch) in [("a", 2), ("b", 1)] {
        for role in ["q", "k", "v"] {
            let values: Vec<f32> = (0..batch * 2 * 16 * 8)
                .map(|i| ((i * 37 + batch) % 11) as f32 / 11.0 - 0.5)
                .collect();
            let bytes = attnbench::npy::encode_f32(&[batch, 2, 16, 8], &values);
            std::fs::write(data.join(format!("{prefix}_{role}.npy")), bytes).unwrap();
        }
    }
    let e = run_in(
        &dir,
        &[
            "maps",
            "--workload",
            "npy:data",
            "--variants",
            "window(w=4)",
            "--out",
            "m",
        ],
        SHORT,
    );
    assert_eq!(e.code, Some(0), "{e:?}");
    let csv = std::fs::read_to_string(dir.join("m/maps.csv")).unwrap();
    let sequences: std::collections::BTreeSet<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(
        sequences.into_iter().collect::<Vec<_>>(),
        ["a[0]", "a[1]", "b"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inputs_whose_scores_overflow_are_refused() {
    // 11.
    let dir = temp_dir("overflow");
    let mut args = vec!["sweep", "--workload", "gaussian(scale=1e20)", "--out", "o"];
    args.extend(TINY);
    args.push("full");
    run_in(&dir, &args, SHORT).error(2, "out of range");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_regular_npy_files_are_read() {
    // 14. and 18.
    let dir = temp_dir("npyfiles");
    let copy_kv = |d: &Path| {
        for role in ["k", "v"] {
            std::fs::copy(
                repo(&format!("tests/data/qkv/minilm-l6_arch_L2_{role}.npy")),
                d.join(format!("x_{role}.npy")),
            )
            .unwrap();
        }
    };
    let fifo = dir.join("fifo");
    std::fs::create_dir_all(&fifo).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(fifo.join("x_q.npy"))
            .status()
            .unwrap()
            .success()
    );
    copy_kv(&fifo);
    let zero = dir.join("zero");
    std::fs::create_dir_all(&zero).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero.join("x_q.npy")).unwrap();
    copy_kv(&zero);
    let dangling = dir.join("dangling");
    std::fs::create_dir_all(&dangling).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), dangling.join("x_q.npy")).unwrap();
    copy_kv(&dangling);
    for (d, needle) in [
        ("fifo", "not a regular file"),
        ("zero", "not a regular file"),
        ("dangling", "which does not exist"),
    ] {
        let workload = format!("npy:{d}");
        run_in(
            &dir,
            &[
                "sweep",
                "--variants",
                "full",
                "--quick",
                "--workload",
                &workload,
                "--out",
                "o",
            ],
            SHORT,
        )
        .error(2, needle);
        run_in(
            &dir,
            &["maps", "--workload", &workload, "--out", "m"],
            SHORT,
        )
        .error(2, needle);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_text_is_escaped() {
    // 17. A variant string with a table bar, HTML and a newline.
    let dir = temp_dir("escape");
    let csv = edited_csv(&dir, "text.csv", |i, f, h| {
        if i == 0 {
            set(f, h, "variant", "a|b<script>x\ny`");
            set(f, h, "note", "one | two\nthree");
        }
    });
    let e = run_in(&dir, &["report", &csv, "--out", "rep"], SHORT);
    assert_eq!(e.code, Some(0), "{e:?}");
    let md = std::fs::read_to_string(dir.join("rep/report.md")).unwrap();
    assert!(!md.contains("<script>"), "{md}");
    assert!(!md.contains("a|b"), "{md}");
    assert!(md.contains("a\\|b&lt;script&gt;x y'"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn messages_are_clear_and_short() {
    // 18.
    let dir = temp_dir("messages");
    std::fs::create_dir_all(dir.join("adir")).unwrap();
    run_in(&dir, &["report", "adir"], SHORT).error(2, "a directory");
    let long = format!("window(w={})", "9".repeat(100_000));
    let e = run_in(
        &dir,
        &["sweep", "--variants", &long, "--quick", "--out", "o"],
        SHORT,
    );
    e.error(2, "more characters)");
    assert!(e.stderr.len() < 1000, "{}", e.stderr.len());
    let e = run_in(
        &dir,
        &[
            "sweep",
            "--variants",
            "full\u{1b}[31m",
            "--quick",
            "--out",
            "o",
        ],
        SHORT,
    );
    e.error(2, "\\u{1b}");
    assert!(!e.stderr.contains('\u{1b}'), "{e:?}");
    let mut f = std::fs::File::create(dir.join("empty.csv")).unwrap();
    f.write_all(b"").unwrap();
    run_in(&dir, &["report", "empty.csv"], SHORT).error(2, "empty.csv");
    std::fs::remove_dir_all(&dir).unwrap();
}
