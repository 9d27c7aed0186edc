//! Criterion benchmarks of every registered variant.
//!
//! Environment variables (all optional):
//! - `ATTNBENCH_BENCH_LENGTHS`: comma-separated sequence lengths (default `256,1024,4096`).
//! - `ATTNBENCH_BENCH_VARIANTS`: comma-separated specs (default: every registered variant).

use std::time::Duration;

use attnbench::workload::gaussian;
use attnbench::{Options, Problem, Registry, Shape};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ndarray::Array4;

fn lengths() -> Vec<usize> {
    std::env::var("ATTNBENCH_BENCH_LENGTHS")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().parse().expect("ATTNBENCH_BENCH_LENGTHS: integers"))
                .collect()
        })
        .unwrap_or_else(|| vec![256, 1024, 4096])
}

fn bench_variants(c: &mut Criterion) {
    let reg = Registry::builtin();
    let variants = match std::env::var("ATTNBENCH_BENCH_VARIANTS") {
        Ok(list) => reg
            .build_list(&list)
            .expect("ATTNBENCH_BENCH_VARIANTS: valid specs"),
        Err(_) => reg.defaults(),
    };
    let (heads, d) = (8, 64);
    for causal in [false, true] {
        let mut group = c.benchmark_group(format!(
            "b1_h{heads}_d{d}_{}",
            if causal { "causal" } else { "bidirectional" }
        ));
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for n in lengths() {
            let shape = Shape::self_attention(1, heads, n, d).expect("valid shape");
            let qkv = gaussian(&shape, 1.0, 0);
            let opts = Options::new().causal(causal);
            let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).expect("valid");
            let mut out = Array4::<f32>::zeros(shape.out_dims());
            // Useful work of dense attention, so throughput compares across variants.
            group.throughput(Throughput::Elements((heads * n * n) as u64));
            for v in &variants {
                group.bench_with_input(BenchmarkId::new(v.to_string(), n), &n, |b, _| {
                    b.iter(|| v.forward(&p, out.view_mut()).expect("forward"))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_variants);
criterion_main!(benches);
