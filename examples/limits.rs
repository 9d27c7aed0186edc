//! The machine limits the sweep measures, per SIMD path: FMA throughput of one core at each
//! vector width the CPU supports, and the read bandwidth.
//!
//! ```text
//! cargo run --release --example limits
//! ```
//!
//! If the 512-bit rate equals the 256-bit rate, the core executes 512-bit FMAs at half width
//! (two 256-bit halves), and its peak is what the 256-bit path already reaches. Where the CPU
//! has AVX512-BF16, the `vdpbf16ps` rate is printed too: `flash(dtype=bf16)` can only beat
//! `f32` where it exceeds the 512-bit FMA rate.

use attnbench::kernels::dispatch::{Isa, Path, fma_chains};

fn main() {
    let iters = 20_000_000;
    println!("12 independent FMA chains, {iters} rounds, one thread; best of 5");
    for path in Path::ALL {
        let Some(isa) = Isa::new(path) else {
            println!("{path:>10}: not available");
            continue;
        };
        fma_chains(isa, iters / 10);
        let best = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                let (flops, v) = fma_chains(isa, iters);
                std::hint::black_box(v);
                flops / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max);
        println!("{isa:>10}: {best:7.1} GFLOP/s");
    }
    if let Some(tok) = attnbench::kernels::dispatch::Bf16Dot::detect(Isa::detect()) {
        let best = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                let (flops, v) = attnbench::kernels::dispatch::bf16_dot_chains(tok, iters / 2);
                std::hint::black_box(v);
                flops / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max);
        println!("vdpbf16ps: {best:7.1} GFLOP/s (a multiply and an add per bf16 pair)");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool");
    let limits = pool.install(attnbench::harness::machine::measure_limits);
    println!("{limits:#?}");
}
