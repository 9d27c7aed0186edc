//! Explicit AVX-512 kernels for the softmax side of the tiled engine, `full` and linear
//! attention's feature map (the tile products are in [`tiles`](super::tiles)).
//!
//! The online softmax runs one vector of 16 queries at a time down the tile's keys, with an
//! exponential ([`exp16`]) that has the same reduction and polynomial as the portable
//! [`exp`](super::exp::exp) but scales by `2^n` with `vscalefps` and zeroes underflow with a
//! mask, in fewer instructions. It is most of the engine's non-FMA work.
//!
//! # Safety
//!
//! Every function here is `#[target_feature(enable = "avx512f,avx2,fma")]`: callers must
//! have confirmed the CPU supports these features (the dispatchers in [`dispatch`](super::dispatch)
//! hold an `Isa` token, which only detection makes). The loads and stores go through raw pointers;
//! each public entry point asserts the slice lengths that make every access in bounds, and
//! each `unsafe` block says which assertion covers it.

use std::arch::x86_64::*;

use super::exp::{HI, LN2_HI, LN2_LO, LO, LOG2E};
use super::tile::{OnlineState, holds};

/// f32 lanes in a zmm register.
const L: usize = 16;

/// `e^x` on 16 lanes: [`exp`](super::exp::exp)'s argument reduction and degree-7 polynomial,
/// the same accuracy (a few ulp, pinned by the tests of [`dispatch`](super::dispatch)) and the same
/// edges: results below the normal range (and `-inf`) are zero, inputs above 88.3 clamped.
/// NaN gives 0 here and about 1.2e-38 in the portable version (neither is meaningful: inputs
/// are checked finite, and only scores that overflow f32 could produce NaN).
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

/// The online-softmax step of [`dispatch::online_softmax`](super::dispatch::online_softmax), one
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
    assert!(ldq.is_multiple_of(L) && holds(st.len(), cols, ldq));
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
