//! Criterion benchmarks of every registered variant (see `benches/common.rs` for the
//! environment variables that choose variants, lengths and shapes).
//!
//! Groups: one per (shape, causal) configuration, with `BenchmarkId::new(spec, n)` so
//! criterion draws one line per variant, and a decode group (one query against a long KV) for
//! `full`, `flash` and `linear`. Throughput is the number of (query, key) pairs per call.
//!
//! ```text
//! cargo bench --bench attention
//! ATTNBENCH_BENCH_VARIANTS=flash,window ATTNBENCH_BENCH_LENGTHS=1024 cargo bench --bench attention
//! ```

use std::time::Duration;

use attnbench::{Options, Problem, Registry};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ndarray::Array4;

mod common;

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
}

fn bench_lengths(c: &mut Criterion) {
    let variants = common::variants();
    let (batch, heads, d) = common::shape();
    for causal in common::causal_flags() {
        let mut group = c.benchmark_group(format!(
            "b{batch}_h{heads}_d{d}_{}",
            if causal { "causal" } else { "bidirectional" }
        ));
        configure(&mut group);
        for n in common::lengths() {
            let (shape, qkv) = common::inputs(batch, heads, n, n, d);
            let opts = Options::new().causal(causal);
            let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).expect("valid");
            let mut out = Array4::<f32>::zeros(shape.out_dims());
            group.throughput(Throughput::Elements((batch * heads * n * n) as u64));
            for v in &variants {
                if !v.unsupported(&shape, &opts).is_empty() {
                    continue;
                }
                group.bench_with_input(BenchmarkId::new(v.to_string(), n), &n, |b, _| {
                    b.iter(|| {
                        attnbench::attention::run(v.as_ref(), &p, out.view_mut()).expect("forward")
                    })
                });
            }
        }
        group.finish();
    }
}

fn bench_decode(c: &mut Criterion) {
    let lengths = common::decode_lengths();
    if lengths.is_empty() {
        return;
    }
    let (batch, heads, d) = common::shape();
    let variants = Registry::builtin()
        .build_list("full,flash,linear(phi=elu1),linear(phi=favor,m=256)")
        .expect("valid specs");
    let mut group = c.benchmark_group(format!("decode_b{batch}_h{heads}_d{d}"));
    configure(&mut group);
    for n_kv in lengths {
        let (shape, qkv) = common::inputs(batch, heads, 1, n_kv, d);
        let opts = Options::new().causal(true);
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).expect("valid");
        let mut out = Array4::<f32>::zeros(shape.out_dims());
        group.throughput(Throughput::Elements((batch * heads * n_kv) as u64));
        for v in &variants {
            group.bench_with_input(BenchmarkId::new(v.to_string(), n_kv), &n_kv, |b, _| {
                b.iter(|| {
                    attnbench::attention::run(v.as_ref(), &p, out.view_mut()).expect("forward")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_lengths, bench_decode);
criterion_main!(benches);
