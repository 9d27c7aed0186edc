//! The tiled engine's two tile products in `bf16` with AVX512-BF16: `vdpbf16ps` multiplies
//! 32 pairs of `bf16` and adds each pair's two products into one of 16 `f32` lanes, twice the
//! multiply-adds of an `f32` FMA per instruction, with `f32` accumulation.
//!
//! Both products reduce over pairs, so each operand that is loaded as a vector holds, per
//! query lane, two consecutive elements of the reduction ("pair-interleaved"):
//! - scores: `st[j][i] = scale * sum_p k[j][p] q[i][p]`, reducing over dimension pairs; the
//!   queries are stored `[d / 2][ldq][2]` and each key row's pair `k[j][2pp..2pp + 2]` is one
//!   32-bit broadcast straight from row-major `bf16` keys;
//! - P V: `acct[c][i] = acct[c][i] * rescale[i] + sum_j v[j][c] p[j][i]`, reducing over key
//!   pairs; the probabilities are stored `[cols / 2][ldq][2]` (written by [`pack_pairs`]
//!   from the softmax's `f32` tile) and the values `[n.div_ceil(2)][d_v][2]`, so `v[2jj..2jj + 2][c]`
//!   is one 32-bit broadcast.
//!
//! # Safety
//!
//! Every function is `#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]`: callers
//! must hold a [`Bf16Dot`](super::isa::Bf16Dot) token, which only detection makes (the
//! dispatchers in [`dispatch`](super::dispatch) take one). Each public entry point asserts,
//! with overflow-checked products (pair counts against half the slice lengths), the slice
//! lengths that bound its raw-pointer accesses.

use std::arch::x86_64::*;

use super::tile::holds;

/// f32 lanes in a zmm register (and `bf16` pairs).
const L: usize = 16;

/// The 32 `bf16` lanes of a 512-bit integer vector: a bit cast.
#[inline(always)]
fn as_bh(x: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit plain vector types, and every bit pattern is a valid value of
    // either.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
}

/// The 512 bits of a `bf16` vector as integers: a bit cast.
#[inline(always)]
fn from_bh(x: __m512bh) -> __m512i {
    // SAFETY: as for `as_bh`.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(x) }
}

/// `out[r][i] = sum_pp a[r * row_stride + pp * step] . b[pp][i]` over `depth` pairs, where
/// each `a` element is a 32-bit word holding two `bf16` and `b` is pair-interleaved
/// (`[depth][ldq][2]` `bf16`, `ldq` a multiple of 16).
struct Panel {
    a: *const u32,
    row_stride: usize,
    step: usize,
    b: *const u16,
    depth: usize,
    ldq: usize,
}

/// What [`panel`] does with each output vector.
#[derive(Clone, Copy)]
enum Epilogue {
    /// Stores `scale * sum`.
    Scale(f32),
    /// Stores `out * rescale[i] + sum`.
    Rescale(*const f32),
}

/// The scores of one tile: `st[j][i] = scale * sum_p k[j][p] q[i][p]` for keys `j < cols`
/// and queries `i < ldq`, from `bf16` keys (`cols x d`, row-major, `d` even) and `bf16`
/// queries pair-interleaved (`[d / 2][ldq][2]`).
///
/// # Safety
///
/// The CPU must support avx512f, avx512bw and avx512bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn scores(
    qt2: &[u16],
    k: &[u16],
    st: &mut [f32],
    (cols, d, ldq): (usize, usize, usize),
    scale: f32,
) {
    assert!(d.is_multiple_of(2) && ldq.is_multiple_of(L));
    assert!(holds(qt2.len(), d, ldq) && holds(k.len(), cols, d) && holds(st.len(), cols, ldq));
    let a = Panel {
        a: k.as_ptr().cast(),
        row_stride: d / 2,
        step: 1,
        b: qt2.as_ptr(),
        depth: d / 2,
        ldq,
    };
    // SAFETY: output row j < cols reads words j * d / 2 + pp < cols * d / 2 of k (each word
    // two of its u16, in bounds as asserted), pairs pp < d / 2 of qt2 (d * ldq u16), and
    // writes st[j * ldq + i], i < ldq. A u32 read from a u16 slice may be unaligned:
    // `read_unaligned` is used.
    unsafe { panel(&a, st.as_mut_ptr(), cols, Epilogue::Scale(scale)) }
}

/// `acct[c][i] = acct[c][i] * rescale[i] + sum_j v[j][c] p[j][i]` for `c < dv`, `i < ldq`,
/// over `pairs` key pairs: probabilities pair-interleaved (`[pairs][ldq][2]`), values
/// pair-interleaved (`[pairs][dv][2]`, the tile's first pair first).
///
/// # Safety
///
/// The CPU must support avx512f, avx512bw and avx512bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pv_t(
    pt2: &[u16],
    vt2: &[u16],
    acct: &mut [f32],
    (pairs, dv, ldq): (usize, usize, usize),
    rescale: &[f32],
) {
    assert!(ldq.is_multiple_of(L) && rescale.len() >= ldq);
    assert!(holds(pt2.len() / 2, pairs, ldq) && holds(vt2.len() / 2, pairs, dv));
    assert!(holds(acct.len(), dv, ldq));
    let a = Panel {
        a: vt2.as_ptr().cast(),
        row_stride: 1,
        step: dv,
        b: pt2.as_ptr(),
        depth: pairs,
        ldq,
    };
    // SAFETY: output row c < dv reads words pp * dv + c < pairs * dv of vt2, pairs pp of pt2
    // (2 * pairs * ldq u16), rescale[i] and acct[c * ldq + i] for i < ldq: all asserted.
    unsafe {
        panel(
            &a,
            acct.as_mut_ptr(),
            dv,
            Epilogue::Rescale(rescale.as_ptr()),
        )
    }
}

/// Rounds the `f32` tile `st` (`cols x ldq`) to `bf16` pair-interleaved over keys:
/// `pt2[jj][i][0..2] = (st[2jj][i], st[2jj + 1][i])`, a zero partner for an odd last key.
///
/// # Safety
///
/// The CPU must support avx512f, avx512bw and avx512bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_pairs(st: &[f32], cols: usize, ldq: usize, pt2: &mut [u16]) {
    assert!(ldq.is_multiple_of(L) && holds(st.len(), cols, ldq));
    assert!(holds(pt2.len() / 2, cols.div_ceil(2), ldq));
    // Word lane w of the result takes 16-bit elements w (first row) and 16 + w (second).
    let mut idx = [0u16; 32];
    for (w, pair) in idx.chunks_exact_mut(2).enumerate() {
        pair[0] = w as u16;
        pair[1] = 16 + w as u16;
    }
    // SAFETY: `idx` holds 32 u16 (64 bytes).
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
    let (s, p) = (st.as_ptr(), pt2.as_mut_ptr());
    for jj in 0..cols.div_ceil(2) {
        for i0 in (0..ldq).step_by(L) {
            // SAFETY: rows 2jj (and 2jj + 1 when it exists) < cols of st, columns i0..i0 + 16
            // <= ldq; the 32 u16 written are pair jj's columns i0..i0 + 16 of pt2.
            unsafe {
                let a = _mm512_loadu_ps(s.add(2 * jj * ldq + i0));
                let b = if 2 * jj + 1 < cols {
                    _mm512_loadu_ps(s.add((2 * jj + 1) * ldq + i0))
                } else {
                    _mm512_setzero_ps()
                };
                let h = from_bh(_mm512_cvtne2ps_pbh(b, a));
                _mm512_storeu_si512(
                    p.add((jj * ldq + i0) * 2).cast(),
                    _mm512_permutexvar_epi16(idx, h),
                );
            }
        }
    }
}

/// The chains of [`dot_chains`]: enough to hide the instruction's latency at the throughput
/// a Zen 4 core sustains (about one 512-bit `vdpbf16ps` per cycle), and few enough to stay in
/// registers. With 24, rustc kept 15 in registers and spilled the rest, and each spilled
/// chain's store-to-load round trip capped the probe at 86 GFLOP/s on a Zen 4 core where the
/// instruction sustains 221 (`flash(dtype=bf16)` itself ran at 131 useful GFLOP/s there).
pub(super) const DOT_CHAINS: usize = 12;

/// `iters` rounds of [`DOT_CHAINS`] independent `vdpbf16ps` chains: the instruction's
/// throughput (64 flops each, a multiply and an add per pair), to set against the `f32` FMA
/// peak.
///
/// # Safety
///
/// The CPU must support avx512f, avx512bw and avx512bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn dot_chains(iters: usize) -> f32 {
    let a = as_bh(_mm512_set1_epi16(std::hint::black_box(0x3f80)));
    // 2^-22: two ulps of 1, so every product survives the rounding of the accumulation.
    let b = as_bh(_mm512_set1_epi16(std::hint::black_box(0x3480)));
    let mut acc = [_mm512_set1_ps(std::hint::black_box(1.0)); DOT_CHAINS];
    for _ in 0..std::hint::black_box(iters) {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
}

/// [`Panel`]'s rows in register blocks of `R x V` (6 x 4, 12 x 2 or 12 x 1 by `ldq`), then
/// the remainder in blocks of 4, 2 and 1.
///
/// # Safety
///
/// Every element the panel touches for rows `< rows` is readable (`out`'s writable).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn panel(a: &Panel, out: *mut f32, rows: usize, e: Epilogue) {
    // SAFETY (every call): forwarded; each `V` divides `ldq` by the branch condition.
    unsafe {
        if a.ldq.is_multiple_of(4 * L) {
            panel_rows::<6, 4>(a, out, rows, e);
        } else if a.ldq.is_multiple_of(2 * L) {
            panel_rows::<12, 2>(a, out, rows, e);
        } else {
            panel_rows::<12, 1>(a, out, rows, e);
        }
    }
}

/// [`panel`] for one `V`.
///
/// # Safety
///
/// As [`panel`], with `ldq` a multiple of `16 V`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn panel_rows<const R: usize, const V: usize>(
    a: &Panel,
    out: *mut f32,
    rows: usize,
    e: Epilogue,
) {
    let full = rows - rows % R;
    let mut r = full;
    // SAFETY: every block's rows lie below `rows` (a block of R' is taken only while that
    // many are left).
    unsafe {
        for r0 in (0..full).step_by(R) {
            block::<R, V>(a, out, r0, e);
        }
        while rows - r >= 4 {
            block::<4, V>(a, out, r, e);
            r += 4;
        }
        if rows - r >= 2 {
            block::<2, V>(a, out, r, e);
            r += 2;
        }
        if rows - r >= 1 {
            block::<1, V>(a, out, r, e);
        }
    }
}

/// Output rows `r0..r0 + R`, `V` vectors of queries at a time.
///
/// # Safety
///
/// As [`panel`] for these rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn block<const R: usize, const V: usize>(a: &Panel, out: *mut f32, r0: usize, e: Epilogue) {
    let ldq = a.ldq;
    for i0 in (0..ldq).step_by(L * V) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for pp in 0..a.depth {
            let mut bv = [_mm512_setzero_si512(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: pair pp < depth, query columns i0 + 16v .. +16 <= ldq (32 u16).
                *x = unsafe { _mm512_loadu_si512(a.b.add((pp * ldq + i0 + L * v) * 2).cast()) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: word (r0 + r, pp) of the panel's `a`.
                let w = unsafe {
                    a.a.add((r0 + r) * a.row_stride + pp * a.step)
                        .read_unaligned()
                };
                let s = as_bh(_mm512_set1_epi32(w as i32));
                for (x, &y) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbf16_ps(*x, s, as_bh(y));
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                let at = (r0 + r) * ldq + i0 + L * v;
                // SAFETY: output row r0 + r, columns i0 + 16v .. +16 <= ldq, and their rescale
                // factors.
                unsafe {
                    let y = match e {
                        Epilogue::Scale(s) => _mm512_mul_ps(x, _mm512_set1_ps(s)),
                        Epilogue::Rescale(f) => _mm512_fmadd_ps(
                            _mm512_loadu_ps(out.add(at)),
                            _mm512_loadu_ps(f.add(i0 + L * v)),
                            x,
                        ),
                    };
                    _mm512_storeu_ps(out.add(at), y);
                }
            }
        }
    }
}
