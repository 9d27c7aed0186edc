//! A report is a function of the run's files: the same run, copied to a directory with no
//! `tests/data` (where its `npy:` workload cannot be read) and reported there by the binary,
//! gives the same `report.md` and the same figures as reported where it was made; and every
//! committed run that carries its artefacts re-plots to its committed report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use attnbench::Registry;
use attnbench::harness::memory::CountingAlloc;
use attnbench::harness::sweep::{SweepConfig, run_sweep};
use attnbench::harness::timing::TimingConfig;
use attnbench::results::artefacts::{maps_dir, patterns_path};
use attnbench::workload::Workload;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-replot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` (relative path) with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

fn copy_run(csv: &Path, to: &Path) -> PathBuf {
    let name = csv.file_name().unwrap();
    std::fs::copy(csv, to.join(name)).unwrap();
    for extra in [csv.with_extension("json"), patterns_path(csv)] {
        if extra.exists() {
            std::fs::copy(&extra, to.join(extra.file_name().unwrap())).unwrap();
        }
    }
    let maps = maps_dir(csv);
    if maps.is_dir() {
        let dst = to.join(maps.file_name().unwrap());
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&maps).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    to.join(name)
}

fn report_in(cwd: &Path, csv: &str, out: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args(["report", csv, "--out", out])
        .current_dir(cwd)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_run_re_plots_identically_without_its_workload() {
    let here = temp_dir("here");
    let variants = Registry::builtin()
        .build_list("full,window(w=8),bigbird(block=8),linear(phi=elu1)")
        .unwrap();
    let cfg = SweepConfig {
        lengths: vec![32, 64],
        workload: Workload::Npy {
            dir: PathBuf::from("tests/data/qkv"),
        },
        timing: TimingConfig {
            warmup: 1,
            min_repeats: 1,
            min_time: std::time::Duration::ZERO,
            max_repeats: 1,
        },
        out_dir: here.clone(),
        label: "replot".into(),
        previews: Registry::builtin().previews(&variants),
        ..SweepConfig::default()
    };
    let run = run_sweep(&cfg, &variants, &mut |_| {}).unwrap();
    assert!(patterns_path(&run.csv).exists() && maps_dir(&run.csv).join("gallery.json").exists());
    let name = run.csv.file_name().unwrap().to_str().unwrap().to_string();
    // Reported from the crate root, where tests/data is readable...
    let (csv, out) = (here.join(&name), here.join("report"));
    report_in(Path::new("."), csv.to_str().unwrap(), out.to_str().unwrap());
    // ... and elsewhere, where it is not.
    let there = temp_dir("there");
    copy_run(&run.csv, &there);
    assert!(!there.join("tests/data").exists());
    report_in(&there, &name, "report");
    let (a, b) = (tree(&here.join("report")), tree(&there.join("report")));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "different files"
    );
    for (path, bytes) in &a {
        assert!(&b[path] == bytes, "{} differs", path.display());
    }
    let md = String::from_utf8(a[Path::new("report.md")].clone()).unwrap();
    assert!(
        md.contains("## Attention maps of the real activations"),
        "{md}"
    );
    assert!(a.contains_key(Path::new("maps/maps.csv")));
    std::fs::remove_dir_all(&here).unwrap();
    std::fs::remove_dir_all(&there).unwrap();
}

/// Reports the committed run `csv` in a temporary directory and checks that it gives the
/// committed `report`'s `report.md` and the same files.
fn re_plots_identically(report: &Path, stem: &str, csv: &Path) {
    let dir = temp_dir(stem);
    copy_run(csv, &dir);
    report_in(&dir, &format!("{stem}.csv"), "report");
    let committed = std::fs::read_to_string(report.join("report.md")).unwrap();
    let again = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(
        committed == again,
        "{stem}: report.md differs when re-plotted"
    );
    let names = |d: &Path| tree(d).into_keys().collect::<Vec<_>>();
    assert_eq!(names(report), names(&dir.join("report")), "{stem}: files");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn committed_runs_re_plot_to_their_committed_reports() {
    let mut checked = 0;
    for entry in std::fs::read_dir("reports").unwrap() {
        let report = entry.unwrap().path();
        let stem = report.file_name().unwrap().to_str().unwrap().to_string();
        let csv = Path::new("results").join(format!("{stem}.csv"));
        // Combined reports (several CSVs) are not re-made here; single-run reports are.
        if !csv.exists() || !patterns_path(&csv).exists() {
            continue;
        }
        re_plots_identically(&report, &stem, &csv);
        checked += 1;
    }
    assert!(checked >= 1, "no committed run with artefacts to re-plot");
}

#[test]
fn committed_perplexity_runs_re_plot_to_their_committed_reports() {
    let mut checked = 0;
    for entry in std::fs::read_dir("reports").unwrap() {
        let report = entry.unwrap().path();
        let stem = report.file_name().unwrap().to_str().unwrap().to_string();
        let csv = Path::new("results").join(format!("{stem}.csv"));
        if !csv.exists() || !attnbench::results::perplexity::is_perplexity_csv(&csv).unwrap() {
            continue;
        }
        re_plots_identically(&report, &stem, &csv);
        checked += 1;
    }
    assert!(checked >= 1, "no committed perplexity run to re-plot");
}
