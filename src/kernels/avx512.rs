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
use std::ops::Range;

use super::tile::{KV_BLOCK, KvData, KvPartial, OnlineState, holds};

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

/// At or below this, [`exp16_nonpos`] gives 0 (`e^-105` rounds to zero: the reduction gives
/// `n = -151`), `-inf` included.
const NONPOS_LO: f32 = -105.0;

/// `e^x` on 16 lanes for `x <= 0` (a softmax's argument, `score - max`), in 12 instructions
/// to [`exp16`]'s 17: the same two-part reduction, a degree-5 polynomial for `e^r` on
/// `|r| <= ln2 / 2` (coefficients fitted for least relative error, 7.5e-8 in exact
/// arithmetic, 9.1e-8 with the constant term held at 1), and `vscalefps`, which also gives
/// subnormal results. No upper clamp. Arguments at or below [`NONPOS_LO`] (`-inf`, a masked
/// score, and NaN) are clamped for the arithmetic and their lanes zeroed by the final
/// `vscalefps`'s mask rather than by its underflow: on Intel cores an underflowing result
/// takes a microcode assist (measured on a Xeon, model 207: causal `flash` at n = 4096, one
/// thread, 157-159 -> 136-137 ms per call with the mask; causal `local(block=128)` at
/// n = 8192, 19.3 -> 15-16 ms, its softmax 44% -> 8% of the profile). Within 2 ulp of the correctly rounded
/// result over `[-87.3, 0]` (an f32 emulation of these steps in numpy, 4 million points; the
/// tests of [`dispatch`](super::dispatch) pin 3 ulp); positive arguments are outside its
/// contract.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn exp16_nonpos(x: __m512) -> __m512 {
    let c = |v: f32| _mm512_set1_ps(v);
    let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, c(NONPOS_LO));
    let x = _mm512_max_ps(x, c(NONPOS_LO));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, c(LOG2E)),
    );
    let r = _mm512_fnmadd_ps(n, c(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, c(LN2_LO), r);
    let p = _mm512_fmadd_ps(c(EXP5[5]), r, c(EXP5[4]));
    let p = _mm512_fmadd_ps(p, r, c(EXP5[3]));
    let p = _mm512_fmadd_ps(p, r, c(EXP5[2]));
    let p = _mm512_fmadd_ps(p, r, c(EXP5[1]));
    let p = _mm512_fmadd_ps(p, r, c(EXP5[0]));
    _mm512_maskz_scalef_ps(keep, p, n)
}

/// The coefficients of [`exp16_nonpos`]'s polynomial, constant term first: the constant held
/// at 1 (so `e^0`, every row maximum's weight, is exactly 1), the others a weighted least
/// squares (Lawson's iteration towards minimax) of the relative error of `e^r` on 4000
/// Chebyshev nodes of `[-ln2 / 2, ln2 / 2]`, rounded to `f32`.
#[allow(clippy::excessive_precision)]
const EXP5: [f32; 6] = [
    1.0,
    0.999_999_701_976_776_1,
    0.499_991_506_338_119_5,
    0.166_676_357_388_496_4,
    0.041_897_930_204_868_3,
    0.008_290_315_046_906_471,
];

/// [`exp16_nonpos`] for the dispatch tests: `e^x` of each `x <= 0` of `xs`, in place.
///
/// # Safety
///
/// The CPU must support avx512f, avx2 and fma.
#[cfg(test)]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn exp_nonpos(xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(L);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 16 floats.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), exp16_nonpos(_mm512_loadu_ps(c.as_ptr()))) };
    }
    let rest = chunks.into_remainder();
    let mut tail = [0.0f32; L];
    tail[..rest.len()].copy_from_slice(rest);
    // SAFETY: `tail` holds exactly 16 floats.
    unsafe {
        _mm512_storeu_ps(
            tail.as_mut_ptr(),
            exp16_nonpos(_mm512_loadu_ps(tail.as_ptr())),
        )
    };
    rest.copy_from_slice(&tail[..rest.len()]);
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
        let e = exp16_nonpos(_mm512_sub_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, s));
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
                exp16_nonpos(_mm512_sub_ps(m_old, shift)),
                empty,
                _mm512_set1_ps(1.0),
            );
            let mut sum = _mm512_setzero_ps();
            for j in 0..cols {
                let at = st.add(j * ldq + i0);
                let e = exp16_nonpos(_mm512_sub_ps(_mm512_loadu_ps(at), shift));
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

/// Whether [`kv_scan`] has a register-blocked version for `g` queries of value dimension
/// `dv` (otherwise the dispatcher runs the portable scan at this width).
pub(super) fn kv_scan_fits(g: usize, dv: usize) -> bool {
    (1..=8).contains(&g) && matches!(dv, 32 | 64 | 128)
}

/// The decode scan of [`dispatch::kv_scan`](super::dispatch::kv_scan): per block of 16 keys,
/// the scores of all `g` queries from one pass over the block's key dimensions (each load,
/// widened from half precision in the register, feeds every query), one online-softmax step
/// per query, then each value row loaded once into all `g` accumulators, which stay in
/// registers for the whole scan.
///
/// # Safety
///
/// The CPU must support avx512f, avx2 and fma; [`kv_scan_fits`] must hold for `st`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn kv_scan(
    q: &[f32],
    d: usize,
    kv: KvData<'_>,
    keys: Range<usize>,
    st: &mut KvPartial,
) {
    macro_rules! go {
        ($e:literal, $k:expr, $v:expr) => {
            match (st.g, st.dv / L) {
                (1, 2) => scan::<_, $e, 1, 2>(q, d, $k, $v, keys, st),
                (2, 2) => scan::<_, $e, 2, 2>(q, d, $k, $v, keys, st),
                (3, 2) => scan::<_, $e, 3, 2>(q, d, $k, $v, keys, st),
                (4, 2) => scan::<_, $e, 4, 2>(q, d, $k, $v, keys, st),
                (5, 2) => scan::<_, $e, 5, 2>(q, d, $k, $v, keys, st),
                (6, 2) => scan::<_, $e, 6, 2>(q, d, $k, $v, keys, st),
                (7, 2) => scan::<_, $e, 7, 2>(q, d, $k, $v, keys, st),
                (8, 2) => scan::<_, $e, 8, 2>(q, d, $k, $v, keys, st),
                (1, 4) => scan::<_, $e, 1, 4>(q, d, $k, $v, keys, st),
                (2, 4) => scan::<_, $e, 2, 4>(q, d, $k, $v, keys, st),
                (3, 4) => scan::<_, $e, 3, 4>(q, d, $k, $v, keys, st),
                (4, 4) => scan::<_, $e, 4, 4>(q, d, $k, $v, keys, st),
                (5, 4) => scan::<_, $e, 5, 4>(q, d, $k, $v, keys, st),
                (6, 4) => scan::<_, $e, 6, 4>(q, d, $k, $v, keys, st),
                (7, 4) => scan::<_, $e, 7, 4>(q, d, $k, $v, keys, st),
                (8, 4) => scan::<_, $e, 8, 4>(q, d, $k, $v, keys, st),
                (1, 8) => scan::<_, $e, 1, 8>(q, d, $k, $v, keys, st),
                (2, 8) => scan::<_, $e, 2, 8>(q, d, $k, $v, keys, st),
                (3, 8) => scan::<_, $e, 3, 8>(q, d, $k, $v, keys, st),
                (4, 8) => scan::<_, $e, 4, 8>(q, d, $k, $v, keys, st),
                (5, 8) => scan::<_, $e, 5, 8>(q, d, $k, $v, keys, st),
                (6, 8) => scan::<_, $e, 6, 8>(q, d, $k, $v, keys, st),
                (7, 8) => scan::<_, $e, 7, 8>(q, d, $k, $v, keys, st),
                (8, 8) => scan::<_, $e, 8, 8>(q, d, $k, $v, keys, st),
                (g, c) => panic!("kv_scan has no block for {g} queries, {c} value vectors"),
            }
        };
    }
    match kv {
        KvData::F32 { k, v } => go!(0, k, v),
        KvData::F16 { k, v } => go!(1, k, v),
        KvData::Bf16 { k, v } => go!(2, k, v),
    }
}

/// 16 lanes of a KV buffer as `f32`: `E` = 0 reads `f32`, 1 IEEE halves (`vcvtph2ps`), 2
/// `bf16` (zero-extended and shifted into the high half).
///
/// # Safety
///
/// The CPU must support avx512f; `p` must point at 16 readable elements of that format.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn kv_load<T, const E: u8>(p: *const T) -> __m512 {
    // SAFETY: the caller guarantees 16 readable elements at `p` (64 bytes for f32, 32 for
    // the half formats).
    unsafe {
        match E {
            0 => _mm512_loadu_ps(p.cast()),
            1 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.cast()),
            ))),
        }
    }
}

/// How many key blocks ahead [`scan`] prefetches. A block's K (`d x 16`) and V (`16 x dv`)
/// are 4 KiB each at d = dv = 64 in f32, one page: the hardware prefetchers stop at page
/// boundaries, and one block's work is longer than the out-of-order window, so without
/// software prefetch each block's loads wait on memory in turn.
const PREFETCH_BLOCKS: usize = 4;

/// Prefetches the cache line at `p` into L2 and below. Never faults, whatever `p`.
///
/// L2, not L1 (`T0`): measured on a full-width AVX-512 Xeon (2 threads, 1M-slot f32 cache,
/// 1 GiB), the scan read 1.12-1.14x the rate of a plain sum with `T1` and 0.94-0.98x with
/// `T0` (0.67x without prefetch); an L1 prefetch holds a line-fill buffer until the data
/// arrives, of which a core has few.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch is a hint: it does not dereference `p` and never faults, so any
    // address (here computed with wrapping arithmetic, possibly past the allocation) is fine.
    unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast::<i8>()) };
}

/// Floats [`read_sum`] prefetches ahead of its loads (16 KiB).
const READ_AHEAD: usize = 4096;

/// The sum of `xs`, as a streaming read: four independent 16-lane accumulators and an L2
/// prefetch [`READ_AHEAD`] floats ahead, the loop the read-bandwidth probe times. It is the
/// fastest plain read measured here (1.15x a sum without prefetch over 1 GiB), so that
/// "fraction of the read bandwidth" is against a loop as good as the scan's own.
///
/// # Safety
///
/// The CPU must support avx512f.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn read_sum(xs: &[f32]) -> f32 {
    const STEP: usize = 4 * L;
    let mut acc = [_mm512_setzero_ps(); 4];
    let whole = xs.len() / STEP * STEP;
    let p = xs.as_ptr();
    let mut i = 0;
    while i < whole {
        prefetch(p.wrapping_add(i + READ_AHEAD));
        for (c, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + STEP <= whole <= xs.len(), so the 16 floats at i + 16 c are in xs.
            *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(p.add(i + c * L)) });
        }
        i += STEP;
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(v) + xs[whole..].iter().sum::<f32>()
}

// Indices walk several register arrays (scores, accumulators, probabilities) in lockstep.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx2,fma")]
fn scan<T: Copy, const E: u8, const G: usize, const C: usize>(
    q: &[f32],
    d: usize,
    k: &[T],
    v: &[T],
    keys: Range<usize>,
    st: &mut KvPartial,
) {
    let dv = C * L;
    assert!(std::mem::size_of::<T>() == if E == 0 { 4 } else { 2 });
    assert!(st.g == G && st.dv == dv && st.acc.len() == G * dv && holds(q.len(), G, d));
    assert!(st.m.len() == G && st.l.len() == G);
    assert!(holds(k.len(), keys.end.next_multiple_of(KV_BLOCK), d));
    assert!(holds(v.len(), keys.end, dv));
    let (kp, vp) = (k.as_ptr(), v.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); C]; G];
    let mut lsum = [_mm512_setzero_ps(); G];
    let mut m = [f32::NEG_INFINITY; G];
    for i in 0..G {
        for (c, a) in acc[i].iter_mut().enumerate() {
            // SAFETY: acc holds G * dv floats (asserted); row i, vector c is in bounds.
            *a = unsafe { _mm512_loadu_ps(st.acc.as_ptr().add(i * dv + c * L)) };
        }
        lsum[i] = _mm512_maskz_mov_ps(1, _mm512_set1_ps(st.l[i]));
        m[i] = st.m[i];
    }
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut p = [[0f32; KV_BLOCK]; G];
    let mut start = keys.start;
    while start < keys.end {
        let block = start / KV_BLOCK;
        let (lo, hi) = (
            start % KV_BLOCK,
            (keys.end - block * KV_BLOCK).min(KV_BLOCK),
        );
        let mask = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16;
        let mut s0 = [_mm512_setzero_ps(); G];
        let mut s1 = [_mm512_setzero_ps(); G];
        let kb = block * KV_BLOCK * d;
        let (kpf, vpf) = (
            kp.wrapping_add(kb + PREFETCH_BLOCKS * KV_BLOCK * d),
            vp.wrapping_add((block + PREFETCH_BLOCKS) * KV_BLOCK * dv),
        );
        let mut c = 0;
        // Two sets of accumulators: twice the independent FMA chains when G is small.
        while c + 1 < d {
            // SAFETY: block < keys.end.next_multiple_of(16) / 16, so dimensions c and c + 1
            // of the block lie within k (asserted); q has G rows of d.
            // One prefetch per 64-byte line: dimensions c and c + 1 share one in half
            // precision.
            prefetch(kpf.wrapping_add(c * KV_BLOCK));
            if E == 0 {
                prefetch(kpf.wrapping_add((c + 1) * KV_BLOCK));
            }
            unsafe {
                let k0 = kv_load::<T, E>(kp.add(kb + c * KV_BLOCK));
                let k1 = kv_load::<T, E>(kp.add(kb + (c + 1) * KV_BLOCK));
                for i in 0..G {
                    s0[i] = _mm512_fmadd_ps(_mm512_set1_ps(*q.get_unchecked(i * d + c)), k0, s0[i]);
                    s1[i] =
                        _mm512_fmadd_ps(_mm512_set1_ps(*q.get_unchecked(i * d + c + 1)), k1, s1[i]);
                }
            }
            c += 2;
        }
        if c < d {
            // SAFETY: as above, for the last dimension.
            unsafe {
                let k0 = kv_load::<T, E>(kp.add(kb + c * KV_BLOCK));
                for i in 0..G {
                    s0[i] = _mm512_fmadd_ps(_mm512_set1_ps(*q.get_unchecked(i * d + c)), k0, s0[i]);
                }
            }
        }
        for i in 0..G {
            let s = _mm512_mask_blend_ps(mask, neg_inf, _mm512_add_ps(s0[i], s1[i]));
            let mx = _mm512_reduce_max_ps(s);
            if mx > m[i] {
                let r = _mm512_set1_ps(super::exp::exp(m[i] - mx));
                for a in acc[i].iter_mut() {
                    *a = _mm512_mul_ps(*a, r);
                }
                lsum[i] = _mm512_mul_ps(lsum[i], r);
                m[i] = mx;
            }
            // Masked lanes are -inf and come out 0.
            let e = exp16_nonpos(_mm512_sub_ps(s, _mm512_set1_ps(m[i])));
            lsum[i] = _mm512_add_ps(lsum[i], e);
            // SAFETY: p[i] holds 16 floats.
            unsafe { _mm512_storeu_ps(p[i].as_mut_ptr(), e) };
        }
        for j in lo..hi {
            let row = (block * KV_BLOCK + j) * dv;
            for c in 0..C {
                if E == 0 || c % 2 == 0 {
                    prefetch(vpf.wrapping_add(j * dv + c * L));
                }
                // SAFETY: key block * 16 + j < keys.end, so its row of dv lies within v.
                let x = unsafe { kv_load::<T, E>(vp.add(row + c * L)) };
                for i in 0..G {
                    acc[i][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[i][j]), x, acc[i][c]);
                }
            }
        }
        start = (block + 1) * KV_BLOCK;
    }
    for i in 0..G {
        for (c, a) in acc[i].iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm512_storeu_ps(st.acc.as_mut_ptr().add(i * dv + c * L), *a) };
        }
        st.l[i] = _mm512_reduce_add_ps(lsum[i]);
        st.m[i] = m[i];
    }
}
