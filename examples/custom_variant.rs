//! Plugging variants in from outside the crate and getting the whole `attnbench` command
//! line for them.
//!
//! Two plug-in paths:
//! 1. a new kernel: `TopK` (`mytopk`), which keeps the k largest scores of each row (an
//!    approximation of softmax attention; the crate has its own `topk`, a `selected` variant:
//!    this one shows the plug-in path),
//!    implements [`Attention`] itself;
//! 2. a new sparsity pattern only: `Checker` implements [`Pattern`] (one method), and
//!    [`boxed`] runs it exactly on the crate's tiled engine, with no kernel code.
//!
//! Each is one `VariantInfo` (where its name and parameters are spelled, once) beside its
//! type. Both join a [`Registry`] at run time, and [`attnbench::cli::main_from`] runs any
//! `attnbench` command over that registry: spec strings such as `mytopk(k=8)` work in `list`,
//! `check`, `sweep`, `run`, `maps`. A plug-in crate's own binary is then a few lines:
//!
//! ```text
//! attnbench::attnbench_main!({
//!     let mut registry = attnbench::Registry::builtin();
//!     registry.register(TOPK).expect("a new name");
//!     registry
//! });
//! ```
//!
//! ```text
//! cargo run --release --example custom_variant              # check, sweep and report both
//! cargo run --release --example custom_variant -- list      # any attnbench command
//! cargo run --release --example custom_variant -- check --variants 'mytopk(k=4),checker'
//! ```

use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;

use attnbench::harness::memory::CountingAlloc;
use attnbench::registry::{ParamInfo, VariantInfo};
use attnbench::variants::sparse::boxed;
use attnbench::{
    Attention, Call, Cost, Fidelity, Geometry, Options, Out, Pattern, Registry, Shape,
};
use ndarray::s;

/// Peak heap bytes are measured through this allocator, as in the `attnbench` binary.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Path 1: top-k attention, softmax over the k largest scores of each row.
#[derive(Debug)]
struct TopK {
    k: usize,
}

/// Its registry entry: the name and each parameter are spelled here only.
const TOPK: VariantInfo = VariantInfo {
    name: "mytopk",
    summary: "softmax over the k largest scores of each row",
    time: "O(n_q n_kv d)",
    memory: "O(n_kv)",
    params: &[ParamInfo {
        name: "k",
        default: "32",
        help: "scores kept per row",
    }],
    presets: &["mytopk(k=8)"],
    preview: "",
    build: |p| {
        Ok(Box::new(TopK {
            k: p.positive("k")?,
        }))
    },
};

impl fmt::Display for TopK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        TOPK.write_spec(f, &[Some(&self.k)])
    }
}

impl Attention for TopK {
    fn name(&self) -> &'static str {
        TOPK.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Approximate
    }

    fn unsupported(&self, _shape: &Shape, opts: &Options) -> Vec<String> {
        if opts.causal {
            vec!["this example implements bidirectional top-k only".into()]
        } else {
            Vec::new()
        }
    }

    fn cost(&self, s: &Shape, _: &Options, _threads: usize) -> Cost {
        let pairs = (s.batch() * s.heads() * s.n_q() * s.n_kv()) as f64;
        Cost {
            flops: 2.0 * pairs * s.head_dim() as f64,
            workspace_bytes: (s.n_kv() * 8) as u64,
        }
    }

    fn forward(&self, p: &Call<'_>, out: Out<'_>) -> attnbench::Result<()> {
        let mut out = out.into_view();
        let sh = p.shape();
        let mut scores: Vec<(f32, usize)> = Vec::with_capacity(sh.n_kv());
        for b in 0..sh.batch() {
            for h in 0..sh.heads() {
                let kvh = sh.kv_head_of(h);
                let (k, v) = (
                    p.k().slice_move(s![b, kvh, .., ..]),
                    p.v().slice_move(s![b, kvh, .., ..]),
                );
                for i in 0..sh.n_q() {
                    let q = p.q().slice_move(s![b, h, i, ..]);
                    scores.clear();
                    scores.extend((0..sh.n_kv()).map(|j| (p.scale() * q.dot(&k.row(j)), j)));
                    let keep = self.k.min(sh.n_kv());
                    scores.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
                    let top = &scores[..keep];
                    let m = top.iter().map(|s| s.0).fold(f32::NEG_INFINITY, f32::max);
                    let total: f32 = top.iter().map(|s| (s.0 - m).exp()).sum();
                    let mut row = out.slice_mut(s![b, h, i, ..]);
                    row.fill(0.0);
                    for &(score, j) in top {
                        row.scaled_add((score - m).exp() / total, &v.row(j));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Path 2: a pattern only. Query block and key block of equal parity (a checkerboard of
/// 16 x 16 blocks), which includes the diagonal.
#[derive(Debug)]
struct Checker;

impl Pattern for Checker {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        let p = g.pos(i).max(0) as usize;
        (p / 16 + j / 16).is_multiple_of(2)
    }
}

const CHECKER: VariantInfo = VariantInfo {
    name: "checker",
    summary: "checkerboard of 16 x 16 blocks, on the tiled engine",
    time: "O(n^2 d / 2)",
    memory: "O(1) in n",
    params: &[],
    presets: &[],
    preview: "",
    build: |_| boxed(&CHECKER, Checker),
};

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        CHECKER.write_spec(f, &[])
    }
}

fn main() -> ExitCode {
    let mut registry = Registry::builtin();
    for info in [TOPK, CHECKER] {
        if let Err(e) = registry.register(info) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.len() > 1 {
        // Any attnbench command, over the registry with both plug-ins.
        return attnbench::cli::main_from(args, registry);
    }
    // The demonstration: conformance (the exact pattern must match the oracle; top-k
    // reports its error), then a small sweep with the built-in baselines and its report,
    // all in a temporary directory.
    let dir = std::env::temp_dir().join(format!("attnbench-custom-variant-{}", std::process::id()));
    let results = dir.join("results");
    let cli = |args: &[&str]| {
        let args = std::iter::once("custom_variant").chain(args.iter().copied());
        attnbench::cli::main_from(args.map(OsString::from), registry.clone())
    };
    let steps: [&[&str]; 2] = [
        &["check", "--variants", "checker,mytopk(k=8)"],
        &[
            "sweep",
            "--variants",
            "full,flash,checker,mytopk(k=8)",
            "--lengths",
            "128,256,512",
            "--heads",
            "2",
            "--head-dim",
            "32",
            "--repeats",
            "2",
            "--min-time",
            "0",
            "--label",
            "custom",
            "--out",
            results.to_str().expect("a UTF-8 temporary directory"),
        ],
    ];
    for step in steps {
        let code = cli(step);
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    let csv = std::fs::read_dir(&results)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "csv"))
        })
        .expect("the sweep wrote a CSV");
    let report = dir.join("report");
    cli(&[
        "report",
        csv.to_str().expect("UTF-8"),
        "--out",
        report.to_str().expect("UTF-8"),
    ])
}
