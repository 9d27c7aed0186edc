//! One query block of one (batch, head): its scratch, its tile loop, and the single-query
//! (decoding) path.

use ndarray::{ArrayView2, ArrayViewMut2, Axis, s};

use super::Tiling;
use crate::attention::Call;
use crate::kernels::dispatch::{self, Isa};
use crate::modifier::ScoreMods;
use crate::pattern::{Gather, Geometry, Group, KeyMajor, Mask, Pattern, Tile};

/// Per-worker scratch, in the transposed layout of [`dispatch::Tile`]: the query block
/// transposed, one key tile, one padded value tile, the key-major score tile, the accumulator
/// and the online-softmax state.
pub(super) struct Workspace {
    pub(super) qt: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    pub(super) st: Vec<f32>,
    pub(super) acc: Vec<f32>,
    pub(super) m: Vec<f32>,
    pub(super) l: Vec<f32>,
    pub(super) rescale: Vec<f32>,
    pub(super) shift: Vec<f32>,
    pub(super) sums: Vec<f32>,
    pub(super) row: Vec<f32>,
}

impl Workspace {
    pub(super) fn new(t: Tiling, d: usize, v_dim: usize) -> Self {
        let (ldq, ldv) = (dispatch::padded(t.bq), dispatch::padded(v_dim));
        Self {
            qt: vec![0.0; d * ldq],
            k: vec![0.0; t.bk * d],
            v: vec![0.0; t.bk * ldv],
            st: vec![0.0; t.bk * ldq],
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
                    let krow = self.k.row(self.kmap.index(keys.start + j));
                    for (dst, &x) in dst.iter_mut().zip(krow.iter()) {
                        *dst = x;
                    }
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
                    let vrow = self.v.row(self.kmap.index(keys.start + j));
                    for (d, &x) in dst.iter_mut().zip(vrow.iter()) {
                        *d = x;
                    }
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
        if self.rows == 1 {
            return self.accumulate_one(ws);
        }
        let (rows, d) = (self.rows, self.q.ncols());
        let dv = self.v.ncols();
        let (ldq, ldv) = (dispatch::padded(rows), dispatch::padded(dv));
        let row_range = self.r0..self.r0 + rows;
        // The query block, transposed; padding queries are zero.
        let qt = &mut ws.qt[..d * ldq];
        qt.fill(0.0);
        for i in 0..rows {
            for (p, &x) in self.q_row(i).iter().enumerate() {
                qt[p * ldq + i] = x;
            }
        }
        ws.m[..ldq].fill(f32::NEG_INFINITY);
        ws.l[..ldq].fill(0.0);
        ws.acc[..rows * ldv].fill(0.0);

        for (c0, c1, tile) in self.tiles(row_range.clone()) {
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
            if !self.mods.is_identity() {
                self.mods
                    .apply_key_major(t.st, (self.r0, rows), (c0, cols), ldq);
            }
            if tile == Tile::Partial {
                let mut key_major = KeyMajor {
                    rows: row_range.clone(),
                    c0,
                    cols,
                    st: t.st,
                    ld: ldq,
                };
                self.mask.mask_key_major(self.g, &mut key_major);
            }
            let mut state = dispatch::OnlineState {
                m: &mut ws.m,
                l: &mut ws.l,
                rescale: &mut ws.rescale,
                shift: &mut ws.shift,
                sums: &mut ws.sums,
            };
            dispatch::online_softmax(self.isa, t.st, cols, ldq, &mut state);
            dispatch::accumulate(
                self.isa,
                &t,
                &mut ws.acc[..rows * ldv],
                rows,
                &ws.rescale[..ldq],
            );
        }
    }
}
