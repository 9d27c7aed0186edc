//! What several variants share; not a variant. One head's views; for the data-dependent
//! selection variants ([`topk`](super::topk), [`blocktopk`](super::blocktopk)) the keys a
//! query may attend at all, the `k` best of a row of scores and exact softmax over chosen
//! keys; for the low-rank ones ([`nystrom`](super::nystrom),
//! [`linformer`](super::linformer)) segment means and row softmaxes of products.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, s};

use crate::attention::Call;
use crate::kernels::gemm::gemm;
use crate::pattern::{Causal, Pattern};

/// The queries `[n_q, d]`, keys `[n_kv, d]` and values `[n_kv, d_v]` of (batch `b`, query
/// head `h`) of `call` (the keys and values of its KV head).
pub(crate) fn head<'a>(
    call: &Call<'a>,
    b: usize,
    h: usize,
) -> (
    ArrayView2<'a, f32>,
    ArrayView2<'a, f32>,
    ArrayView2<'a, f32>,
) {
    let kvh = call.shape().kv_head_of(h);
    let at = |x: ndarray::ArrayView4<'a, f32>, head: usize| {
        x.index_axis_move(Axis(0), b).index_axis_move(Axis(0), head)
    };
    (at(call.q(), h), at(call.k(), kvh), at(call.v(), kvh))
}

/// The keys query `i` of batch element `b` may attend before any selection: the prefix
/// `0..n` of the valid keys (causal masking and key padding both cut a prefix).
pub(crate) fn allowed_keys(call: &Call<'_>, b: usize, i: usize) -> usize {
    let shape = call.shape();
    let causal = if call.opts().causal {
        Causal.keys_in_row(shape.geometry(), i)
    } else {
        shape.n_kv()
    };
    causal.min(call.key_len(b))
}

/// The indices of the `k` largest of `scores` into `idx` (in no particular order); ties go to
/// the lower index, so the choice is reproducible. All of them when there are at most `k`.
pub(crate) fn top_k(scores: &[f32], k: usize, idx: &mut Vec<u32>) {
    idx.clear();
    idx.extend(0..scores.len() as u32);
    if k == 0 {
        idx.clear();
    } else if k < scores.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            scores[b as usize]
                .total_cmp(&scores[a as usize])
                .then(a.cmp(&b))
        });
        idx.truncate(k);
    }
}

/// `out = softmax(scores[keys]) V[keys]`: exact softmax attention of one query row over the
/// keys `keys` (its scores already scaled and modified), accumulated in `f32`; a zero row
/// when `keys` is empty.
pub(crate) fn attend_chosen(scores: &[f32], keys: &[u32], v: &ArrayView2<f32>, out: &mut [f32]) {
    out.fill(0.0);
    if keys.is_empty() {
        return;
    }
    let m = keys
        .iter()
        .map(|&j| scores[j as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f32;
    for &j in keys {
        let w = (scores[j as usize] - m).exp();
        total += w;
        let row = v.row(j as usize);
        match row.as_slice() {
            Some(row) => out.iter_mut().zip(row).for_each(|(o, &x)| *o += w * x),
            None => out.iter_mut().zip(row).for_each(|(o, &x)| *o += w * x),
        }
    }
    let inv = 1.0 / total;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// The means of `m` consecutive segments of `x`'s rows (segment `c` is rows
/// `c n / m .. (c + 1) n / m`; `m <= n`).
pub(crate) fn segment_means(x: ArrayView2<f32>, m: usize) -> Array2<f32> {
    let n = x.nrows();
    let mut out = Array2::zeros((m, x.ncols()));
    for (c, mut row) in out.outer_iter_mut().enumerate() {
        let seg = x.slice(s![c * n / m..(c + 1) * n / m, ..]);
        for r in seg.outer_iter() {
            row.zip_mut_with(&r, |o, &v| *o += v);
        }
        let inv = 1.0 / seg.nrows() as f32;
        row.mapv_inplace(|o| o * inv);
    }
    out
}

/// Replaces each row of `x` by its softmax.
pub(crate) fn softmax_rows(mut x: ArrayViewMut2<f32>) {
    for mut row in x.outer_iter_mut() {
        let m = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut total = 0.0;
        row.mapv_inplace(|v| {
            let e = (v - m).exp();
            total += e;
            e
        });
        let inv = 1.0 / total;
        row.mapv_inplace(|v| v * inv);
    }
}

/// `softmax(a b^T scale)` row by row: `[a rows, b rows]`.
pub(crate) fn softmax_product(a: ArrayView2<f32>, b: ArrayView2<f32>, scale: f32) -> Array2<f32> {
    let mut out = Array2::zeros((a.nrows(), b.nrows()));
    gemm(scale, &a, &b.t(), 0.0, &mut out.view_mut());
    softmax_rows(out.view_mut());
    out
}

/// `a b` for `f32` matrices, through the crate's GEMM.
pub(crate) fn product(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros((a.nrows(), b.ncols()));
    gemm(1.0, &a, &b, 0.0, &mut out.view_mut());
    out
}

/// The reason a variant without a causal form gives for a causal call (`why`: what mixes the
/// future in), and none otherwise.
pub(crate) fn no_causal_form(
    name: &str,
    why: &str,
    opts: &crate::attention::Options,
) -> Vec<String> {
    if opts.causal {
        vec![format!(
            "{name} has no causal form: {why}, the future included"
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_takes_the_largest_and_breaks_ties_by_index() {
        let s = [0.5, 2.0, -1.0, 2.0, 3.0, 0.5];
        let mut idx = Vec::new();
        top_k(&s, 3, &mut idx);
        idx.sort_unstable();
        assert_eq!(idx, vec![1, 3, 4]);
        top_k(&s, 4, &mut idx);
        idx.sort_unstable();
        // Of the two 0.5s, the lower index.
        assert_eq!(idx, vec![0, 1, 3, 4]);
        top_k(&s, 10, &mut idx);
        assert_eq!(idx.len(), 6);
        top_k(&s, 0, &mut idx);
        assert!(idx.is_empty());
    }
}
