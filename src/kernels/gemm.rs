//! Single-precision matrix products on ndarray views, through one of two backends
//! ([`Backend`]), single-threaded: callers parallelize over heads or row blocks with rayon.
//!
//! Every product of the crate goes through [`gemm()`], the `gemm` crate (AVX-512, AVX2/FMA or
//! portable kernels chosen at run time). matrixmultiply 0.3.11 (ndarray's own backend) stays
//! selectable, [`gemm_with`], so that a sweep can measure the two side by side:
//! `full(gemm=matrixmultiply)` next to `full`. `gemm` was chosen by measurement on this
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

/// A GEMM implementation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The `gemm` crate (the default).
    #[default]
    Gemm,
    /// The `matrixmultiply` crate, without its own threading.
    MatrixMultiply,
}

impl Backend {
    /// Both backends.
    pub const ALL: [Backend; 2] = [Backend::Gemm, Backend::MatrixMultiply];

    /// The name in spec strings: `gemm` or `matrixmultiply`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gemm => "gemm",
            Backend::MatrixMultiply => "matrixmultiply",
        }
    }

    /// The backend called `name` ([`Backend::name`]).
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// [`gemm()`] on the chosen backend.
///
/// # Panics
///
/// If the shapes do not agree.
pub fn gemm_with(
    backend: Backend,
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    match backend {
        Backend::Gemm => gemm(alpha, a, b, beta, c),
        Backend::MatrixMultiply => matrixmultiply_gemm(alpha, a, b, beta, c),
    }
}

/// `(m, k, n)` of the product, `None` when `c` is empty (nothing to do).
///
/// # Panics
///
/// If the shapes do not agree.
fn dims(
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    c: &ArrayViewMut2<f32>,
) -> Option<(usize, usize, usize)> {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(
        k == k2 && c.dim() == (m, n),
        "gemm shapes: [{m}, {k}] x [{k2}, {n}] into {:?}",
        c.dim()
    );
    (m > 0 && n > 0).then_some((m, k, n))
}

/// The (row, column) strides of a matrix view, in elements.
fn strides<S: ndarray::RawData<Elem = f32>>(x: &ndarray::ArrayBase<S, ndarray::Ix2>) -> [isize; 2] {
    [x.strides()[0], x.strides()[1]]
}

fn matrixmultiply_gemm(
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
) {
    let Some((m, k, n)) = dims(a, b, c) else {
        return;
    };
    if k == 0 {
        // An empty sum: c = beta c, and with beta == 0 the prior contents are ignored.
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c.map_inplace(|x| *x *= beta);
        }
        return;
    }
    let ([ars, acs], [brs, bcs], [crs, ccs]) = (strides(a), strides(b), strides(c));
    // SAFETY: as for `gemm` below: each pointer is the first element of a view of the
    // dimensions passed with it, with that view's (row, column) strides, so every element
    // sgemm reads or writes lies inside a view (negative strides included). `c` is borrowed
    // mutably and cannot overlap `a` or `b`. With `beta == 0`, sgemm does not read `c`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            ars,
            acs,
            b.as_ptr(),
            brs,
            bcs,
            beta,
            c.as_mut_ptr(),
            crs,
            ccs,
        );
    }
}

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
    let Some((m, k, n)) = dims(a, b, c) else {
        return;
    };
    let ([ars, acs], [brs, bcs], [crs, ccs]) = (strides(a), strides(b), strides(c));
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

/// An upper bound on the bytes `backend` allocates per call of an `[m, k] x [k, n]` product.
///
/// - gemm: a packed copy of at most 512 rows of `b` and, for short `a`, of `a` (it packs
///   only when that pays, so most calls allocate nothing). Each thread also keeps a packing
///   buffer the size of its L2 cache for the life of the thread; that is not per call and
///   not counted.
/// - matrixmultiply: one buffer per call for a `kc x mc` block of `a` and a `kc x nc` block
///   of `b` (kc = 256, mc = 64, nc = 1024 for f32, rounded up to its register block).
pub fn packing_bytes(backend: Backend, m: usize, k: usize, n: usize) -> u64 {
    match backend {
        Backend::Gemm => {
            let k = k.min(512);
            let m = m.min(1024).next_multiple_of(32);
            let n = n.next_multiple_of(32);
            (4 * k * (m + n) + 64) as u64
        }
        Backend::MatrixMultiply => {
            let k = k.min(256);
            let m = m.min(64).next_multiple_of(32);
            let n = n.min(1024).next_multiple_of(32);
            (4 * k * (m + n) + 64) as u64
        }
    }
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
        for backend in Backend::ALL {
            let mut c = Array2::from_elem((5, 9), f32::NAN);
            gemm_with(backend, 1.0, &a_part.t(), &bt, 0.0, &mut c.view_mut());
            for i in 0..5 {
                for j in 0..9 {
                    let want: f32 = (0..5).map(|p| a_part[[p, i]] * bt[[p, j]]).sum();
                    assert!(
                        (c[[i, j]] - want).abs() < 1e-4,
                        "{backend:?} {i},{j}: {} vs {want}",
                        c[[i, j]]
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_accumulates_handles_empty_inner_dimension_and_reversed_views() {
        let a = Array2::from_shape_fn((4, 3), |(i, j)| (i + 2 * j) as f32);
        let b = Array2::from_shape_fn((3, 5), |(i, j)| i as f32 - j as f32);
        // Reversed rows and columns: negative strides.
        let (ar, br) = (a.slice(s![..;-1, ..]), b.slice(s![.., ..;-1]));
        for backend in Backend::ALL {
            let mut c = Array2::from_elem((4, 5), 1.0f32);
            gemm_with(backend, 2.0, &ar, &br, 0.5, &mut c.view_mut());
            for i in 0..4 {
                for j in 0..5 {
                    let want = 0.5 + 2.0 * (0..3).map(|p| ar[[i, p]] * br[[p, j]]).sum::<f32>();
                    assert_eq!(c[[i, j]], want, "{backend:?} {i},{j}");
                }
            }
            let mut c = Array2::from_elem((4, 5), f32::NAN);
            let (a0, b0) = (Array2::<f32>::zeros((4, 0)), Array2::<f32>::zeros((0, 5)));
            gemm_with(backend, 1.0, &a0.view(), &b0.view(), 0.0, &mut c.view_mut());
            assert!(
                c.iter().all(|&x| x == 0.0),
                "{backend:?}: an empty sum is zero"
            );
            assert_eq!(Backend::from_name(backend.name()), Some(backend));
        }
    }
}
