//! Small numeric kernels shared by the variants.
//!
//! - [`exp`]: a branch-free `f32` exponential that the compiler vectorizes, and the row
//!   operations of a numerically stable softmax built on it.
//! - [`gemm`]: the single-precision matrix product (matrixmultiply, through ndarray).
//! - [`simd`]: runtime-dispatched tile products and softmax rows (AVX-512, AVX2+FMA, portable).

pub mod exp;
pub mod gemm;
pub mod simd;
