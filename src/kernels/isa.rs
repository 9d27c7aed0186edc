//! Instruction-set paths: [`Path`] names one (a request, e.g. from a spec string), and
//! [`Isa`] is the proof that this CPU can run it.
//!
//! An `Isa` has a private field and is only produced by [`Isa::detect`], [`Isa::available`],
//! and [`Isa::new`], each after the CPU's features were detected (once per
//! process). Holding one is therefore the precondition of every `#[target_feature]` kernel:
//! the dispatchers in [`dispatch`](super::dispatch) match on it without re-checking.

use std::fmt;
use std::sync::OnceLock;

/// A SIMD path, as a name: what a caller asks for. It proves nothing about the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// AVX-512F with AVX2 and FMA (16 lanes of f32, 32 registers).
    Avx512,
    /// AVX2 with FMA (8 lanes, 16 registers).
    Avx2Fma,
    /// No extra target features: SSE2 on x86_64, NEON on aarch64, scalar elsewhere.
    Portable,
}

impl Path {
    /// Every path, widest first.
    pub const ALL: [Path; 3] = [Path::Avx512, Path::Avx2Fma, Path::Portable];

    /// The short name used in spec strings: `avx512`, `avx2`, `portable`.
    pub fn spec_name(self) -> &'static str {
        match self {
            Path::Avx512 => "avx512",
            Path::Avx2Fma => "avx2",
            Path::Portable => "portable",
        }
    }

    /// The path called `name` in a spec string ([`spec_name`](Path::spec_name)).
    pub fn from_spec_name(name: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.spec_name() == name)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Avx512 => "avx512f",
            Path::Avx2Fma => "avx2+fma",
            Path::Portable => "portable",
        })
    }
}

/// A SIMD path this CPU supports: only detection makes one (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Isa {
    path: Path,
}

impl Isa {
    /// The widest path this CPU supports, detected once.
    pub fn detect() -> Isa {
        Self::available()[0]
    }

    /// Every path this CPU supports, widest first (always ending with the portable one),
    /// detected once per process.
    pub fn available() -> &'static [Isa] {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE.get_or_init(|| {
            Path::ALL
                .into_iter()
                .filter(|&p| cpu_has(p))
                .map(|path| Isa { path })
                .collect()
        })
    }

    /// `path`, if this CPU supports it.
    pub fn new(path: Path) -> Option<Isa> {
        Self::available().iter().copied().find(|i| i.path == path)
    }

    /// The path this token stands for.
    pub fn path(self) -> Path {
        self.path
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path.fmt(f)
    }
}

/// Proof that this CPU has AVX512-BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`) with AVX512-BW: only
/// [`Bf16Dot::detect`] makes one, so holding it is the precondition of the `bf16` tile
/// products ([`dispatch::scores_bf16`](super::dispatch::scores_bf16) and
/// [`dispatch::accumulate_t_bf16`](super::dispatch::accumulate_t_bf16)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Dot(Bf16Proof);

/// What a [`Bf16Dot`] holds: nothing on x86_64, and on other targets a type with no values,
/// so no token exists there and its kernels need no body.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bf16Proof;
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bf16Proof {}

impl Bf16Dot {
    /// The token on the AVX-512 path of a CPU with AVX512-BF16 and AVX512-BW; `None` on any
    /// other path (so `isa=portable` or `isa=avx2` runs the widening fallback).
    pub fn detect(isa: Isa) -> Option<Bf16Dot> {
        static HAS: OnceLock<bool> = OnceLock::new();
        #[cfg(target_arch = "x86_64")]
        {
            let has = *HAS.get_or_init(|| {
                cpu_has(Path::Avx512)
                    && std::arch::is_x86_feature_detected!("avx512bf16")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            });
            (has && isa.path == Path::Avx512).then_some(Bf16Dot(Bf16Proof))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, &HAS);
            None
        }
    }
}

/// Whether this CPU has the features of `path` (run-time detection).
fn cpu_has(path: Path) -> bool {
    match path {
        Path::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(target_arch = "x86_64")]
        Path::Avx2Fma => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_lists_portable_last_and_new_agrees() {
        let all = Isa::available();
        assert_eq!(all.last().map(|i| i.path()), Some(Path::Portable));
        assert_eq!(Isa::detect(), all[0]);
        for p in Path::ALL {
            assert_eq!(Isa::new(p).is_some(), all.iter().any(|i| i.path() == p));
            assert_eq!(Path::from_spec_name(p.spec_name()), Some(p));
        }
        assert_eq!(Path::from_spec_name("avx9"), None);
    }
}
