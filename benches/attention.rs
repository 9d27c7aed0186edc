//! Criterion benchmarks of every registered variant (see `benches/common.rs` for the
//! environment variables that choose variants, lengths and shapes).
//!
//! Groups: one per (shape, causal) configuration, with `BenchmarkId::new(spec, n)` so
//! criterion draws one line per variant; a decode group (one query against a long KV, the
//! stateless batch call) for `full`, `flash` and `linear`; and a generate group: one
//! `Decoder::step` after a prompt of each decode length, for the KV cache (f32 and f16),
//! window, blocktopk, linear and retention decoders. Throughput is the (query, key) pairs a
//! call's mask allows (about half of `n^2` causal, the pattern's pairs for sparse variants).
//! Group names end in the worker threads, e.g. `b1_h8_d64_causal_t2`.
//!
//! `cargo bench` writes criterion's HTML report to `target/criterion/report/index.html`: its
//! charts are drawn with plotters, which this crate builds with the bundled font
//! (`ab_glyph`), so `main` registers that font before criterion draws anything.
//!
//! ```text
//! cargo bench --bench attention
//! ATTNBENCH_BENCH_VARIANTS=flash,window ATTNBENCH_BENCH_LENGTHS=1024 cargo bench --bench attention
//! ```

use std::time::{Duration, Instant};

use attnbench::decode::{DecodeOptions, KvStore};
use attnbench::workload::gaussian;
use attnbench::{Options, Problem, Registry, Shape};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use ndarray::{Array3, Array4, s};

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
            "b{batch}_h{heads}_d{d}_{}_t{}",
            if causal { "causal" } else { "bidirectional" },
            rayon::current_num_threads()
        ));
        configure(&mut group);
        for n in common::lengths() {
            let (shape, qkv) = common::inputs(batch, heads, n, n, d);
            let opts = Options::new().causal(causal);
            let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).expect("valid");
            let mut out = Array4::<f32>::zeros(shape.out_dims());
            for v in &variants {
                if !common::runnable(v.as_ref(), &shape, &opts) {
                    continue;
                }
                group.throughput(Throughput::Elements(common::pairs(v.as_ref(), &p)));
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
    let mut group = c.benchmark_group(format!(
        "decode_b{batch}_h{heads}_d{d}_t{}",
        rayon::current_num_threads()
    ));
    configure(&mut group);
    for n_kv in lengths {
        let (shape, qkv) = common::inputs(batch, heads, 1, n_kv, d);
        let opts = Options::new().causal(true);
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).expect("valid");
        let mut out = Array4::<f32>::zeros(shape.out_dims());
        for v in &variants {
            if !common::runnable(v.as_ref(), &shape, &opts) {
                continue;
            }
            group.throughput(Throughput::Elements(common::pairs(v.as_ref(), &p)));
            group.bench_with_input(BenchmarkId::new(v.to_string(), n_kv), &n_kv, |b, _| {
                b.iter(|| {
                    attnbench::attention::run(v.as_ref(), &p, out.view_mut()).expect("forward")
                })
            });
        }
    }
    group.finish();
}

/// Generation through each variant's decoder: a prompt of `n` tokens prefilled, then every
/// iteration one `step` (append a token, attend its query). The cache grows by one token per
/// iteration; after 4096 the decoder is rebuilt and prefilled again, outside the timing.
fn bench_generate(c: &mut Criterion) {
    let lengths = common::decode_lengths();
    if lengths.is_empty() {
        return;
    }
    let (batch, heads, d) = common::shape();
    let kv_heads = if heads % 2 == 0 { 2 } else { 1 };
    let registry = Registry::builtin();
    let cells: Vec<(&str, KvStore)> = vec![
        ("flash", KvStore::F32),
        ("flash", KvStore::F16),
        ("window(w=4096)", KvStore::F32),
        ("blocktopk", KvStore::F32),
        ("linear(phi=elu1)", KvStore::F32),
        ("retention(phi=none)", KvStore::F32),
    ];
    const ROOM: usize = 4096;
    let mut group = c.benchmark_group(format!(
        "generate_b{batch}_h{heads}_kv{kv_heads}_d{d}_t{}",
        rayon::current_num_threads()
    ));
    configure(&mut group);
    for n in lengths {
        let shape = Shape::new(batch, heads, kv_heads, 1, n + 1, d, d).expect("valid");
        let qkv = gaussian(&shape, 1.0, 0);
        let (q, k, v) = (
            qkv.q.slice(s![.., .., 0, ..]),
            qkv.k.slice(s![.., .., n, ..]),
            qkv.v.slice(s![.., .., n, ..]),
        );
        let step_shape = Shape::new(batch, heads, kv_heads, 1, 1, d, d).expect("valid");
        group.throughput(Throughput::Elements((batch * heads * n) as u64));
        for &(spec, store) in &cells {
            let variant = registry.build(spec).expect("a valid spec");
            let opts = DecodeOptions {
                kv: store,
                capacity: n + ROOM,
                ..DecodeOptions::default()
            };
            let fresh = || {
                let mut dec = variant
                    .decoder(&step_shape, &opts)
                    .expect("the variant decodes")
                    .expect("a decoder");
                dec.prefill(
                    qkv.k.slice(s![.., .., ..n, ..]),
                    qkv.v.slice(s![.., .., ..n, ..]),
                )
                .expect("prefill");
                dec
            };
            let mut dec = fresh();
            let mut out = Array3::<f32>::zeros((batch, heads, d));
            let id = BenchmarkId::new(format!("{variant} {store}"), n);
            group.bench_with_input(id, &n, |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if dec.len() >= n + ROOM {
                            dec = fresh();
                        }
                        let t = Instant::now();
                        dec.step(q, k, v, out.view_mut()).expect("step");
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_lengths, bench_decode, bench_generate);

fn main() {
    attnbench::report::charts::register_font();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
