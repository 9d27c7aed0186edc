//! The sweep harness: schema and metadata of what it writes, no clobbering, guard rails,
//! error rows, npy workloads (good and malformed), and the CLI end to end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use attnbench::harness::memory::CountingAlloc;
use attnbench::harness::sweep::{SweepConfig, SweepOutput, run_sweep};
use attnbench::harness::timing::TimingConfig;
use attnbench::npy::encode_f32;
use attnbench::results::record::{Record, RunMeta, Status};
use attnbench::workload::{Workload, load_npy_dir};
use attnbench::{Attention, Call, Cost, Fidelity, Options, Out, Registry, Shape};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small_config(out: &Path) -> SweepConfig {
    SweepConfig {
        lengths: vec![64, 128],
        heads: 2,
        kv_heads: 2,
        head_dim: 16,
        threads: 2,
        timing: TimingConfig {
            warmup: 1,
            min_repeats: 1,
            min_time: Duration::ZERO,
            max_repeats: 1,
        },
        rounds: 3,
        out_dir: out.to_path_buf(),
        label: "test".into(),
        ..SweepConfig::default()
    }
}

fn sweep(cfg: &SweepConfig, specs: &str) -> SweepOutput {
    let variants = Registry::builtin().build_list(specs).unwrap();
    run_sweep(cfg, &variants, &mut |_| {}).unwrap()
}

fn read_csv(path: &Path) -> Vec<Record> {
    csv::Reader::from_path(path)
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn writes_the_documented_schema_and_metadata() {
    let dir = temp_dir("schema");
    let out = sweep(
        &small_config(&dir),
        "full,flash,window(w=16),linear(phi=elu1)",
    );
    let header = std::fs::read_to_string(&out.csv).unwrap();
    let header = header.lines().next().unwrap();
    assert_eq!(
        header,
        "run_id,variant,name,fidelity,batch,heads,kv_heads,n_q,n_kv,head_dim,causal,threads,\
         workload,time_median_ms,time_min_ms,time_max_ms,repeats,rounds,round_medians_ms,\
         time_ci_lo_ms,time_ci_hi_ms,page_faults,useful_flops,executed_flops,useful_gflops,\
         executed_gflops,gemm_gflops,pct_of_gemm,pct_of_peak,peak_bytes,workspace_bytes,density,\
         err_dense_rel,err_dense_rel_sd,err_seeds,err_by_input,err_dense_max_abs,err_dense_cosine,err_own_rel,\
         err_own_max_abs,tolerance,err_f32_plain,dropped_mass,oracle_rows,modifiers,\
         pct_of_bandwidth,d_model,layer_ms,proj_ms,core_ms,status,note"
    );
    let rows = read_csv(&out.csv);
    assert_eq!(rows, out.records);
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(r.time_median_ms.unwrap() > 0.0);
        assert!(r.executed_gflops.unwrap() > 0.0 && r.gemm_gflops.unwrap() > 0.0);
        // Three rounds, each with its median, and an interval around them.
        assert_eq!(r.rounds, Some(3));
        let rounds: Vec<f64> = r
            .round_medians_ms
            .split(';')
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(rounds.len(), 3, "{r:?}");
        let (lo, hi) = (r.time_ci_lo_ms.unwrap(), r.time_ci_hi_ms.unwrap());
        let geo = rounds.iter().map(|t: &f64| t.ln()).sum::<f64>() / 3.0;
        assert!(lo <= geo.exp() && geo.exp() <= hi, "{r:?}");
        assert!(r.page_faults.is_some());
        assert_eq!(r.useful_flops.is_some(), r.fidelity == Fidelity::Exact);
        assert_eq!(r.oracle_rows, Some(r.n_q));
        assert_eq!(r.threads, 2);
        if r.fidelity == Fidelity::Exact {
            assert!(r.err_own_rel.unwrap() < 1e-5, "{r:?}");
            // The tolerance is twice a plain f32 implementation's error plus the floor.
            let plain = r.err_f32_plain.unwrap();
            assert!(plain > 0.0 && plain < 1e-5, "{r:?}");
            assert_eq!(r.tolerance, Some(2.0 * plain + 1e-6));
        } else {
            assert_eq!(r.err_own_rel, None);
        }
    }
    // Full materializes an n x n score matrix per busy thread.
    let full = rows
        .iter()
        .find(|r| r.name == "full" && r.n_q == 128)
        .unwrap();
    assert!(full.peak_bytes.unwrap() >= 128 * 128 * 4, "{full:?}");
    // The window covers everything at n = 64 only partly: it drops mass at n = 128.
    let w = rows
        .iter()
        .find(|r| r.name == "window" && r.n_q == 128)
        .unwrap();
    assert!(w.dropped_mass.unwrap() > 0.0 && w.density.unwrap() < 1.0);

    let meta: RunMeta = serde_json::from_str(&std::fs::read_to_string(&out.json).unwrap()).unwrap();
    assert_eq!(meta, out.meta);
    assert_eq!(meta.lengths, vec![64, 128]);
    assert_eq!(meta.variants.len(), 4);
    assert!(meta.machine.cores >= 1 && !meta.machine.rustc.is_empty());
    assert_eq!(meta.gemm_gflops.len(), 2);
    // The drift probe ran at the start of each round of each length.
    assert_eq!(meta.probes.len(), 2);
    assert!(
        meta.probes
            .iter()
            .all(|p| p.gflops.len() == 3 && p.gflops[0] > 0.0)
    );
    let settings = meta.settings.as_ref().expect("settings recorded");
    assert_eq!(
        (settings.rounds, settings.heads, settings.error_seeds),
        (3, 2, 5)
    );
    assert!(
        meta.machine
            .build
            .as_ref()
            .is_some_and(|b| !b.profile.is_empty())
    );
    let limits = meta.limits.as_ref().expect("limits measured");
    assert!(limits.fma_gflops_one_core > 0.0 && limits.read_gbytes_per_s > 0.0);
    assert!(rows.iter().all(|r| r.pct_of_peak.unwrap() > 0.0));
    assert!(
        out.csv
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-test")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_in_the_same_second_get_distinct_files() {
    let dir = temp_dir("clobber");
    let mut cfg = small_config(&dir);
    cfg.lengths = vec![16];
    let a = sweep(&cfg, "flash");
    let first = std::fs::read_to_string(&a.csv).unwrap();
    let b = sweep(&cfg, "full");
    assert_ne!(a.csv, b.csv);
    assert_ne!(a.json, b.json);
    assert_eq!(
        std::fs::read_to_string(&a.csv).unwrap(),
        first,
        "the first run is untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guard_rails_record_skipped_cells() {
    let dir = temp_dir("guards");
    let mut cfg = small_config(&dir);
    cfg.max_memory = 1000;
    let out = sweep(&cfg, "full,flash");
    assert!(
        out.records
            .iter()
            .all(|r| r.status == Status::Skipped && r.note.contains("--max-memory"))
    );

    let mut cfg = small_config(&dir);
    cfg.max_seconds = 1e-9;
    let out = sweep(&cfg, "full,linear(phi=elu1)");
    for r in &out.records {
        if r.n_q == 64 {
            assert_eq!(r.status, Status::Ok);
        } else {
            assert_eq!(r.status, Status::Skipped);
            assert!(r.note.contains("--max-seconds"), "{}", r.note);
        }
    }

    // The same guard in a decoding sweep, where lengths are key lengths and n_q is 1.
    let mut cfg = small_config(&dir);
    cfg.max_seconds = 1e-9;
    cfg.n_q = Some(1);
    let out = sweep(&cfg, "flash");
    assert_eq!(out.records[0].status, Status::Ok, "{}", out.records[0].note);
    assert_eq!(out.records[1].status, Status::Skipped);
    assert!(out.records[1].note.contains("--max-seconds"));

    // More global tokens than the shortest length: skipped with the reason, then measured.
    let mut cfg = small_config(&dir);
    cfg.lengths = vec![8, 64];
    let out = sweep(&cfg, "longformer(w=4,g=16)");
    assert_eq!(out.records[0].status, Status::Skipped);
    assert!(out.records[0].note.contains("g=16"));
    assert_eq!(out.records[1].status, Status::Ok);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Fails on long inputs, panics on short ones.
#[derive(Debug)]
struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("broken")
    }
}

impl Attention for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }
    fn cost(&self, _: &Shape, _: &Options, _threads: usize) -> Cost {
        Cost::default()
    }
    fn forward(&self, p: &Call<'_>, _: Out<'_>) -> attnbench::Result<()> {
        if p.shape().n_q() < 100 {
            panic!("deliberate panic");
        }
        Err(attnbench::Error::bad_spec("broken", "deliberate failure"))
    }
}

/// Panics while reporting its cost, before any kernel runs.
#[derive(Debug)]
struct BadCost;

impl std::fmt::Display for BadCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("badcost")
    }
}

impl Attention for BadCost {
    fn name(&self) -> &'static str {
        "badcost"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Approximate
    }
    fn cost(&self, _: &Shape, _: &Options, _threads: usize) -> Cost {
        panic!("no cost model")
    }
    fn forward(&self, _: &Call<'_>, _: Out<'_>) -> attnbench::Result<()> {
        Ok(())
    }
}

#[test]
fn a_panic_outside_forward_is_an_error_row_too() {
    let dir = temp_dir("badcost");
    let variants: Vec<Box<dyn Attention>> = vec![
        Box::new(BadCost),
        Registry::builtin().build("flash").unwrap(),
    ];
    let out = run_sweep(&small_config(&dir), &variants, &mut |_| {}).unwrap();
    assert!(
        out.records
            .iter()
            .filter(|r| r.name == "badcost")
            .all(|r| r.status == Status::Error && r.note.contains("no cost model"))
    );
    assert!(
        out.records
            .iter()
            .filter(|r| r.name == "flash")
            .all(|r| r.status == Status::Ok)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inputs_over_the_memory_budget_are_skipped_before_allocation() {
    let dir = temp_dir("hugeinputs");
    let mut cfg = small_config(&dir);
    cfg.lengths = vec![64, 1 << 40];
    cfg.max_memory = 1 << 30;
    let out = sweep(&cfg, "flash");
    assert_eq!(out.records[0].status, Status::Ok);
    assert_eq!(out.records[1].status, Status::Skipped);
    assert!(
        out.records[1].note.contains("inputs and oracle rows alone"),
        "{}",
        out.records[1].note
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failing_variants_become_error_rows_and_the_sweep_goes_on() {
    let dir = temp_dir("errors");
    let cfg = small_config(&dir);
    let variants: Vec<Box<dyn Attention>> = vec![
        Box::new(Broken),
        Registry::builtin().build("flash").unwrap(),
    ];
    let out = run_sweep(&cfg, &variants, &mut |_| {}).unwrap();
    let broken: Vec<&Record> = out.records.iter().filter(|r| r.name == "broken").collect();
    assert_eq!(broken.len(), 2);
    assert!(broken.iter().all(|r| r.status == Status::Error));
    assert!(
        broken[0].note.contains("deliberate panic"),
        "{}",
        broken[0].note
    );
    assert!(
        broken[1].note.contains("deliberate failure"),
        "{}",
        broken[1].note
    );
    assert!(
        out.records
            .iter()
            .filter(|r| r.name == "flash")
            .all(|r| r.status == Status::Ok)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn write_npy(dir: &Path, name: &str, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    std::fs::write(dir.join(name), encode_f32(shape, &data)).unwrap();
}

#[test]
fn npy_workloads_load_and_run() {
    let dir = temp_dir("npy-good");
    for p in ["a", "b"] {
        for r in ["q", "k", "v"] {
            write_npy(&dir, &format!("{p}_{r}.npy"), &[3, 40, 8]);
        }
    }
    let data = load_npy_dir(&dir).unwrap();
    assert_eq!(data.qkv.q.shape(), &[2, 3, 40, 8]);
    assert_eq!(data.prefixes, vec!["a", "b"]);
    assert_eq!(data.prefix(10).k.shape(), &[2, 3, 10, 8]);

    let out_dir = temp_dir("npy-out");
    let mut cfg = small_config(&out_dir);
    cfg.workload = Workload::Npy { dir: dir.clone() };
    cfg.lengths = vec![16, 40];
    let out = sweep(&cfg, "flash,window(w=4)");
    assert!(
        out.records
            .iter()
            .all(|r| r.status == Status::Ok && r.heads == 3 && r.batch == 2)
    );
    assert!(out.records[0].workload.starts_with("npy:"));
    cfg.lengths = vec![41];
    let variants = Registry::builtin().build_list("flash").unwrap();
    let e = run_sweep(&cfg, &variants, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds the 40 positions"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&out_dir).unwrap();
}

#[test]
fn the_bundled_real_activations_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qkv");
    let data = load_npy_dir(&dir).unwrap();
    assert_eq!(data.qkv.q.shape(), &[2, 12, 512, 32]);
}

#[test]
fn the_bundled_llm_layer_loads_as_causal_rotated_gqa() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lm");
    let data = load_npy_dir(&dir).unwrap();
    assert_eq!(data.qkv.q.shape(), &[1, 9, 8192, 64]);
    assert_eq!(data.qkv.k.shape(), &[1, 3, 8192, 64]);
    assert_eq!(data.qkv.v.shape(), &[1, 3, 8192, 64]);
    assert_eq!(data.inputs, vec!["smollm2_licenses_L15".to_string()]);
    assert_eq!(
        (data.meta.causal, data.meta.rope_applied),
        (Some(true), true)
    );
}

#[test]
fn several_inputs_get_an_error_each_equal_to_sweeping_them_alone() {
    // The two bundled MiniLM triples: a batch of 2 with a per-input error ...
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qkv");
    let out_dir = temp_dir("by-input");
    let mut cfg = small_config(&out_dir);
    cfg.workload = Workload::Npy { dir: src.clone() };
    cfg.lengths = vec![128];
    cfg.rounds = 1;
    let specs = "full,window(w=16),linear(phi=elu1)";
    let both = sweep(&cfg, specs);
    // ... each equal to the error of a sweep of that triple alone.
    let mut alone = Vec::new();
    for prefix in ["minilm-l6_arch_L2", "minilm-l6_story_L5"] {
        let dir = temp_dir(&format!("by-input-{prefix}"));
        for role in ["q", "k", "v"] {
            let name = format!("{prefix}_{role}.npy");
            std::fs::copy(src.join(&name), dir.join(&name)).unwrap();
        }
        cfg.workload = Workload::Npy { dir: dir.clone() };
        alone.push(sweep(&cfg, specs).records);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    for (i, r) in both.records.iter().enumerate() {
        let pairs: Vec<(&str, f64)> = r
            .err_by_input
            .split(';')
            .map(|p| {
                let (name, e) = p.rsplit_once('=').unwrap();
                (name, e.parse().unwrap())
            })
            .collect();
        let names: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        assert_eq!(names, ["minilm-l6_arch_L2", "minilm-l6_story_L5"], "{r:?}");
        for ((_, e), one) in pairs.iter().zip(&alone) {
            let want = one[i].err_dense_rel.unwrap();
            assert!(
                (e - want).abs() <= 1e-6 * want,
                "{} {e} vs {want}",
                r.variant
            );
            assert!(
                one[i].err_by_input.is_empty(),
                "a single input has no breakdown"
            );
        }
        // The pooled error is a weighted mean of the two, so between them.
        let (lo, hi) = (pairs[0].1.min(pairs[1].1), pairs[0].1.max(pairs[1].1));
        let pooled = r.err_dense_rel.unwrap();
        assert!(
            lo * (1.0 - 1e-9) <= pooled && pooled <= hi * (1.0 + 1e-9),
            "{r:?}"
        );
    }
    // The report tables them by input, with the names' common part dropped.
    let report_dir = out_dir.join("report");
    attnbench::report::write_report(std::slice::from_ref(&both.csv), Some(&report_dir)).unwrap();
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("## Error by input"), "{md}");
    assert!(md.contains("| variant | arch_L2 | story_L5 |"), "{md}");
    assert!(md.contains("| `window(w=16)` | "), "{md}");
    std::fs::remove_dir_all(&out_dir).unwrap();
}

/// Writes a directory's worth of (bad) files.
type MakeFiles = fn(&Path);

#[test]
fn malformed_npy_files_name_the_file_and_the_problem() {
    let cases: [(&str, MakeFiles); 5] = [
        ("wrong dtype", |d| {
            write_npy(d, "x_q.npy", &[2, 8, 4]);
            write_npy(d, "x_v.npy", &[2, 8, 4]);
            let mut bytes = std::fs::read(d.join("x_q.npy")).unwrap();
            let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
            bytes[at..at + 3].copy_from_slice(b"<i4");
            std::fs::write(d.join("x_k.npy"), bytes).unwrap();
        }),
        ("wrong rank", |d| {
            write_npy(d, "x_q.npy", &[2, 8, 4]);
            write_npy(d, "x_k.npy", &[8, 4]);
            write_npy(d, "x_v.npy", &[2, 8, 4]);
        }),
        ("mismatched shapes", |d| {
            write_npy(d, "x_q.npy", &[2, 8, 4]);
            write_npy(d, "x_k.npy", &[2, 8, 4]);
            write_npy(d, "x_v.npy", &[2, 9, 4]);
        }),
        ("truncated", |d| {
            write_npy(d, "x_q.npy", &[2, 8, 4]);
            write_npy(d, "x_k.npy", &[2, 8, 4]);
            let bytes = std::fs::read(d.join("x_q.npy")).unwrap();
            std::fs::write(d.join("x_v.npy"), &bytes[..bytes.len() - 10]).unwrap();
        }),
        ("missing v", |d| {
            write_npy(d, "x_q.npy", &[2, 8, 4]);
            write_npy(d, "x_k.npy", &[2, 8, 4]);
        }),
    ];
    let expect = [
        ("x_k.npy", "'<i4'"),
        ("x_k.npy", "rank 2"),
        ("x_*.npy", "n_kv of v"),
        ("x_v.npy", "truncated"),
        ("x_v.npy", "missing"),
    ];
    for ((what, make), (file, needle)) in cases.iter().zip(expect) {
        let dir = temp_dir(&format!("npy-bad-{}", what.replace(' ', "-")));
        make(&dir);
        let e = load_npy_dir(&dir).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(needle), "{what}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let empty = temp_dir("npy-empty");
    assert!(
        load_npy_dir(&empty)
            .unwrap_err()
            .to_string()
            .contains("no *_q.npy")
    );
    assert!(load_npy_dir(&empty.join("nope")).is_err());
}

fn attnbench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_quick_sweep_end_to_end() {
    let dir = temp_dir("cli");
    let out = dir.to_str().unwrap();
    let (code, stdout, stderr) = attnbench(&[
        "sweep",
        "--quick",
        "--variants",
        "full,flash,window(w=64),linear(phi=favor,m=32)",
        "--heads",
        "2",
        "--out",
        out,
        "--label",
        "smoke",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("results: "), "{stdout}");
    let csv: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    assert_eq!(csv.len(), 1);
    let rows = read_csv(&csv[0]);
    assert_eq!(rows.len(), 12);
    assert!(
        rows.iter()
            .all(|r| r.status == Status::Ok && r.peak_bytes.is_some())
    );
    // Progress goes to stderr as plain lines when it is not a terminal.
    assert!(stderr.contains("[12/12"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_rejects_bad_sweep_arguments() {
    let dir = temp_dir("cli-bad");
    let out = dir.to_str().unwrap();
    for (args, needle) in [
        (vec!["sweep", "--lengths", "0"], "at least 1"),
        (vec!["sweep", "--rounds", "0"], "rounds: must be at least 1"),
        (vec!["sweep", "--min-time=-1"], "not a number of seconds"),
        (
            vec!["sweep", "--min-time", "nan"],
            "not a number of seconds",
        ),
        (
            vec!["sweep", "--error-seeds", "0"],
            "error-seeds: must be at least 1",
        ),
        (vec!["sweep", "--lengths", "512..256"], "start <= end"),
        (vec!["sweep", "--lengths", "a,b"], "not a length"),
        (vec!["sweep", "--workload", "uniform"], "expected gaussian"),
        (
            vec!["sweep", "--workload", "gaussian(scale=-1)"],
            "positive",
        ),
        (vec!["sweep", "--max-memory", "lots"], "byte count"),
        (
            vec!["sweep", "--variants", "flash,nope"],
            "unknown variant 'nope'",
        ),
        (vec!["sweep", "--threads", "0", "--quick"], "threads"),
        (
            vec!["sweep", "--heads", "3", "--kv-heads", "2", "--quick"],
            "not a multiple",
        ),
        (
            vec!["sweep", "--workload", "npy:/nonexistent", "--quick"],
            "/nonexistent",
        ),
        (vec!["sweep", "--min-time=-1"], "min-time"),
        (
            vec![
                "sweep",
                "--layer",
                "--d-model",
                "30",
                "--heads",
                "4",
                "--quick",
            ],
            "not divisible",
        ),
        (vec!["sweep", "--d-model", "64", "--quick"], "--layer"),
        (
            vec![
                "sweep",
                "--layer",
                "--workload",
                "npy:tests/data/qkv",
                "--quick",
            ],
            "Gaussian",
        ),
        (
            vec!["sweep", "--n-q", "300", "--lengths", "256", "--quick"],
            "n_q <= n",
        ),
        (vec!["sweep", "--n-q", "0", "--quick"], "n-q"),
        (vec!["sweep", "--softcap", "0", "--quick"], "softcap"),
        (
            vec!["sweep", "--rope", "--head-dim", "15", "--quick"],
            "even",
        ),
    ] {
        let mut args = args;
        args.extend(["--out", out]);
        let (code, _, stderr) = attnbench(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        // Bad input is refused before any result file is created.
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(files.is_empty(), "{args:?} left {files:?}");
    }
}

#[test]
fn layer_sweeps_split_projections_from_the_core() {
    let dir = temp_dir("layer");
    let cfg = SweepConfig {
        layer: Some(64),
        heads: 4,
        kv_heads: 2,
        timing: TimingConfig {
            warmup: 1,
            min_repeats: 3,
            min_time: Duration::ZERO,
            max_repeats: 3,
        },
        ..small_config(&dir)
    };
    let out = sweep(&cfg, "full,flash,linear");
    assert_eq!(out.records.len(), 6);
    for r in &out.records {
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!((r.d_model, r.head_dim, r.kv_heads), (Some(64), 16, 2));
        let (layer, proj, core) = (r.layer_ms.unwrap(), r.proj_ms.unwrap(), r.core_ms.unwrap());
        assert!(proj > 0.0 && core > 0.0, "{r:?}");
        // Medians of parts need not add up, but neither part can exceed the whole by much.
        assert!(proj < 2.0 * layer && core < 2.0 * layer, "{r:?}");
        if r.fidelity == Fidelity::Exact {
            assert!(r.err_own_rel.unwrap() < 1e-5, "{r:?}");
            // The tolerance is twice a plain f32 implementation's error plus the floor.
            let plain = r.err_f32_plain.unwrap();
            assert!(plain > 0.0 && plain < 1e-5, "{r:?}");
            assert_eq!(r.tolerance, Some(2.0 * plain + 1e-6));
        }
    }
    let report =
        attnbench::report::write_report(std::slice::from_ref(&out.csv), Some(&dir.join("report")))
            .unwrap();
    let md = std::fs::read_to_string(report.markdown).unwrap();
    assert!(md.contains("## Multi-head layer"), "{md}");
    assert!(md.contains("the core takes longer than the projections from"));
    assert!(dir.join("report/layer_core_share.svg").exists());
}

#[test]
fn decode_sweeps_report_bandwidth_and_modifiers() {
    let dir = temp_dir("decode");
    let cfg = SweepConfig {
        n_q: Some(1),
        lengths: vec![300, 1000],
        opts: Options::new().causal(true).alibi(true),
        ..small_config(&dir)
    };
    let out = sweep(&cfg, "full,flash,window(w=64),linear");
    for r in &out.records {
        assert_eq!((r.n_q, r.modifiers.as_str()), (1, "alibi"), "{r:?}");
        if r.name == "linear" {
            assert_eq!(r.status, Status::Skipped);
            assert!(r.note.contains("alibi"), "{r:?}");
            continue;
        }
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(r.pct_of_bandwidth.unwrap() > 0.0, "{r:?}");
        assert!(r.err_own_rel.unwrap() < 1e-5, "{r:?}");
    }
    assert_eq!(
        out.records.iter().map(|r| r.n_kv).collect::<Vec<_>>(),
        vec![300, 300, 300, 300, 1000, 1000, 1000, 1000]
    );
}

#[test]
fn dropped_mass_is_over_the_oracle_rows() {
    // n = 200 > 64: every row is an oracle row (up to dense_oracle_max), and the dropped mass
    // is their mean, not that of a separate sample of 64.
    let dir = temp_dir("dropped");
    let mut cfg = small_config(&dir);
    cfg.lengths = vec![200];
    let out = sweep(&cfg, "window(w=4)");
    let r = &out.records[0];
    assert_eq!(r.oracle_rows, Some(200));
    let qkv = attnbench::workload::gaussian(
        &Shape::new(1, 2, 2, 200, 200, 16, 16).unwrap(),
        1.0,
        cfg.seed ^ 200,
    );
    let p =
        attnbench::Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), Options::new()).unwrap();
    let w = attnbench::variants::window::Window { w: 4 };
    let all: Vec<usize> = (0..200).collect();
    let want = attnbench::oracle::dropped_mass(&p, &w, &all);
    let got = r.dropped_mass.unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want} over all rows");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Logs every call into a shared list; fails from call `fail_from` on.
#[derive(Debug)]
struct Logged {
    name: &'static str,
    log: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, usize)>>>,
    fail_from: usize,
}

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Attention for Logged {
    fn name(&self) -> &'static str {
        self.name
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Approximate
    }
    fn cost(&self, _: &Shape, _: &Options, _threads: usize) -> Cost {
        Cost::default()
    }
    fn forward(&self, call: &Call<'_>, out: Out<'_>) -> attnbench::Result<()> {
        let mut log = self.log.lock().unwrap();
        log.push((self.name, call.shape().n_kv()));
        if log.iter().filter(|c| c.0 == self.name).count() >= self.fail_from {
            return Err(attnbench::Error::bad_spec(
                self.name,
                "deliberate late failure",
            ));
        }
        out.into_view().fill(0.0);
        Ok(())
    }
}

#[test]
fn rounds_rotate_the_order_and_a_late_failure_is_an_error_row() {
    let dir = temp_dir("rounds");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let logged = |name, fail_from| -> Box<dyn Attention> {
        Box::new(Logged {
            name,
            log: log.clone(),
            fail_from,
        })
    };
    // Each variant: a warm-up and a peak-heap call, then one timed call per round; c fails
    // in its second round.
    let variants = vec![logged("a", 99), logged("b", 99), logged("c", 4)];
    let cfg = SweepConfig {
        lengths: vec![32],
        ..small_config(&dir)
    };
    let out = run_sweep(&cfg, &variants, &mut |_| {}).unwrap();
    let calls: Vec<&str> = log.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(&calls[..6], ["a", "a", "b", "b", "c", "c"]);
    // Round 1: a b c; round 2 starts one later: b c (fails) a; round 3, of a and b, starts
    // two later: a b.
    assert_eq!(&calls[6..], ["a", "b", "c", "b", "c", "a", "a", "b"]);
    let by = |name: &str| out.records.iter().find(|r| r.variant == name).unwrap();
    assert_eq!((by("a").status, by("a").rounds), (Status::Ok, Some(3)));
    assert_eq!(by("b").repeats, Some(3));
    let c = by("c");
    assert_eq!(c.status, Status::Error);
    assert!(c.note.contains("deliberate late failure"), "{c:?}");
    assert_eq!(c.time_median_ms, None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_feature_errors_are_measured_over_seeds() {
    let dir = temp_dir("seeds");
    let cfg = SweepConfig {
        lengths: vec![64],
        ..small_config(&dir)
    };
    let out = sweep(&cfg, "linear(phi=favor,m=16),linear(phi=elu1)");
    let (favor, elu) = (&out.records[0], &out.records[1]);
    assert_eq!(favor.err_seeds, Some(5));
    // Different draws give different errors.
    let sd = favor.err_dense_rel_sd.unwrap();
    assert!(sd > 0.0 && sd < favor.err_dense_rel.unwrap(), "{favor:?}");
    // A deterministic feature map has one error.
    assert_eq!((elu.err_seeds, elu.err_dense_rel_sd), (None, None));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rounds_span_the_sweep_alternating_the_order_of_lengths() {
    let dir = temp_dir("rounds-lengths");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let variants: Vec<Box<dyn Attention>> = vec![Box::new(Logged {
        name: "a",
        log: log.clone(),
        fail_from: 99,
    })];
    let cfg = SweepConfig {
        lengths: vec![32, 64, 128],
        ..small_config(&dir)
    };
    let out = run_sweep(&cfg, &variants, &mut |_| {}).unwrap();
    let lengths: Vec<usize> = log.lock().unwrap().iter().map(|c| c.1).collect();
    // Untimed calls length by length, then rounds up, down and up again: a slow spell of
    // the machine falls on different lengths in different rounds.
    assert_eq!(
        lengths,
        [
            32, 32, 64, 64, 128, 128, 32, 64, 128, 128, 64, 32, 32, 64, 128
        ]
    );
    let ns: Vec<usize> = out.records.iter().map(|r| r.n_kv).collect();
    assert_eq!(ns, [32, 64, 128], "rows in length order");
    assert!(out.meta.probes.iter().all(|p| p.gflops.len() == 3));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grouped_query_and_float16_npy_triples_run() {
    // An LLM's layout: 4 query heads reading 2 KV heads, K and V stored in float16.
    let dir = temp_dir("npy-gqa");
    write_npy(&dir, "l0_q.npy", &[4, 48, 8]);
    for r in ["k", "v"] {
        let halves: Vec<u8> = (0..2 * 48 * 8)
            .flat_map(|i| {
                // Halves of small values: sign, exponent 13..16, a varying mantissa.
                let bits: u16 = (((i % 2) << 15) | ((13 + i % 4) << 10) | ((i * 7) % 1024)) as u16;
                bits.to_le_bytes()
            })
            .collect();
        let mut bytes = encode_f32(&[2, 48, 8], &[]);
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
        bytes[at..at + 3].copy_from_slice(b"<f2");
        bytes.extend_from_slice(&halves);
        std::fs::write(dir.join(format!("l0_{r}.npy")), bytes).unwrap();
    }
    let data = load_npy_dir(&dir).unwrap();
    assert_eq!(data.qkv.q.shape(), &[1, 4, 48, 8]);
    assert_eq!(data.qkv.k.shape(), &[1, 2, 48, 8]);
    assert_eq!(data.qkv.k[[0, 0, 0, 1]], -(0.5 * (1.0 + 7.0 / 1024.0)));
    let out_dir = temp_dir("npy-gqa-out");
    let mut cfg = small_config(&out_dir);
    cfg.workload = Workload::Npy { dir: dir.clone() };
    cfg.lengths = vec![48];
    cfg.opts = Options::new().causal(true);
    let out = sweep(&cfg, "full,flash,window(w=8)");
    for r in &out.records {
        assert_eq!((r.status, r.heads, r.kv_heads), (Status::Ok, 4, 2), "{r:?}");
        assert!(r.err_own_rel.unwrap() < r.tolerance.unwrap(), "{r:?}");
    }

    // workload.json: the model computed these causally, with RoPE applied.
    std::fs::write(
        dir.join("workload.json"),
        r#"{"causal": true, "rope_applied": true, "description": "test LLM"}"#,
    )
    .unwrap();
    let variants = Registry::builtin().build_list("flash").unwrap();
    let refused = |opts: Options| {
        let cfg = SweepConfig {
            opts,
            ..cfg.clone()
        };
        run_sweep(&cfg, &variants, &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    let e = refused(Options::new());
    assert!(e.contains("computed causally"), "{e}");
    let e = refused(Options::new().causal(true).rope(10000.0));
    assert!(e.contains("rotate them twice"), "{e}");
    // The CLI sweeps such data causally without being told.
    let (code, _, err) = attnbench(&[
        "sweep",
        "--workload",
        &format!("npy:{}", dir.display()),
        "--lengths",
        "48",
        "--variants",
        "flash",
        "--quick",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let newest = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .max()
        .unwrap();
    assert!(read_csv(&newest).iter().all(|r| r.causal), "{newest:?}");
    // A misspelt field is an error naming the file, not a silent default.
    std::fs::write(dir.join("workload.json"), r#"{"casual": true}"#).unwrap();
    let e = load_npy_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("workload.json") && e.contains("casual"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&out_dir).unwrap();
}

#[test]
fn long_key_ranges_split_only_where_a_block_visits_many_keys() {
    // n = 20000 > SPLIT_KEYS: dense blocks are split and merged, a window's blocks visit a
    // few tiles and run unsplit; both must match the oracle under their own pattern, with
    // and without causal masking.
    let out_dir = temp_dir("long-split");
    let mut cfg = small_config(&out_dir);
    cfg.lengths = vec![20000];
    (cfg.heads, cfg.kv_heads, cfg.head_dim) = (1, 1, 8);
    cfg.rounds = 1;
    for causal in [false, true] {
        cfg.opts = Options::new().causal(causal);
        let out = sweep(
            &cfg,
            "flash,window(w=64),longformer(w=64,g=4),local(block=128)",
        );
        for r in &out.records {
            assert_eq!(r.status, Status::Ok, "{r:?}");
            assert!(r.err_own_rel.unwrap() <= r.tolerance.unwrap(), "{r:?}");
        }
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}
