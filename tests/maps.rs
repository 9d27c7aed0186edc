//! Attention maps: effective weights agree with each variant's own output, statistics of the
//! real activations show the specialised heads, files are never overwritten, bad arguments
//! are errors.

use std::path::PathBuf;

use attnbench::harness::maps::{MapsConfig, write_maps};
use attnbench::maps::HeadKind;
use attnbench::oracle::weights;
use attnbench::workload::{Workload, gaussian};
use attnbench::{Fidelity, Options, Problem, Registry, Shape, attend};
use ndarray::s;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-maps-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn effective_weights_reproduce_each_variants_output() {
    // weights(b, h) . V must equal the variant's own output, for every kind of variant.
    let shape = Shape::new(2, 4, 2, 90, 90, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.0, 4);
    let specs = "full,flash,window(w=7),local(block=16),linear(phi=elu1),linear(phi=relu)";
    for causal in [false, true] {
        let opts = Options::new().causal(causal);
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
        for v in Registry::builtin().build_list(specs).unwrap() {
            let out = attend(v.as_ref(), qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
            for (b, h) in [(0, 0), (1, 3)] {
                let w = attnbench::attention::weights(v.as_ref(), &p, b, h)
                    .unwrap()
                    .unwrap_or_else(|| {
                        assert_eq!(v.fidelity(), Fidelity::Exact, "{v}");
                        weights(&p, v.pattern(), b, h)
                    });
                for row in w.outer_iter() {
                    let total = row.sum();
                    assert!((total - 1.0).abs() < 1e-9, "{v}: row sums to {total}");
                }
                let vals = qkv.v.slice(s![b, h / 2, .., ..]).mapv(f64::from);
                let want = w.dot(&vals);
                let got = out.slice(s![b, h, .., ..]);
                let err = got
                    .iter()
                    .zip(want.iter())
                    .map(|(&a, &b)| (a as f64 - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    err < 1e-4,
                    "{v} causal={causal} b={b} h={h}: max error {err}"
                );
            }
        }
    }
}

#[test]
fn maps_of_the_real_activations_show_specialised_heads() {
    let dir = temp_dir("real");
    let variants = Registry::builtin()
        .build_list("window(w=32),linear(phi=elu1)")
        .unwrap();
    let cfg = MapsConfig {
        workload: Workload::Npy {
            dir: PathBuf::from("tests/data/qkv"),
        },
        variants: variants.iter().map(|v| v.as_ref()).collect(),
        heads: Some(vec![0, 5, 11]),
        n: None,
        opts: Options::new(),
        log: true,
        out_dir: dir.clone(),
        seed: 0,
        max_memory: 4 << 30,
    };
    let out = write_maps(&cfg).unwrap();
    // 2 sequences x 3 heads, each with full + 2 variants.
    assert_eq!(out.images.len(), 6);
    assert_eq!(out.rows.len(), 18);
    assert!(out.images.iter().all(|p| p.exists()));
    let full = |seq: &str, head: usize| {
        out.rows
            .iter()
            .find(|r| r.sequence.contains(seq) && r.head == head && r.variant == "full")
            .unwrap()
            .stats
    };
    // The expository layer-2 text has a previous-token head (11) and local heads; the
    // narrative layer-5 text's heads are broad.
    assert_eq!(full("arch_L2", 11).kind(), HeadKind::PreviousToken);
    assert_eq!(full("arch_L2", 0).kind(), HeadKind::Local);
    assert_eq!(full("story_L5", 5).kind(), HeadKind::Broad);
    assert!(full("story_L5", 5).entropy > full("arch_L2", 11).entropy + 2.0);
    for r in &out.rows {
        if let Some(tv) = r.tv_vs_full {
            assert!((0.0..=1.0).contains(&tv), "{r:?}");
        }
    }
    // The window keeps more of a local head's attention than of a broad one's.
    let tv = |seq: &str, head: usize| {
        out.rows
            .iter()
            .find(|r| r.sequence.contains(seq) && r.head == head && r.variant.starts_with("window"))
            .unwrap()
            .tv_vs_full
            .unwrap()
    };
    assert!(tv("arch_L2", 0) < tv("story_L5", 5));
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("previous-token") && md.contains("minilm-l6_arch_L2_h11.png"));
    // A second run into the same directory is refused.
    let e = write_maps(&cfg).unwrap_err();
    assert!(e.to_string().contains("never overwrite"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_map_arguments_are_errors() {
    let base = || MapsConfig {
        workload: Workload::Npy {
            dir: PathBuf::from("tests/data/qkv"),
        },
        variants: Vec::new(),
        heads: None,
        n: Some(32),
        opts: Options::new().causal(true),
        log: false,
        out_dir: temp_dir("bad"),
        seed: 0,
        max_memory: 4 << 30,
    };
    let e = write_maps(&MapsConfig {
        heads: Some(vec![12]),
        ..base()
    })
    .unwrap_err();
    assert!(e.to_string().contains("head 12"), "{e}");
    let e = write_maps(&MapsConfig {
        n: Some(513),
        ..base()
    })
    .unwrap_err();
    assert!(e.to_string().contains("512 positions"), "{e}");
    let e = write_maps(&MapsConfig {
        heads: Some(vec![]),
        ..base()
    })
    .unwrap_err();
    assert!(e.to_string().contains("no heads"), "{e}");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attnbench"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["maps", "--variants", "nope", "--out", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown variant"));
    let out = cli(&["maps", "--heads", "a"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn reports_of_real_data_runs_show_a_gallery_of_heads() {
    use attnbench::harness::sweep::{SweepConfig, run_sweep};
    use attnbench::harness::timing::TimingConfig;
    let dir = temp_dir("gallery");
    let cfg = SweepConfig {
        lengths: vec![64],
        workload: Workload::Npy {
            dir: PathBuf::from("tests/data/qkv"),
        },
        timing: TimingConfig {
            warmup: 1,
            min_repeats: 1,
            min_time: std::time::Duration::ZERO,
            max_repeats: 1,
        },
        out_dir: dir.clone(),
        label: "gallery".into(),
        ..SweepConfig::default()
    };
    let variants = Registry::builtin().build_list("flash,window(w=8)").unwrap();
    let out = run_sweep(&cfg, &variants, &mut |_| {}).unwrap();
    let report =
        attnbench::report::write_report(std::slice::from_ref(&out.csv), Some(&dir.join("report")))
            .unwrap();
    let md = std::fs::read_to_string(report.markdown).unwrap();
    assert!(
        md.contains("## Attention maps of the real activations"),
        "{md}"
    );
    assert!(md.contains("(maps/minilm-l6_"), "{md}");
    assert!(dir.join("report/maps/maps.csv").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
