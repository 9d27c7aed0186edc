//! Single-precision matrix products on ndarray views.
//!
//! ndarray's `general_mat_mul` hands `f32` products of any strides to matrixmultiply's
//! `sgemm`, which selects its AVX-512, AVX2/FMA or portable kernel at run time. Going
//! through ndarray keeps this crate free of `unsafe` for GEMM.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// `c = alpha * a b + beta * c` for `a: [m, k]`, `b: [k, n]`, `c: [m, n]`.
///
/// With `beta == 0` the prior contents of `c` are ignored (even NaN).
#[inline]
pub fn gemm(
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    general_mat_mul(alpha, a, b, beta, c);
}

/// The number of floating-point operations of an `[m, k] x [k, n]` product.
pub fn gemm_flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * m as f64 * k as f64 * n as f64
}

/// The bytes matrixmultiply 0.3 allocates, per call, to pack the operands of an
/// `[m, k] x [k, n]` product: its blocking caps `k` at 256, `m` at 64 and `n` at 1024, and
/// rows are rounded up to register tiles (at most 32 here; an upper bound).
pub fn packing_bytes(m: usize, k: usize, n: usize) -> u64 {
    let k = k.min(256);
    let m = m.min(64).next_multiple_of(32);
    let n = n.min(1024).next_multiple_of(32);
    (4 * k * (m + n) + 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, s};

    #[test]
    fn gemm_matches_naive_on_strided_views() {
        let a = Array2::from_shape_fn((5, 7), |(i, j)| (i * 7 + j) as f32 * 0.1 - 1.0);
        let b = Array2::from_shape_fn((9, 5), |(i, j)| (i as f32 - j as f32) * 0.3);
        // b's transpose is a non-contiguous [5, 9] view.
        let bt = b.t();
        let a_part = a.slice(s![.., 1..6]);
        let mut c = Array2::from_elem((5, 9), f32::NAN);
        gemm(1.0, &a_part.t(), &bt, 0.0, &mut c.view_mut());
        for i in 0..5 {
            for j in 0..9 {
                let want: f32 = (0..5).map(|p| a_part[[p, i]] * bt[[p, j]]).sum();
                assert!(
                    (c[[i, j]] - want).abs() < 1e-4,
                    "{i},{j}: {} vs {want}",
                    c[[i, j]]
                );
            }
        }
    }
}
