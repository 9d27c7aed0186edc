//! The foundation's performance baseline: `full` and `flash` against the GEMM reference rate
//! at b=1, h=8, d=64, n=4096 (non-causal), peak heap bytes at n=1024 and n=8192, and a scan
//! of flash block sizes.
//!
//! ```text
//! cargo run --release --example baseline            # baseline numbers
//! cargo run --release --example baseline -- tiling  # also scan (bq, bk) at n=4096
//! cargo run --release --example baseline -- 'flash(isa=avx2)' full  # time only these
//! ```

use std::time::Duration;

use attnbench::harness::machine::measure_gemm;
use attnbench::harness::memory::{CountingAlloc, measure};
use attnbench::harness::timing::{TimingConfig, time};
use attnbench::workload::gaussian;
use attnbench::{Options, Problem, Registry, Shape};
use ndarray::Array4;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> attnbench::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scan = args.iter().any(|a| a == "tiling");
    let chosen: Vec<String> = args.into_iter().filter(|a| a != "tiling").collect();
    let reg = Registry::builtin();
    let cfg = TimingConfig {
        warmup: 1,
        min_repeats: 5,
        min_time: Duration::from_secs(2),
        max_repeats: 100,
    };
    let (h, d, n) = (8, 64, 4096);
    println!("threads: {}", rayon::current_num_threads());

    // The GEMM reference: attention's two products, one head per thread, as the sweep does.
    let gemm_gflops = measure_gemm(n, n, d);
    println!("GEMM reference at n={n}, d={d}: {gemm_gflops:.1} GFLOP/s");

    let shape = Shape::self_attention(1, h, n, d)?;
    let qkv = gaussian(&shape, 1.0, 0);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), Options::new())?;
    let mut out = Array4::<f32>::zeros(shape.out_dims());
    let flops = 4.0 * (n * n * d * h) as f64;
    let mut specs = if chosen.is_empty() {
        vec!["full".to_string(), "flash".to_string()]
    } else {
        chosen.clone()
    };
    if scan {
        for bq in [16, 32, 64, 128] {
            for bk in [64, 128, 256, 512, 1024] {
                specs.push(format!("flash(bq={bq},bk={bk})"));
            }
        }
    }
    let mut medians = Vec::new();
    for spec in &specs {
        let v = reg.build(spec)?;
        let t = time(&cfg, || {
            attnbench::attention::run(v.as_ref(), &p, out.view_mut())
        })?;
        medians.push((v.to_string(), t.median.as_secs_f64()));
        println!(
            "{:<24} n={n}: median {:8.2} ms (min {:.2}, max {:.2}, {} runs), {:6.1} GFLOP/s, {:4.0}% of GEMM",
            v.to_string(),
            t.median.as_secs_f64() * 1e3,
            t.min.as_secs_f64() * 1e3,
            t.max.as_secs_f64() * 1e3,
            t.repeats,
            flops / t.median.as_secs_f64() / 1e9,
            100.0 * flops / t.median.as_secs_f64() / 1e9 / gemm_gflops
        );
    }
    if !chosen.is_empty() {
        return Ok(());
    }
    println!(
        "flash / full time ratio at n={n}: {:.2}",
        medians[1].1 / medians[0].1
    );

    for n in [1024, 8192] {
        let shape = Shape::self_attention(1, h, n, d)?;
        let qkv = gaussian(&shape, 1.0, 0);
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), Options::new())?;
        let mut out = Array4::<f32>::zeros(shape.out_dims());
        for spec in ["full", "flash"] {
            let v = reg.build(spec)?;
            attnbench::attention::run(v.as_ref(), &p, out.view_mut())?; // warm-up: rayon's pool start-up allocates
            let (r, peak) = measure(|| attnbench::attention::run(v.as_ref(), &p, out.view_mut()));
            r?;
            let cost = v.cost(&shape, &p.opts(), rayon::current_num_threads());
            println!(
                "{:<24} n={n:5}: peak heap {:>12} bytes (analytic workspace {:>12})",
                v.to_string(),
                peak.expect("the counting allocator is installed"),
                cost.workspace_bytes
            );
        }
    }
    Ok(())
}
