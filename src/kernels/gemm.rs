//! Single-precision matrix products on ndarray views.
//!
//! Every product goes through the `gemm` crate (AVX-512, AVX2/FMA or portable kernels chosen
//! at run time), single-threaded: callers parallelize over heads or row blocks with rayon.
//! It was chosen by measurement over matrixmultiply 0.3.11 (ndarray's own backend) on this
//! crate's shapes, one core of a Zen 5 machine (GFLOP/s, gemm vs matrixmultiply):
//!
//! | shape | gemm | matrixmultiply |
//! |---|---|---|
//! | 4096x64 by 64x4096 (scores) | 89 | 89 |
//! | 4096x4096 by 4096x64 (P.V) | 94 | 54 |
//! | 1024x1024 by 1024x64 | 112 | 56 |
//! | 4096x512 by 512x512 (projections) | 104 | 93 |
//! | 64x4096 by 4096x64 (linear K^T V) | 106 | 61 |
//! | 1x4096 by 4096x64 (decoding) | 15 | 5 |

use ndarray::{ArrayView2, ArrayViewMut2};

/// `c = alpha * a b + beta * c` for `a: [m, k]`, `b: [k, n]`, `c: [m, n]`, any strides.
///
/// With `beta == 0` the prior contents of `c` are ignored (even NaN).
///
/// # Panics
///
/// If the shapes do not agree.
#[inline]
pub fn gemm(
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(
        k == k2 && c.dim() == (m, n),
        "gemm shapes: [{m}, {k}] x [{k2}, {n}] into {:?}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    let (ars, acs) = (a.strides()[0], a.strides()[1]);
    let (brs, bcs) = (b.strides()[0], b.strides()[1]);
    let (crs, ccs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: each pointer is the first element of a view of the dimensions passed with it,
    // and each (row, column) stride pair is that view's, so every element gemm reads or
    // writes lies inside a view (ndarray guarantees views are in bounds for their dims and
    // strides, negative strides included). `c` is borrowed mutably, so it cannot overlap
    // `a` or `b`, and a mutable view never maps two indices to one element. The element
    // type is f32, which gemm supports. With `beta == 0`, `read_dst` is false and `c` is
    // only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            ccs,
            crs,
            beta != 0.0,
            a.as_ptr(),
            acs,
            ars,
            b.as_ptr(),
            bcs,
            brs,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The number of floating-point operations of an `[m, k] x [k, n]` product.
pub fn gemm_flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * m as f64 * k as f64 * n as f64
}

/// An upper bound on the bytes gemm allocates per call of an `[m, k] x [k, n]` product: a
/// packed copy of at most 512 rows of `b` and, for short `a`, of `a` (it packs only when that
/// pays, so most calls allocate nothing). Each thread also keeps a packing buffer the size
/// of its L2 cache for the life of the thread; that is not per call and not counted.
pub fn packing_bytes(m: usize, k: usize, n: usize) -> u64 {
    let k = k.min(512);
    let m = m.min(1024).next_multiple_of(32);
    let n = n.next_multiple_of(32);
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

    #[test]
    fn gemm_accumulates_handles_empty_inner_dimension_and_reversed_views() {
        let a = Array2::from_shape_fn((4, 3), |(i, j)| (i + 2 * j) as f32);
        let b = Array2::from_shape_fn((3, 5), |(i, j)| i as f32 - j as f32);
        // Reversed rows and columns: negative strides.
        let (ar, br) = (a.slice(s![..;-1, ..]), b.slice(s![.., ..;-1]));
        let mut c = Array2::from_elem((4, 5), 1.0f32);
        gemm(2.0, &ar, &br, 0.5, &mut c.view_mut());
        for i in 0..4 {
            for j in 0..5 {
                let want = 0.5 + 2.0 * (0..3).map(|p| ar[[i, p]] * br[[p, j]]).sum::<f32>();
                assert_eq!(c[[i, j]], want, "{i},{j}");
            }
        }
        let mut c = Array2::from_elem((4, 5), f32::NAN);
        let (a0, b0) = (Array2::<f32>::zeros((4, 0)), Array2::<f32>::zeros((0, 5)));
        gemm(1.0, &a0.view(), &b0.view(), 0.0, &mut c.view_mut());
        assert!(c.iter().all(|&x| x == 0.0), "an empty sum is zero");
    }
}
