//! Explicit x86 microkernels for the tiled engine's two tile products, generated for
//! AVX-512 and for AVX2+FMA by one macro.
//!
//! LLVM's autovectorized kernels in [`portable`](super::portable) keep a block of 4 accumulators in
//! registers but spill larger ones, and spend several instructions on indexing per FMA
//! (callgrind on the AVX2 path: 4.4 instructions per FMA in the score product). These hold
//! `R x V` accumulator vectors (up to 16 of AVX-512's 32 registers, 12 of AVX2's 16), loading `V`
//! query (or value) vectors and broadcasting `R` key (or probability) scalars per step:
//! `R * V` FMAs for `R + V` loads, enough independent chains to cover the FMA latency.
//!
//! # Safety
//!
//! Every function is `#[target_feature]` with its module's features: callers must have
//! confirmed the CPU supports them (the dispatchers in [`dispatch`](super::dispatch) do: they
//! hold an `Isa` token, which only detection makes). The loads and stores go through raw pointers; each public entry
//! point asserts, with overflow-checked products, the slice lengths that make every access
//! in bounds, and each `unsafe` block says which assertion covers it. The register block
//! chosen (4, 2 or 1 vectors per row) divides `ldq` or `ldv` by its branch condition.

/// The tile products for one instruction set: its target features, vector type, lane count,
/// intrinsics, and the key (or query) block `R` used with 4, 2 and 1 vectors per row.
macro_rules! tile_products {
    (
        features: $feat:literal,
        lanes: $lanes:literal,
        zero: $zero:ident,
        load: $load:ident,
        store: $store:ident,
        set1: $set1:ident,
        fmadd: $fmadd:ident,
        mul: $mul:ident,
        rows: ($r4:literal, $r2:literal, $r1:literal) $(,)?
    ) => {
        use std::arch::x86_64::*;

        use crate::kernels::tile::{Tile, holds};

        /// f32 lanes in a register.
        const L: usize = $lanes;

        /// `st = scale * k qt` for one tile (layout of [`Tile`]); `ldq` must be a multiple of the lane count.
        ///
        /// # Safety
        ///
        /// The CPU must support the module's target features.
        #[target_feature(enable = $feat)]
        pub(in crate::kernels) unsafe fn scores(t: &mut Tile<'_>, scale: f32) {
            let (cols, d, ldq) = (t.cols, t.d, t.ldq);
            assert!(
                ldq.is_multiple_of(L) && holds(t.qt.len(), d, ldq) && holds(t.k.len(), cols, d)
            );
            assert!(holds(t.st.len(), cols, ldq));
            let (qt, k, st) = (t.qt.as_ptr(), t.k.as_ptr(), t.st.as_mut_ptr());
            // SAFETY (all calls below): the blocks stay within `cols` keys and `ldq` queries, which
            // the assertions above bound by the slice lengths.
            unsafe {
                if ldq.is_multiple_of(4 * L) {
                    scores_keys::<$r4, 4>(qt, k, st, cols, d, ldq, scale);
                } else if ldq.is_multiple_of(2 * L) {
                    scores_keys::<$r2, 2>(qt, k, st, cols, d, ldq, scale);
                } else {
                    scores_keys::<$r1, 1>(qt, k, st, cols, d, ldq, scale);
                }
            }
        }

        /// All keys of the tile in blocks of `R`, the remainder one at a time.
        ///
        /// # Safety
        ///
        /// As [`scores`], with `qt`, `k` and `st` valid for the lengths it asserts.
        #[target_feature(enable = $feat)]
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
        /// of `ldq`; `ldq` is a multiple of `L * V`.
        #[target_feature(enable = $feat)]
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
            let s = $set1(scale);
            for i0 in (0..ldq).step_by(L * V) {
                let mut acc = [[$zero(); V]; R];
                for p in 0..d {
                    let mut q = [$zero(); V];
                    for (v, qv) in q.iter_mut().enumerate() {
                        // SAFETY: row p < d of qt, columns i0 + Lv .. +L <= ldq.
                        *qv = unsafe { $load(qt.add(p * ldq + i0 + L * v)) };
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        // SAFETY: key j + r < j + R, element p < d.
                        let kb = $set1(unsafe { *k.add((j + r) * d + p) });
                        for (a, &qv) in row.iter_mut().zip(&q) {
                            *a = $fmadd(kb, qv, *a);
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate() {
                    for (v, &a) in row.iter().enumerate() {
                        // SAFETY: key j + r < j + R, columns i0 + Lv .. +L <= ldq.
                        unsafe { $store(st.add((j + r) * ldq + i0 + L * v), $mul(a, s)) };
                    }
                }
            }
        }

        /// `acc[i] = acc[i] * rescale[i] + sum_j st[j][i] v[j]` for the first `rows` queries
        /// (layout of [`Tile`]); `ldv` must be a multiple of the lane count.
        ///
        /// # Safety
        ///
        /// The CPU must support the module's target features.
        #[target_feature(enable = $feat)]
        pub(in crate::kernels) unsafe fn pv(
            t: &Tile<'_>,
            acc: &mut [f32],
            rows: usize,
            rescale: &[f32],
        ) {
            let (cols, ldq, ldv) = (t.cols, t.ldq, t.ldv);
            assert!(
                ldv.is_multiple_of(L) && holds(t.v.len(), cols, ldv) && holds(acc.len(), rows, ldv)
            );
            assert!(holds(t.st.len(), cols, ldq) && rows <= ldq && rescale.len() >= rows);
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
                    pv_rows::<$r4, 4>(st, v, a, f, rows, cols, ldq, ldv);
                } else if ldv.is_multiple_of(2 * L) {
                    pv_rows::<$r2, 2>(st, v, a, f, rows, cols, ldq, ldv);
                } else {
                    pv_rows::<$r1, 1>(st, v, a, f, rows, cols, ldq, ldv);
                }
            }
        }

        /// All `rows` queries in blocks of `R`, the remainder one at a time.
        ///
        /// # Safety
        ///
        /// As [`pv`], with the pointers valid for the lengths it asserts.
        #[target_feature(enable = $feat)]
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
        /// each, `cols` rows); `v` holds `cols` rows of `ldv`; `ldv` is a multiple of `L * V`.
        #[target_feature(enable = $feat)]
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
                let mut o = [[$zero(); V]; R];
                for (r, row) in o.iter_mut().enumerate() {
                    // SAFETY: query i + r < i + R.
                    let f = $set1(unsafe { *rescale.add(i + r) });
                    for (w, x) in row.iter_mut().enumerate() {
                        // SAFETY: query i + r, columns c0 + Lw .. +L <= ldv.
                        let a = unsafe { $load(acc.add((i + r) * ldv + c0 + L * w)) };
                        *x = $mul(a, f);
                    }
                }
                for j in 0..cols {
                    let mut vv = [$zero(); V];
                    for (w, x) in vv.iter_mut().enumerate() {
                        // SAFETY: key j < cols, columns c0 + Lw .. +L <= ldv.
                        *x = unsafe { $load(v.add(j * ldv + c0 + L * w)) };
                    }
                    for (r, row) in o.iter_mut().enumerate() {
                        // SAFETY: key j < cols, query i + r < ldq.
                        let p = $set1(unsafe { *st.add(j * ldq + i + r) });
                        for (x, &y) in row.iter_mut().zip(&vv) {
                            *x = $fmadd(p, y, *x);
                        }
                    }
                }
                for (r, row) in o.iter().enumerate() {
                    for (w, &x) in row.iter().enumerate() {
                        // SAFETY: query i + r, columns c0 + Lw .. +L <= ldv.
                        unsafe { $store(acc.add((i + r) * ldv + c0 + L * w), x) };
                    }
                }
            }
        }
    };
}

/// AVX-512F: 16 lanes; 4x4 (16), 8x2 (16) and 8x1 (8) accumulator vectors.
pub(super) mod avx512 {
    tile_products! {
        features: "avx512f,avx2,fma",
        lanes: 16,
        zero: _mm512_setzero_ps,
        load: _mm512_loadu_ps,
        store: _mm512_storeu_ps,
        set1: _mm512_set1_ps,
        fmadd: _mm512_fmadd_ps,
        mul: _mm512_mul_ps,
        rows: (4, 8, 8),
    }
}

/// AVX2 with FMA: 8 lanes; 2x4 (8), 6x2 (12) and 6x1 (6) accumulator vectors (3x4 would
/// need 17 of the 16 registers and spilled: 39 against 63 GFLOP/s).
pub(super) mod avx2 {
    tile_products! {
        features: "avx2,fma",
        lanes: 8,
        zero: _mm256_setzero_ps,
        load: _mm256_loadu_ps,
        store: _mm256_storeu_ps,
        set1: _mm256_set1_ps,
        fmadd: _mm256_fmadd_ps,
        mul: _mm256_mul_ps,
        rows: (2, 6, 6),
    }
}
