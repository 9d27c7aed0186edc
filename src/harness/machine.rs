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
