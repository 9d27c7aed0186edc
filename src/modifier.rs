//! Score modifiers and rotary embeddings, applied as [`Options`] rather than as variants.
//!
//! Positions follow the crate's alignment: query `i` sits at position `p_i = i + n_kv - n_q`,
//! key `j` at position `j`, so a query against a KV cache is at the cache's last position.
//!
//! - **Soft-capping** (`softcap = c`): each scaled score `s` becomes `c * tanh(s / c)`, which
//!   bounds the logits to `(-c, c)` (as in Gemma 2).
//! - **ALiBi** (Press et al. 2022): a bias `-m_h * |p_i - j|` is added to the (capped) score,
//!   with one slope `m_h` per query head, [`alibi_slopes`]. Causally this is the paper's
//!   `-m_h * (i - j)`; bidirectionally it is the symmetric form.
//! - **RoPE** (Su et al. 2021, base 10000 by default): Q and K are rotated before the scores,
//!   pair `(x_2t, x_2t+1)` of a row at position `p` by the angle `p * base^(-2t / d)`. Every
//!   variant gets it, because [`run`](crate::attention::run) rotates the inputs once before
//!   calling the variant; this costs one copy of Q and K.
//!
//! Soft-capping and ALiBi change the scores inside the kernel, so a variant applies them only
//! when it says so ([`Attention::supports`](crate::Attention::supports)); otherwise the call is
//! refused with a reason, never silently wrong.

use ndarray::{Array4, ArrayView4, Zip};

use crate::kernels::exp;
pub use crate::options::Feature;
use crate::options::Options;
use crate::shape::Shape;

/// The ALiBi slopes of `heads` heads: `2^(-8k/heads)` for `k = 1..=heads` when `heads` is a
/// power of two; otherwise the slopes of the largest power of two `n < heads`, followed by
/// every other slope of `2n` (the paper's construction).
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    fn power_of_two(n: usize) -> impl Iterator<Item = f64> {
        (1..=n).map(move |k| 2f64.powf(-8.0 * k as f64 / n as f64))
    }
    if heads.is_power_of_two() {
        return power_of_two(heads).collect();
    }
    let n = 1usize << heads.ilog2();
    power_of_two(n)
        .chain(power_of_two(2 * n).step_by(2).take(heads - n))
        .collect()
}

/// The score modifiers of one query head, in the form the kernels apply them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScoreMods {
    /// The soft-capping constant `c`, if any.
    pub softcap: Option<f32>,
    /// The head's ALiBi slope, if any.
    pub alibi_slope: Option<f32>,
    /// The position offset `n_kv - n_q` of query row 0.
    pub offset: isize,
}

impl ScoreMods {
    /// The modifiers of query head `h` of `shape` under `opts`.
    pub fn for_head(shape: &Shape, opts: &Options, h: usize) -> Self {
        Self {
            softcap: opts.softcap,
            alibi_slope: opts.alibi.then(|| alibi_slopes(shape.heads())[h] as f32),
            offset: shape.offset(),
        }
    }

    /// Whether the scores are left unchanged.
    pub fn is_identity(&self) -> bool {
        self.softcap.is_none() && self.alibi_slope.is_none()
    }

    /// Modifies one query row's scores `row[t]` of keys `c0 + t`, for query row `i`.
    pub fn apply_row(&self, i: usize, c0: usize, row: &mut [f32]) {
        if let Some(c) = self.softcap {
            let inv = 1.0 / c;
            row.iter_mut().for_each(|s| *s = c * tanh(*s * inv));
        }
        if let Some(m) = self.alibi_slope {
            let p = i as isize + self.offset - c0 as isize;
            for (t, s) in row.iter_mut().enumerate() {
                *s -= m * (p - t as isize).unsigned_abs() as f32;
            }
        }
    }

    /// Modifies a key-major score tile, `st[t * ldq + r]` being query row `r0 + r` against key
    /// `c0 + t`, for `rows` rows and `cols` keys.
    pub fn apply_key_major(
        &self,
        st: &mut [f32],
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        ldq: usize,
    ) {
        for t in 0..cols {
            let col = &mut st[t * ldq..t * ldq + rows];
            if let Some(c) = self.softcap {
                let inv = 1.0 / c;
                col.iter_mut().for_each(|s| *s = c * tanh(*s * inv));
            }
            if let Some(m) = self.alibi_slope {
                let j = (c0 + t) as isize;
                let p0 = r0 as isize + self.offset;
                for (r, s) in col.iter_mut().enumerate() {
                    *s -= m * (p0 + r as isize - j).unsigned_abs() as f32;
                }
            }
        }
    }

    /// The modified score of query row `i` and key `j`, in `f64` (for the oracle).
    pub fn apply_f64(&self, s: f64, i: usize, j: usize) -> f64 {
        let mut s = s;
        if let Some(c) = self.softcap {
            let c = c as f64;
            s = c * (s / c).tanh();
        }
        if let Some(m) = self.alibi_slope {
            let p = i as isize + self.offset;
            s -= m as f64 * (p - j as isize).unsigned_abs() as f64;
        }
        s
    }
}

/// `tanh(x)` as `sign(x) * (1 - 2 / (e^(2|x|) + 1))` with the crate's vectorizable `exp`:
/// absolute error below `2e-7` over all finite `x` (tested), which is what the score needs.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 - 2.0 / (exp::exp(2.0 * a) + 1.0);
    t.copysign(x)
}

/// The RoPE angle frequencies `base^(-2t / d)` for `t < d / 2`, in `f64`.
fn frequencies(d: usize, base: f32) -> Vec<f64> {
    (0..d / 2)
        .map(|t| (base as f64).powf(-2.0 * t as f64 / d as f64))
        .collect()
}

/// Rotates every row of `x` (`[batch, heads, seq, d]`, `d` even) at position `seq index +
/// offset`, in `f32` with angles computed in `f64`.
pub fn rope(x: ArrayView4<f32>, offset: isize, base: f32) -> Array4<f32> {
    let d = x.shape()[3];
    let freq = frequencies(d, base);
    let n = x.shape()[2];
    // cos and sin per (position, pair), shared by every batch and head.
    let table: Vec<(f32, f32)> = (0..n)
        .flat_map(|s| {
            let p = s as isize + offset;
            freq.iter().map(move |&f| {
                let (sin, cos) = (p as f64 * f).sin_cos();
                (cos as f32, sin as f32)
            })
        })
        .collect();
    let mut out = Array4::zeros(x.raw_dim());
    for (mut o3, x3) in out.outer_iter_mut().zip(x.outer_iter()) {
        for (mut o2, x2) in o3.outer_iter_mut().zip(x3.outer_iter()) {
            Zip::indexed(o2.rows_mut())
                .and(x2.rows())
                .for_each(|s, mut o, x| {
                    let row = &table[s * (d / 2)..(s + 1) * (d / 2)];
                    for (t, &(cos, sin)) in row.iter().enumerate() {
                        let (a, b) = (x[2 * t], x[2 * t + 1]);
                        o[2 * t] = a * cos - b * sin;
                        o[2 * t + 1] = a * sin + b * cos;
                    }
                });
        }
    }
    out
}

/// Rotates one row in `f64` at position `p` (for the oracle).
pub fn rope_row_f64(x: &mut [f64], p: isize, base: f32) {
    let d = x.len();
    for (t, f) in frequencies(d, base).into_iter().enumerate() {
        let (sin, cos) = (p as f64 * f).sin_cos();
        let (a, b) = (x[2 * t], x[2 * t + 1]);
        x[2 * t] = a * cos - b * sin;
        x[2 * t + 1] = a * sin + b * cos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_follow_the_paper() {
        // 8 heads: 1/2, 1/4, ..., 1/256.
        let s = alibi_slopes(8);
        for (k, &m) in s.iter().enumerate() {
            assert_eq!(m, 0.5f64.powi(k as i32 + 1));
        }
        // 12 heads: the 8-head slopes, then slopes 1, 3, 5, 7 of the 16-head set.
        let s12 = alibi_slopes(12);
        let s16 = alibi_slopes(16);
        assert_eq!(&s12[..8], &s[..]);
        assert_eq!(&s12[8..], &[s16[0], s16[2], s16[4], s16[6]]);
        assert_eq!(alibi_slopes(1), vec![2f64.powi(-8)]);
    }

    #[test]
    fn tanh_is_accurate_everywhere() {
        let mut worst = 0.0f64;
        let mut x = -40.0f32;
        while x <= 40.0 {
            worst = worst.max((tanh(x) as f64 - (x as f64).tanh()).abs());
            x += 1e-3;
        }
        assert!(worst < 2e-7, "max abs error {worst}");
        assert_eq!(tanh(f32::MAX), 1.0);
        assert_eq!(tanh(-f32::MAX), -1.0);
        assert_eq!(tanh(0.0), 0.0);
    }

    #[test]
    fn rope_preserves_norms_and_relative_positions() {
        let d = 8;
        let q: Vec<f64> = (0..d).map(|t| (t as f64 * 0.37).sin()).collect();
        let k: Vec<f64> = (0..d).map(|t| (t as f64 * 0.91).cos()).collect();
        let dot_at = |pq: isize, pk: isize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            rope_row_f64(&mut a, pq, 10000.0);
            rope_row_f64(&mut b, pk, 10000.0);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>()
        };
        // The score depends only on the distance.
        assert!((dot_at(5, 2) - dot_at(105, 102)).abs() < 1e-12);
        assert!((dot_at(5, 2) - dot_at(2, 5)).abs() > 1e-3);
        // Position 0 is the identity; f32 agrees with f64.
        let x = Array4::from_shape_fn([1, 1, 3, d], |(_, _, s, t)| (s * d + t) as f32 * 0.1);
        let r = rope(x.view(), 0, 10000.0);
        assert_eq!(
            r.slice(ndarray::s![0, 0, 0, ..]),
            x.slice(ndarray::s![0, 0, 0, ..])
        );
        for s in 0..3 {
            let mut row: Vec<f64> = x
                .slice(ndarray::s![0, 0, s, ..])
                .iter()
                .map(|&v| v as f64)
                .collect();
            rope_row_f64(&mut row, s as isize, 10000.0);
            for t in 0..d {
                assert!((r[[0, 0, s, t]] as f64 - row[t]).abs() < 1e-6);
            }
        }
    }
}
