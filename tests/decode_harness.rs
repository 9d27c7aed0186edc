//! The generation benchmark (`attnbench decode`): every cell against the oracle, the
//! stateless fallback, skipped cells with their reasons, refusals before any file is
//! written, runs that never overwrite each other, and the report.

use std::path::PathBuf;

use attnbench::decode::KvStore;
use attnbench::harness::decode::{DecodeConfig, DecodeRecord, read_decode_csv, run_decode};
use attnbench::registry::Registry;
use attnbench::workload::Workload;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "attnbench-decode-harness-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small(name: &str) -> DecodeConfig {
    DecodeConfig {
        contexts: vec![40, 300],
        tokens: 6,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        stores: vec![KvStore::F32, KvStore::F16],
        out_dir: temp_dir(name),
        label: "t".into(),
        ..DecodeConfig::default()
    }
}

fn find<'a>(rows: &'a [DecodeRecord], variant: &str, kv: &str, ctx: usize) -> &'a DecodeRecord {
    rows.iter()
        .find(|r| r.variant.starts_with(variant) && r.kv == kv && r.context == ctx)
        .unwrap_or_else(|| panic!("no row {variant} {kv} {ctx}: {rows:?}"))
}

#[test]
fn every_cell_is_measured_against_the_oracle_and_written() {
    let cfg = small("cells");
    let reg = Registry::builtin();
    let variants = reg
        .build_list("flash,window(w=16),linear(phi=elu1),topk(k=8)")
        .unwrap();
    let mut seen = 0;
    let run = run_decode(&cfg, &variants, |_| seen += 1).unwrap();
    let rows = read_decode_csv(&run.csv).unwrap();
    assert_eq!(rows.len(), 2 * 4 * 2);
    assert_eq!(seen, rows.len());
    for r in &rows {
        // Linear attention keeps no KV cache and the stateless fallback f32 arrays: a half
        // store applies to neither.
        if (r.variant.starts_with("linear") || r.variant.starts_with("topk")) && r.kv == "f16" {
            assert_eq!(r.status, "skipped", "{r:?}");
            assert!(r.reason.contains("no KV cache"), "{r:?}");
            continue;
        }
        assert_eq!(r.status, "ok", "{r:?}");
        assert_eq!(r.tokens, 6);
        assert!(
            r.us_lo <= r.us_per_token && r.us_per_token <= r.us_hi,
            "{r:?}"
        );
        assert!(r.state_bytes > 0 && r.bytes_per_token > 0, "{r:?}");
        // Each cell's read probe covers its own footprint, in whole MiB.
        assert!(
            r.probe_bytes >= r.bytes_per_token && r.probe_bytes.is_multiple_of(1 << 20),
            "{r:?}"
        );
        assert!(r.read_gbytes_per_s > 0.0 && r.read_fraction > 0.0, "{r:?}");
    }
    for ctx in [40, 300] {
        // The exact decoders with an f32 cache are the oracle to f32 rounding, under their
        // own pattern; flash's pattern is dense, so its error against dense is the same.
        for v in ["flash", "window"] {
            let r = find(&rows, v, "f32", ctx);
            assert_eq!(r.mode, "stateful");
            assert!(r.err_own < 1e-5, "{r:?}");
        }
        let flash = find(&rows, "flash", "f32", ctx);
        assert!(flash.err_max < 1e-5, "{flash:?}");
        // The half store rounds K and V (2^-11 relative) and nothing else.
        let half = find(&rows, "flash", "f16", ctx);
        assert!(half.err_own > 1e-6 && half.err_own < 3e-3, "{half:?}");
        // A window shorter than the context is not dense attention.
        if ctx == 300 {
            assert!(find(&rows, "window", "f32", ctx).err_median > 1e-3);
        }
        // Linear attention is another kernel: no own-definition error, a large dense one.
        let lin = find(&rows, "linear", "f32", ctx);
        assert!(lin.err_own.is_nan() && lin.err_median > 1e-2, "{lin:?}");
        // topk has no decoder: the batch call per token, over the f32 arrays.
        let topk = find(&rows, "topk", "f32", ctx);
        assert_eq!(topk.mode, "stateless");
    }
    // The window's ring holds w + 1 keys (rounded to blocks) whatever the context; flash's
    // cache grows with it.
    let (w40, w300) = (
        find(&rows, "window", "f32", 40).state_bytes,
        find(&rows, "window", "f32", 300).state_bytes,
    );
    assert_eq!(w40, w300);
    assert!(
        find(&rows, "flash", "f32", 300).state_bytes
            > 5 * find(&rows, "flash", "f32", 40).state_bytes
    );
    // f16 halves the cache.
    let (f32b, f16b) = (
        find(&rows, "flash", "f32", 300).state_bytes,
        find(&rows, "flash", "f16", 300).state_bytes,
    );
    assert!(
        (f16b as f64 / f32b as f64 - 0.5).abs() < 0.05,
        "{f16b} vs {f32b}"
    );
    // The JSON names the shape and the variants.
    let meta = std::fs::read_to_string(&run.json).unwrap();
    assert!(
        meta.contains("\"tokens\": 6") && meta.contains("window(w=16)"),
        "{meta}"
    );
}

#[test]
fn the_stateless_fallback_is_the_oracle_too() {
    let cfg = DecodeConfig {
        stateless: true,
        stores: vec![KvStore::F32],
        ..small("stateless")
    };
    let variants = Registry::builtin().build_list("full,window(w=16)").unwrap();
    let run = run_decode(&cfg, &variants, |_| {}).unwrap();
    let rows = read_decode_csv(&run.csv).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(
            (r.mode.as_str(), r.status.as_str()),
            ("stateless", "ok"),
            "{r:?}"
        );
        assert!(r.err_own < 1e-5, "{r:?}");
    }
}

#[test]
fn cells_that_cannot_run_are_skipped_with_their_reason() {
    let reg = Registry::builtin();
    // A half store for a recurrent state is refused; a non-causal-only variant cannot
    // decode; a cache beyond the memory budget is not attempted. The inputs (4005 tokens of
    // 2 KV heads x (32 + 32) f32) take 2.05 MB of the 3 MiB: an f32 cache of them does not
    // fit beside them, an f16 one does.
    let cfg = DecodeConfig {
        contexts: vec![40, 4000],
        memory_budget: 3 << 20,
        ..small("skips")
    };
    let variants = reg.build_list("flash,linear(phi=elu1),nystrom").unwrap();
    let run = run_decode(&cfg, &variants, |_| {}).unwrap();
    let rows = read_decode_csv(&run.csv).unwrap();
    assert_eq!(rows.len(), 2 * 3 * 2);
    let lin16 = find(&rows, "linear", "f16", 40);
    assert_eq!(lin16.status, "skipped");
    assert!(!lin16.reason.is_empty());
    let ny = find(&rows, "nystrom", "f32", 40);
    assert_eq!(ny.status, "skipped", "{ny:?}");
    assert!(ny.reason.contains("causal"), "{ny:?}");
    let big = find(&rows, "flash", "f32", 4000);
    assert_eq!(big.status, "skipped");
    assert!(big.reason.contains("memory budget"), "{big:?}");
    assert_eq!(find(&rows, "flash", "f16", 4000).status, "ok");
    assert_eq!(find(&rows, "flash", "f32", 40).status, "ok");
    // Linear attention's state does not grow: 4000 tokens fit any budget.
    assert_eq!(find(&rows, "linear", "f32", 4000).status, "ok");
}

#[test]
fn bad_configurations_write_nothing() {
    let reg = Registry::builtin();
    let variants = reg.build_list("flash").unwrap();
    for (what, cfg) in [
        (
            "no tokens",
            DecodeConfig {
                tokens: 0,
                ..small("bad1")
            },
        ),
        (
            "no contexts",
            DecodeConfig {
                contexts: vec![],
                ..small("bad2")
            },
        ),
        (
            "no stores",
            DecodeConfig {
                stores: vec![],
                ..small("bad3")
            },
        ),
        (
            "no threads",
            DecodeConfig {
                threads: 0,
                ..small("bad4")
            },
        ),
        (
            "inputs beyond the budget",
            DecodeConfig {
                contexts: vec![1 << 20],
                memory_budget: 1 << 20,
                ..small("bad5")
            },
        ),
    ] {
        let dir = cfg.out_dir.clone();
        assert!(run_decode(&cfg, &variants, |_| {}).is_err(), "{what}");
        let files = std::fs::read_dir(&dir).map_or(0, |d| d.count());
        assert_eq!(files, 0, "{what} wrote files");
    }
    assert!(run_decode(&small("bad6"), &[], |_| {}).is_err());
}

#[test]
fn runs_never_overwrite_each_other_and_contexts_beyond_the_data_are_skipped() {
    let dir = temp_dir("npy");
    // Real LLM activations: 9 query heads over 3 KV heads, a prefix of the bundled data.
    let cfg = DecodeConfig {
        contexts: vec![100, 1 << 20],
        tokens: 3,
        workload: Workload::Npy {
            dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/lm"),
        },
        stores: vec![KvStore::F32],
        out_dir: dir.clone(),
        label: "same".into(),
        ..DecodeConfig::default()
    };
    let variants = Registry::builtin().build_list("flash").unwrap();
    let a = run_decode(&cfg, &variants, |_| {}).unwrap();
    let before = std::fs::read(&a.csv).unwrap();
    let b = run_decode(&cfg, &variants, |_| {}).unwrap();
    assert_ne!(a.csv, b.csv);
    assert_eq!(std::fs::read(&a.csv).unwrap(), before);
    let rows = read_decode_csv(&b.csv).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].status, "ok");
    assert!(rows[0].err_own < 1e-5, "{:?}", rows[0]);
    assert_eq!(rows[1].status, "skipped");
    assert!(rows[1].reason.contains("tokens"), "{:?}", rows[1]);
    let meta = std::fs::read_to_string(&b.json).unwrap();
    assert!(
        meta.contains("\"shape\": [\n    1,\n    9,\n    3,"),
        "{meta}"
    );
}

#[test]
fn the_report_draws_decode_results_and_refuses_to_mix_them() {
    let cfg = DecodeConfig {
        contexts: vec![40, 120, 300],
        ..small("report")
    };
    let variants = Registry::builtin()
        .build_list("flash,linear(phi=elu1)")
        .unwrap();
    let run = run_decode(&cfg, &variants, |_| {}).unwrap();
    let out = cfg.out_dir.join("report");
    let report =
        attnbench::report::write_report(std::slice::from_ref(&run.csv), Some(&out)).unwrap();
    let md = std::fs::read_to_string(&report.markdown).unwrap();
    assert!(md.starts_with("# Generation benchmark"), "{md}");
    assert!(
        md.contains("| `flash(bq=64,bk=128)` f16 |")
            && md.contains("| `linear(phi=elu1,chunk=64)` f32 |"),
        "{md}"
    );
    assert!(md.contains("Half-precision stores"), "{md}");
    for chart in ["decode_time", "decode_state", "decode_read", "decode_error"] {
        assert!(out.join(format!("{chart}.svg")).is_file(), "{chart}");
        assert!(out.join(format!("{chart}.png")).is_file(), "{chart}");
    }
    // A sweep's CSV with a decode CSV is refused.
    let sweep =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/20261202T011523Z-minilm.csv");
    let e = attnbench::report::write_report(&[run.csv.clone(), sweep], Some(&out)).unwrap_err();
    assert!(e.to_string().contains("cannot share"), "{e}");
}

#[test]
fn the_median_interval_uses_the_binomial_ranks_and_refuses_tiny_samples() {
    use attnbench::harness::decode::median_interval;
    let xs: Vec<f64> = (0..32).map(f64::from).rev().collect();
    // 1-based ranks floor((32 - 1.96 sqrt 32) / 2) = 10 and ceil(1 + (32 + 11.09) / 2) = 23.
    assert_eq!(median_interval(&xs), (15.5, 9.0, 22.0));
    let (m, lo, hi) = median_interval(&[3.0, 1.0, 2.0]);
    assert_eq!(m, 2.0);
    assert!(lo.is_nan() && hi.is_nan());
}

#[test]
fn a_cell_of_one_token_over_its_time_budget_still_runs() {
    let cfg = DecodeConfig {
        tokens: 1,
        cell_budget_s: 0.0,
        stores: vec![KvStore::F32],
        ..small("one")
    };
    let variants = Registry::builtin().build_list("flash").unwrap();
    let run = run_decode(&cfg, &variants, |_| {}).unwrap();
    for r in read_decode_csv(&run.csv).unwrap() {
        assert_eq!((r.status.as_str(), r.tokens), ("ok", 1), "{r:?}");
        assert!(r.us_lo.is_nan(), "one token has no interval: {r:?}");
    }
}

#[test]
fn the_report_refuses_the_same_cell_from_two_runs() {
    let cfg = DecodeConfig {
        stores: vec![KvStore::F32],
        ..small("twice")
    };
    let variants = Registry::builtin().build_list("flash").unwrap();
    let a = run_decode(&cfg, &variants, |_| {}).unwrap();
    let b = run_decode(&cfg, &variants, |_| {}).unwrap();
    let out = cfg.out_dir.join("both");
    let e = attnbench::report::write_report(&[a.csv, b.csv], Some(&out)).unwrap_err();
    assert!(e.to_string().contains("more than one file"), "{e}");
}
