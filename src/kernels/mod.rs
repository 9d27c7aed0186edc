//! Numeric kernels shared by the variants and the engine.
//!
//! Imports point down this list; none points up:
//! - [`tile`]: the leaf: the key-major tile layout ([`Tile`](tile::Tile)), the online-softmax
//!   state, the cache-line-aligned buffer ([`AlignedBuf`](tile::AlignedBuf)) and the bounds
//!   helper of the explicit kernels.
//! - [`isa`]: SIMD paths by name ([`Path`](isa::Path)) and the [`Isa`](isa::Isa) token that
//!   only run-time detection makes.
//! - [`half`]: exact `f16`/`bf16` widening and round-to-nearest-even narrowing (a leaf).
//! - [`exp`]: a branch-free `f32` exponential that the compiler vectorizes, and the row
//!   operations of a numerically stable softmax built on it.
//! - `portable`, `tiles` (explicit AVX-512 and AVX2 tile products, one macro), `avx512`
//!   (the AVX-512 exponentials, online softmax and elu+1) and `bf16` (the tile products with
//!   AVX512-BF16's `vdpbf16ps`): one file per path, each importing only [`tile`] and [`exp`].
//! - [`dispatch`]: the one module that calls them, per [`Isa`](isa::Isa) token.
//! - [`gemm`]: the single-precision matrix product on ndarray views, through the `gemm`
//!   crate or `matrixmultiply` ([`Backend`](gemm::Backend)).

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod bf16;
pub mod dispatch;
pub mod exp;
pub mod gemm;
pub mod half;
pub mod isa;
mod portable;
pub mod tile;
#[cfg(target_arch = "x86_64")]
mod tiles;
