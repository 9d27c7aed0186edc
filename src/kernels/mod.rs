//! Small numeric kernels shared by the variants.
//!
//! - [`exp`]: a branch-free `f32` exponential that the compiler vectorizes, and the row
//!   operations of a numerically stable softmax built on it.
//! - [`gemm`]: the single-precision matrix product (the `gemm` crate, on ndarray views).
//! - `tiles`: explicit AVX-512 and AVX2 microkernels for the flash engine's tile products;
//!   `avx512`: the AVX-512 exponential, online softmax and feature map.
//! - [`simd`]: runtime-dispatched tile products and softmax rows (AVX-512, AVX2+FMA, portable).

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod exp;
pub mod gemm;
pub mod simd;
#[cfg(target_arch = "x86_64")]
mod tiles;
