//! What machine and build a run happened on ([`Machine::detect`]), and its limits measured
//! in the run ([`measure_limits`], [`measure_gemm`]).

use crate::results::record::{Build, Limits, Machine};

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
            host: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
            thp: read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled"),
            caches: caches(),
            build: Some(Build {
                profile: env!("ATTNBENCH_PROFILE").to_string(),
                opt_level: env!("ATTNBENCH_OPT_LEVEL").to_string(),
                rustflags: env!("ATTNBENCH_RUSTFLAGS").to_string(),
                target_features: env!("ATTNBENCH_TARGET_FEATURES").to_string(),
            }),
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The caches of CPU 0 from sysfs, e.g. `L1d 48K`, `L2 2048K`, `L3 107520K`.
fn caches() -> Vec<String> {
    let mut out = Vec::new();
    for index in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let (Some(level), Some(kind), Some(size)) = (
            read_trimmed(&format!("{dir}/level")),
            read_trimmed(&format!("{dir}/type")),
            read_trimmed(&format!("{dir}/size")),
        ) else {
            break;
        };
        let kind = match kind.as_str() {
            "Data" => "d",
            "Instruction" => "i",
            _ => "",
        };
        out.push(format!("L{level}{kind} {size}"));
    }
    out
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

/// The default memory budget of a run: half the machine's RAM (8 GiB when unknown).
pub fn default_budget() -> u64 {
    total_memory().map_or(8 << 30, |m| m / 2)
}

/// Total RAM from `/proc/meminfo`, when readable.
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The clock `/proc/cpuinfo` reports for the first CPU, MHz (on a VM the nominal clock).
pub fn clock_mhz() -> Option<f64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    line.split_once(':')?.1.trim().parse().ok()
}

/// Measures [`Limits`] on the current rayon pool (about a second; up to two on a busy host).
pub fn measure_limits() -> Limits {
    use crate::kernels::dispatch::{self, Isa};
    let isa = Isa::detect();
    let threads = rayon::current_num_threads();
    let rate = |iters: usize| {
        let t = std::time::Instant::now();
        let (flops, v) = dispatch::fma_chains(isa, iters);
        std::hint::black_box(v);
        flops / t.elapsed().as_secs_f64() / 1e9
    };
    // A peak is a maximum: the best of many short trials (~3 ms each), with every trial kept
    // so the report can show the spread.
    let iters = 1_000_000;
    rate(iters / 10);
    let one_trials: Vec<f64> = (0..9).map(|_| rate(iters)).collect();
    let one = one_trials.iter().copied().fold(0.0, f64::max);
    let all_once = || {
        let t = std::time::Instant::now();
        let flops: f64 = rayon::broadcast(|_| {
            let (f, v) = dispatch::fma_chains(isa, iters);
            std::hint::black_box(v);
            f
        })
        .iter()
        .sum();
        flops / t.elapsed().as_secs_f64() / 1e9
    };
    let mut all_trials: Vec<f64> = (0..9).map(|_| all_once()).collect();
    // On a shared host a neighbour can hold a core for seconds: an all-threads figure far
    // below `threads` times one core's is measured again (up to 10 times, 100 ms apart).
    for _ in 0..10 {
        if all_trials.iter().copied().fold(0.0, f64::max) >= 0.8 * one * threads as f64 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        all_trials.push(all_once());
    }
    let all = all_trials.iter().copied().fold(0.0, f64::max);
    let bw = read_bandwidth(8);
    Limits {
        isa: isa.to_string(),
        fma_gflops_one_core: one,
        fma_gflops_all_threads: all,
        fma_trials_one_core: one_trials,
        fma_trials_all_threads: all_trials,
        clock_mhz: clock_mhz(),
        lanes: match isa.path() {
            crate::kernels::isa::Path::Avx512 => Some(16),
            crate::kernels::isa::Path::Avx2Fma => Some(8),
            crate::kernels::isa::Path::Portable => None,
        },
        threads,
        read_gbytes_per_s: bw,
        read_probe_bytes: Some(read_probe_bytes()),
    }
}

/// The run-wide read-bandwidth probe's buffer: 256 MiB, or twice the largest CPU cache where
/// that is more (a 2-core VM slice of a Xeon can report a 260 MiB L3), so that it reads from
/// memory.
pub fn read_probe_bytes() -> u64 {
    (256u64 << 20).max(2 * largest_cache_bytes().unwrap_or(0))
}

/// Sustained read bandwidth, GB/s, over a buffer of [`read_probe_bytes`]: see
/// [`ReadProbe::rate`].
pub fn read_bandwidth(passes: usize) -> f64 {
    ReadProbe::default().rate(read_probe_bytes(), passes)
}

/// The largest CPU cache of CPU 0 (sysfs), bytes, when readable.
pub fn largest_cache_bytes() -> Option<u64> {
    // The sizes `caches` reads for the run metadata, e.g. `L3 266240K`.
    caches()
        .iter()
        .filter_map(|c| parse_cache_size(c.split_whitespace().nth(1)?))
        .max()
}

/// A sysfs cache size (`48K`, `2048K`, `260M`, `512`) in bytes.
fn parse_cache_size(s: &str) -> Option<u64> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// Buffers from this size up are read by every worker thread; smaller ones by one, as the
/// decoders scan small states (a rayon round trip costs more than the read).
const PARALLEL_READ_BYTES: u64 = 4 << 20;

/// Each timed pass repeats its read until at least this long, so that small buffers are
/// timed above the clock's resolution.
const MIN_PASS: std::time::Duration = std::time::Duration::from_millis(2);

/// A read-bandwidth probe: a buffer (grown on demand, never shrunk, first touched outside
/// any timing) and the streaming read [`dispatch::sum`](crate::kernels::dispatch::sum) over
/// a prefix of it.
#[derive(Debug, Default)]
pub struct ReadProbe {
    buf: Vec<f32>,
}

impl ReadProbe {
    /// Bytes the probe holds.
    pub fn bytes(&self) -> u64 {
        (self.buf.len() * 4) as u64
    }

    /// GB/s reading `bytes` (rounded down to whole floats, at least one): every worker thread
    /// of the current pool its contiguous share from 4 MiB up, one thread below; the median
    /// of `passes - 1` passes after a warm-up one, each repeating the read for at least 2 ms.
    pub fn rate(&mut self, bytes: u64, passes: usize) -> f64 {
        use crate::kernels::dispatch::{self, Isa};
        use rayon::prelude::*;
        let isa = Isa::detect();
        let floats = ((bytes / 4) as usize).max(1);
        if self.buf.len() < floats {
            self.buf.resize(floats, 1.0);
        }
        let buf = &self.buf[..floats];
        let parallel = bytes >= PARALLEL_READ_BYTES && rayon::current_num_threads() > 1;
        let chunk = floats.div_ceil(rayon::current_num_threads());
        let read = || -> f32 {
            if parallel {
                buf.par_chunks(chunk).map(|c| dispatch::sum(isa, c)).sum()
            } else {
                dispatch::sum(isa, buf)
            }
        };
        let mut rates: Vec<f64> = (0..passes.max(2))
            .map(|_| {
                let t = std::time::Instant::now();
                let mut reads = 0usize;
                while reads == 0 || t.elapsed() < MIN_PASS {
                    std::hint::black_box(read());
                    reads += 1;
                }
                (reads * floats * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .skip(1)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }
}

/// The GEMM reference rate of attention at `n_q` queries and `n_kv` keys: GFLOP/s of
/// [`gemm()`](crate::kernels::gemm::gemm) running the two products of one head, scores
/// `[r, d] x [d, c]` then `[r, c] x [c, d]`, with `r = min(n_q, 1024)` query rows and
/// `c = min(n_kv, 16384)` keys, one head per thread at once (capped so the measurement stays
/// small at any length; the rate no longer changes at those sizes), the best of three
/// medians. `full` runs these two products plus its softmax; it is a reference, not a
/// ceiling: a fused kernel keeping its tiles in cache can beat it.
pub fn measure_gemm(n_q: usize, n_kv: usize, d: usize) -> f64 {
    gemm_rate(
        n_q.min(1024),
        n_kv.min(16384),
        d,
        std::time::Duration::from_millis(100),
        3,
    )
}

/// The drift probe: the GEMM rate of a fixed small shape (256 queries, 1024 keys, d = 64)
/// over ~20 ms. The sweep times it at the start of every round of every length; the same
/// work at every length, so a change in it is the machine changing (a neighbour, the clock),
/// not the shape.
pub fn probe_gflops() -> f64 {
    gemm_rate(256, 1024, 64, std::time::Duration::from_millis(20), 1)
}

fn gemm_rate(rows: usize, n: usize, d: usize, min_time: std::time::Duration, trials: usize) -> f64 {
    use super::timing::{TimingConfig, time};
    use crate::kernels::gemm::gemm;
    use ndarray::Array2;
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let q = Array2::<f32>::from_elem((rows, d), 0.5);
    let k = Array2::<f32>::from_elem((n, d), 0.25);
    let mut work: Vec<(Array2<f32>, Array2<f32>)> = (0..threads)
        .map(|_| (Array2::zeros((rows, n)), Array2::zeros((rows, d))))
        .collect();
    let mut round = || {
        work.par_iter_mut().for_each(|(s, o)| {
            gemm(1.0, &q.view(), &k.t(), 0.0, &mut s.view_mut());
            gemm(1.0, &s.view(), &k.view(), 0.0, &mut o.view_mut());
        });
    };
    round();
    let cfg = TimingConfig {
        warmup: 0,
        min_repeats: 3,
        min_time,
        max_repeats: 1000,
    };
    // The best of the trials' medians, so that a neighbour's burst on a shared machine
    // during one of them (seen: 104 GFLOP/s against 160-185 in every other trial) does not
    // lower it.
    let best = (0..trials.max(1))
        .map(|_| {
            time(&cfg, || {
                round();
                Ok::<(), ()>(())
            })
            .expect("infallible")
            .median
        })
        .min()
        .expect("at least one trial");
    4.0 * (threads * rows * d * n) as f64 / best.as_secs_f64() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse_with_their_units() {
        assert_eq!(parse_cache_size("48K"), Some(48 << 10));
        assert_eq!(parse_cache_size("266240K"), Some(266240 << 10));
        assert_eq!(parse_cache_size("260M"), Some(260 << 20));
        assert_eq!(parse_cache_size("1G"), Some(1 << 30));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("x2K"), None);
        assert_eq!(parse_cache_size("99999999999999999999G"), None);
    }

    #[test]
    fn the_probe_reads_small_and_large_buffers_and_keeps_the_larger() {
        let mut probe = ReadProbe::default();
        for bytes in [0, 4, 1000, 1 << 20, 6 << 20] {
            let rate = probe.rate(bytes, 2);
            assert!(rate.is_finite() && rate > 0.0, "{bytes}: {rate}");
        }
        assert_eq!(probe.bytes(), 6 << 20);
        probe.rate(1 << 20, 2);
        assert_eq!(probe.bytes(), 6 << 20);
        assert!(read_probe_bytes() >= 256 << 20);
        assert!(read_probe_bytes() >= 2 * largest_cache_bytes().unwrap_or(0));
    }
}
