//! What machine and build a run happened on.

use serde::{Deserialize, Serialize};

/// The machine and build of a run, recorded in its JSON metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU model name from `/proc/cpuinfo` (or `"unknown"`).
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// SIMD features detected at run time, e.g. `["avx2", "fma", "avx512f"]`.
    pub simd: Vec<String>,
    /// Total RAM in bytes, when known.
    pub memory_bytes: Option<u64>,
    /// The operating system and architecture.
    pub os: String,
    /// `rustc --version` of the build.
    pub rustc: String,
    /// This crate's version.
    pub crate_version: String,
    /// The git commit of the build, when it was built from a git checkout.
    pub git_commit: Option<String>,
}

impl Machine {
    /// Reads the current machine.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let commit = env!("ATTNBENCH_GIT_COMMIT");
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            simd: simd_features(),
            memory_bytes: total_memory(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            rustc: env!("ATTNBENCH_RUSTC_VERSION").to_string(),
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: (!commit.is_empty()).then(|| commit.to_string()),
        }
    }
}

/// The SIMD instruction sets this CPU supports, widest last.
pub fn simd_features() -> Vec<String> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    found.push($f.to_string());
                }
            )*};
        }
        probe!(
            "sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon".to_string());
        }
    }
    found
}

/// Total RAM from `/proc/meminfo`, when readable.
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The machine's own limits, measured in the run: what fraction of the hardware each result
/// reaches is reported against these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// The SIMD path measured (the widest available).
    pub isa: String,
    /// FMA throughput of one core at that width, GFLOP/s (12 independent FMA chains).
    pub fma_gflops_one_core: f64,
    /// The same on every worker thread at once, GFLOP/s.
    pub fma_gflops_all_threads: f64,
    /// Worker threads of the all-threads figure.
    pub threads: usize,
    /// Sustained read bandwidth over a 256 MiB buffer (far beyond the last-level cache),
    /// every worker thread reading its share, GB/s: the median of 7 passes after a warm-up
    /// one. (On a shared VM single passes ranged from 23 to 42 GB/s; the median is the rate
    /// a long decode can count on, the maximum a burst.)
    pub read_gbytes_per_s: f64,
}

/// Measures [`Limits`] on the current rayon pool (about a second; up to two on a busy host).
pub fn measure_limits() -> Limits {
    use crate::kernels::dispatch::{self, Isa};
    use rayon::prelude::*;
    let isa = Isa::detect();
    let threads = rayon::current_num_threads();
    let rate = |iters: usize| {
        let t = std::time::Instant::now();
        let (flops, v) = dispatch::fma_chains(isa, iters);
        std::hint::black_box(v);
        flops / t.elapsed().as_secs_f64() / 1e9
    };
    let iters = 2_000_000;
    rate(iters / 10);
    let one = (0..3).map(|_| rate(iters)).fold(0.0, f64::max);
    let all_once = || {
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                let flops: f64 = rayon::broadcast(|_| {
                    let (f, v) = dispatch::fma_chains(isa, iters);
                    std::hint::black_box(v);
                    f
                })
                .iter()
                .sum();
                flops / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    // On a shared host a neighbour can hold a core for seconds: an all-threads figure far
    // below `threads` times one core's is measured again (up to 10 times, 100 ms apart) and
    // the best kept, since a peak is the rate the machine can reach.
    let mut all = all_once();
    for _ in 0..10 {
        if all >= 0.8 * one * threads as f64 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        all = all.max(all_once());
    }
    let buf = vec![1.0f32; 64 << 20];
    let chunk = buf.len().div_ceil(threads);
    let mut rates: Vec<f64> = (0..8)
        .map(|_| {
            let t = std::time::Instant::now();
            let s: f32 = buf.par_chunks(chunk).map(|c| dispatch::sum(isa, c)).sum();
            std::hint::black_box(s);
            (buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .skip(1)
        .collect();
    rates.sort_by(f64::total_cmp);
    let bw = rates[rates.len() / 2];
    Limits {
        isa: isa.to_string(),
        fma_gflops_one_core: one,
        fma_gflops_all_threads: all,
        threads,
        read_gbytes_per_s: bw,
    }
}
