//! `nystrom(landmarks, iters)`: Nystromformer (Xiong et al. 2021), softmax attention from `m`
//! landmarks.
//!
//! Per (batch, head): the landmarks are the means of `m` consecutive segments of the queries
//! (`Q~`, `[m, d]`) and of the keys (`K~`); with `F = softmax(Q K~^T s)` (`[n_q, m]`),
//! `A = softmax(Q~ K~^T s)` (`[m, m]`) and `B = softmax(Q~ K^T s)` (`[m, n_kv]`), the output
//! is `F A+ (B V)`, `A+` the Moore-Penrose inverse approximated by the iteration the paper
//! uses (Razavi et al. 2014): `Z0 = A^T / (max column sum * max row sum)`,
//! `Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4`, `iters` times, in `f64`.
//!
//! The iteration count is not only a cost: `A` is badly conditioned on real and Gaussian
//! inputs, and the *exact* pseudo-inverse makes the output far worse than the truncated
//! iteration. In an independent numpy check at n = 512, d = 32 (Gaussian, unit logits), the
//! relative error with 6 iterations fell 0.74, 0.70, 0.63, 0.53, 0.46, 0.13 for m = 8, 32,
//! 64, 128, 256, 512, while with 20 iterations (close to the exact inverse) it was 5.7, 1.2,
//! 4.2, 4.4, 8.0 and then exact at m = n. The default keeps the paper's 6.
//!
//! The landmarks average over the whole sequence, so there is no causal form: causal calls
//! are refused. Time O(n m (d + d_v) + iters m^3), memory O(n m) per busy head.

use std::fmt;

use ndarray::{Array2, ArrayViewMut2};

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::error::Result;
use crate::kernels::gemm::{gemm, gemm_flops};
use crate::parallel::for_each_head;
use crate::shape::Shape;
use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::shared::{head, no_causal_form, product, segment_means, softmax_product};

/// `nystrom(landmarks=64,iters=6)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "nystrom",
    summary: "Nystromformer: segment-mean landmarks, F pinv(A) (B V) with the iterative pseudo-inverse (bidirectional only)",
    time: "O(n m d + iters m^3)",
    memory: "O(n m) per busy head",
    params: &[
        ParamInfo {
            name: "landmarks",
            default: "64",
            help: "landmarks m: segment means of the queries and of the keys (capped at n)",
        },
        ParamInfo {
            name: "iters",
            default: "6",
            help: "iterations of the pseudo-inverse (the paper's 6; more is closer to the exact inverse, which is worse here)",
        },
    ],
    presets: &[],
    preview: "",
    build: |p| {
        Ok(Box::new(Nystrom {
            landmarks: p.positive("landmarks")?,
            iters: p.usize("iters")?,
        }))
    },
};

/// Nystromformer attention. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nystrom {
    /// Landmarks (segments).
    pub landmarks: usize,
    /// Iterations of the pseudo-inverse.
    pub iters: usize,
}

impl fmt::Display for Nystrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.landmarks), Some(&self.iters)])
    }
}

/// The iterative approximation of the pseudo-inverse of `a` (square) after `iters` steps,
/// in `f64`.
fn pinv_iterative(a: &Array2<f64>, iters: usize) -> Array2<f64> {
    let m = a.nrows();
    let col = (0..m).map(|j| a.column(j).map(|x| x.abs()).sum()).fold(0.0, f64::max);
    let row = (0..m).map(|i| a.row(i).map(|x| x.abs()).sum()).fold(0.0, f64::max);
    let mut z = a.t().mapv(|x| x / (col * row));
    let eye = Array2::<f64>::eye(m);
    for _ in 0..iters {
        let az = a.dot(&z);
        let t = az.dot(&(&eye * 7.0 - &az));
        let t = az.dot(&(&eye * 15.0 - &t));
        z = z.dot(&(&eye * 13.0 - &t)) * 0.25;
    }
    z
}

impl Nystrom {
    /// The landmarks a call of `shape` uses: at most the configured number, at most either
    /// length.
    fn m(&self, shape: &Shape) -> usize {
        self.landmarks.min(shape.n_q()).min(shape.n_kv())
    }

    /// `F`, the approximate `A+` and `B` of one (batch, head).
    fn factors(&self, call: &Call<'_>, b: usize, h: usize) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        let m = self.m(&call.shape());
        let scale = call.scale();
        let (q, k, _) = head(call, b, h);
        let (ql, kl) = (segment_means(q, m), segment_means(k, m));
        let f = softmax_product(q, kl.view(), scale);
        let a = softmax_product(ql.view(), kl.view(), scale).mapv(f64::from);
        let z = pinv_iterative(&a, self.iters).mapv(|x| x as f32);
        (f, z, softmax_product(ql.view(), k, scale))
    }

    /// The output of one (batch, head) into `out` (`[n_q, d_v]`).
    fn head_forward(&self, call: &Call<'_>, b: usize, h: usize, mut out: ArrayViewMut2<f32>) {
        let (_, _, v) = head(call, b, h);
        let (f, z, bm) = self.factors(call, b, h);
        let w = product(z.view(), product(bm.view(), v).view());
        gemm(1.0, &f.view(), &w.view(), 0.0, &mut out);
    }
}

impl Attention for Nystrom {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Approximate
    }

    fn unsupported(&self, _shape: &Shape, opts: &Options) -> Vec<String> {
        no_causal_form(INFO.name, "its landmarks average over every position", opts)
    }

    fn cost(&self, s: &Shape, _opts: &Options, threads: usize) -> Cost {
        let m = self.m(s);
        let (n_q, n_kv, d, dv) = (s.n_q(), s.n_kv(), s.head_dim(), s.v_dim());
        let per_head = ((n_q + n_kv) * d) as f64
            + gemm_flops(n_q, d, m)
            + gemm_flops(m, d, m)
            + gemm_flops(m, d, n_kv)
            + gemm_flops(m, n_kv, dv)
            + self.iters as f64 * 4.0 * gemm_flops(m, m, m)
            + gemm_flops(m, m, dv)
            + gemm_flops(n_q, m, dv);
        let heads = s.batch() * s.heads();
        let busy = heads.min(threads) as u64;
        // F and B (the largest), the landmarks, B V and W in f32; A, Z and the iteration's
        // temporaries (at most six alive) in f64.
        let floats = n_q * m + m * n_kv + 2 * m * d + 2 * m * dv;
        Cost {
            flops: per_head * heads as f64,
            workspace_bytes: busy
                * ((floats * 4 + 8 * m * m * 8) as u64),
        }
    }

    /// The effective weights `F A+ B` (`[n_q, n_kv]`): rows sum to about 1, and entries may
    /// be negative.
    fn weights(&self, call: &Call<'_>, b: usize, h: usize) -> Option<Array2<f64>> {
        let (f, z, bm) = self.factors(call, b, h);
        let f = f.mapv(f64::from);
        Some(f.dot(&z.mapv(f64::from)).dot(&bm.mapv(f64::from)))
    }

    fn forward(&self, call: &Call<'_>, out: Out<'_>) -> Result<()> {
        for_each_head(out.into_view(), |b, h, head_out| {
            self.head_forward(call, b, h, head_out)
        });
        Ok(())
    }
}
