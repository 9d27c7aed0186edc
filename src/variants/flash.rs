//! `flash`: exact tiled attention with an online softmax, and the tiled engine that runs any
//! [`Pattern`].
//!
//! The query rows of each (batch, head) are cut into blocks of `bq`; each block is one task,
//! and tasks run in parallel. A task walks the keys in tiles of `bk` and, per tile:
//!
//! 1. asks the mask to [classify](Pattern::classify) the `bq x bk` tile: empty tiles are
//!    skipped, full tiles run unmasked, partial tiles set disallowed scores to `-inf`;
//! 2. computes the tile's scores `S = scale * Q_blk K_tile^T` (SIMD microkernel), then
//!    applies soft-capping and ALiBi when the options ask for them;
//! 3. updates each row's running maximum `m` and running sum `l` (online softmax): with
//!    `m' = max(m, max S_row)`, the accumulator row and `l` are rescaled by `e^(m - m')`, and
//!    `P = e^(S - m')` is added to `l`;
//! 4. accumulates `acc += P V_tile` (sgemm).
//!
//! Keys past a batch element's key length (key padding) are never visited. The output row is
//! `acc / l` (zero when the row had no allowed key). The n x n matrix is
//! never formed: a task's workspace is `(bq * bk + bq * d_v + 2 * bq)` floats whatever `n`.
//! This is the algorithm of FlashAttention (Dao et al. 2022), run on the CPU.

use std::fmt;

use ndarray::{ArrayView2, ArrayViewMut2, Axis, s};

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::error::Result;
use crate::kernels::gemm::gemm_flops;
use crate::kernels::simd::{self, Isa};
use crate::modifier::{Feature, ScoreMods};
use crate::parallel::for_each_row_block;
use crate::pattern::{Geometry, Mask, Pattern, Tile};
use crate::registry::{ParamInfo, Params, VariantInfo};
use crate::shape::Shape;

/// Query and key block sizes of the tiled engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Query rows per block (and per parallel task). At least 1.
    pub bq: usize,
    /// Keys per tile. At least 1.
    pub bk: usize,
}

impl Default for Tiling {
    /// `bq = 64, bk = 128`. Chosen by measurement and cache sizes: on a Zen 5 core (32 KiB
    /// L1d, 1 MiB L2), one thread at n = 4096, every `bq` in 32..256 and `bk` in 32..256 ran
    /// within 5% of the best at d = 32, 64 and 128 (`cargo run --release --example baseline
    /// -- tiling`, or `attnbench sweep --threads 1` over `flash(bq=..,bk=..)` specs). `bq = 64`
    /// fills the AVX-512 kernel's 4 x 4 register block (64 queries); its 128 x 64 score tile
    /// (32 KiB) is L1-sized, and the K and V tiles (32 KiB each at d = 64) stay in L2.
    fn default() -> Self {
        Self { bq: 64, bk: 128 }
    }
}

/// Exact dense attention on the tiled engine. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flash {
    /// The block sizes.
    pub tiling: Tiling,
    /// A forced SIMD path; `None` picks the widest the CPU supports.
    pub isa: Option<Isa>,
}

/// The registry entry of [`Flash`].
pub const INFO: VariantInfo = VariantInfo {
    name: "flash",
    summary: "tiled with online softmax (FlashAttention); O(n) memory, skips masked tiles",
    params: &[
        ParamInfo {
            name: "bq",
            default: "64",
            help: "query rows per block (one parallel task)",
        },
        ParamInfo {
            name: "bk",
            default: "128",
            help: "keys per tile",
        },
        ParamInfo {
            name: "isa",
            default: "auto",
            help: "SIMD path: auto | avx512 | avx2 | portable (to compare paths)",
        },
    ],
    presets: &[],
    preview: "",
    build,
};

fn build(p: &Params) -> Result<Box<dyn Attention>> {
    let isa = match p.raw("isa") {
        "auto" => None,
        "avx512" => Some(Isa::Avx512),
        "avx2" => Some(Isa::Avx2Fma),
        "portable" => Some(Isa::Portable),
        other => {
            return Err(p.invalid(
                "isa",
                &format!("expected auto, avx512, avx2 or portable, got '{other}'"),
            ));
        }
    };
    Ok(Box::new(Flash {
        tiling: Tiling {
            bq: p.positive("bq")?,
            bk: p.positive("bk")?,
        },
        isa,
    }))
}

fn isa_name(isa: Isa) -> &'static str {
    match isa {
        Isa::Avx512 => "avx512",
        Isa::Avx2Fma => "avx2",
        Isa::Portable => "portable",
    }
}

impl fmt::Display for Flash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flash(bq={},bk={}", self.tiling.bq, self.tiling.bk)?;
        if let Some(isa) = self.isa {
            write!(f, ",isa={}", isa_name(isa))?;
        }
        f.write_str(")")
    }
}

impl Attention for Flash {
    fn name(&self) -> &'static str {
        "flash"
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }

    fn unsupported(&self, _shape: &Shape, _opts: &Options) -> Vec<String> {
        match self.isa {
            Some(isa) if !isa.is_available() => {
                vec![format!("this CPU does not support the {isa} path")]
            }
            _ => Vec::new(),
        }
    }

    fn supports(&self, _feature: Feature) -> bool {
        true
    }

    fn cost(&self, shape: &Shape, opts: &Options, threads: usize) -> Cost {
        tiled_cost(shape, &Mask::new(None, opts.causal), self.tiling, threads)
    }

    fn forward(&self, p: &Call<'_>, out: Out<'_>) -> Result<()> {
        let isa = self.isa.unwrap_or_else(Isa::detect);
        tiled_forward(p, &p.mask(None), self.tiling, isa, out.into_view());
        Ok(())
    }
}

/// The analytic cost of [`tiled_forward`] under `mask`: the flops of every non-empty tile and
/// the workspace of the busy workers.
pub fn tiled_cost(shape: &Shape, mask: &dyn Pattern, tiling: Tiling, threads: usize) -> Cost {
    let g = shape.geometry();
    let mut pairs = 0usize;
    let mut blocks = 0usize;
    for r0 in (0..g.n_q).step_by(tiling.bq) {
        let rows = r0..(r0 + tiling.bq).min(g.n_q);
        blocks += 1;
        for c0 in (0..g.n_kv).step_by(tiling.bk) {
            let cols = c0..(c0 + tiling.bk).min(g.n_kv);
            if mask.classify(g, rows.clone(), cols.clone()) != Tile::Empty {
                pairs += rows.len() * cols.len();
            }
        }
    }
    let heads = (shape.batch() * shape.heads()) as f64;
    let flops =
        heads * (gemm_flops(pairs, shape.head_dim(), 1) + gemm_flops(pairs, shape.v_dim(), 1));
    let tasks = shape.batch() * shape.heads() * blocks;
    let busy = tasks.min(threads) as u64;
    let splits = kv_splits(shape, tiling, threads);
    // Split keys: each block in flight also keeps every range's maxima, sums and
    // accumulator, and an f64 row for the merge.
    let parts = if splits > 1 {
        let rows = tiling.bq.min(shape.n_q());
        busy * (splits * rows * (simd::padded(shape.v_dim()) + 2) * 4 + shape.v_dim() * 8) as u64
    } else {
        0
    };
    Cost {
        flops,
        workspace_bytes: busy.min(tasks as u64 * splits as u64) * worker_bytes(tiling, shape)
            + parts,
    }
}

/// One worker's scratch ([`Workspace`]).
fn worker_bytes(t: Tiling, s: &Shape) -> u64 {
    let t = Tiling {
        bq: t.bq.min(s.n_q()),
        bk: t.bk.min(s.n_kv()),
    };
    let (ldq, ldv) = (simd::padded(t.bq), simd::padded(s.v_dim()));
    let floats = s.head_dim() * ldq
        + t.bk * s.head_dim()
        + t.bk * ldv
        + t.bk * ldq
        + t.bq * ldv
        + 5 * ldq
        + t.bk;
    floats as u64 * 4
}

/// Keys a task accumulates in `f32` at most before its partial result is merged (in `f64`)
/// with the others'. Over 262144 keys of near-uniform attention a single `f32` accumulation
/// reached a relative error of 8.6e-6, close to the 1e-5 an exact variant is held to.
pub const SPLIT_KEYS: usize = 16384;

/// Into how many key ranges each query block's keys are cut: enough for every thread to be
/// busy when there are fewer query blocks than threads (decoding, b = h = 1), and ranges of
/// at most [`SPLIT_KEYS`] keys; always whole tiles, so at most one range per tile.
fn kv_splits(shape: &Shape, tiling: Tiling, threads: usize) -> usize {
    let tasks = shape.batch() * shape.heads() * shape.n_q().div_ceil(tiling.bq);
    let for_threads = if tasks < threads {
        (2 * threads).div_ceil(tasks)
    } else {
        1
    };
    let for_accuracy = shape.n_kv().div_ceil(SPLIT_KEYS);
    for_threads
        .max(for_accuracy)
        .min(shape.n_kv().div_ceil(tiling.bk))
}

/// Runs exact softmax attention restricted to `mask` on the tiled engine, writing every row
/// of `out` (`[batch, heads, n_q, v_dim]`).
pub fn tiled_forward(
    p: &Call<'_>,
    mask: &dyn Pattern,
    tiling: Tiling,
    isa: Isa,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    let shape = p.shape();
    let splits = kv_splits(&shape, tiling, p.threads());
    if splits > 1 {
        split_kv_forward(p, mask, tiling, isa, splits, out);
        return;
    }
    for_each_row_block(
        out,
        tiling.bq,
        || {
            // Never larger than the problem: a huge block size costs no memory at small n.
            let t = Tiling {
                bq: tiling.bq.min(shape.n_q()),
                bk: tiling.bk.min(shape.n_kv()),
            };
            Workspace::new(t, shape.head_dim(), shape.v_dim())
        },
        |ws, b, h, r0, block_out| {
            let rows = block_out.nrows();
            let task = Task::new(
                p,
                mask,
                (b, h, r0..r0 + rows),
                0..shape.n_kv(),
                tiling.bk,
                isa,
            );
            task.run(ws, block_out);
        },
    );
}

/// The tiled engine with each query block's keys cut into `splits` ranges processed in
/// parallel; the partial maxima, sums and accumulators are merged exactly:
/// `m = max m_s`, `l = sum l_s e^(m_s - m)`, `acc = sum acc_s e^(m_s - m)`.
fn split_kv_forward(
    p: &Call<'_>,
    mask: &dyn Pattern,
    tiling: Tiling,
    isa: Isa,
    splits: usize,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    use rayon::prelude::*;
    let shape = p.shape();
    let tiles = shape.n_kv().div_ceil(tiling.bk);
    let t = Tiling {
        bq: tiling.bq.min(shape.n_q()),
        bk: tiling.bk.min(shape.n_kv()),
    };
    for_each_row_block(
        out,
        tiling.bq,
        || (),
        |_, b, h, r0, mut block_out| {
            let rows = block_out.nrows();
            let ldv = simd::padded(shape.v_dim());
            let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..splits)
                .into_par_iter()
                .map_init(
                    || Workspace::new(t, shape.head_dim(), shape.v_dim()),
                    |ws, s| {
                        // Split on tile boundaries so that tiles are the same as unsplit.
                        let k0 = (s * tiles / splits * tiling.bk).min(shape.n_kv());
                        let k1 = ((s + 1) * tiles / splits * tiling.bk).min(shape.n_kv());
                        let task =
                            Task::new(p, mask, (b, h, r0..r0 + rows), k0..k1, tiling.bk, isa);
                        task.accumulate(ws);
                        (
                            ws.m[..rows].to_vec(),
                            ws.l[..rows].to_vec(),
                            ws.acc[..rows * ldv].to_vec(),
                        )
                    },
                )
                .collect();
            // The merge, in f64: each part is an f32 accumulation over at most SPLIT_KEYS.
            let mut merged = vec![0.0f64; shape.v_dim()];
            for (i, mut o) in block_out.outer_iter_mut().enumerate() {
                let m = parts
                    .iter()
                    .map(|p| p.0[i])
                    .fold(f32::NEG_INFINITY, f32::max);
                o.fill(0.0);
                if m == f32::NEG_INFINITY {
                    continue;
                }
                merged.fill(0.0);
                let mut l = 0.0f64;
                for (pm, pl, pacc) in &parts {
                    if pm[i] == f32::NEG_INFINITY {
                        continue;
                    }
                    let w = ((pm[i] - m) as f64).exp();
                    l += pl[i] as f64 * w;
                    for (x, &a) in merged.iter_mut().zip(&pacc[i * ldv..]) {
                        *x += a as f64 * w;
                    }
                }
                let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                for (o, &x) in o.iter_mut().zip(&merged) {
                    *o = (x * inv) as f32;
                }
            }
        },
    );
}

/// Per-worker scratch, in the transposed layout of [`simd::Tile`]: the query block
/// transposed, one key tile, one padded value tile, the key-major score tile, the accumulator
/// and the online-softmax state.
struct Workspace {
    qt: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    st: Vec<f32>,
    acc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    rescale: Vec<f32>,
    shift: Vec<f32>,
    sums: Vec<f32>,
    row: Vec<f32>,
}

impl Workspace {
    fn new(t: Tiling, d: usize, v_dim: usize) -> Self {
        let (ldq, ldv) = (simd::padded(t.bq), simd::padded(v_dim));
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

/// One query block of one (batch, head).
struct Task<'a> {
    q: ArrayView2<'a, f32>,
    k: ArrayView2<'a, f32>,
    v: ArrayView2<'a, f32>,
    r0: usize,
    g: Geometry,
    scale: f32,
    mask: &'a dyn Pattern,
    bk: usize,
    /// The keys this task covers (all valid keys unless the keys are split).
    keys: std::ops::Range<usize>,
    isa: Isa,
    mods: ScoreMods,
}

impl<'a> Task<'a> {
    /// The query rows `rows` of (batch `b`, head `h`) against the keys `keys`.
    fn new<'p: 'a>(
        p: &Call<'p>,
        mask: &'a dyn Pattern,
        (b, h, rows): (usize, usize, std::ops::Range<usize>),
        keys: std::ops::Range<usize>,
        bk: usize,
        isa: Isa,
    ) -> Self {
        let shape = p.shape();
        let kvh = shape.kv_head_of(h);
        // Key padding: keys at or past the batch element's length are never visited.
        let valid = p.key_len(b);
        let keys = keys.start.min(valid)..keys.end.min(valid);
        Task {
            r0: rows.start,
            q: p.q().slice_move(s![b, h, rows, ..]),
            k: p.k()
                .index_axis_move(Axis(0), b)
                .index_axis_move(Axis(0), kvh),
            v: p.v()
                .index_axis_move(Axis(0), b)
                .index_axis_move(Axis(0), kvh),
            g: shape.geometry(),
            scale: p.scale(),
            mask,
            bk,
            keys,
            isa,
            mods: p.score_mods(h),
        }
    }

    /// Runs the block over its keys and writes the normalized output rows.
    fn run(&self, ws: &mut Workspace, mut out: ArrayViewMut2<f32>) {
        self.accumulate(ws);
        let dv = self.v.ncols();
        let ldv = simd::padded(dv);
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
        self.keys.clone().step_by(self.bk).filter_map(move |c0| {
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
        let ldv = simd::padded(dv);
        let k_tile = self.k.slice(s![keys.clone(), ..]);
        let k: &[f32] = match k_tile.to_slice() {
            Some(k) => k,
            None => {
                for (j, krow) in k_tile.outer_iter().enumerate() {
                    for (dst, &x) in kbuf[j * d..(j + 1) * d].iter_mut().zip(krow.iter()) {
                        *dst = x;
                    }
                }
                &kbuf[..cols * d]
            }
        };
        let v_tile = self.v.slice(s![keys, ..]);
        let v: &[f32] = match v_tile.to_slice().filter(|_| ldv == dv) {
            Some(v) => v,
            None => {
                for (j, vrow) in v_tile.outer_iter().enumerate() {
                    let dst = &mut vbuf[j * ldv..(j + 1) * ldv];
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
        let (ldq, ldv) = (simd::padded(1), simd::padded(dv));
        let q = &mut ws.qt[..d];
        for (dst, &x) in q.iter_mut().zip(self.q.row(0)) {
            *dst = x;
        }
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
        ws.acc[..ldv].fill(0.0);
        for (c0, c1, tile) in self.tiles(self.r0..self.r0 + 1) {
            let cols = c1 - c0;
            let (k, v) = self.kv_tile(&mut ws.k, &mut ws.v, c0..c1);
            let row = &mut ws.row[..cols];
            simd::dot_rows(self.isa, k, &ws.qt[..d], self.scale, row);
            if !self.mods.is_identity() {
                self.mods.apply_row(self.r0, c0, row);
            }
            if tile == Tile::Partial {
                self.mask.mask_row(self.g, self.r0, c0, row);
            }
            let m_new = m.max(simd::max(self.isa, row));
            if m_new == f32::NEG_INFINITY {
                continue; // nothing allowed yet
            }
            let rescale = crate::kernels::exp::exp(m - m_new);
            l = l * rescale + simd::exp_shifted_sum(self.isa, row, m_new);
            m = m_new;
            // P V through the tile kernel, the one query in lane 0 of each key's row.
            for (j, &p) in row.iter().enumerate() {
                ws.st[j * ldq] = p;
            }
            ws.rescale[0] = rescale;
            let t = simd::Tile {
                qt: &ws.qt[..d * ldq],
                k,
                v,
                st: &mut ws.st[..cols * ldq],
                cols,
                d,
                ldq,
                ldv,
            };
            simd::accumulate(self.isa, &t, &mut ws.acc[..ldv], 1, &ws.rescale[..1]);
        }
        ws.m[0] = m;
        ws.l[0] = l;
    }

    /// Leaves the running maxima, sums and unnormalized accumulator of the block's rows over
    /// its keys in `ws`.
    fn accumulate(&self, ws: &mut Workspace) {
        if self.q.nrows() == 1 {
            return self.accumulate_one(ws);
        }
        let (rows, d) = self.q.dim();
        let dv = self.v.ncols();
        let (ldq, ldv) = (simd::padded(rows), simd::padded(dv));
        let row_range = self.r0..self.r0 + rows;
        // The query block, transposed; padding queries are zero.
        let qt = &mut ws.qt[..d * ldq];
        qt.fill(0.0);
        for (i, qrow) in self.q.outer_iter().enumerate() {
            for (p, &x) in qrow.iter().enumerate() {
                qt[p * ldq + i] = x;
            }
        }
        ws.m[..ldq].fill(f32::NEG_INFINITY);
        ws.l[..ldq].fill(0.0);
        ws.acc[..rows * ldv].fill(0.0);

        for (c0, c1, tile) in self.tiles(row_range.clone()) {
            let cols = c1 - c0;
            let (k, v) = self.kv_tile(&mut ws.k, &mut ws.v, c0..c1);
            let mut t = simd::Tile {
                qt: &ws.qt[..d * ldq],
                k,
                v,
                st: &mut ws.st[..cols * ldq],
                cols,
                d,
                ldq,
                ldv,
            };
            simd::scores(self.isa, &mut t, self.scale);
            if !self.mods.is_identity() {
                self.mods
                    .apply_key_major(t.st, (self.r0, rows), (c0, cols), ldq);
            }
            if tile == Tile::Partial
                && !self
                    .mask
                    .mask_key_major(self.g, row_range.clone(), c0, cols, t.st, ldq)
            {
                // Masks work on query rows; the scores are key-major: gather, mask, scatter.
                let row = &mut ws.row[..cols];
                for i in 0..rows {
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = t.st[j * ldq + i];
                    }
                    self.mask.mask_row(self.g, self.r0 + i, c0, row);
                    for (j, &x) in row.iter().enumerate() {
                        t.st[j * ldq + i] = x;
                    }
                }
            }
            let mut state = simd::OnlineState {
                m: &mut ws.m,
                l: &mut ws.l,
                rescale: &mut ws.rescale,
                shift: &mut ws.shift,
                sums: &mut ws.sums,
            };
            simd::online_softmax(self.isa, t.st, cols, ldq, &mut state);
            simd::accumulate(
                self.isa,
                &t,
                &mut ws.acc[..rows * ldv],
                rows,
                &ws.rescale[..ldq],
            );
        }
    }
}
