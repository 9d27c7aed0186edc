//! The exact reference: masked softmax attention in `f64`, and error metrics against it.
//!
//! [`oracle`] computes every query row; [`oracle_rows`] computes a chosen subset (from
//! [`sample_rows`]) for lengths where all rows would be too slow. Both follow the crate's
//! conventions: bottom-right causal alignment, GQA head sharing, and a zero output row for a
//! query with no allowed key.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Axis, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index;

use crate::attention::{Chosen, Problem};
use crate::kernels::half::round_bf16;
use crate::modifier::{ScoreMods, rope_row_f64};
use crate::parallel::for_each_head;
use crate::pattern::{Geometry, Mask, Pattern};

/// Softmax attention of every query row under `pattern` (dense when `None`) and the problem's
/// causal flag, key lengths and score modifiers, in `f64`: `[batch, heads, n_q, v_dim]`.
pub fn oracle(problem: &Problem<'_>, pattern: Option<&dyn Pattern>) -> Array4<f64> {
    let rows: Vec<usize> = (0..problem.shape().n_q()).collect();
    oracle_rows(problem, pattern, &rows)
}

/// Like [`oracle`] for the query rows `rows` only: `[batch, heads, rows.len(), v_dim]`, row
/// `r` of the result being query `rows[r]`.
///
/// # Panics
/// If a row index is not below `n_q`.
pub fn oracle_rows(
    problem: &Problem<'_>,
    pattern: Option<&dyn Pattern>,
    rows: &[usize],
) -> Array4<f64> {
    let mask = problem.mask(pattern);
    oracle_with(problem, Keys::Mask(&mask), rows)
}

/// Like [`oracle_rows`] for the rows of `chosen`, each attending only the keys a
/// data-dependent variant chose for it (and that the problem's own mask allows): the oracle
/// a [`Selected`](crate::attention::Fidelity::Selected) variant is checked against.
///
/// # Panics
/// If `chosen` does not fit the problem (its rows, batch or heads).
pub fn oracle_chosen(problem: &Problem<'_>, chosen: &Chosen) -> Array4<f64> {
    assert!(
        chosen.fits(&problem.shape()),
        "chosen keys do not fit the problem"
    );
    let mask = problem.mask(None);
    oracle_with(problem, Keys::Chosen(&mask, chosen), chosen.rows())
}

fn oracle_with(problem: &Problem<'_>, keys: Keys<'_>, rows: &[usize]) -> Array4<f64> {
    let shape = problem.shape();
    assert!(
        rows.iter().all(|&r| r < shape.n_q()),
        "oracle rows must be below n_q = {}",
        shape.n_q()
    );
    let mut out = Array4::zeros([shape.batch(), shape.heads(), rows.len(), shape.v_dim()]);
    for_each_head(out.view_mut(), |b, h, mut head_out| {
        let head = HeadRef::new(problem, b, h);
        let v = problem
            .v()
            .index_axis_move(Axis(0), b)
            .index_axis_move(Axis(0), shape.kv_head_of(h));
        for (r, &i) in rows.iter().enumerate() {
            let scores = head.scores(i, |j| keys.allows(head.g, (b, h, r), i, j));
            let mut out_row = head_out.row_mut(r);
            out_row.fill(0.0);
            if scores.is_empty() {
                continue;
            }
            let m = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0.0;
            for &(j, s) in &scores {
                let p = (s - m).exp();
                total += p;
                for (o, &x) in out_row.iter_mut().zip(v.row(j)) {
                    *o += p * x as f64;
                }
            }
            out_row.mapv_inplace(|o| o / total);
        }
    });
    out
}

/// What a query row of the oracle may attend.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// The pairs a mask allows.
    Mask(&'a Mask<'a>),
    /// The pairs the problem's mask allows among the keys a variant chose.
    Chosen(&'a Mask<'a>, &'a Chosen),
}

impl Keys<'_> {
    /// Whether query `i` (row `r` of the computed rows) of (b, h) may attend key `j`.
    fn allows(&self, g: Geometry, (b, h, r): (usize, usize, usize), i: usize, j: usize) -> bool {
        match self {
            Keys::Mask(mask) => mask.allows(g, i, j),
            Keys::Chosen(mask, chosen) => mask.allows(g, i, j) && chosen.contains(b, h, r, j),
        }
    }
}

/// Like [`oracle_rows`], computed the plain way in `f32`: per row, every score a sequential
/// dot product, then a two-pass softmax and a sequential weighted sum, all in `f32` (the
/// result is compared with [`compare`] like a variant's). Its error against the `f64` oracle is the
/// error a correct, untiled f32 kernel makes at this shape: the sweep's tolerance for exact
/// variants is twice it plus a floor (the rule of the flash-attention papers).
///
/// # Panics
/// If a row index is not below `n_q`.
pub fn plain_f32_rows(
    problem: &Problem<'_>,
    pattern: Option<&dyn Pattern>,
    rows: &[usize],
) -> Array4<f32> {
    let mask = problem.mask(pattern);
    plain_f32_with(problem, Keys::Mask(&mask), rows, false)
}

/// A plain `bf16` attention of the query rows `rows` under `pattern`, as a framework's `bf16`
/// path computes it: Q, K (after RoPE) and V rounded to `bf16`; each score a dot product of
/// `bf16` values accumulated in `f32`, scaled and rounded to `bf16` (a `bf16` matrix
/// product's output); the softmax in `f32` over those scores, its normalized probabilities
/// rounded to `bf16`; `P V` accumulated in `f32` and rounded to `bf16`. The reference of the
/// low-precision rule: an exact `bf16` variant's error against the `f64` oracle must stay
/// within twice this computation's (FlashAttention's criterion for low precision).
pub fn plain_bf16_rows(
    problem: &Problem<'_>,
    pattern: Option<&dyn Pattern>,
    rows: &[usize],
) -> Array4<f32> {
    let mask = problem.mask(pattern);
    plain_f32_with(problem, Keys::Mask(&mask), rows, true)
}

/// Like [`plain_f32_rows`] under the keys a variant chose (as [`oracle_chosen`]).
///
/// # Panics
/// If `chosen` does not fit the problem.
pub fn plain_f32_chosen(problem: &Problem<'_>, chosen: &Chosen) -> Array4<f32> {
    assert!(
        chosen.fits(&problem.shape()),
        "chosen keys do not fit the problem"
    );
    let mask = problem.mask(None);
    plain_f32_with(problem, Keys::Chosen(&mask, chosen), chosen.rows(), false)
}

/// The plain `f32` computation, or with `bf16` the rounding steps of [`plain_bf16_rows`].
fn plain_f32_with(
    problem: &Problem<'_>,
    keys: Keys<'_>,
    rows: &[usize],
    bf16: bool,
) -> Array4<f32> {
    let r = |x: f32| if bf16 { round_bf16(x) } else { x };
    let shape = problem.shape();
    assert!(
        rows.iter().all(|&r| r < shape.n_q()),
        "rows must be below n_q"
    );
    let g = shape.geometry();
    let (q, k) = match problem.opts().rope {
        Some(base) => (
            crate::modifier::rope(problem.q(), shape.offset(), base),
            crate::modifier::rope(problem.k(), 0, base),
        ),
        None => (problem.q().to_owned(), problem.k().to_owned()),
    };
    let scale = problem.scale();
    let mut out = Array4::zeros([shape.batch(), shape.heads(), rows.len(), shape.v_dim()]);
    for_each_head(out.view_mut(), |b, h, mut head_out| {
        let kv = shape.kv_head_of(h);
        let (qh, kh) = (q.slice(s![b, h, .., ..]), k.slice(s![b, kv, .., ..]));
        let vh = problem.v().slice_move(s![b, kv, .., ..]);
        let mods = problem.score_mods(h);
        let key_len = problem.key_len(b);
        let mut scores = vec![0f32; key_len];
        let mut acc = vec![0f32; shape.v_dim()];
        for (row, &i) in rows.iter().enumerate() {
            for (j, s) in scores.iter_mut().enumerate() {
                let mut dot = 0f32;
                for (&a, &b) in qh.row(i).iter().zip(kh.row(j)) {
                    dot += r(a) * r(b);
                }
                *s = r(dot * scale);
            }
            mods.apply_row(i, 0, &mut scores);
            let allowed = |j: &usize| keys.allows(g, (b, h, row), i, *j);
            let m = (0..key_len)
                .filter(allowed)
                .map(|j| scores[j])
                .fold(f32::NEG_INFINITY, f32::max);
            acc.fill(0.0);
            let mut total = 0f32;
            if bf16 {
                // Normalized probabilities, rounded like a bf16 tensor, then P V.
                let total: f32 = (0..key_len)
                    .filter(allowed)
                    .map(|j| (scores[j] - m).exp())
                    .sum();
                for j in (0..key_len).filter(|j| total > 0.0 && allowed(j)) {
                    let p = r((scores[j] - m).exp() / total);
                    for (o, &x) in acc.iter_mut().zip(vh.row(j)) {
                        *o += p * r(x);
                    }
                }
                for (o, a) in head_out.row_mut(row).iter_mut().zip(&acc) {
                    *o = r(*a);
                }
                continue;
            }
            for j in (0..key_len).filter(allowed) {
                let p = (scores[j] - m).exp();
                total += p;
                for (o, &x) in acc.iter_mut().zip(vh.row(j)) {
                    *o += p * x;
                }
            }
            let mut out_row = head_out.row_mut(row);
            for (o, a) in out_row.iter_mut().zip(&acc) {
                *o = if total > 0.0 { a / total } else { 0.0 };
            }
        }
    });
    out
}

/// The softmax attention weights of (batch `b`, query head `h`) under `pattern` (dense when
/// `None`) and the problem's causal flag, key lengths and score modifiers, in `f64`:
/// `[n_q, n_kv]`, each row summing to 1 (a row with no allowed key is zero). For a pattern
/// these are the renormalized masked weights.
pub fn weights(
    problem: &Problem<'_>,
    pattern: Option<&dyn Pattern>,
    b: usize,
    h: usize,
) -> Array2<f64> {
    let mask = problem.mask(pattern);
    weights_with(problem, Keys::Mask(&mask), b, h)
}

/// Like [`weights`] under the keys a variant chose for every query row (`chosen.rows()` being
/// `0..n_q`): its effective weights, for attention maps.
///
/// # Panics
/// If `chosen` does not hold every row of the problem.
pub fn weights_chosen(problem: &Problem<'_>, chosen: &Chosen, b: usize, h: usize) -> Array2<f64> {
    assert!(
        chosen.fits(&problem.shape()),
        "chosen keys do not fit the problem"
    );
    assert!(
        chosen.rows().iter().copied().eq(0..problem.shape().n_q()),
        "weights need the keys of every row"
    );
    let mask = problem.mask(None);
    weights_with(problem, Keys::Chosen(&mask, chosen), b, h)
}

fn weights_with(problem: &Problem<'_>, keys: Keys<'_>, b: usize, h: usize) -> Array2<f64> {
    let shape = problem.shape();
    let head = HeadRef::new(problem, b, h);
    let mut w = Array2::zeros((shape.n_q(), shape.n_kv()));
    for (i, mut row) in w.outer_iter_mut().enumerate() {
        let scores = head.scores(i, |j| keys.allows(head.g, (b, h, i), i, j));
        let m = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores.iter().map(|&(_, s)| (s - m).exp()).sum();
        for &(j, s) in &scores {
            row[j] = (s - m).exp() / total;
        }
    }
    w
}

/// One (batch, head) of a problem in `f64`, with RoPE applied to its queries and keys.
struct HeadRef {
    q: Array2<f64>,
    k: Array2<f64>,
    scale: f64,
    mods: ScoreMods,
    key_len: usize,
    g: Geometry,
}

impl HeadRef {
    fn new(problem: &Problem<'_>, b: usize, h: usize) -> Self {
        let shape = problem.shape();
        let to_f64 = |x: ArrayView2<f32>, offset: isize| {
            let mut x = x.mapv(f64::from);
            if let Some(base) = problem.opts().rope {
                for (s, mut row) in x.outer_iter_mut().enumerate() {
                    let row = row.as_slice_mut().expect("a fresh array is contiguous");
                    rope_row_f64(row, s as isize + offset, base);
                }
            }
            x
        };
        let q = problem
            .q()
            .index_axis_move(Axis(0), b)
            .index_axis_move(Axis(0), h);
        let k = problem
            .k()
            .index_axis_move(Axis(0), b)
            .index_axis_move(Axis(0), shape.kv_head_of(h));
        Self {
            q: to_f64(q, shape.offset()),
            k: to_f64(k, 0),
            scale: problem.scale() as f64,
            mods: problem.score_mods(h),
            key_len: problem.key_len(b),
            g: shape.geometry(),
        }
    }

    /// The modified scores `(j, s_ij)` of query `i` for the valid keys `allowed` admits.
    fn scores(&self, i: usize, allowed: impl Fn(usize) -> bool) -> Vec<(usize, f64)> {
        let qi = self.q.row(i);
        (0..self.key_len)
            .filter(|&j| allowed(j))
            .map(|j| {
                let dot = qi.dot(&self.k.row(j));
                (j, self.mods.apply_f64(dot * self.scale, i, j))
            })
            .collect()
    }
}

/// The softmax mass dense attention (under the problem's causal flag, key lengths and score
/// modifiers) puts on the pairs `pattern` drops, averaged over `rows` of every (batch, head):
/// `1 - P(allowed)`.
///
/// It bounds how far a pattern-restricted variant can be from dense attention: each output
/// row moves by at most `2 * mass * max |v|`.
pub fn dropped_mass(problem: &Problem<'_>, pattern: &dyn Pattern, rows: &[usize]) -> f64 {
    let g = problem.shape().geometry();
    dropped_mass_with(problem, rows, |_, i, j| pattern.allows(g, i, j))
}

/// Like [`dropped_mass`] for the keys a variant chose over the rows of `chosen`: the dense
/// softmax mass its selection leaves out, the price of selection.
///
/// # Panics
/// If `chosen` does not fit the problem.
pub fn dropped_mass_chosen(problem: &Problem<'_>, chosen: &Chosen) -> f64 {
    assert!(
        chosen.fits(&problem.shape()),
        "chosen keys do not fit the problem"
    );
    dropped_mass_with(problem, chosen.rows(), |(b, h, r), _, j| {
        chosen.contains(b, h, r, j)
    })
}

fn dropped_mass_with(
    problem: &Problem<'_>,
    rows: &[usize],
    kept: impl Fn((usize, usize, usize), usize, usize) -> bool,
) -> f64 {
    let shape = problem.shape();
    let g = shape.geometry();
    let dense = problem.mask(None);
    let mut total = 0.0;
    let mut count = 0usize;
    for b in 0..shape.batch() {
        for h in 0..shape.heads() {
            let head = HeadRef::new(problem, b, h);
            for (r, &i) in rows.iter().enumerate() {
                let scores = head.scores(i, |j| dense.allows(g, i, j));
                if scores.is_empty() {
                    continue;
                }
                let m = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                let (mut all, mut kept_mass) = (0.0, 0.0);
                for &(j, s) in &scores {
                    let p = (s - m).exp();
                    all += p;
                    if kept((b, h, r), i, j) {
                        kept_mass += p;
                    }
                }
                total += 1.0 - kept_mass / all;
                count += 1;
            }
        }
    }
    if count == 0 {
        0.0
    } else {
        total / count as f64
    }
}

/// `count` distinct query rows in `0..n_q`, sorted, chosen by `seed`, always including the
/// first and the last row. All rows when `count >= n_q`.
pub fn sample_rows(n_q: usize, count: usize, seed: u64) -> Vec<usize> {
    if count >= n_q || n_q <= 2 {
        return (0..n_q).collect();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let inner = count.saturating_sub(2).min(n_q - 2);
    let mut rows: Vec<usize> = index::sample(&mut rng, n_q - 2, inner)
        .into_iter()
        .map(|r| r + 1)
        .collect();
    rows.push(0);
    rows.push(n_q - 1);
    rows.sort_unstable();
    rows
}

/// Differences between an output and the oracle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorStats {
    /// The largest absolute element difference.
    pub max_abs: f64,
    /// `||out - ref||_F / ||ref||_F` (the absolute Frobenius norm when `ref` is zero).
    pub rel_frobenius: f64,
    /// The mean over rows of the cosine similarity of output and reference rows (a pair of
    /// zero rows counts as 1, one zero row as 0).
    pub mean_cosine: f64,
}

/// Compares `out` (`[b, h, rows, v_dim]`) with `reference` of the same shape.
///
/// # Panics
/// If the shapes differ.
pub fn compare(out: ArrayView4<f32>, reference: ArrayView4<f64>) -> ErrorStats {
    assert_eq!(out.shape(), reference.shape(), "compare: shapes differ");
    let mut max_abs: f64 = 0.0;
    let mut diff2 = 0.0;
    let mut ref2 = 0.0;
    let mut cos_sum = 0.0;
    let mut rows = 0usize;
    let d = out.shape()[3];
    let flat_out = out.to_shape((out.len() / d.max(1), d)).expect("4-d to 2-d");
    let flat_ref = reference
        .to_shape((reference.len() / d.max(1), d))
        .expect("4-d to 2-d");
    for (o, r) in flat_out.outer_iter().zip(flat_ref.outer_iter()) {
        let (mut dot, mut oo, mut rr) = (0.0, 0.0, 0.0);
        for (&a, &b) in o.iter().zip(r) {
            let a = a as f64;
            max_abs = max_abs.max((a - b).abs());
            diff2 += (a - b) * (a - b);
            dot += a * b;
            oo += a * a;
            rr += b * b;
        }
        ref2 += rr;
        cos_sum += match (oo > 0.0, rr > 0.0) {
            (false, false) => 1.0,
            (true, true) => dot / (oo.sqrt() * rr.sqrt()),
            _ => 0.0,
        };
        rows += 1;
    }
    let rel_frobenius = if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else {
        diff2.sqrt()
    };
    ErrorStats {
        max_abs,
        rel_frobenius,
        mean_cosine: cos_sum / rows.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::Options;
    use ndarray::Array4;

    #[test]
    fn sampled_rows_include_ends_and_are_reproducible() {
        let rows = sample_rows(1000, 10, 7);
        assert_eq!(rows.len(), 10);
        assert_eq!(rows[0], 0);
        assert_eq!(*rows.last().unwrap(), 999);
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(rows, sample_rows(1000, 10, 7));
        assert_ne!(rows, sample_rows(1000, 10, 8));
        assert_eq!(sample_rows(5, 10, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(sample_rows(1, 1, 0), vec![0]);
        assert_eq!(sample_rows(100, 2, 0), vec![0, 99]);
    }

    #[test]
    fn hand_computed_two_keys() {
        // One query [1, 0], keys [1, 0] and [0, 0], values [1] and [3], scale 1:
        // weights e/(e+1) and 1/(e+1).
        let q = Array4::from_shape_vec([1, 1, 1, 2], vec![1.0, 0.0]).unwrap();
        let k = Array4::from_shape_vec([1, 1, 2, 2], vec![1.0, 0.0, 0.0, 0.0]).unwrap();
        let v = Array4::from_shape_vec([1, 1, 2, 1], vec![1.0, 3.0]).unwrap();
        let p = Problem::new(q.view(), k.view(), v.view(), Options::new().scale(1.0)).unwrap();
        let e = std::f64::consts::E;
        let want = (e * 1.0 + 3.0) / (e + 1.0);
        assert!((oracle(&p, None)[[0, 0, 0, 0]] - want).abs() < 1e-12);
        // Causal with n_q = 1: the single query sees both keys (bottom-right alignment).
        let pc = Problem::new(
            q.view(),
            k.view(),
            v.view(),
            Options::new().scale(1.0).causal(true),
        )
        .unwrap();
        assert!((oracle(&pc, None)[[0, 0, 0, 0]] - want).abs() < 1e-12);
    }

    #[test]
    fn rows_with_no_allowed_key_are_zero() {
        // Causal with n_q = 3 > n_kv = 1: queries 0 and 1 see no key.
        let q = Array4::from_elem([1, 1, 3, 2], 0.5f32);
        let k = Array4::from_elem([1, 1, 1, 2], 0.5f32);
        let v = Array4::from_elem([1, 1, 1, 2], 2.0f32);
        let p = Problem::new(q.view(), k.view(), v.view(), Options::new().causal(true)).unwrap();
        let o = oracle(&p, None);
        assert_eq!(o.index_axis(Axis(2), 0).sum(), 0.0);
        assert_eq!(o.index_axis(Axis(2), 1).sum(), 0.0);
        assert_eq!(o[[0, 0, 2, 0]], 2.0);
    }

    #[test]
    fn dropped_mass_of_uniform_attention_is_the_dropped_fraction() {
        // Zero queries: every key gets the same weight, so the mass dropped by a pattern is
        // the fraction of keys it drops.
        let q = Array4::zeros([1, 1, 8, 4]);
        let k = Array4::from_elem([1, 1, 8, 4], 1.0f32);
        let p = Problem::new(q.view(), k.view(), k.view(), Options::new()).unwrap();
        let rows: Vec<usize> = (0..8).collect();
        let local = crate::pattern::Local { block: 2 };
        assert!((dropped_mass(&p, &local, &rows) - 0.75).abs() < 1e-12);
        assert_eq!(dropped_mass(&p, &crate::pattern::Dense, &rows), 0.0);
        // Causal: row i sees i + 1 keys, of which local keeps 1 or 2.
        let pc = Problem::new(q.view(), k.view(), k.view(), Options::new().causal(true)).unwrap();
        let want: f64 = (0..8)
            .map(|i| 1.0 - (1 + i % 2) as f64 / (i + 1) as f64)
            .sum::<f64>()
            / 8.0;
        assert!((dropped_mass(&pc, &local, &rows) - want).abs() < 1e-12);
    }

    #[test]
    fn the_plain_f32_reference_is_close_but_not_exact() {
        // Gaussian inputs with RoPE and causal masking over a few hundred keys: the plain f32
        // computation sits at f32 rounding from the f64 oracle, never at zero, and a pattern
        // restricts it the same way.
        let shape = crate::shape::Shape::self_attention(1, 2, 300, 16).unwrap();
        let qkv = crate::workload::gaussian(&shape, 1.0, 3);
        let opts = crate::Options::new().causal(true).rope(10000.0);
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
        let rows = [0, 1, 150, 299];
        let e = compare(
            plain_f32_rows(&p, None, &rows).view(),
            oracle_rows(&p, None, &rows).view(),
        );
        assert!(e.rel_frobenius > 1e-9 && e.rel_frobenius < 2e-6, "{e:?}");
        let window = crate::pattern::Window { w: 8 };
        let w = compare(
            plain_f32_rows(&p, Some(&window), &rows).view(),
            oracle_rows(&p, Some(&window), &rows).view(),
        );
        assert!(w.rel_frobenius < 2e-6, "{w:?}");
        let dense_vs_window = compare(
            plain_f32_rows(&p, Some(&window), &rows).view(),
            oracle_rows(&p, None, &rows).view(),
        );
        assert!(dense_vs_window.rel_frobenius > 1e-2, "{dense_vs_window:?}");
    }

    #[test]
    fn compare_metrics() {
        let r = Array4::from_shape_vec([1, 1, 2, 2], vec![1.0, 0.0, 0.0, 2.0]).unwrap();
        let o = Array4::from_shape_vec([1, 1, 2, 2], vec![1.0f32, 0.0, 0.0, 2.0]).unwrap();
        let s = compare(o.view(), r.view());
        assert_eq!(s.max_abs, 0.0);
        assert_eq!(s.rel_frobenius, 0.0);
        assert!((s.mean_cosine - 1.0).abs() < 1e-12);
        let o = Array4::from_shape_vec([1, 1, 2, 2], vec![0.0f32, 1.0, 0.0, 2.0]).unwrap();
        let s = compare(o.view(), r.view());
        assert_eq!(s.max_abs, 1.0);
        assert!((s.rel_frobenius - (2.0f64 / 5.0).sqrt()).abs() < 1e-12);
        assert!((s.mean_cosine - 0.5).abs() < 1e-12);
    }
}
