//! Shared configuration of the benches: environment variables and inputs.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ATTNBENCH_BENCH_VARIANTS` | every registered variant's presets | comma-separated specs |
//! | `ATTNBENCH_BENCH_LENGTHS` | `256,1024,4096` | sequence lengths |
//! | `ATTNBENCH_BENCH_SHAPE` | `1,8,64` | `batch,heads,head_dim` |
//! | `ATTNBENCH_BENCH_CAUSAL` | `both` | `both`, `true` or `false` |
//! | `ATTNBENCH_BENCH_DECODE` | `1024,8192,65536` | KV lengths of the decode group (`none` skips it) |

#![allow(dead_code)]

use attnbench::workload::{Qkv, gaussian};
use attnbench::{Attention, Pattern, Registry, Shape};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn list(name: &str, default: &[usize]) -> Vec<usize> {
    match var(name) {
        Some(v) if v == "none" => Vec::new(),
        Some(v) => v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: '{x}' is not an integer"))
            })
            .collect(),
        None => default.to_vec(),
    }
}

/// The variants to bench.
pub fn variants() -> Vec<Box<dyn Attention>> {
    let reg = Registry::builtin();
    match var("ATTNBENCH_BENCH_VARIANTS") {
        Some(list) => reg
            .build_list(&list)
            .unwrap_or_else(|e| panic!("ATTNBENCH_BENCH_VARIANTS: {e}")),
        None => reg.defaults(),
    }
}

/// The sequence lengths.
pub fn lengths() -> Vec<usize> {
    list("ATTNBENCH_BENCH_LENGTHS", &[256, 1024, 4096])
}

/// The KV lengths of the decode group.
pub fn decode_lengths() -> Vec<usize> {
    list("ATTNBENCH_BENCH_DECODE", &[1024, 8192, 65536])
}

/// `(batch, heads, head_dim)`.
pub fn shape() -> (usize, usize, usize) {
    match list("ATTNBENCH_BENCH_SHAPE", &[1, 8, 64])[..] {
        [b, h, d] => (b, h, d),
        _ => panic!("ATTNBENCH_BENCH_SHAPE: expected batch,heads,head_dim"),
    }
}

/// The causal flags to bench.
pub fn causal_flags() -> Vec<bool> {
    match var("ATTNBENCH_BENCH_CAUSAL").as_deref() {
        None | Some("both") => vec![false, true],
        Some("true") => vec![true],
        Some("false") => vec![false],
        Some(other) => panic!("ATTNBENCH_BENCH_CAUSAL: expected both, true or false, got {other}"),
    }
}

/// Whether `v` can run `shape` under `opts` within the run budget (half the RAM, as
/// `sweep`'s default): its inputs, output and analytic workspace. Says why on stderr when not.
pub fn runnable(v: &dyn Attention, shape: &Shape, opts: &attnbench::Options) -> bool {
    let why = v.unsupported(shape, opts);
    if !why.is_empty() {
        return false;
    }
    let needed = shape
        .input_bytes()
        .saturating_add(shape.output_bytes())
        .saturating_add(v.cost(shape, opts, 1).workspace_bytes);
    let budget = attnbench::harness::machine::default_budget();
    if needed > budget {
        eprintln!(
            "skipped {v} at n = {}: needs ~{} MB, over the budget of {} MB (half the RAM)",
            shape.n_kv(),
            needed >> 20,
            budget >> 20
        );
        return false;
    }
    true
}

/// Seeded Gaussian inputs.
pub fn inputs(batch: usize, heads: usize, n_q: usize, n_kv: usize, d: usize) -> (Shape, Qkv) {
    let shape = Shape::new(batch, heads, heads, n_q, n_kv, d, d).expect("valid bench shape");
    (shape, gaussian(&shape, 1.0, 0))
}

/// The (query, key) pairs one call of `v` on `p` attends: every pair its mask allows
/// (causal masking and the variant's own pattern), over all batch entries and heads. The
/// criterion throughput, so that a causal or sparse variant is not credited with `n^2` pairs.
pub fn pairs(v: &dyn Attention, p: &attnbench::Problem<'_>) -> u64 {
    let shape = p.shape();
    let density = p.mask(v.pattern()).density(shape.geometry());
    let all = (shape.batch() * shape.heads() * shape.n_q() * shape.n_kv()) as f64;
    (density * all).round() as u64
}
