//! Explicit AVX-512 microkernels for the flash engine's two tile products.
//!
//! The portable kernels in [`simd`](super::simd) leave register allocation to LLVM, which
//! keeps a block of 4 accumulators in registers but spills larger ones. These kernels hold 16
//! of the 32 zmm registers as accumulators, loading `V` query (or value) vectors and
//! broadcasting `R` key (or probability) scalars per step: `R * V` FMAs for `R + V` loads,
//! enough independent chains to cover the FMA latency.
//!
//! The online softmax runs one vector of 16 queries at a time down the tile's keys, with an
//! exponential ([`exp16`]) that has the same reduction and polynomial as the portable
//! [`exp`](super::exp::exp) but scales by `2^n` with `vscalefps` and zeroes underflow with a
//! mask, in fewer instructions. It is most of the engine's non-FMA work.
//!
//! # Safety
//!
//! Every function here is `#[target_feature(enable = "avx512f,avx2,fma")]`: callers must
//! have confirmed the CPU supports these features ([`Isa::Avx512`](super::simd::Isa) is only
//! produced after `is_x86_feature_detected!`). The loads and stores go through raw pointers;
//! each public entry point asserts the slice lengths that make every access in bounds, and
//! each `unsafe` block says which assertion covers it.

use std::arch::x86_64::*;

use super::exp::{HI, LN2_HI, LN2_LO, LO, LOG2E};
use super::simd::{OnlineState, Tile};

/// f32 lanes in a zmm register.
const L: usize = 16;

/// `st = scale * k qt` for one tile (layout of [`Tile`]); `ldq` must be a multiple of 16.
///
/// # Safety
///
/// The CPU must support avx512f, avx2 and fma.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn scores(t: &mut Tile<'_>, scale: f32) {
    let (cols, d, ldq) = (t.cols, t.d, t.ldq);
    assert!(ldq.is_multiple_of(L) && t.qt.len() >= d * ldq && t.k.len() >= cols * d);
    assert!(t.st.len() >= cols * ldq);
    let (qt, k, st) = (t.qt.as_ptr(), t.k.as_ptr(), t.st.as_mut_ptr());
    // SAFETY (all calls below): the blocks stay within `cols` keys and `ldq` queries, which
    // the assertions above bound by the slice lengths.
    unsafe {
        if ldq.is_multiple_of(4 * L) {
            scores_keys::<4, 4>(qt, k, st, cols, d, ldq, scale);
        } else if ldq.is_multiple_of(2 * L) {
            scores_keys::<8, 2>(qt, k, st, cols, d, ldq, scale);
        } else {
            scores_keys::<8, 1>(qt, k, st, cols, d, ldq, scale);
        }
    }
}

/// All keys of the tile in blocks of `R`, the remainder one at a time.
///
/// # Safety
///
/// As [`scores`], with `qt`, `k` and `st` valid for the lengths it asserts.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_keys<const R: usize, const V: usize>(
    qt: *const f32,
    k: *const f32,
    st: *mut f32,
    cols: usize,
    d: usize,
    ldq: usize,
    scale: f32,
) {
    let full = cols - cols % R;
    // SAFETY: forwarded from the caller; `j + R <= cols` in the first loop, `j < cols` in
    // the second.
    unsafe {
        for j in (0..full).step_by(R) {
            scores_block::<R, V>(qt, k, st, j, d, ldq, scale);
        }
        for j in full..cols {
            scores_block::<1, V>(qt, k, st, j, d, ldq, scale);
        }
    }
}

/// Keys `j..j + R` against every query, `V` vectors of queries at a time.
///
/// # Safety
///
/// Keys `j..j + R` exist in `k` (`d` floats each) and `st` (`ldq` each); `qt` holds `d` rows
/// of `ldq`; `ldq` is a multiple of `16 * V`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn scores_block<const R: usize, const V: usize>(
    qt: *const f32,
    k: *const f32,
    st: *mut f32,
    j: usize,
    d: usize,
    ldq: usize,
    scale: f32,
) {
    let s = _mm512_set1_ps(scale);
    for i0 in (0..ldq).step_by(L * V) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for p in 0..d {
            let mut q = [_mm512_setzero_ps(); V];
            for (v, qv) in q.iter_mut().enumerate() {
                // SAFETY: row p < d of qt, columns i0 + 16v .. +16 <= ldq.
                *qv = unsafe { _mm512_loadu_ps(qt.add(p * ldq + i0 + L * v)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: key j + r < j + R, element p < d.
                let kb = _mm512_set1_ps(unsafe { *k.add((j + r) * d + p) });
                for (a, &qv) in row.iter_mut().zip(&q) {
                    *a = _mm512_fmadd_ps(kb, qv, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                // SAFETY: key j + r < j + R, columns i0 + 16v .. +16 <= ldq.
                unsafe {
                    _mm512_storeu_ps(st.add((j + r) * ldq + i0 + L * v), _mm512_mul_ps(a, s))
                };
            }
        }
    }
}

/// `acc[i] = acc[i] * rescale[i] + sum_j st[j][i] v[j]` for the first `rows` queries
/// (layout of [`Tile`]); `ldv` must be a multiple of 16.
///
/// # Safety
///
/// The CPU must support avx512f, avx2 and fma.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn pv(t: &Tile<'_>, acc: &mut [f32], rows: usize, rescale: &[f32]) {
    let (cols, ldq, ldv) = (t.cols, t.ldq, t.ldv);
    assert!(ldv.is_multiple_of(L) && t.v.len() >= cols * ldv && acc.len() >= rows * ldv);
    assert!(t.st.len() >= cols * ldq && rows <= ldq && rescale.len() >= rows);
    let (st, v, a, f) = (
        t.st.as_ptr(),
        t.v.as_ptr(),
        acc.as_mut_ptr(),
        rescale.as_ptr(),
    );
    // SAFETY (all calls below): the blocks stay within `rows` queries, `cols` keys and `ldv`
    // value columns, which the assertions above bound by the slice lengths.
    unsafe {
        if ldv.is_multiple_of(4 * L) {
            pv_rows::<4, 4>(st, v, a, f, rows, cols, ldq, ldv);
        } else if ldv.is_multiple_of(2 * L) {
            pv_rows::<8, 2>(st, v, a, f, rows, cols, ldq, ldv);
        } else {
            pv_rows::<8, 1>(st, v, a, f, rows, cols, ldq, ldv);
        }
    }
}

/// All `rows` queries in blocks of `R`, the remainder one at a time.
///
/// # Safety
///
/// As [`pv`], with the pointers valid for the lengths it asserts.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_rows<const R: usize, const V: usize>(
    st: *const f32,
    v: *const f32,
    acc: *mut f32,
    rescale: *const f32,
    rows: usize,
    cols: usize,
    ldq: usize,
    ldv: usize,
) {
    let full = rows - rows % R;
    // SAFETY: forwarded from the caller; `i + R <= rows` in the first loop, `i < rows` in
    // the second.
    unsafe {
        for i in (0..full).step_by(R) {
            pv_block::<R, V>(st, v, acc, rescale, i, cols, ldq, ldv);
        }
        for i in full..rows {
            pv_block::<1, V>(st, v, acc, rescale, i, cols, ldq, ldv);
        }
    }
}

/// Queries `i..i + R`, all `cols` keys, `V` vectors of value columns at a time.
///
/// # Safety
///
/// Queries `i..i + R` exist in `acc` (`ldv` each), `rescale` and each row of `st` (`ldq`
/// each, `cols` rows); `v` holds `cols` rows of `ldv`; `ldv` is a multiple of `16 * V`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_block<const R: usize, const V: usize>(
    st: *const f32,
    v: *const f32,
    acc: *mut f32,
    rescale: *const f32,
    i: usize,
    cols: usize,
    ldq: usize,
    ldv: usize,
) {
    for c0 in (0..ldv).step_by(L * V) {
        let mut o = [[_mm512_setzero_ps(); V]; R];
        for (r, row) in o.iter_mut().enumerate() {
            // SAFETY: query i + r < i + R.
            let f = _mm512_set1_ps(unsafe { *rescale.add(i + r) });
            for (w, x) in row.iter_mut().enumerate() {
                // SAFETY: query i + r, columns c0 + 16w .. +16 <= ldv.
                let a = unsafe { _mm512_loadu_ps(acc.add((i + r) * ldv + c0 + L * w)) };
                *x = _mm512_mul_ps(a, f);
            }
        }
        for j in 0..cols {
            let mut vv = [_mm512_setzero_ps(); V];
            for (w, x) in vv.iter_mut().enumerate() {
                // SAFETY: key j < cols, columns c0 + 16w .. +16 <= ldv.
                *x = unsafe { _mm512_loadu_ps(v.add(j * ldv + c0 + L * w)) };
            }
            for (r, row) in o.iter_mut().enumerate() {
                // SAFETY: key j < cols, query i + r < ldq.
                let p = _mm512_set1_ps(unsafe { *st.add(j * ldq + i + r) });
                for (x, &y) in row.iter_mut().zip(&vv) {
                    *x = _mm512_fmadd_ps(p, y, *x);
                }
            }
        }
        for (r, row) in o.iter().enumerate() {
            for (w, &x) in row.iter().enumerate() {
                // SAFETY: query i + r, columns c0 + 16w .. +16 <= ldv.
                unsafe { _mm512_storeu_ps(acc.add((i + r) * ldv + c0 + L * w), x) };
            }
        }
    }
}

/// `e^x` on 16 lanes: [`exp`](super::exp::exp)'s argument reduction and degree-7 polynomial,
/// the same accuracy (a few ulp, pinned by the tests of [`simd`](super::simd)) and the same
/// edges: results below the normal range (and `-inf`) are zero, inputs above 88.3 clamped.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn exp16(x: __m512) -> __m512 {
    let lo = _mm512_set1_ps(LO);
    // False for x < LO, -inf and NaN: those lanes come out zero.
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, lo);
    let xc = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(HI));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let c = |v: f32| _mm512_set1_ps(v);
    let r2 = _mm512_mul_ps(r, r);
    let r4 = _mm512_mul_ps(r2, r2);
    let p01 = _mm512_add_ps(c(1.0), r);
    let p23 = _mm512_fmadd_ps(r, c(1.0 / 6.0), c(0.5));
    let p45 = _mm512_fmadd_ps(r, c(1.0 / 120.0), c(1.0 / 24.0));
    let p67 = _mm512_fmadd_ps(r, c(1.0 / 5040.0), c(1.0 / 720.0));
    let lo_half = _mm512_fmadd_ps(r2, p23, p01);
    let hi_half = _mm512_fmadd_ps(r2, p67, p45);
    let p = _mm512_fmadd_ps(r4, hi_half, lo_half);
    _mm512_maskz_scalef_ps(keep, p, n)
}

/// Replaces each `x` with `e^(x - shift)` and returns their sum.
///
/// # Safety
///
/// The CPU must support avx512f, avx2 and fma.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    let s = _mm512_set1_ps(shift);
    let mut sum = _mm512_setzero_ps();
    let mut chunks = xs.chunks_exact_mut(L);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 16 floats.
        let e = exp16(_mm512_sub_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, s));
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), e) };
        sum = _mm512_add_ps(sum, e);
    }
    let mut total = _mm512_reduce_add_ps(sum);
    for x in chunks.into_remainder() {
        *x = super::exp::exp(*x - shift);
        total += *x;
    }
    total
}

/// Replaces each `x` with `elu(x) + 1`: `x + 1` for positive `x`, else `e^x`.
///
/// # Safety
///
/// The CPU must support avx512f, avx2 and fma.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn elu1(xs: &mut [f32]) {
    let one = _mm512_set1_ps(1.0);
    let mut chunks = xs.chunks_exact_mut(L);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 16 floats.
        let x = unsafe { _mm512_loadu_ps(c.as_ptr()) };
        let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_setzero_ps());
        let y = _mm512_mask_add_ps(exp16(x), positive, x, one);
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), y) };
    }
    for x in chunks.into_remainder() {
        *x = if *x > 0.0 {
            *x + 1.0
        } else {
            super::exp::exp(*x)
        };
    }
}

/// The online-softmax step of [`simd::online_softmax`](super::simd::online_softmax), one
/// vector of 16 queries at a time: its new maxima over the tile's keys, then the
/// exponentials and their sum in one pass (the sum stays in a register). Uses neither
/// `state.shift` nor `state.sums`.
///
/// # Safety
///
/// The CPU must support avx512f, avx2 and fma.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn online_softmax(
    st: &mut [f32],
    cols: usize,
    ldq: usize,
    state: &mut OnlineState<'_>,
) {
    assert!(ldq.is_multiple_of(L) && st.len() >= cols * ldq);
    assert!(state.m.len() >= ldq && state.l.len() >= ldq && state.rescale.len() >= ldq);
    let st = st.as_mut_ptr();
    let (m, l, rescale) = (
        state.m.as_mut_ptr(),
        state.l.as_mut_ptr(),
        state.rescale.as_mut_ptr(),
    );
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    for i0 in (0..ldq).step_by(L) {
        // SAFETY (every access in this loop): queries i0..i0 + 16 <= ldq, keys j < cols,
        // within the lengths asserted above.
        unsafe {
            let m_old = _mm512_loadu_ps(m.add(i0));
            let mut mx = m_old;
            for j in 0..cols {
                mx = _mm512_max_ps(mx, _mm512_loadu_ps(st.add(j * ldq + i0)));
            }
            // A query with no allowed key yet keeps m = -inf, shift 0 (so -inf scores give
            // 0) and rescale 1 (its accumulator is zero anyway).
            let empty = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(mx, neg_inf);
            let shift = _mm512_mask_mov_ps(mx, empty, _mm512_setzero_ps());
            let resc = _mm512_mask_mov_ps(
                exp16(_mm512_sub_ps(m_old, shift)),
                empty,
                _mm512_set1_ps(1.0),
            );
            let mut sum = _mm512_setzero_ps();
            for j in 0..cols {
                let at = st.add(j * ldq + i0);
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(at), shift));
                _mm512_storeu_ps(at, e);
                sum = _mm512_add_ps(sum, e);
            }
            _mm512_storeu_ps(m.add(i0), mx);
            _mm512_storeu_ps(rescale.add(i0), resc);
            _mm512_storeu_ps(
                l.add(i0),
                _mm512_fmadd_ps(_mm512_loadu_ps(l.add(i0)), resc, sum),
            );
        }
    }
}
