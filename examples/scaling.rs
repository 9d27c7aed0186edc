//! Time and peak heap bytes of chosen variants across lengths, at b=1, h=8, d=64.
//!
//! ```text
//! cargo run --release --example scaling -- "flash,window" 4096,8192,16384 [causal]
//! ```
//!
//! Prints a row per (variant, n) and, per variant, the time ratio between consecutive
//! lengths. The full sweep harness (`attnbench sweep`) is the complete tool; this example
//! is a quick check of scaling claims.

use std::time::Duration;

use attnbench::harness::memory::{CountingAlloc, measure};
use attnbench::harness::timing::{TimingConfig, time};
use attnbench::workload::gaussian;
use attnbench::{Options, Problem, Registry, Shape};
use ndarray::Array4;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> attnbench::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let specs = args.first().map(String::as_str).unwrap_or("flash,window");
    let lengths: Vec<usize> = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("4096,8192,16384")
        .split(',')
        .map(|s| s.parse().expect("lengths are integers"))
        .collect();
    let causal = args.iter().any(|a| a == "causal");
    let reg = Registry::builtin();
    let variants = reg.build_list(specs)?;
    let cfg = TimingConfig {
        warmup: 1,
        min_repeats: 3,
        min_time: Duration::from_secs(1),
        max_repeats: 50,
    };
    let opts = Options::new().causal(causal);
    println!("threads={} causal={causal}", rayon::current_num_threads());
    let mut results: Vec<(String, usize, f64)> = Vec::new();
    for &n in &lengths {
        let shape = Shape::self_attention(1, 8, n, 64)?;
        let qkv = gaussian(&shape, 1.0, 0);
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)?;
        let mut out = Array4::<f32>::zeros(shape.out_dims());
        for v in &variants {
            let t = time(&cfg, || {
                attnbench::attention::run(v.as_ref(), &p, out.view_mut())
            })?;
            let (r, peak) = measure(|| attnbench::attention::run(v.as_ref(), &p, out.view_mut()));
            r?;
            let cost = v.cost(&shape, &opts, rayon::current_num_threads());
            println!(
                "{:<40} n={n:6}: median {:9.2} ms  peak heap {:>11} B  workspace {:>11} B  {:6.1} GFLOP/s executed",
                v.to_string(),
                t.median.as_secs_f64() * 1e3,
                peak.unwrap_or(0),
                cost.workspace_bytes,
                cost.flops / t.median.as_secs_f64() / 1e9
            );
            results.push((v.to_string(), n, t.median.as_secs_f64()));
        }
    }
    for v in &variants {
        let spec = v.to_string();
        let times: Vec<&(String, usize, f64)> = results.iter().filter(|r| r.0 == spec).collect();
        for w in times.windows(2) {
            println!(
                "{spec:<40} time(n={}) / time(n={}) = {:.2}",
                w[1].1,
                w[0].1,
                w[1].2 / w[0].2
            );
        }
    }
    Ok(())
}
