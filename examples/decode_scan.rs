//! The decode scan on one thread, as a rate against the same run's one-core FMA peak and
//! against a streaming read of the same bytes: a group of query heads over one KV head's
//! cache of `slots` keys, held in L1/L2 (small caches) or read from memory (large ones). It
//! shows whether a decoder is bound by its arithmetic or by the memory system.
//!
//! ```text
//! cargo run --release --example decode_scan                 # g = 4, d = 64, 1K..1M slots
//! cargo run --release --example decode_scan -- 8 128        # g = 8, d = 128
//! ```

use std::time::Instant;

use attnbench::harness::machine::ReadProbe;
use attnbench::kernels::dispatch::{self, Isa, KV_BLOCK, KvData, KvPartial, fma_chains};

/// The fastest of 5 timings of `f`, each repeating it for at least 20 ms, per call.
fn best_of<F: FnMut()>(mut f: F) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut calls = 0usize;
            while calls == 0 || t.elapsed().as_secs_f64() < 0.02 {
                f();
                calls += 1;
            }
            t.elapsed().as_secs_f64() / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let arg = |i: usize, default: usize| match std::env::args().nth(i).map(|s| s.parse()) {
        None => default,
        Some(Ok(v)) if v > 0 => v,
        _ => {
            eprintln!(
                "error: arguments are the query group g and head dimension d, positive integers"
            );
            std::process::exit(2);
        }
    };
    let (g, d) = (arg(1, 4), arg(2, 64));
    let isa = Isa::detect();
    let peak = {
        let iters = 2_000_000;
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let (flops, v) = fma_chains(isa, iters);
                std::hint::black_box(v);
                flops / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    println!("{isa}: one-core FMA peak {peak:.1} GFLOP/s; g = {g}, d = dv = {d}, one thread");
    println!("store   slots   cache MiB  blocks/us  GFLOP/s  % of peak  read GB/s  % of a read");
    let q = vec![0.01f32; g * d];
    let mut probe = ReadProbe::default();
    for slots in [1024usize, 4096, 65536, 1 << 20] {
        let kf: Vec<f32> = (0..slots * d).map(|i| (i % 7) as f32 * 0.01).collect();
        let vf = kf.clone();
        let kh: Vec<u16> = kf
            .iter()
            .map(|&x| attnbench::kernels::half::f32_to_f16(x))
            .collect();
        let vh = kh.clone();
        for (name, kv, bytes) in [
            ("f32", KvData::F32 { k: &kf, v: &vf }, 4),
            ("f16", KvData::F16 { k: &kh, v: &vh }, 2),
        ] {
            let mut st = KvPartial::new(g, d);
            let t = best_of(|| {
                st = KvPartial::new(g, d);
                dispatch::kv_scan(isa, &q, d, kv, 0..slots, &mut st);
                std::hint::black_box(&st);
            });
            let cache = (2 * slots * d * bytes) as f64;
            let blocks = (slots / KV_BLOCK) as f64;
            // Per key: g (d + dv) multiply-adds.
            let gflops = (2 * g * slots * 2 * d) as f64 / t / 1e9;
            // One thread reads: the probe runs on the calling thread below 4 MiB only, so
            // time it in a one-thread pool.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("a pool");
            let read = pool.install(|| probe.rate(cache as u64, 4));
            println!(
                "{name}  {slots:>8}  {:>9.2}  {:>9.2}  {gflops:>7.1}  {:>9.0}  {:>9.1}  {:>11.0}",
                cache / (1 << 20) as f64,
                blocks / t / 1e6,
                100.0 * gflops / peak,
                cache / t / 1e9,
                100.0 * cache / t / 1e9 / read,
            );
        }
    }
}
