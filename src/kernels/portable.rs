//! The portable kernels: plain, safe Rust over fixed-size lane blocks, which LLVM
//! vectorizes to the width of the enclosing function (SSE2 on baseline x86_64, NEON on
//! aarch64; AVX2 or AVX-512 when [`dispatch`](super::dispatch) calls them from a
//! `#[target_feature]` wrapper).

use std::ops::Range;

use super::exp;
use super::half::{bf16_to_f32, f16_to_f32};
use super::tile::{KV_BLOCK, KvData, KvPartial, OnlineState, Tile, holds};

/// Whether the portable path may fuse multiply-adds: NEON always has FMA; baseline x86_64
/// (SSE2) does not, and there `f32::mul_add` would be a libm call.
pub(super) const HAS_FMA: bool = cfg!(target_arch = "aarch64");

/// `a * b + c`, fused when `F` (the path has FMA), else separate (a libm `fmaf` call would
/// be far slower than the two operations).
#[inline(always)]
pub(super) fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// `st = scale * k qt`, in blocks of `R` keys times `C` queries held in registers.
#[inline(always)]
pub(super) fn scores_block<const R: usize, const C: usize, const F: bool>(
    t: &mut Tile<'_>,
    scale: f32,
) {
    let (cols, d, ldq) = (t.cols, t.d, t.ldq);
    assert!(ldq % C == 0 && holds(t.qt.len(), d, ldq) && holds(t.k.len(), cols, d));
    assert!(holds(t.st.len(), cols, ldq));
    let full = cols - cols % R;
    for j in (0..full).step_by(R) {
        scores_rows::<R, C, F>(t.qt, t.k, t.st, j, d, ldq, scale);
    }
    for j in full..cols {
        scores_rows::<1, C, F>(t.qt, t.k, t.st, j, d, ldq, scale);
    }
}

#[inline(always)]
pub(super) fn scores_rows<const R: usize, const C: usize, const F: bool>(
    qt: &[f32],
    k: &[f32],
    st: &mut [f32],
    j: usize,
    d: usize,
    ldq: usize,
    scale: f32,
) {
    let k = &k[j * d..(j + R) * d];
    for i0 in (0..ldq).step_by(C) {
        let mut acc = [[0.0f32; C]; R];
        for p in 0..d {
            let qv: &[f32; C] = qt[p * ldq + i0..p * ldq + i0 + C]
                .try_into()
                .expect("C queries");
            for r in 0..R {
                let kv = k[r * d + p];
                for l in 0..C {
                    acc[r][l] = madd::<F>(kv, qv[l], acc[r][l]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let out = &mut st[(j + r) * ldq + i0..(j + r) * ldq + i0 + C];
            for l in 0..C {
                out[l] = a[l] * scale;
            }
        }
    }
}

#[inline(always)]
pub(super) fn softmax_cols(st: &mut [f32], cols: usize, ldq: usize, state: &mut OnlineState<'_>) {
    assert!(
        holds(st.len(), cols, ldq),
        "{cols} keys of {ldq} in {}",
        st.len()
    );
    let OnlineState {
        m,
        l,
        rescale,
        shift,
        sums,
    } = state;
    let (m, l, rescale) = (&mut m[..ldq], &mut l[..ldq], &mut rescale[..ldq]);
    let (shift, sums) = (&mut shift[..ldq], &mut sums[..ldq]);
    // New maxima: an elementwise maximum over the key rows.
    shift.copy_from_slice(m);
    for row in st[..cols * ldq].chunks_exact(ldq) {
        for (a, &x) in shift.iter_mut().zip(row) {
            *a = if x > *a { x } else { *a };
        }
    }
    for i in 0..ldq {
        let new = shift[i];
        // A query with no allowed key yet keeps m = -inf, shift 0 (so -inf scores give 0)
        // and rescale 1 (its accumulator is zero anyway).
        rescale[i] = if new == f32::NEG_INFINITY {
            1.0
        } else {
            exp::exp(m[i] - new)
        };
        m[i] = new;
        if new == f32::NEG_INFINITY {
            shift[i] = 0.0;
        }
    }
    sums.fill(0.0);
    for row in st[..cols * ldq].chunks_exact_mut(ldq) {
        for ((x, &sh), s) in row.iter_mut().zip(shift.iter()).zip(sums.iter_mut()) {
            *x = exp::exp(*x - sh);
            *s += *x;
        }
    }
    for i in 0..ldq {
        l[i] = l[i] * rescale[i] + sums[i];
    }
}

/// `acc = acc * rescale + st^T v`, in blocks of `R` queries times `C` value columns.
#[inline(always)]
pub(super) fn pv_block<const R: usize, const C: usize, const F: bool>(
    t: &Tile<'_>,
    acc: &mut [f32],
    rows: usize,
    rescale: &[f32],
) {
    let (cols, ldq, ldv) = (t.cols, t.ldq, t.ldv);
    assert!(ldv % C == 0 && holds(t.v.len(), cols, ldv) && holds(acc.len(), rows, ldv));
    assert!(holds(t.st.len(), cols, ldq) && rows <= ldq && rescale.len() >= rows);
    let full = rows - rows % R;
    for i in (0..full).step_by(R) {
        pv_rows::<R, C, F>(t.st, t.v, acc, i, cols, ldq, ldv, rescale);
    }
    for i in full..rows {
        pv_rows::<1, C, F>(t.st, t.v, acc, i, cols, ldq, ldv, rescale);
    }
}

/// `acct[c][i] = acct[c][i] * rescale[i] + sum_j v[j][c] st[j][i]` for `c < dv`, `i < ldq`
/// (the transposed accumulator of [`dispatch::accumulate_t`](super::dispatch::accumulate_t)):
/// `C` value columns at a time, each key's probabilities a row LLVM vectorizes.
pub(super) fn pv_t_block<const C: usize, const F: bool>(
    t: &Tile<'_>,
    acct: &mut [f32],
    dv: usize,
    rescale: &[f32],
) {
    let (cols, ldq, ldv) = (t.cols, t.ldq, t.ldv);
    assert!(dv <= ldv && holds(t.v.len(), cols, ldv) && holds(acct.len(), dv, ldq));
    assert!(holds(t.st.len(), cols, ldq) && rescale.len() >= ldq);
    let rescale = &rescale[..ldq];
    for c0 in (0..dv).step_by(C) {
        let width = C.min(dv - c0);
        let block = &mut acct[c0 * ldq..(c0 + width) * ldq];
        for row in block.chunks_exact_mut(ldq) {
            for (x, &f) in row.iter_mut().zip(rescale) {
                *x *= f;
            }
        }
        for j in 0..cols {
            let p = &t.st[j * ldq..(j + 1) * ldq];
            let vj = &t.v[j * ldv + c0..j * ldv + c0 + width];
            for (row, &s) in block.chunks_exact_mut(ldq).zip(vj) {
                for (x, &y) in row.iter_mut().zip(p) {
                    *x = madd::<F>(s, y, *x);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn pv_rows<const R: usize, const C: usize, const F: bool>(
    st: &[f32],
    v: &[f32],
    acc: &mut [f32],
    i: usize,
    cols: usize,
    ldq: usize,
    ldv: usize,
    rescale: &[f32],
) {
    for c0 in (0..ldv).step_by(C) {
        let mut o = [[0.0f32; C]; R];
        for (r, or) in o.iter_mut().enumerate() {
            let f = rescale[i + r];
            for (x, &a) in or
                .iter_mut()
                .zip(&acc[(i + r) * ldv + c0..(i + r) * ldv + c0 + C])
            {
                *x = a * f;
            }
        }
        for j in 0..cols {
            let vv: &[f32; C] = v[j * ldv + c0..j * ldv + c0 + C]
                .try_into()
                .expect("C values");
            let p = &st[j * ldq + i..j * ldq + i + R];
            for r in 0..R {
                for l in 0..C {
                    o[r][l] = madd::<F>(p[r], vv[l], o[r][l]);
                }
            }
        }
        for (r, or) in o.iter().enumerate() {
            acc[(i + r) * ldv + c0..(i + r) * ldv + c0 + C].copy_from_slice(or);
        }
    }
}

#[inline(always)]
pub(super) fn dot_rows_lanes<const F: bool>(k: &[f32], q: &[f32], scale: f32, out: &mut [f32]) {
    const W: usize = 16;
    for (row, o) in k.chunks_exact(q.len()).zip(out) {
        let mut acc = [0.0f32; W];
        let (mut kc, mut qc) = (row.chunks_exact(W), q.chunks_exact(W));
        for (a, b) in (&mut kc).zip(&mut qc) {
            for l in 0..W {
                acc[l] = madd::<F>(a[l], b[l], acc[l]);
            }
        }
        // A pairwise tree, which vectorizes (a sequential sum would be one long chain).
        let mut w = W / 2;
        while w > 0 {
            for l in 0..w {
                acc[l] += acc[l + w];
            }
            w /= 2;
        }
        let tail: f32 = kc
            .remainder()
            .iter()
            .zip(qc.remainder())
            .map(|(a, b)| a * b)
            .sum();
        *o = (acc[0] + tail) * scale;
    }
}

#[inline(always)]
pub(super) fn elu1_slice(xs: &mut [f32]) {
    for x in xs {
        // Both sides are computed and one selected, so the loop vectorizes.
        let e = exp::exp(*x);
        *x = if *x > 0.0 { *x + 1.0 } else { e };
    }
}

/// The portable FMA-rate loop of [`fma_chains`](super::dispatch::fma_chains): 12 chains of
/// 4 lanes.
pub(super) fn fma_portable(iters: usize) -> f32 {
    let mut acc = [[1.0f32; 4]; 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for x in a.iter_mut() {
                *x = *x * 0.999_999 + 1e-7;
            }
        }
        std::hint::black_box(&mut acc);
    }
    acc.iter().flatten().sum()
}

/// The decode scan: folds the keys `keys` (slots) of one KV head's cache into the online
/// softmax of `st.g` queries `q` (`[g][d]`, already multiplied by the score scale), reading
/// each key and value once for all the queries. Widens half-precision values exactly.
pub(super) fn kv_scan<const F: bool>(
    q: &[f32],
    d: usize,
    kv: KvData<'_>,
    keys: Range<usize>,
    st: &mut KvPartial,
) {
    match kv {
        KvData::F32 { k, v } => kv_scan_with::<f32, F>(q, d, k, v, |x| x, keys, st),
        KvData::F16 { k, v } => kv_scan_with::<u16, F>(q, d, k, v, f16_to_f32, keys, st),
        KvData::Bf16 { k, v } => kv_scan_with::<u16, F>(q, d, k, v, bf16_to_f32, keys, st),
    }
}

#[inline(always)]
fn kv_scan_with<T: Copy, const F: bool>(
    q: &[f32],
    d: usize,
    k: &[T],
    v: &[T],
    conv: impl Fn(T) -> f32,
    keys: Range<usize>,
    st: &mut KvPartial,
) {
    let (g, dv) = (st.g, st.dv);
    assert!(holds(q.len(), g, d) && holds(st.acc.len(), g, dv));
    assert!(holds(k.len(), keys.end.next_multiple_of(KV_BLOCK), d));
    assert!(holds(v.len(), keys.end, dv));
    let mut s = [0f32; KV_BLOCK];
    let mut vrow = vec![0f32; dv];
    let mut start = keys.start;
    while start < keys.end {
        let block = start / KV_BLOCK;
        let (lo, hi) = (
            start % KV_BLOCK,
            (keys.end - block * KV_BLOCK).min(KV_BLOCK),
        );
        let kb = &k[block * KV_BLOCK * d..(block + 1) * KV_BLOCK * d];
        for i in 0..g {
            let qi = &q[i * d..(i + 1) * d];
            s.fill(0.0);
            for (c, &qc) in qi.iter().enumerate() {
                for (sj, &kj) in s.iter_mut().zip(&kb[c * KV_BLOCK..(c + 1) * KV_BLOCK]) {
                    *sj = madd::<F>(qc, conv(kj), *sj);
                }
            }
            let mx = s[lo..hi].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let acc = &mut st.acc[i * dv..(i + 1) * dv];
            if mx > st.m[i] {
                let r = exp::exp(st.m[i] - mx);
                st.l[i] *= r;
                acc.iter_mut().for_each(|a| *a *= r);
                st.m[i] = mx;
            }
            let m = st.m[i];
            for (j, &sj) in s.iter().enumerate().take(hi).skip(lo) {
                let p = exp::exp(sj - m);
                st.l[i] += p;
                let row = (block * KV_BLOCK + j) * dv;
                for (x, &y) in vrow.iter_mut().zip(&v[row..row + dv]) {
                    *x = conv(y);
                }
                for (a, &x) in acc.iter_mut().zip(&vrow) {
                    *a = madd::<F>(p, x, *a);
                }
            }
        }
        start = (block + 1) * KV_BLOCK;
    }
}
