//! One query block of one (batch, head): its scratch, its tile loop, and the single-query
//! (decoding) path.

use ndarray::{ArrayView2, ArrayViewMut2, Axis, s};

use super::Tiling;
use crate::attention::Call;
use crate::kernels::dispatch::{self, Isa};
use crate::kernels::half::{bf16_to_f32, f32_to_bf16, round_bf16};
use crate::kernels::tile::AlignedBuf;
use crate::modifier::ScoreMods;
use crate::pattern::{Gather, Geometry, Group, KeyMajor, Mask, Pattern, Tile};

/// Per-worker scratch, in the transposed layout of [`dispatch::Tile`]: the query block
/// transposed, one key tile, one padded value tile, the key-major score tile, the accumulator
/// (transposed while the tiles run, `d_v x ldq`, then in rows) and the online-softmax state.
/// The buffers the tile products load vectors from or store them to start on a cache line.
pub(super) struct Workspace {
    pub(super) qt: AlignedBuf,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    pub(super) st: AlignedBuf,
    pub(super) acct: AlignedBuf,
    pub(super) acc: Vec<f32>,
    /// `bf16` tasks: the queries and probabilities pair-interleaved (allocated on first use).
    pub(super) qt2: Vec<u16>,
    pub(super) pt2: Vec<u16>,
    pub(super) m: Vec<f32>,
    pub(super) l: Vec<f32>,
    pub(super) rescale: Vec<f32>,
    pub(super) shift: Vec<f32>,
    pub(super) sums: Vec<f32>,
    pub(super) row: Vec<f32>,
}

impl Workspace {
    /// The bytes [`Workspace::new`] allocates.
    pub(super) fn bytes(t: Tiling, d: usize, v_dim: usize) -> u64 {
        let (ldq, ldv) = (dispatch::padded(t.bq), dispatch::padded(v_dim));
        let lines = AlignedBuf::bytes(d * ldq)
            + AlignedBuf::bytes(t.bk * ldq)
            + AlignedBuf::bytes(v_dim * ldq);
        let floats = t.bk * d + t.bk * ldv + t.bq * ldv + 5 * ldq + t.bk;
        (lines + 4 * floats) as u64
    }

    /// The bytes a `bf16` task adds to a [`Workspace`] (its pair-interleaved buffers).
    pub(super) fn bf16_bytes(t: Tiling, d: usize) -> u64 {
        let ldq = dispatch::padded(t.bq);
        ((d * ldq + t.bk.div_ceil(2) * 2 * ldq) * 2) as u64
    }

    pub(super) fn new(t: Tiling, d: usize, v_dim: usize) -> Self {
        let (ldq, ldv) = (dispatch::padded(t.bq), dispatch::padded(v_dim));
        Self {
            qt: AlignedBuf::zeros(d * ldq),
            k: vec![0.0; t.bk * d],
            v: vec![0.0; t.bk * ldv],
            st: AlignedBuf::zeros(t.bk * ldq),
            acct: AlignedBuf::zeros(v_dim * ldq),
            qt2: Vec::new(),
            pt2: Vec::new(),
            acc: vec![0.0; t.bq * ldv],
            m: vec![0.0; ldq],
            l: vec![0.0; ldq],
            rescale: vec![0.0; ldq],
            shift: vec![0.0; ldq],
            sums: vec![0.0; ldq],
            row: vec![0.0; t.bk],
        }
    }
}

/// One query block of one (batch, head), in local coordinates: local query `a` is row
/// `qmap.index(a)` of the head's queries and local key `b` is row `kmap.index(b)` of its keys
/// (the identity on the tile path; a gathered [`Group`] on the parts path).
pub(super) struct Task<'a> {
    /// The head's queries, `[n_q, d]`.
    q: ArrayView2<'a, f32>,
    k: ArrayView2<'a, f32>,
    v: ArrayView2<'a, f32>,
    qmap: Gather,
    kmap: Gather,
    /// The block's first local query row, and its number of rows.
    r0: usize,
    rows: usize,
    /// The (local) geometry the mask is stated on.
    g: Geometry,
    scale: f32,
    mask: Mask<'a>,
    bk: usize,
    /// The local keys this task covers (all valid keys unless the keys are split).
    keys: std::ops::Range<usize>,
    isa: Isa,
    mods: ScoreMods,
    /// The keys and values in `bf16`, for a `bf16` task.
    bf16: Option<Bf16Head<'a>>,
}

impl<'a> Task<'a> {
    /// The query rows `rows` of (batch `b`, head `h`) against the keys `keys`.
    pub(super) fn new<'p: 'a>(
        p: &Call<'p>,
        mask: Mask<'a>,
        (b, h, rows): (usize, usize, std::ops::Range<usize>),
        keys: std::ops::Range<usize>,
        bk: usize,
        isa: Isa,
    ) -> Self {
        let shape = p.shape();
        let group = Group {
            queries: Gather::contiguous(0, shape.n_q()),
            keys: Gather::contiguous(0, shape.n_kv()),
        };
        Self::gathered(p, mask, group, (b, h, rows), keys, bk, isa)
    }

    /// The local query rows `rows` of `group` (of batch `b`, head `h`) against its local keys
    /// `keys`, under `mask` stated on the group's geometry. Score modifiers see local
    /// positions: the caller gathers only without position-dependent ones (ALiBi).
    pub(super) fn gathered<'p: 'a>(
        p: &Call<'p>,
        mask: Mask<'a>,
        group: Group,
        (b, h, rows): (usize, usize, std::ops::Range<usize>),
        keys: std::ops::Range<usize>,
        bk: usize,
        isa: Isa,
    ) -> Self {
        let shape = p.shape();
        let kvh = shape.kv_head_of(h);
        // Key padding: keys at or past the batch element's length are never visited.
        let valid = group.keys.count_below(p.key_len(b));
        let keys = keys.start.min(valid)..keys.end.min(valid);
        Task {
            r0: rows.start,
            rows: rows.len(),
            q: p.q()
                .index_axis_move(Axis(0), b)
                .index_axis_move(Axis(0), h),
            k: p.k()
                .index_axis_move(Axis(0), b)
                .index_axis_move(Axis(0), kvh),
            v: p.v()
                .index_axis_move(Axis(0), b)
                .index_axis_move(Axis(0), kvh),
            qmap: group.queries,
            kmap: group.keys,
            g: group.geometry(),
            scale: p.scale(),
            mask,
            bk,
            keys,
            isa,
            mods: p.score_mods(h),
            bf16: None,
        }
    }

    /// The same task reading its keys and values from `k` and `v` (`[keys, d]`, `[keys,
    /// d_v]`), the group's keys already gathered in local order.
    pub(super) fn with_gathered_kv(
        mut self,
        k: ArrayView2<'a, f32>,
        v: ArrayView2<'a, f32>,
    ) -> Self {
        debug_assert_eq!(k.nrows(), self.kmap.len());
        self.kmap = Gather::contiguous(0, k.nrows());
        (self.k, self.v) = (k, v);
        self
    }

    /// The same task in `bf16`, reading its keys and values from `kv` (this batch element's
    /// and KV head's, converted once per call).
    pub(super) fn with_bf16(mut self, kv: Bf16Head<'a>) -> Self {
        self.bf16 = Some(kv);
        self
    }

    /// The block's `a`-th query row.
    fn q_row(&self, a: usize) -> ndarray::ArrayView1<'_, f32> {
        self.q.row(self.qmap.index(self.r0 + a))
    }

    /// Runs the block over its keys and writes the normalized output rows.
    pub(super) fn run(&self, ws: &mut Workspace, mut out: ArrayViewMut2<f32>) {
        self.accumulate(ws);
        let dv = self.v.ncols();
        let ldv = dispatch::padded(dv);
        for (i, mut o) in out.outer_iter_mut().enumerate() {
            let l = ws.l[i];
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            for (o, &a) in o.iter_mut().zip(&ws.acc[i * ldv..i * ldv + dv]) {
                *o = a * inv;
            }
        }
    }

    /// The task's key tiles `c0..c1` that the mask does not empty for the query rows `rows`,
    /// with their class.
    fn tiles(
        &self,
        rows: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (usize, usize, Tile)> + '_ {
        let starts =
            super::tile_starts(&self.mask, self.g, rows.clone(), self.keys.clone(), self.bk);
        starts.into_iter().filter_map(move |c0| {
            let c1 = (c0 + self.bk).min(self.keys.end);
            let tile = self.mask.classify(self.g, rows.clone(), c0..c1);
            (tile != Tile::Empty).then_some((c0, c1, tile))
        })
    }

    /// The keys and values `keys` as contiguous slices (`d` and padded `d_v` floats per key):
    /// read in place when the inputs allow, else copied into `kbuf` and `vbuf`.
    fn kv_tile<'b>(
        &'b self,
        kbuf: &'b mut [f32],
        vbuf: &'b mut [f32],
        keys: std::ops::Range<usize>,
    ) -> (&'b [f32], &'b [f32]) {
        let (cols, d, dv) = (keys.len(), self.k.ncols(), self.v.ncols());
        let ldv = dispatch::padded(dv);
        let span = self.kmap.as_range(keys.clone());
        let k_tile = span.clone().map(|r| self.k.slice_move(s![r, ..]));
        let k: &[f32] = match k_tile.as_ref().and_then(|t| t.to_slice()) {
            Some(k) => k,
            None => {
                for (j, dst) in kbuf.chunks_mut(d).take(cols).enumerate() {
                    copy_row(dst, self.k.row(self.kmap.index(keys.start + j)));
                }
                &kbuf[..cols * d]
            }
        };
        let v_tile = span.map(|r| self.v.slice_move(s![r, ..]));
        let v: &[f32] = match v_tile
            .as_ref()
            .and_then(|t| t.to_slice())
            .filter(|_| ldv == dv)
        {
            Some(v) => v,
            None => {
                for (j, dst) in vbuf.chunks_mut(ldv).take(cols).enumerate() {
                    copy_row(&mut dst[..dv], self.v.row(self.kmap.index(keys.start + j)));
                    dst[dv..].fill(0.0);
                }
                &vbuf[..cols * ldv]
            }
        };
        (k, v)
    }

    /// [`accumulate`](Self::accumulate) for a block of one query (decoding): its scores are a
    /// row, computed as dot products along the head dimension, then masked, modified and
    /// exponentiated as a contiguous row, instead of padding one query to a vector of 16.
    fn accumulate_one(&self, ws: &mut Workspace) {
        let (d, dv) = (self.q.ncols(), self.v.ncols());
        let (ldq, ldv) = (dispatch::padded(1), dispatch::padded(dv));
        let q = &mut ws.qt[..d];
        for (dst, &x) in q.iter_mut().zip(self.q_row(0)) {
            *dst = x;
        }
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
        ws.acc[..ldv].fill(0.0);
        for (c0, c1, tile) in self.tiles(self.r0..self.r0 + 1) {
            let cols = c1 - c0;
            let (k, v) = self.kv_tile(&mut ws.k, &mut ws.v, c0..c1);
            let row = &mut ws.row[..cols];
            dispatch::dot_rows(self.isa, k, &ws.qt[..d], self.scale, row);
            if !self.mods.is_identity() {
                self.mods.apply_row(self.r0, c0, row);
            }
            if tile == Tile::Partial {
                self.mask.mask_row(self.g, self.r0, c0, row);
            }
            let m_new = m.max(dispatch::max(self.isa, row));
            if m_new == f32::NEG_INFINITY {
                continue; // nothing allowed yet
            }
            let rescale = crate::kernels::exp::exp(m - m_new);
            l = l * rescale + dispatch::exp_shifted_sum(self.isa, row, m_new);
            m = m_new;
            // P V through the tile kernel, the one query in lane 0 of each key's row.
            for (j, &p) in row.iter().enumerate() {
                ws.st[j * ldq] = p;
            }
            ws.rescale[0] = rescale;
            let t = dispatch::Tile {
                qt: &ws.qt[..d * ldq],
                k,
                v,
                st: &mut ws.st[..cols * ldq],
                cols,
                d,
                ldq,
                ldv,
            };
            dispatch::accumulate(self.isa, &t, &mut ws.acc[..ldv], 1, &ws.rescale[..1]);
        }
        ws.m[0] = m;
        ws.l[0] = l;
    }

    /// Leaves the running maxima, sums and unnormalized accumulator of the block's rows over
    /// its keys in `ws`.
    pub(super) fn accumulate(&self, ws: &mut Workspace) {
        if let Some(kv) = self.bf16 {
            return self.accumulate_bf16(ws, kv);
        }
        if self.rows == 1 {
            return self.accumulate_one(ws);
        }
        let (rows, d) = (self.rows, self.q.ncols());
        let dv = self.v.ncols();
        let (ldq, ldv) = (dispatch::padded(rows), dispatch::padded(dv));
        // The query block, transposed; padding queries are zero.
        self.transpose_queries(ws, |x| x);
        for (c0, c1, tile) in self.tiles(self.r0..self.r0 + rows) {
            let cols = c1 - c0;
            let (k, v) = self.kv_tile(&mut ws.k, &mut ws.v, c0..c1);
            let mut t = dispatch::Tile {
                qt: &ws.qt[..d * ldq],
                k,
                v,
                st: &mut ws.st[..cols * ldq],
                cols,
                d,
                ldq,
                ldv,
            };
            dispatch::scores(self.isa, &mut t, self.scale);
            let mut state = dispatch::OnlineState {
                m: &mut ws.m,
                l: &mut ws.l,
                rescale: &mut ws.rescale,
                shift: &mut ws.shift,
                sums: &mut ws.sums,
            };
            self.softmax_tile(t.st, &mut state, (c0, cols, tile), ldq);
            dispatch::accumulate_t(
                self.isa,
                &t,
                &mut ws.acct[..dv * ldq],
                dv,
                &ws.rescale[..ldq],
            );
        }
        self.untranspose(ws);
    }

    /// Fills the transposed query block (`d x ldq`, zero padding) with `f` of each query
    /// element, and resets the online-softmax state and the transposed accumulator.
    fn transpose_queries(&self, ws: &mut Workspace, f: impl Fn(f32) -> f32) {
        let (rows, d, dv) = (self.rows, self.q.ncols(), self.v.ncols());
        let ldq = dispatch::padded(rows);
        let qt = &mut ws.qt[..d * ldq];
        qt.fill(0.0);
        for i in 0..rows {
            for (p, &x) in self.q_row(i).iter().enumerate() {
                qt[p * ldq + i] = f(x);
            }
        }
        ws.m[..ldq].fill(f32::NEG_INFINITY);
        ws.l[..ldq].fill(0.0);
        ws.acct[..dv * ldq].fill(0.0);
    }

    /// The score modifiers and the mask of one tile (keys `c0..c0 + cols`, class `tile`),
    /// then its online-softmax step: `st` becomes the tile's probabilities.
    fn softmax_tile(
        &self,
        st: &mut [f32],
        state: &mut dispatch::OnlineState<'_>,
        (c0, cols, tile): (usize, usize, Tile),
        ldq: usize,
    ) {
        let rows = self.rows;
        if !self.mods.is_identity() {
            self.mods
                .apply_key_major(st, (self.r0, rows), (c0, cols), ldq);
        }
        if tile == Tile::Partial {
            let mut key_major = KeyMajor {
                rows: self.r0..self.r0 + rows,
                c0,
                cols,
                st,
                ld: ldq,
            };
            self.mask.mask_key_major(self.g, &mut key_major);
        }
        dispatch::online_softmax(self.isa, st, cols, ldq, state);
    }

    /// The transposed accumulator in rows (`[rows][ldv]`), as the callers read it.
    fn untranspose(&self, ws: &mut Workspace) {
        let (rows, dv) = (self.rows, self.v.ncols());
        let (ldq, ldv) = (dispatch::padded(rows), dispatch::padded(dv));
        for (c, col) in ws.acct.chunks_exact(ldq).take(dv).enumerate() {
            for (i, &x) in col[..rows].iter().enumerate() {
                ws.acc[i * ldv + c] = x;
            }
        }
    }

    /// [`accumulate`](Self::accumulate) in `bf16`: the queries, keys, values and each tile's
    /// probabilities rounded to `bf16`, both products accumulated in `f32`, the softmax in
    /// `f32`. With AVX512-BF16 (and an even head dimension) the products are `vdpbf16ps` on
    /// the pair-interleaved operands; otherwise (any other path, `isa=portable` included)
    /// the same rounded values are widened and run through the `f32` kernels.
    fn accumulate_bf16(&self, ws: &mut Workspace, kv: Bf16Head<'a>) {
        let (rows, d, dv) = (self.rows, self.q.ncols(), self.v.ncols());
        let (ldq, ldv) = (dispatch::padded(rows), dispatch::padded(dv));
        self.transpose_queries(ws, round_bf16);
        let dot = dispatch::Bf16Dot::detect(self.isa).filter(|_| d.is_multiple_of(2));
        if dot.is_some() {
            ws.qt2.resize(ws.qt2.len().max(d * ldq), 0);
            ws.pt2
                .resize(ws.pt2.len().max(ws.row.len().div_ceil(2) * 2 * ldq), 0);
            for p in 0..d {
                for i in 0..ldq {
                    ws.qt2[((p / 2) * ldq + i) * 2 + p % 2] = f32_to_bf16(ws.qt[p * ldq + i]);
                }
            }
        }
        for (c0, c1, tile) in self.tiles(self.r0..self.r0 + rows) {
            let cols = c1 - c0;
            // Pairs of keys start at even keys: tiles do when `bk` is even (flash requires it
            // with dtype=bf16); any other tile takes the widening path.
            let dot = dot.filter(|_| c0.is_multiple_of(2));
            let st = &mut ws.st[..cols * ldq];
            match dot {
                Some(tok) => dispatch::scores_bf16(
                    tok,
                    &ws.qt2[..d * ldq],
                    &kv.k[c0 * d..c1 * d],
                    st,
                    (cols, d, ldq),
                    self.scale,
                ),
                None => {
                    for (dst, &h) in ws.k.iter_mut().zip(&kv.k[c0 * d..c1 * d]) {
                        *dst = bf16_to_f32(h);
                    }
                    let mut t = dispatch::Tile {
                        qt: &ws.qt[..d * ldq],
                        k: &ws.k[..cols * d],
                        v: &[],
                        st,
                        cols,
                        d,
                        ldq,
                        ldv,
                    };
                    dispatch::scores(self.isa, &mut t, self.scale);
                }
            }
            let st = &mut ws.st[..cols * ldq];
            let mut state = dispatch::OnlineState {
                m: &mut ws.m,
                l: &mut ws.l,
                rescale: &mut ws.rescale,
                shift: &mut ws.shift,
                sums: &mut ws.sums,
            };
            self.softmax_tile(st, &mut state, (c0, cols, tile), ldq);
            let pairs = cols.div_ceil(2);
            match dot {
                Some(tok) => {
                    let pt2 = &mut ws.pt2[..pairs * 2 * ldq];
                    dispatch::pack_pairs_bf16(tok, st, cols, ldq, pt2);
                    let v2 = &kv.v2[c0 * dv..(c0 / 2 + pairs) * 2 * dv];
                    dispatch::accumulate_t_bf16(
                        tok,
                        pt2,
                        v2,
                        &mut ws.acct[..dv * ldq],
                        (pairs, dv, ldq),
                        &ws.rescale[..ldq],
                    );
                }
                None => {
                    for x in st.iter_mut() {
                        *x = round_bf16(*x);
                    }
                    for j in 0..cols {
                        let key = c0 + j;
                        let row = &mut ws.v[j * ldv..(j + 1) * ldv];
                        for (c, x) in row.iter_mut().enumerate() {
                            *x = if c < dv {
                                bf16_to_f32(kv.v2[((key / 2) * dv + c) * 2 + key % 2])
                            } else {
                                0.0
                            };
                        }
                    }
                    let t = dispatch::Tile {
                        qt: &ws.qt[..d * ldq],
                        k: &[],
                        v: &ws.v[..cols * ldv],
                        st,
                        cols,
                        d,
                        ldq,
                        ldv,
                    };
                    dispatch::accumulate_t(
                        self.isa,
                        &t,
                        &mut ws.acct[..dv * ldq],
                        dv,
                        &ws.rescale[..ldq],
                    );
                }
            }
        }
        self.untranspose(ws);
    }
}

/// One (batch, KV head)'s keys and values in `bf16` ([`Bf16Kv::head`]).
#[derive(Clone, Copy)]
pub(super) struct Bf16Head<'a> {
    /// Keys, `[n_kv][d]`.
    k: &'a [u16],
    /// Values pair-interleaved over keys, `[n_kv.div_ceil(2)][d_v][2]`.
    v2: &'a [u16],
}

/// A call's keys and values rounded to `bf16` once, per (batch, KV head): keys row-major,
/// values pair-interleaved over keys (a zero partner for an odd last key), as the `bf16` tile
/// products read them. `O(n_kv (d + d_v))` per KV head, half the `f32` inputs' bytes.
pub(crate) struct Bf16Kv {
    k: Vec<u16>,
    v2: Vec<u16>,
    kv_heads: usize,
    /// Elements per head of `k` and of `v2`.
    k_head: usize,
    v_head: usize,
}

impl Bf16Kv {
    /// The keys and values of `p` in `bf16`.
    pub(crate) fn new(p: &Call<'_>) -> Self {
        let s = p.shape();
        let (n, d, dv) = (s.n_kv(), s.head_dim(), s.v_dim());
        let (k_head, v_head) = (n * d, n.div_ceil(2) * 2 * dv);
        let heads = s.batch() * s.kv_heads();
        let mut k = Vec::with_capacity(heads * k_head);
        let mut v2 = vec![0u16; heads * v_head];
        for b in 0..s.batch() {
            for h in 0..s.kv_heads() {
                let kh = p
                    .k()
                    .index_axis_move(Axis(0), b)
                    .index_axis_move(Axis(0), h);
                k.extend(kh.iter().map(|&x| f32_to_bf16(x)));
                let vh = p
                    .v()
                    .index_axis_move(Axis(0), b)
                    .index_axis_move(Axis(0), h);
                let dst = &mut v2[(b * s.kv_heads() + h) * v_head..][..v_head];
                for (j, row) in vh.outer_iter().enumerate() {
                    for (c, &x) in row.iter().enumerate() {
                        dst[((j / 2) * dv + c) * 2 + j % 2] = f32_to_bf16(x);
                    }
                }
            }
        }
        Self {
            k,
            v2,
            kv_heads: s.kv_heads(),
            k_head,
            v_head,
        }
    }

    /// The bytes [`Bf16Kv::new`] allocates for `shape`.
    pub(crate) fn bytes(shape: &crate::shape::Shape) -> u64 {
        let (n, heads) = (shape.n_kv(), shape.batch() * shape.kv_heads());
        (heads * (n * shape.head_dim() + n.div_ceil(2) * 2 * shape.v_dim()) * 2) as u64
    }

    /// Batch `b`'s KV head `kvh`.
    pub(super) fn head(&self, b: usize, kvh: usize) -> Bf16Head<'_> {
        let i = b * self.kv_heads + kvh;
        Bf16Head {
            k: &self.k[i * self.k_head..(i + 1) * self.k_head],
            v2: &self.v2[i * self.v_head..(i + 1) * self.v_head],
        }
    }
}

/// Copies `row` into `dst` (the same length): one `memcpy` where the row is contiguous (the
/// usual layout), element by element otherwise. A gathered tile's rows go through here;
/// ndarray's element iterator does not vectorize.
fn copy_row(dst: &mut [f32], row: ndarray::ArrayView1<'_, f32>) {
    match row.as_slice() {
        Some(r) => dst.copy_from_slice(r),
        None => dst.iter_mut().zip(row.iter()).for_each(|(d, &x)| *d = x),
    }
}
