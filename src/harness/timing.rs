//! Wall-clock timing: warm-up, then repeats until both a minimum count and a minimum total
//! time are reached.

use std::time::{Duration, Instant};

/// How long and how often to repeat a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimingConfig {
    /// Unmeasured calls before timing.
    pub warmup: usize,
    /// At least this many timed calls.
    pub min_repeats: usize,
    /// And at least this much total timed time.
    pub min_time: Duration,
    /// Stop after this many timed calls even if `min_time` is not reached.
    pub max_repeats: usize,
}

impl Default for TimingConfig {
    /// One warm-up call, then at least 3 timed calls and 0.3 s: the defaults of every sweep.
    /// The cap of 100000 calls binds only for calls under 3 us, so `min_time` is honoured.
    fn default() -> Self {
        Self {
            warmup: 1,
            min_repeats: 3,
            min_time: Duration::from_millis(300),
            max_repeats: 100_000,
        }
    }
}

/// Median, minimum and maximum of the timed calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Median call time.
    pub median: Duration,
    /// Fastest call.
    pub min: Duration,
    /// Slowest call.
    pub max: Duration,
    /// Number of timed calls.
    pub repeats: usize,
}

/// Times `f` under `cfg`. `f` should do only the work being measured: allocate inputs and
/// outputs outside it.
pub fn time<E>(cfg: &TimingConfig, f: impl FnMut() -> Result<(), E>) -> Result<Timing, E> {
    Ok(summarize(&samples(cfg, f)?))
}

/// The timed calls of `f` under `cfg`, in call order (after the warm-up calls).
pub fn samples<E>(
    cfg: &TimingConfig,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Vec<Duration>, E> {
    for _ in 0..cfg.warmup {
        f()?;
    }
    let mut samples = Vec::new();
    let mut total = Duration::ZERO;
    while samples.len() < cfg.min_repeats.max(1)
        || (total < cfg.min_time && samples.len() < cfg.max_repeats)
    {
        let t = Instant::now();
        f()?;
        let dt = t.elapsed();
        total += dt;
        samples.push(dt);
    }
    Ok(samples)
}

/// Median, minimum and maximum of `samples`.
///
/// # Panics
/// If `samples` is empty.
pub fn summarize(samples: &[Duration]) -> Timing {
    let mut samples = samples.to_vec();
    samples.sort_unstable();
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    };
    Timing {
        median,
        min: samples[0],
        max: samples[n - 1],
        repeats: n,
    }
}

/// Minor page faults of this process so far (all threads), from `/proc/self/stat`; `None`
/// where it is not readable (not Linux).
pub fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) in parentheses: state is
    // the first, minflt the eighth.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_until_count_and_time_are_reached() {
        let mut calls = 0;
        let cfg = TimingConfig {
            warmup: 2,
            min_repeats: 5,
            min_time: Duration::ZERO,
            max_repeats: 100_000,
        };
        let t = time(&cfg, || {
            calls += 1;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(t.repeats, 5);
        assert_eq!(calls, 7);
        assert!(t.min <= t.median && t.median <= t.max);

        let cfg = TimingConfig {
            warmup: 0,
            min_repeats: 1,
            min_time: Duration::from_millis(20),
            max_repeats: 100_000,
        };
        // Timing stops at the first call that brings the total to 20 ms: the calls before
        // it summed to less. (Sleeps overshoot on a loaded machine, so count them.)
        let mut lengths = Vec::new();
        let t = time(&cfg, || {
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(2));
            lengths.push(start.elapsed());
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(t.repeats, lengths.len());
        let total: Duration = lengths.iter().sum();
        let before_last: Duration = lengths[..lengths.len() - 1].iter().sum();
        // Measured inside the call, each is a little shorter than time() measured it.
        let overhead = Duration::from_micros(50) * t.repeats as u32;
        assert!(total + overhead >= cfg.min_time, "{total:?}");
        assert!(
            before_last < cfg.min_time,
            "{before_last:?} over {} calls",
            t.repeats
        );
        assert!(t.repeats < 20, "{}", t.repeats);
    }

    #[test]
    fn the_default_honours_min_time_for_fast_calls() {
        // A ~10 us call: 0.3 s needs tens of thousands of calls, far over the old cap of 100.
        let started = Instant::now();
        let t = time(&TimingConfig::default(), || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(10) {
                std::hint::spin_loop();
            }
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(t.repeats > 1000, "{} calls", t.repeats);
        assert!(started.elapsed() >= TimingConfig::default().min_time);
    }

    #[test]
    fn page_faults_count_fresh_pages() {
        let Some(before) = minor_faults() else {
            return; // not Linux
        };
        // 64 MiB, past glibc's mmap threshold: every page is faulted in when first written.
        let mut buf = vec![0u8; 64 << 20];
        for i in (0..buf.len()).step_by(4096) {
            buf[i] = 1;
        }
        std::hint::black_box(&buf);
        let after = minor_faults().unwrap();
        // 16384 pages of 4 KiB (fewer with transparent huge pages: at least 32 of 2 MiB).
        assert!(after - before >= 32, "{before} -> {after}");
    }

    #[test]
    fn errors_stop_timing() {
        let mut calls = 0;
        let r = time(&TimingConfig::default(), || {
            calls += 1;
            if calls == 3 { Err("boom") } else { Ok(()) }
        });
        assert_eq!(r.unwrap_err(), "boom");
    }
}
