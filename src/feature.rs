//! Feature maps of linear attention: `phi` such that `phi(q) . phi(k)` replaces `exp(q . k)`.
//!
//! - [`Elu1`]: `elu(x) + 1` (Katharopoulos et al. 2020), a different kernel than softmax.
//! - [`Relu`]: `max(x, 0)`, a different kernel.
//! - [`Favor`]: Performer's positive random features (Choromanski et al. 2020), an unbiased
//!   estimator of the softmax kernel `exp(scale * q . k)`.
//!
//! A map may multiply every feature of one *query* row by a positive constant of its choice
//! (it cancels between the numerator and the denominator of linear attention), and every
//! feature of a block of *keys* by one common constant `e^-c`, which it returns as `c` so the
//! caller can combine blocks (see [`FeatureMap::map_keys`]). [`Favor`] uses both to keep its
//! exponentials in range.

use std::fmt;
use std::sync::{Arc, Mutex};

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Zip};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::kernels::dispatch::{self, Isa};
use crate::kernels::exp;
use crate::kernels::gemm::gemm;

/// What kernel a feature map computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An unbiased estimate of the softmax kernel: its error is approximation error and falls
    /// as the number of features grows.
    ApproximatesSoftmax,
    /// A different kernel: its difference from softmax attention is model mismatch.
    Different,
}

/// A feature map for linear attention.
pub trait FeatureMap: fmt::Debug + fmt::Display + Send + Sync {
    /// The number of features `m` for head dimension `head_dim`.
    fn dim(&self, head_dim: usize) -> usize;

    /// Whether the map approximates softmax attention or defines another kernel.
    fn kind(&self) -> KernelKind;

    /// Maps query rows `x: [rows, d]` to `out: [rows, m]`. Each output row may be scaled by
    /// any positive constant. `scale` is the attention's score scale.
    fn map_queries(&self, x: ArrayView2<f32>, scale: f32, out: ArrayViewMut2<f32>);

    /// Maps key rows `x: [rows, d]` to `out: [rows, m]`, returning `c` such that the true
    /// features are `out * e^c` (0 when the map needs no rescaling).
    fn map_keys(&self, x: ArrayView2<f32>, scale: f32, out: ArrayViewMut2<f32>) -> f32;
}

/// `elu(x) + 1`: `x + 1` for `x > 0`, `e^x` otherwise. Applied to the raw q and k (the score
/// scale does not enter, as in Katharopoulos et al.). `m = d`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elu1;

/// `max(x, 0)` on the raw q and k. `m = d`. A query whose features are all zero, or whose
/// keys all are, gets a zero output row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relu;

fn elementwise(x: ArrayView2<f32>, mut out: ArrayViewMut2<f32>, f: impl Fn(f32) -> f32) {
    Zip::from(&mut out).and(&x).for_each(|o, &x| *o = f(x));
}

/// `elu(x) + 1` elementwise, at the widest SIMD width when `out` is contiguous.
fn elu1_map(x: ArrayView2<f32>, mut out: ArrayViewMut2<f32>) {
    out.assign(&x);
    match out.as_slice_mut() {
        Some(xs) => dispatch::elu1(Isa::detect(), xs),
        None => out.map_inplace(|x| *x = if *x > 0.0 { *x + 1.0 } else { exp::exp(*x) }),
    }
}

impl FeatureMap for Elu1 {
    fn dim(&self, head_dim: usize) -> usize {
        head_dim
    }
    fn kind(&self) -> KernelKind {
        KernelKind::Different
    }
    fn map_queries(&self, x: ArrayView2<f32>, _scale: f32, out: ArrayViewMut2<f32>) {
        elu1_map(x, out);
    }
    fn map_keys(&self, x: ArrayView2<f32>, _scale: f32, out: ArrayViewMut2<f32>) -> f32 {
        elu1_map(x, out);
        0.0
    }
}

impl fmt::Display for Elu1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("elu1")
    }
}

impl FeatureMap for Relu {
    fn dim(&self, head_dim: usize) -> usize {
        head_dim
    }
    fn kind(&self) -> KernelKind {
        KernelKind::Different
    }
    fn map_queries(&self, x: ArrayView2<f32>, _scale: f32, out: ArrayViewMut2<f32>) {
        elementwise(x, out, |x| x.max(0.0));
    }
    fn map_keys(&self, x: ArrayView2<f32>, _scale: f32, out: ArrayViewMut2<f32>) -> f32 {
        elementwise(x, out, |x| x.max(0.0));
        0.0
    }
}

impl fmt::Display for Relu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("relu")
    }
}

/// Performer FAVOR+ positive random features.
///
/// With `x = sqrt(scale) q` (for the default scale, `q / d^(1/4)`) and random directions
/// `w_1..w_m ~ N(0, I_d)`, `phi(x)_i = exp(w_i . x - |x|^2 / 2) / sqrt(m)`, so that
/// `E[phi(x) . phi(y)] = exp(x . y) = exp(scale * q . k)`. With `orthogonal`, the directions
/// come in blocks of `d` mutually orthogonal vectors (Gram-Schmidt on Gaussian blocks), each
/// rescaled to the norm of an independent Gaussian vector, which lowers the estimator's
/// variance. Exponents are stabilized by subtracting the row maximum (queries) or the block
/// maximum (keys), so no feature overflows; features far below the maximum underflow to 0.
#[derive(Debug)]
pub struct Favor {
    /// The number of random features.
    pub m: usize,
    /// The seed of the random directions.
    pub seed: u64,
    /// Block-orthogonal directions (true) or i.i.d. Gaussian (false).
    pub orthogonal: bool,
    /// The directions `[m, d]` for the last head dimension used.
    cache: Mutex<Option<Arc<Array2<f32>>>>,
}

impl Clone for Favor {
    fn clone(&self) -> Self {
        Self::new(self.m, self.seed, self.orthogonal)
    }
}

impl PartialEq for Favor {
    fn eq(&self, other: &Self) -> bool {
        (self.m, self.seed, self.orthogonal) == (other.m, other.seed, other.orthogonal)
    }
}

impl Favor {
    /// `m` random features (at least 1) from `seed`.
    pub fn new(m: usize, seed: u64, orthogonal: bool) -> Self {
        Self {
            m,
            seed,
            orthogonal,
            cache: Mutex::new(None),
        }
    }

    /// The random directions `[m, d]` for head dimension `d` (computed once per `d`).
    pub fn directions(&self, d: usize) -> Arc<Array2<f32>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = cache.as_ref().filter(|w| w.ncols() == d) {
            return Arc::clone(w);
        }
        let w = Arc::new(random_directions(self.m, d, self.seed, self.orthogonal));
        *cache = Some(Arc::clone(&w));
        w
    }

    /// `out = exp(x W^T - |x|^2 / 2 - shift) / sqrt(m)` with `x = sqrt(scale) * rows`;
    /// `shift` is per row for queries and one value for keys (returned).
    fn project(
        &self,
        x: ArrayView2<f32>,
        scale: f32,
        mut out: ArrayViewMut2<f32>,
        per_row: bool,
    ) -> f32 {
        let w = self.directions(x.ncols());
        let s = scale.sqrt();
        // u = (s x) W^T - |s x|^2 / 2
        gemm(s, &x, &w.t(), 0.0, &mut out);
        let half_norms: Vec<f32> = x
            .outer_iter()
            .map(|r| 0.5 * scale * r.iter().map(|v| v * v).sum::<f32>())
            .collect();
        for (mut row, &h) in out.outer_iter_mut().zip(&half_norms) {
            row.map_inplace(|u| *u -= h);
        }
        let norm = 1.0 / (self.m as f32).sqrt();
        let block_max = if per_row {
            0.0
        } else {
            out.iter().fold(f32::NEG_INFINITY, |m, &u| m.max(u))
        };
        for mut row in out.outer_iter_mut() {
            let shift = if per_row {
                row.iter().fold(f32::NEG_INFINITY, |m, &u| m.max(u))
            } else {
                block_max
            };
            row.map_inplace(|u| *u = exp::exp(*u - shift) * norm);
        }
        block_max
    }
}

impl FeatureMap for Favor {
    fn dim(&self, _head_dim: usize) -> usize {
        self.m
    }
    fn kind(&self) -> KernelKind {
        KernelKind::ApproximatesSoftmax
    }
    fn map_queries(&self, x: ArrayView2<f32>, scale: f32, out: ArrayViewMut2<f32>) {
        self.project(x, scale, out, true);
    }
    fn map_keys(&self, x: ArrayView2<f32>, scale: f32, out: ArrayViewMut2<f32>) -> f32 {
        self.project(x, scale, out, false)
    }
}

impl fmt::Display for Favor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "favor(m={},seed={},orthogonal={})",
            self.m, self.seed, self.orthogonal
        )
    }
}

/// `m` directions in `d` dimensions: i.i.d. `N(0, I)` rows, or blocks of `d` orthogonal rows
/// each rescaled to the norm of a fresh Gaussian vector.
pub fn random_directions(m: usize, d: usize, seed: u64, orthogonal: bool) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gauss = || -> f64 { StandardNormal.sample(&mut rng) };
    let mut w = Array2::<f64>::zeros((m, d));
    if !orthogonal {
        w.map_inplace(|x| *x = gauss());
        return w.mapv(|x| x as f32);
    }
    for start in (0..m).step_by(d) {
        let rows = (m - start).min(d);
        // Gram-Schmidt on a full d x d Gaussian block, keeping the first `rows` vectors.
        let mut block = Array2::<f64>::zeros((d, d));
        block.map_inplace(|x| *x = gauss());
        for i in 0..d {
            for j in 0..i {
                let dot: f64 = block.row(i).dot(&block.row(j));
                let bj = block.row(j).to_owned();
                block.row_mut(i).scaled_add(-dot, &bj);
            }
            let norm = block.row(i).dot(&block.row(i)).sqrt();
            block.row_mut(i).mapv_inplace(|x| x / norm);
        }
        for i in 0..rows {
            let chi: f64 = (0..d).map(|_| gauss().powi(2)).sum::<f64>().sqrt();
            w.row_mut(start + i).assign(&(&block.row(i) * chi));
        }
    }
    w.mapv(|x| x as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn elu1_and_relu_values() {
        let x = Array2::from_shape_vec((1, 4), vec![-2.0f32, -0.5, 0.0, 1.5]).unwrap();
        let mut out = Array2::zeros((1, 4));
        Elu1.map_queries(x.view(), 1.0, out.view_mut());
        let want = [(-2.0f32).exp(), (-0.5f32).exp(), 1.0, 2.5];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{o} vs {w}");
        }
        assert_eq!(Relu.map_keys(x.view(), 1.0, out.view_mut()), 0.0);
        assert_eq!(out.as_slice().unwrap(), &[0.0, 0.0, 0.0, 1.5]);
    }

    #[test]
    fn orthogonal_directions_are_orthogonal_within_blocks() {
        let w = random_directions(20, 8, 3, true).mapv(|x| x as f64);
        for b in [0, 8] {
            for i in b..b + 8 {
                for j in b..i {
                    let cos = w.row(i).dot(&w.row(j))
                        / (w.row(i).dot(&w.row(i)).sqrt() * w.row(j).dot(&w.row(j)).sqrt());
                    assert!(cos.abs() < 1e-5, "rows {i}, {j}: cos {cos}");
                }
            }
        }
        assert_eq!(
            random_directions(20, 8, 3, true),
            random_directions(20, 8, 3, true)
        );
        assert_ne!(
            random_directions(20, 8, 3, true),
            random_directions(20, 8, 4, true)
        );
    }

    #[test]
    fn favor_features_follow_the_formula() {
        let favor = Favor::new(6, 1, false);
        let x = Array2::from_shape_vec((2, 3), vec![0.3f32, -0.2, 0.5, 1.0, 0.0, -1.0]).unwrap();
        let scale = 0.5f32;
        let w = favor.directions(3);
        let mut out = Array2::zeros((2, 6));
        let c = favor.map_keys(x.view(), scale, out.view_mut());
        for r in 0..2 {
            let xs: Vec<f64> = x
                .row(r)
                .iter()
                .map(|&v| v as f64 * (scale as f64).sqrt())
                .collect();
            let half: f64 = xs.iter().map(|v| v * v).sum::<f64>() / 2.0;
            for i in 0..6 {
                let dot: f64 = (0..3).map(|k| w[[i, k]] as f64 * xs[k]).sum();
                let want = (dot - half).exp() / 6f64.sqrt();
                let got = out[[r, i]] as f64 * (c as f64).exp();
                assert!(
                    (got - want).abs() < 1e-5 * want.max(1e-3),
                    "{got} vs {want}"
                );
            }
        }
    }
}
