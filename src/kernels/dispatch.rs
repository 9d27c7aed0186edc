//! The one dispatch module: every runtime-dispatched kernel of the tiled engine, `full` and
//! the feature maps, each taking an [`Isa`] token and running that path's version.
//!
//! The tile products of the AVX-512 and AVX2 paths are explicit microkernels (`tiles`), as
//! are AVX-512's exponential, online softmax and elu+1 (`avx512`); the rest run the
//! `portable` kernels, which LLVM vectorizes to the width of the
//! `#[target_feature]` wrapper they are called from here.
//!
//! Soundness: an [`Isa`] exists only for a path whose features were detected on this CPU
//! ([`super::isa`]), so matching on it is the whole check, and the explicit kernels assert,
//! with overflow-checked products, the slice lengths that bound their raw-pointer accesses.
//! `ldq` and `ldv` must be multiples of [`PAD`] on every path.

use super::exp;
pub use super::isa::{Bf16Dot, Isa, Path};
use super::portable::{
    HAS_FMA, dot_rows_lanes, elu1_slice, fma_portable, pv_block, pv_t_block, scores_block,
    softmax_cols,
};
use super::tile::holds;
pub use super::tile::{KV_BLOCK, KvData, KvPartial, OnlineState, PAD, Tile, padded};

/// Runs the first expression on the AVX-512 path, the second on AVX2+FMA, the third
/// otherwise: the one place `#[target_feature]` kernels are called.
macro_rules! dispatch {
    ($isa:expr, $avx512:expr, $avx2:expr, $portable:expr $(,)?) => {
        match Isa::path($isa) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` for `Avx512` exists only after avx512f, avx2 and fma were
            // detected on this CPU (`isa.rs`); memory safety is each kernel's own (its
            // asserts).
            Path::Avx512 => unsafe { $avx512 },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` for `Avx2Fma` exists only after avx2 and fma were detected.
            Path::Avx2Fma => unsafe { $avx2 },
            _ => $portable,
        }
    };
}

/// `st = scale * k qt`: the tile's scores.
pub fn scores(isa: Isa, t: &mut Tile<'_>, scale: f32) {
    assert!(t.ldq.is_multiple_of(PAD), "ldq must be a multiple of {PAD}");
    dispatch!(
        isa,
        super::tiles::avx512::scores(t, scale),
        super::tiles::avx2::scores(t, scale),
        scores_block::<4, 8, HAS_FMA>(t, scale)
    )
}

/// The online-softmax update of one tile: with `m` the running maxima and `l` the running
/// sums (one per query, `ldq` long), sets `m' = max(m, max_j st[j])`, replaces `st` by
/// `e^(st - m')`, writes `rescale = e^(m - m')` and `l' = l * rescale + sum_j st[j]`.
/// Queries whose maximum is still `-inf` (no allowed key yet) keep zero probabilities.
pub fn online_softmax(
    isa: Isa,
    st: &mut [f32],
    cols: usize,
    ldq: usize,
    state: &mut OnlineState<'_>,
) {
    assert!(ldq.is_multiple_of(PAD), "ldq must be a multiple of {PAD}");
    dispatch!(
        isa,
        super::avx512::online_softmax(st, cols, ldq, state),
        softmax_avx2(st, cols, ldq, state),
        softmax_cols(st, cols, ldq, state)
    )
}

/// `acc[i] = acc[i] * rescale[i] + sum_j st[j][i] v[j]` for the first `rows` queries.
pub fn accumulate(isa: Isa, t: &Tile<'_>, acc: &mut [f32], rows: usize, rescale: &[f32]) {
    assert!(
        t.ldq.is_multiple_of(PAD) && t.ldv.is_multiple_of(PAD),
        "ldq and ldv must be multiples of {PAD}"
    );
    dispatch!(
        isa,
        super::tiles::avx512::pv(t, acc, rows, rescale),
        super::tiles::avx2::pv(t, acc, rows, rescale),
        pv_block::<4, 8, HAS_FMA>(t, acc, rows, rescale)
    )
}

/// `acct[c][i] = acct[c][i] * rescale[i] + sum_j st[j][i] v[j][c]` for every value column
/// `c < dv` and query `i < ldq`: [`accumulate`] into a transposed accumulator (`dv x ldq`,
/// row stride `ldq`), whose rows are vectors over queries like the score tile's.
pub fn accumulate_t(isa: Isa, t: &Tile<'_>, acct: &mut [f32], dv: usize, rescale: &[f32]) {
    assert!(
        t.ldq.is_multiple_of(PAD) && t.ldv.is_multiple_of(PAD),
        "ldq and ldv must be multiples of {PAD}"
    );
    dispatch!(
        isa,
        super::tiles::avx512::pv_t(t, acct, dv, rescale),
        super::tiles::avx2::pv_t(t, acct, dv, rescale),
        pv_t_block::<4, HAS_FMA>(t, acct, dv, rescale)
    )
}

/// The scores of one tile from `bf16` operands with `vdpbf16ps`: `st[j][i] = scale * sum_p
/// k[j][p] q[i][p]` for keys `j < cols`, queries `i < ldq`; keys row-major (`cols x d`, `d`
/// even), queries pair-interleaved (`[d / 2][ldq][2]`). `dims` is `(cols, d, ldq)`.
pub fn scores_bf16(
    tok: Bf16Dot,
    qt2: &[u16],
    k: &[u16],
    st: &mut [f32],
    dims: (usize, usize, usize),
    scale: f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = tok;
        // SAFETY: a `Bf16Dot` exists only after avx512f, avx512bw and avx512bf16 were
        // detected (`isa.rs`); the kernel asserts its slice lengths.
        unsafe { super::bf16::scores(qt2, k, st, dims, scale) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    match tok.0 {}
}

/// Rounds the probability tile `st` (`cols x ldq`) to `bf16`, pair-interleaved over keys
/// (`pt2`, `[cols.div_ceil(2)][ldq][2]`; a zero partner for an odd last key).
pub fn pack_pairs_bf16(tok: Bf16Dot, st: &[f32], cols: usize, ldq: usize, pt2: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = tok;
        // SAFETY: as in `scores_bf16`.
        unsafe { super::bf16::pack_pairs(st, cols, ldq, pt2) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    match tok.0 {}
}

/// [`accumulate_t`] from `bf16` operands with `vdpbf16ps`, over `pairs` key pairs:
/// probabilities as [`pack_pairs_bf16`] writes them, values pair-interleaved
/// (`[pairs][dv][2]`). `dims` is `(pairs, dv, ldq)`.
pub fn accumulate_t_bf16(
    tok: Bf16Dot,
    pt2: &[u16],
    v2: &[u16],
    acct: &mut [f32],
    dims: (usize, usize, usize),
    rescale: &[f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = tok;
        // SAFETY: as in `scores_bf16`.
        unsafe { super::bf16::pv_t(pt2, v2, acct, dims, rescale) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    match tok.0 {}
}

/// Runs `iters` rounds of 12 independent `vdpbf16ps` chains and returns the flops performed
/// (64 per instruction) and a value that depends on them: the `bf16` dot-product peak, to
/// compare with [`fma_chains`]'. (On a Zen 4 core: twice the `f32` FMA rate, 221 against 110
/// GFLOP/s. An earlier 24-chain version spilled accumulators to the stack and read 86-87
/// GFLOP/s on every machine, Zen 4 and a full-width Xeon alike.)
pub fn bf16_dot_chains(tok: Bf16Dot, iters: usize) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = tok;
        // SAFETY: as in `scores_bf16`.
        let v = unsafe { super::bf16::dot_chains(iters) };
        (iters as f64 * super::bf16::DOT_CHAINS as f64 * 64.0, v)
    }
    #[cfg(not(target_arch = "x86_64"))]
    match tok.0 {}
}

/// Replaces each `x` with `e^(x - shift)` and returns their sum, on the given path: a
/// softmax's exponentials, so `shift` is at least every `x` (the row's maximum) and the
/// arguments are `<= 0`. Within 3 ulp of the correctly rounded result down to the normal
/// limit (`e^-87.3`); below it the result is zero or the subnormal it approximates, and
/// `-inf` gives exactly 0 on every path.
pub fn exp_shifted_sum(isa: Isa, xs: &mut [f32], shift: f32) -> f32 {
    dispatch!(
        isa,
        super::avx512::exp_shifted_sum(xs, shift),
        exp_sum_avx2(xs, shift),
        exp::exp_shifted_sum(xs, shift)
    )
}

/// `out[j] = scale * k_j . q` for the rows `k_j` (`q.len()` floats each) of `k`: the scores
/// of a single query (decoding), vectorized along the head dimension.
pub fn dot_rows(isa: Isa, k: &[f32], q: &[f32], scale: f32, out: &mut [f32]) {
    assert!(!q.is_empty() && holds(k.len(), out.len(), q.len()));
    dispatch!(
        isa,
        dot_rows_avx512(k, q, scale, out),
        dot_rows_avx2(k, q, scale, out),
        dot_rows_lanes::<HAS_FMA>(k, q, scale, out)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dot_rows_avx512(k: &[f32], q: &[f32], scale: f32, out: &mut [f32]) {
    dot_rows_lanes::<true>(k, q, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_rows_avx2(k: &[f32], q: &[f32], scale: f32, out: &mut [f32]) {
    dot_rows_lanes::<true>(k, q, scale, out)
}

/// Replaces each `x` with `elu(x) + 1` (`x + 1` for positive `x`, else `e^x`), on the given
/// path: the feature map of linear attention.
pub fn elu1(isa: Isa, xs: &mut [f32]) {
    dispatch!(isa, super::avx512::elu1(xs), elu1_avx2(xs), elu1_slice(xs))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn elu1_avx2(xs: &mut [f32]) {
    elu1_slice(xs)
}

/// The maximum of a slice, on the given path.
pub fn max(isa: Isa, xs: &[f32]) -> f32 {
    dispatch!(isa, max_avx512(xs), max_avx2(xs), exp::max(xs))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(st: &mut [f32], cols: usize, ldq: usize, state: &mut OnlineState<'_>) {
    softmax_cols(st, cols, ldq, state)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_sum_avx2(xs: &mut [f32], shift: f32) -> f32 {
    exp::exp_shifted_sum(xs, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn max_avx512(xs: &[f32]) -> f32 {
    exp::max(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn max_avx2(xs: &[f32]) -> f32 {
    exp::max(xs)
}

/// Runs `iters` rounds of 12 independent FMA chains at the path's full vector width and
/// returns the flops performed and a value that depends on them (so the work is not
/// optimized away). The machine's FMA peak is the rate of this loop.
pub fn fma_chains(isa: Isa, iters: usize) -> (f64, f32) {
    let (lanes, v) = dispatch!(
        isa,
        (16.0, fma_avx512(iters)),
        (8.0, fma_avx2(iters)),
        (4.0, fma_portable(iters))
    );
    (iters as f64 * 12.0 * lanes * 2.0, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn fma_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let b = _mm512_set1_ps(0.999_999);
    let c = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let b = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut lanes = [0.0f32; 8];
    let mut total = 0.0;
    for a in acc {
        // SAFETY: `lanes` holds 8 f32, exactly one 256-bit unaligned store.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        total += lanes.iter().sum::<f32>();
    }
    total
}

/// The sum of a slice, on the given path: the streaming read the read-bandwidth probes time
/// (with software prefetch on AVX-512, like the decode scan's).
pub fn sum(isa: Isa, xs: &[f32]) -> f32 {
    dispatch!(isa, super::avx512::read_sum(xs), sum_avx2(xs), exp::sum(xs))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sum_avx2(xs: &[f32]) -> f32 {
    exp::sum(xs)
}

/// The decode scan: folds keys `keys` (slots of the cache `kv`) into the online softmax `st`
/// of `st.g` queries `q` (`[g][d]`, already multiplied by the score scale), reading every key
/// and value once for all of them. Panics unless `kv` holds `keys` for dimensions `d` and
/// `st.dv` and `q` holds `st.g` rows.
pub fn kv_scan(
    isa: Isa,
    q: &[f32],
    d: usize,
    kv: KvData<'_>,
    keys: std::ops::Range<usize>,
    st: &mut KvPartial,
) {
    let slots = kv.slots(d, st.dv).expect("KV buffers of whole blocks");
    assert!(
        keys.start <= keys.end && keys.end <= slots,
        "keys beyond the cache"
    );
    assert!(holds(q.len(), st.g, d), "one query row of d per state");
    dispatch!(
        isa,
        if super::avx512::kv_scan_fits(st.g, st.dv) {
            super::avx512::kv_scan(q, d, kv, keys, st)
        } else {
            kv_scan_avx512_portable(q, d, kv, keys, st)
        },
        kv_scan_avx2(q, d, kv, keys, st),
        super::portable::kv_scan::<HAS_FMA>(q, d, kv, keys, st)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn kv_scan_avx512_portable(
    q: &[f32],
    d: usize,
    kv: KvData<'_>,
    keys: std::ops::Range<usize>,
    st: &mut KvPartial,
) {
    super::portable::kv_scan::<true>(q, d, kv, keys, st)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn kv_scan_avx2(
    q: &[f32],
    d: usize,
    kv: KvData<'_>,
    keys: std::ops::Range<usize>,
    st: &mut KvPartial,
) {
    super::portable::kv_scan::<true>(q, d, kv, keys, st)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `bf16` dot-product probe counts the flops it performs: every chain starts at 1 and
    /// each instruction adds two products of 1 and 2^-22 per lane, each two ulps of 1 and
    /// so exact, so the sum of all lanes after `iters` rounds says how many chains and rounds
    /// ran, and the flop count must match both.
    #[test]
    fn the_bf16_probe_counts_what_it_computes() {
        let Some(tok) = Bf16Dot::detect(Isa::detect()) else {
            return;
        };
        let iters = 1000;
        let (flops, v) = bf16_dot_chains(tok, iters);
        // 16 lanes per chain, each starting at 1; 64 flops per instruction.
        let chains = flops / (iters as f64 * 64.0);
        assert_eq!(chains, chains.round(), "{flops}");
        let lanes = chains * 16.0;
        let excess = f64::from(v) - lanes;
        let want = lanes * iters as f64 * 2f64.powi(-21);
        assert!(
            (excess - want).abs() < 1e-2 * want,
            "{v}: {excess} above the lanes' starting sum, want {want}"
        );
    }

    /// Owned buffers of an empty online-softmax state for `ldq` queries.
    struct StateBufs {
        m: Vec<f32>,
        l: Vec<f32>,
        rescale: Vec<f32>,
        shift: Vec<f32>,
        sums: Vec<f32>,
    }

    impl StateBufs {
        fn new(ldq: usize) -> Self {
            Self {
                m: vec![f32::NEG_INFINITY; ldq],
                l: vec![0.0; ldq],
                rescale: vec![0.0; ldq],
                shift: vec![0.0; ldq],
                sums: vec![0.0; ldq],
            }
        }

        fn state(&mut self) -> OnlineState<'_> {
            OnlineState {
                m: &mut self.m,
                l: &mut self.l,
                rescale: &mut self.rescale,
                shift: &mut self.shift,
                sums: &mut self.sums,
            }
        }
    }

    #[test]
    fn every_path_matches_a_naive_tile() {
        // Query and value paddings of 16, 32 and 64 select every register block of each
        // path; 45 keys and 13 or 37 queries leave remainders.
        for (rows, dv) in [(13, 23), (37, 64), (64, 40), (13, 64), (64, 64)] {
            check_tile(rows, 19, 45, dv);
        }
    }

    fn check_tile(rows: usize, d: usize, cols: usize, dv: usize) {
        let (ldq, ldv) = (padded(rows), padded(dv));
        let f = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        let qt: Vec<f32> = (0..d * ldq)
            .map(|i| if i % ldq < rows { f(i) } else { 0.0 })
            .collect();
        let k: Vec<f32> = (0..cols * d).map(|i| f(i + 3)).collect();
        let v: Vec<f32> = (0..cols * ldv)
            .map(|i| if i % ldv < dv { f(i + 5) } else { 0.0 })
            .collect();
        for &isa in Isa::available() {
            let mut st = vec![f32::NAN; cols * ldq];
            let mut t = Tile {
                qt: &qt,
                k: &k,
                v: &v,
                st: &mut st,
                cols,
                d,
                ldq,
                ldv,
            };
            scores(isa, &mut t, 0.5);
            for j in 0..cols {
                for i in 0..rows {
                    let want: f32 =
                        0.5 * (0..d).map(|p| k[j * d + p] * qt[p * ldq + i]).sum::<f32>();
                    let got = t.st[j * ldq + i];
                    assert!((got - want).abs() < 1e-4, "{isa}: {got} vs {want}");
                }
            }
            let raw = t.st.to_vec();
            // One online-softmax step from an empty state, then the accumulation.
            let mut bufs = StateBufs::new(ldq);
            online_softmax(isa, t.st, cols, ldq, &mut bufs.state());
            let StateBufs { m, l, rescale, .. } = bufs;
            let mut acc = vec![0.0f32; rows * ldv];
            accumulate(isa, &t, &mut acc, rows, &rescale);
            // The transposed accumulator, from a state that the rescale factors must scale
            // (2 before this tile, factors 0.5 on odd queries): the same sums.
            let mut acct = vec![2.0f32; dv * ldq];
            let halves: Vec<f32> = (0..ldq).map(|i| [1.0, 0.5][i % 2]).collect();
            accumulate_t(isa, &t, &mut acct, dv, &halves);
            for i in 0..rows {
                let mx = (0..cols)
                    .map(|j| raw[j * ldq + i])
                    .fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(m[i], mx, "{isa}");
                let w: Vec<f64> = (0..cols)
                    .map(|j| ((raw[j * ldq + i] - mx) as f64).exp())
                    .collect();
                let total: f64 = w.iter().sum();
                assert!(((l[i] as f64 - total) / total).abs() < 1e-5, "{isa}");
                for c in 0..dv {
                    let want: f64 = (0..cols).map(|j| w[j] * v[j * ldv + c] as f64).sum();
                    let got = acc[i * ldv + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{isa}: {got} vs {want}"
                    );
                    let got_t = acct[c * ldq + i] as f64 - 2.0 * halves[i] as f64;
                    assert!(
                        (got_t - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{isa} transposed: {got_t} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn lengths_whose_products_overflow_are_refused_on_every_path() {
        // cols * d and cols * ldq wrap to 0 in usize: the kernels must panic, not read or
        // write past the empty slices.
        for &isa in Isa::available() {
            let refused = std::panic::catch_unwind(|| {
                let qt = vec![0.0f32; 16 * 16];
                let mut st: Vec<f32> = Vec::new();
                let mut t = Tile {
                    qt: &qt,
                    k: &[],
                    v: &[],
                    st: &mut st,
                    cols: 1 << 60,
                    d: 16,
                    ldq: 16,
                    ldv: 16,
                };
                scores(isa, &mut t, 1.0);
            });
            assert!(refused.is_err(), "{isa}: scores");
            let refused = std::panic::catch_unwind(|| {
                online_softmax(isa, &mut [], 1 << 60, 16, &mut StateBufs::new(16).state());
            });
            assert!(refused.is_err(), "{isa}: online_softmax");
        }
    }

    #[test]
    fn fma_chains_and_sums_compute() {
        for &isa in Isa::available() {
            let (flops, v) = fma_chains(isa, 1000);
            assert!(flops > 0.0 && v.is_finite() && v > 0.0, "{isa}");
            // Whole and partial steps of the streaming loop (64 floats), exact in f32.
            for n in [0usize, 1, 63, 64, 65, 1000, 4096, 4097 + 64] {
                let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
                assert_eq!(
                    sum(isa, &xs),
                    (n * n.saturating_sub(1) / 2) as f32,
                    "{isa} {n}"
                );
            }
        }
    }

    #[test]
    fn masked_queries_stay_empty() {
        let (cols, ldq) = (3, PAD);
        for &isa in Isa::available() {
            let mut st = vec![f32::NEG_INFINITY; cols * ldq];
            st[0] = 1.0; // query 0 sees key 0; the others see nothing
            let mut bufs = StateBufs::new(ldq);
            online_softmax(isa, &mut st, cols, ldq, &mut bufs.state());
            let StateBufs { m, l, .. } = bufs;
            assert_eq!((m[0], l[0]), (1.0, 1.0), "{isa}");
            assert_eq!((m[1], l[1]), (f32::NEG_INFINITY, 0.0), "{isa}");
            assert!(
                st.iter().all(|x| x.is_finite()),
                "{isa}: no NaN from -inf - -inf"
            );
        }
    }

    #[test]
    fn dot_rows_match_naive_dot_products_on_every_path() {
        // Head dimensions with and without a remainder past 16 lanes.
        for d in [1, 7, 16, 33, 64, 128] {
            let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
            let k: Vec<f32> = (0..9 * d).map(|i| (i as f32 * 0.11).cos()).collect();
            for &isa in Isa::available() {
                let mut out = vec![f32::NAN; 9];
                dot_rows(isa, &k, &q, 0.5, &mut out);
                for (j, &got) in out.iter().enumerate() {
                    let want: f64 = 0.5
                        * (0..d)
                            .map(|p| k[j * d + p] as f64 * q[p] as f64)
                            .sum::<f64>();
                    assert!(
                        (got as f64 - want).abs() < 1e-5,
                        "{isa} d={d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn elu1_matches_its_definition_on_every_path() {
        // Both branches, the switch at 0, underflow, and a length with a remainder.
        let xs: Vec<f32> = (0..=20_001)
            .map(|i| -95.0 + 140.0 * i as f32 / 20_001.0)
            .chain([0.0, -0.0, 1e-30, -1e-30, f32::NEG_INFINITY])
            .collect();
        for &isa in Isa::available() {
            let mut got = xs.clone();
            elu1(isa, &mut got);
            for (&x, &y) in xs.iter().zip(&got) {
                let want = if x > 0.0 {
                    x + 1.0
                } else {
                    (x as f64).exp() as f32
                };
                let ulps = (y.to_bits() as i64 - want.to_bits() as i64).unsigned_abs();
                assert!(
                    ulps <= 3 || (want < f32::MIN_POSITIVE && y == 0.0),
                    "{isa}: elu1({x}) = {y}, want {want}"
                );
            }
        }
    }

    #[test]
    fn exp_is_accurate_on_every_path() {
        for &isa in Isa::available() {
            // A softmax's arguments: every result down to the normal limit, e^-87.33.
            let (lo, steps) = (-87.33f32, 400_000);
            let mut xs: Vec<f32> = (0..=steps)
                .map(|i| lo - lo * i as f32 / steps as f32)
                .chain([0.0, -0.0, -1e-30, -f32::MIN_POSITIVE])
                .collect();
            let orig = xs.clone();
            let sum = exp_shifted_sum(isa, &mut xs, 0.0);
            for (x, e) in orig.iter().zip(&xs) {
                let want = (*x as f64).exp() as f32;
                let ulps = (e.to_bits() as i64 - want.to_bits() as i64).unsigned_abs();
                assert!(ulps <= 3, "{isa}: exp({x}) = {e}, want {want} ({ulps} ulp)");
            }
            let want: f64 = orig.iter().map(|&x| (x as f64).exp()).sum();
            assert!(
                ((sum as f64) - want).abs() < 1e-5 * want,
                "{isa}: {sum} vs {want}"
            );
            // The shift is subtracted first: e^(x - shift) for large scores too.
            let mut shifted = [80.0f32, 100.0, 120.0];
            exp_shifted_sum(isa, &mut shifted, 120.0);
            let want = [(-40f64).exp(), (-20f64).exp(), 1.0];
            for (e, w) in shifted.iter().zip(want) {
                assert!(((*e as f64) - w).abs() <= 3e-7 * w, "{isa}: {e} vs {w}");
            }
            // Masked scores give exactly 0; below the normal range the result is zero or the
            // subnormal it approximates, never more.
            let mut under = [f32::NEG_INFINITY, -1e30, -105.0, -200.0, -87.5, -100.0];
            exp_shifted_sum(isa, &mut under, 0.0);
            assert_eq!(under[..4], [0.0; 4], "{isa}: -inf and far below give 0");
            for (e, x) in under[4..].iter().zip([-87.5f64, -100.0]) {
                assert!(
                    *e >= 0.0 && (*e as f64) <= 1.01 * x.exp(),
                    "{isa}: e^{x} = {e}"
                );
            }
            let all = [orig.clone(), vec![0.5, 1.0]].concat();
            assert_eq!(max(isa, &all), 1.0);
        }
    }

    #[test]
    fn the_nonpositive_exponential_is_within_three_ulp() {
        #[cfg(target_arch = "x86_64")]
        if Isa::new(Path::Avx512).is_some() {
            // Every f32 in [-87.33, 0] down to steps of 2^-13 near 0 (the polynomial's
            // range is crossed ~126 times), plus the edges.
            let mut xs: Vec<f32> = (0..=2_000_000)
                .map(|i| -87.33 * (i as f32 / 2_000_000.0))
                .chain((0..8192).map(|i| -(i as f32) / 8192.0))
                .chain([f32::NEG_INFINITY, -105.0, -104.9, f32::NAN])
                .collect();
            let orig = xs.clone();
            // SAFETY: an `Isa` for the AVX-512 path exists, so the CPU has its features.
            unsafe { super::super::avx512::exp_nonpos(&mut xs) };
            let n = orig.len();
            for (x, e) in orig[..n - 4].iter().zip(&xs) {
                let want = (*x as f64).exp() as f32;
                let ulps = (e.to_bits() as i64 - want.to_bits() as i64).unsigned_abs();
                assert!(ulps <= 3, "exp({x}) = {e}, want {want} ({ulps} ulp)");
            }
            assert_eq!(xs[n - 4..n - 2], [0.0, 0.0], "-inf and -105 give exactly 0");
            assert!(xs[n - 2] >= 0.0 && xs[n - 2] < 1e-44);
            assert_eq!(xs[n - 1], 0.0, "NaN (never a softmax argument) gives 0");
        }
    }
}
