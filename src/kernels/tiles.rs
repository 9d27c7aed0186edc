//! Explicit x86 microkernels for the tiled engine's two tile products, generated for
//! AVX-512 and for AVX2+FMA by one macro.
//!
//! Both products are one kernel, a *panel*: `out[r][i] = sum_p a(r, p) b[p][i]` with `b` a
//! row-major tile whose rows are vectors over the block's queries. The scores take `a` = the
//! keys (`r` a key, `p` a dimension) and `b` = the transposed queries; P V takes `a` = the
//! values (`r` a value column, `p` a key) and `b` = the probability tile the softmax wrote,
//! into a transposed accumulator (`d_v x ldq`), so that both products load only aligned
//! vectors from the workspace and broadcast scalars from the inputs in place, and the online
//! softmax's rescale is one vector multiply per accumulator vector. A register block holds
//! `R x V` accumulators (AVX-512: 6 x 4 = 24 of its 32 registers; AVX2: 2 x 4 of 16),
//! loading `V` vectors of `b` and broadcasting `R` scalars of `a` per step: `R V` FMAs for
//! `R + V` loads. The earlier P V kernel, in rows (queries x value columns), broadcast one
//! probability per query from a key-major tile and re-read the value tile once per 4 queries
//! from L2: 80% of the one-core peak on one tile in cache on a full-width AVX-512 core, where
//! the transposed panel reaches 89-96% (`examples/kernels`).
//!
//! LLVM's autovectorized kernels in [`portable`](super::portable) keep a block of 4
//! accumulators in registers but spill larger ones, and spend several instructions on
//! indexing per FMA. The row-layout `pv` stays for the single-query (decoding)
//! block, whose one query sits in lane 0 of each key's row.
//!
//! # Safety
//!
//! Every function is `#[target_feature]` with its module's features: callers must have
//! confirmed the CPU supports them (the dispatchers in [`dispatch`](super::dispatch) do: they
//! hold an `Isa` token, which only detection makes). The loads and stores go through raw
//! pointers; each public entry point asserts, with overflow-checked products, the slice
//! lengths that make every access in bounds, and each `unsafe` block says which assertion
//! covers it. The register block chosen (4, 2 or 1 vectors per row) divides `ldq` or `ldv` by
//! its branch condition.

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
        rows: ($r4:literal, $r2:literal, $r1:literal),
        panel: ($p4:literal, $p2:literal, $p1:literal) $(,)?
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
            let a = Panel {
                a: t.k.as_ptr(),
                row_stride: d,
                step: 1,
                b: t.qt.as_ptr(),
                depth: d,
                ldq,
            };
            // SAFETY: output row r < cols reads k[r * d + p] for p < d and qt[p * ldq + i] for
            // i < ldq, and writes st[r * ldq + i]: all within the lengths asserted above.
            unsafe { panel(&a, t.st.as_mut_ptr(), cols, Epilogue::Scale(scale)) }
        }

        /// `acct[c][i] = acct[c][i] * rescale[i] + sum_j v[j][c] st[j][i]` for every value
        /// column `c < d_v` and query `i < ldq`: the P V product into a transposed
        /// accumulator (`d_v x ldq`), vectors over queries like the scores, so that both
        /// products stream the tile the softmax wrote in rows and rescale by a vector.
        ///
        /// # Safety
        ///
        /// The CPU must support the module's target features.
        #[target_feature(enable = $feat)]
        pub(in crate::kernels) unsafe fn pv_t(
            t: &Tile<'_>,
            acct: &mut [f32],
            dv: usize,
            rescale: &[f32],
        ) {
            let (cols, ldq, ldv) = (t.cols, t.ldq, t.ldv);
            assert!(ldq.is_multiple_of(L) && dv <= ldv && holds(t.v.len(), cols, ldv));
            assert!(
                holds(t.st.len(), cols, ldq) && holds(acct.len(), dv, ldq) && rescale.len() >= ldq
            );
            let a = Panel {
                a: t.v.as_ptr(),
                row_stride: 1,
                step: ldv,
                b: t.st.as_ptr(),
                depth: cols,
                ldq,
            };
            // SAFETY: output row c < dv reads v[c + j * ldv] for j < cols (c < ldv) and
            // st[j * ldq + i] for i < ldq, and updates acct[c * ldq + i], reading
            // rescale[i]: all within the lengths asserted above.
            unsafe {
                panel(
                    &a,
                    acct.as_mut_ptr(),
                    dv,
                    Epilogue::Rescale(rescale.as_ptr()),
                )
            }
        }

        /// One operand pair of [`panel`]: `out[r][i] = sum_p a[r * row_stride + p * step] *
        /// b[p * ldq + i]` for `p < depth`.
        struct Panel {
            a: *const f32,
            row_stride: usize,
            step: usize,
            b: *const f32,
            depth: usize,
            ldq: usize,
        }

        /// What [`panel`] does with each output vector.
        #[derive(Clone, Copy)]
        enum Epilogue {
            /// Stores `scale * sum`.
            Scale(f32),
            /// Stores `out * rescale[i] + sum` (reading `ldq` factors).
            Rescale(*const f32),
        }

        /// Every output row of a [`Panel`] in register blocks of `R` rows by `V` vectors of
        /// queries: full blocks of the widest `R` that `ldq` allows, then the remainder in
        /// blocks of 4, 2 and 1 rows.
        ///
        /// # Safety
        ///
        /// Every element the panel's formula touches for rows `< rows` and `i < ldq` is
        /// readable (and `out`'s, `rows * ldq`, writable); `ldq` is a multiple of `L`.
        #[target_feature(enable = $feat)]
        unsafe fn panel(a: &Panel, out: *mut f32, rows: usize, e: Epilogue) {
            // SAFETY (every call): forwarded from the caller; each call's rows lie below
            // `rows`, and its `V` divides `ldq` by the branch condition.
            unsafe {
                if a.ldq.is_multiple_of(4 * L) {
                    panel_rows::<$p4, 4>(a, out, rows, e);
                } else if a.ldq.is_multiple_of(2 * L) {
                    panel_rows::<$p2, 2>(a, out, rows, e);
                } else {
                    panel_rows::<$p1, 1>(a, out, rows, e);
                }
            }
        }

        /// [`panel`] for one `V`.
        ///
        /// # Safety
        ///
        /// As [`panel`], with `ldq` a multiple of `L * V`.
        #[target_feature(enable = $feat)]
        unsafe fn panel_rows<const R: usize, const V: usize>(
            a: &Panel,
            out: *mut f32,
            rows: usize,
            e: Epilogue,
        ) {
            let full = rows - rows % R;
            let mut r = full;
            // SAFETY: every block's rows `r..r + R'` lie below `rows`: the first loop's by
            // `full <= rows`, the remainder's because each block of `R'` is taken only while
            // that many rows are left.
            unsafe {
                for r0 in (0..full).step_by(R) {
                    block::<R, V>(a, out, r0, e);
                }
                while R > 4 && rows - r >= 4 {
                    block::<4, V>(a, out, r, e);
                    r += 4;
                }
                if R > 2 && rows - r >= 2 {
                    block::<2, V>(a, out, r, e);
                    r += 2;
                }
                if rows - r >= 1 && R > 1 {
                    block::<1, V>(a, out, r, e);
                }
            }
        }

        /// Output rows `r0..r0 + R` of a [`Panel`], `V` vectors of queries at a time.
        ///
        /// # Safety
        ///
        /// As [`panel`] for these rows; `ldq` is a multiple of `L * V`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn block<const R: usize, const V: usize>(
            a: &Panel,
            out: *mut f32,
            r0: usize,
            e: Epilogue,
        ) {
            let ldq = a.ldq;
            for i0 in (0..ldq).step_by(L * V) {
                let mut acc = [[$zero(); V]; R];
                for p in 0..a.depth {
                    let mut bv = [$zero(); V];
                    for (v, x) in bv.iter_mut().enumerate() {
                        // SAFETY: row p < depth of b, columns i0 + Lv .. +L <= ldq.
                        *x = unsafe { $load(a.b.add(p * ldq + i0 + L * v)) };
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        // SAFETY: element (r0 + r, p) of the panel's `a`.
                        let s = $set1(unsafe { *a.a.add((r0 + r) * a.row_stride + p * a.step) });
                        for (x, &y) in row.iter_mut().zip(&bv) {
                            *x = $fmadd(s, y, *x);
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate() {
                    for (v, &x) in row.iter().enumerate() {
                        let at = (r0 + r) * ldq + i0 + L * v;
                        // SAFETY: output row r0 + r, columns i0 + Lv .. +L <= ldq; the
                        // rescale factors of those columns.
                        unsafe {
                            let y = match e {
                                Epilogue::Scale(s) => $mul(x, $set1(s)),
                                Epilogue::Rescale(f) => {
                                    $fmadd($load(out.add(at)), $load(f.add(i0 + L * v)), x)
                                }
                            };
                            $store(out.add(at), y);
                        }
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

/// AVX-512F: 16 lanes; the row-layout P V with 4x4 (16), 8x2 (16) and 8x1 (8) accumulator
/// vectors, the panel with 6x4 (24), 12x2 (24) and 12x1 (12).
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
        panel: (6, 12, 12),
    }
}

/// AVX2 with FMA: 8 lanes; 2x4 (8), 6x2 (12) and 6x1 (6) accumulator vectors for both
/// kernels (3x4 would need 17 of the 16 registers and spilled: 39 against 63 GFLOP/s).
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
        panel: (2, 6, 6),
    }
}
