//! The `structured` workload: its calibration reproduces the real LLM attention's statistics,
//! its lengths are prefixes of one sequence, and sweeps treat it as causal rotated data.

use std::path::Path;

use attnbench::workload::structured::{Calibration, HeadStats, qkv_stats, stat_rows};
use attnbench::workload::{Qkv, Workload, load_npy_dir};

/// How far generated statistics may be from the real ones: the fit's residual (largest on
/// the two layer-0 heads whose locality profile the kernel family cannot follow exactly)
/// plus the spread between generator seeds. Entropy in nats, masses as fractions of a row.
const ENTROPY_TOL: f64 = 0.35;
const MASS_TOL: f64 = 0.08;

fn assert_close(got: &HeadStats, want: &HeadStats, what: &str) {
    let pairs = [
        ("entropy", got.entropy, want.entropy, ENTROPY_TOL),
        ("near", got.near, want.near, MASS_TOL),
        ("mid", got.mid, want.mid, MASS_TOL),
        ("sink", got.sink, want.sink, MASS_TOL),
    ];
    for (name, g, w, tol) in pairs {
        assert!(
            (g - w).abs() <= tol,
            "{what}: {name} {g:.3} vs the real {w:.3} (tolerance {tol})"
        );
    }
}

#[test]
fn the_calibration_covers_three_layers_of_the_gqa_model() {
    let cal = Calibration::builtin();
    assert_eq!(cal.layer_ids(), vec![0, 15, 29]);
    assert_eq!(cal.n, 8192);
    for l in &cal.layers {
        assert_eq!((l.heads(), l.kv_heads()), (9, 3));
        assert_eq!((l.real.len(), l.fitted.len()), (9, 9));
        for p in &l.heads {
            assert!(p.locality.is_finite() && p.content.is_finite() && p.sink.is_finite());
        }
    }
}

#[test]
fn generated_inputs_reproduce_the_real_statistics_at_8192() {
    // Another seed than the fit's: the statistics are the generator's, not one draw's.
    let cal = Calibration::builtin();
    let rows = stat_rows(cal.n, cal.rows);
    for l in &cal.layers {
        let qkv = l.generate(cal.n, cal.n, cal.seed + 7);
        let got = qkv_stats(&qkv, &rows);
        for (h, (g, want)) in got.iter().zip(&l.real).enumerate() {
            assert_close(g, want, &format!("layer {} head {h}", l.layer));
        }
        // The layers keep their character: no sink in layer 0, a sink on every head of 15.
        match l.layer {
            0 => assert!(got.iter().all(|s| s.sink < 0.01), "{got:?}"),
            15 => assert!(got.iter().all(|s| s.sink > 0.15), "{got:?}"),
            _ => {}
        }
    }
}

#[test]
fn the_calibration_targets_are_the_bundled_layers_statistics() {
    // The bundled layer 15 (float16) gives the statistics the fit aimed at (float32).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lm");
    let data = load_npy_dir(&dir).unwrap();
    let cal = Calibration::builtin();
    let real = qkv_stats(&data.qkv, &stat_rows(cal.n, cal.rows));
    for (h, (r, want)) in real.iter().zip(&cal.layer(15).unwrap().real).enumerate() {
        for (g, w) in [
            (r.entropy, want.entropy),
            (r.near, want.near),
            (r.mid, want.mid),
            (r.far, want.far),
            (r.sink, want.sink),
        ] {
            assert!((g - w).abs() < 0.01, "head {h}: {r:?} vs {want:?}");
        }
    }
}

#[test]
fn every_length_is_a_prefix_of_one_sequence() {
    let l = Calibration::builtin().layer(29).unwrap();
    let long = l.generate(3000, 3000, 5);
    let short = l.generate(1000, 1000, 5);
    let prefix =
        |a: &ndarray::Array4<f32>, n: usize| a.slice(ndarray::s![.., .., ..n, ..]).to_owned();
    assert_eq!(prefix(&long.q, 1000), short.q);
    assert_eq!(prefix(&long.k, 1000), short.k);
    assert_eq!(prefix(&long.v, 1000), short.v);
    // Decoding: the last query alone is the last row of the full queries.
    let decode: Qkv = l.generate(3000, 1, 5);
    assert_eq!(
        decode.q,
        long.q.slice(ndarray::s![.., .., 2999.., ..]).to_owned()
    );
    assert_eq!(decode.k, long.k);
    // Another seed is another sequence.
    assert_ne!(l.generate(1000, 1000, 6).k, short.k);
}

#[test]
fn the_spec_names_its_calibrated_layers() {
    assert_eq!(
        "structured".parse::<Workload>().unwrap(),
        Workload::Structured { layer: 15 }
    );
    assert_eq!(
        "structured(layer=29)"
            .parse::<Workload>()
            .unwrap()
            .to_string(),
        "structured(layer=29)"
    );
    let e = "structured(layer=3)"
        .parse::<Workload>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("[0, 15, 29]"), "{e}");
    let e = "structured(heads=3)"
        .parse::<Workload>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown parameter 'heads'"), "{e}");
    assert!(Workload::Structured { layer: 0 }.is_causal_data());
}

#[test]
fn a_structured_sweep_is_causal_gqa_and_its_report_says_it_is_synthetic() {
    use attnbench::harness::sweep::{SweepConfig, run_sweep};
    use attnbench::harness::timing::TimingConfig;
    use attnbench::{Options, Registry};
    let out = std::env::temp_dir().join(format!("attnbench-structured-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut cfg = SweepConfig {
        lengths: vec![64, 128],
        threads: 2,
        workload: Workload::Structured { layer: 29 },
        opts: Options::new().causal(true),
        timing: TimingConfig {
            warmup: 1,
            min_repeats: 1,
            min_time: std::time::Duration::ZERO,
            max_repeats: 1,
        },
        rounds: 2,
        out_dir: out.clone(),
        label: "structured".into(),
        ..SweepConfig::default()
    };
    let variants = Registry::builtin()
        .build_list("flash,window(w=16)")
        .unwrap();
    let run = run_sweep(&cfg, &variants, &mut |_| {}).unwrap();
    for r in &run.records {
        assert_eq!(
            (r.heads, r.kv_heads, r.head_dim, r.causal),
            (9, 3, 64, true),
            "{r:?}"
        );
        assert_eq!(r.workload, "structured(layer=29)");
        assert!(r.err_own_rel.unwrap() <= r.tolerance.unwrap(), "{r:?}");
    }
    let window = run.records.iter().find(|r| r.name == "window").unwrap();
    assert!(
        window.err_dense_rel.unwrap() > 1e-3,
        "a window of 16 drops the sink"
    );
    let report = out.join("report");
    attnbench::report::write_report(std::slice::from_ref(&run.csv), Some(&report)).unwrap();
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("n = 64 to 128 use **synthetic** `structured(layer=29)` inputs"),
        "{md}"
    );
    // Causal and rotated by construction: a bidirectional sweep and --rope are refused.
    cfg.opts = Options::new();
    let e = run_sweep(&cfg, &variants, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("causally"), "{e}");
    cfg.opts = Options::new().causal(true).rope(10000.0);
    let e = run_sweep(&cfg, &variants, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}
