//! `blocktopk(block, k, local, score)`: block selection in the manner of MoBA (Lu et al. 2025)
//! and the selection branch of NSA (Yuan et al. 2025), with Quest's bound (Tang et al. 2024) as
//! an alternative score; exact softmax over the chosen blocks on the tiled engine.
//!
//! Keys are cut into blocks of `block`, and so are the queries. For each query block (the
//! selection is *per query block*, as NSA's blockwise kernel and MoBA's gate shared by a
//! block's queries; not per query):
//!
//! 1. the key blocks it may see at all are its candidates (causal: those starting at or before
//!    its last query's position);
//! 2. `local` of them are always kept: the block holding its last query's position and the
//!    `local - 1` before it (MoBA's current block; `local = 0` keeps none);
//! 3. each other candidate is scored from a per-block summary of its keys, the score being the
//!    largest over the block's queries: `score=mean` is `q . mean(K_block)` (MoBA), one GEMM
//!    of the block's queries against the means; `score=bound` is Quest's upper bound on
//!    `q . k` over the block, `sum_c max(q_c min_c, q_c max_c)` from the per-channel minimum
//!    and maximum of its keys (two GEMMs: `max(q, 0) . max + min(q, 0) . min`);
//! 4. the `k` best are kept (ties to the earlier block), and the query block attends exactly,
//!    on the engine, over the kept blocks (the causal mask applied within them).
//!
//! Selection ignores score modifiers; ALiBi, which would make the choice blind to a strong
//! distance bias, is refused. The cost is O(n (n / block) d) for scoring and
//! O(n (k + local) block d) for attention; its own check is the f64 oracle under the chosen
//! blocks' keys.

use std::fmt;
use std::ops::Range;

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut3, Axis, s};
use rayon::prelude::*;

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::engine::{RowsScratch, SPLIT_KEYS, Tiling, attend_rows};
use crate::decode::cached::{GroupSum, KvCache};
use crate::decode::{DecodeOptions, Decoder, check_prefill, check_step};
use crate::error::{ErrorKind, Result};
use crate::kernels::dispatch::{self, KvPartial};
use crate::kernels::gemm::{gemm, gemm_flops};
use crate::kernels::isa::Isa;
use crate::modifier::Feature;
use crate::parallel::for_each_head_with;
use crate::pattern::blocks::first_last;
use crate::pattern::{Geometry, KeyMajor, Mask, Pattern, Tile};
use crate::shape::Shape;
use crate::spec::{ParamInfo, Params, VariantInfo};
use crate::variants::shared::{allowed_keys, head, top_k};

/// `blocktopk(block=64,k=8,local=1,score=mean)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "blocktopk",
    summary: "MoBA/NSA block selection: per query block, the k key blocks of best pooled score (+ local ones), exact softmax over them",
    time: "O(n (n / block) d) scoring + O(n (k + local) block d) attention",
    memory: "O(n d / block): the key blocks' summaries",
    params: &[
        ParamInfo {
            name: "block",
            default: "64",
            help: "keys per key block and queries per query block",
        },
        ParamInfo {
            name: "k",
            default: "8",
            help: "key blocks chosen by score per query block",
        },
        ParamInfo {
            name: "local",
            default: "1",
            help: "key blocks always kept: the query block's own and the local - 1 before it",
        },
        ParamInfo {
            name: "score",
            default: "mean",
            help: "block score: mean (q . mean of the block's keys, MoBA) | bound (Quest's per-channel min/max bound)",
        },
    ],
    presets: &["blocktopk(score=mean)", "blocktopk(score=bound)"],
    preview: "blocktopk(block=8,k=2,local=1)",
    build,
};

/// How a key block is scored for a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Score {
    /// `q . mean(K_block)`.
    Mean,
    /// `sum_c max(q_c min_c K_block, q_c max_c K_block)`, an upper bound of `q . k`.
    Bound,
}

impl Score {
    fn name(self) -> &'static str {
        match self {
            Score::Mean => "mean",
            Score::Bound => "bound",
        }
    }
}

/// Block selection. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockTopK {
    /// Keys per block (and queries per query block).
    pub block: usize,
    /// Blocks chosen by score.
    pub k: usize,
    /// Blocks always kept.
    pub local: usize,
    /// The block score.
    pub score: Score,
}

fn build(p: &Params) -> Result<Box<dyn Attention>> {
    let score = match p.raw("score") {
        "mean" => Score::Mean,
        "bound" => Score::Bound,
        other => {
            return Err(p.invalid("score", &format!("expected mean or bound, got '{other}'")));
        }
    };
    let block = p.positive("block")?;
    if block > 4096 {
        return Err(p.invalid("block", &format!("{block} is too large (at most 4096)")));
    }
    let (k, local) = (p.usize("k")?, p.usize("local")?);
    if k + local == 0 {
        return Err(p.invalid("k", "k + local must be at least 1: no block would be attended"));
    }
    // One engine task accumulates every kept key in f32: at most SPLIT_KEYS of them.
    if (k + local + 1).saturating_mul(block) > SPLIT_KEYS {
        return Err(p.invalid(
            "k",
            &format!(
                "(k + local + 1) x block = {} keys per query block exceeds {SPLIT_KEYS}",
                (k + local + 1).saturating_mul(block)
            ),
        ));
    }
    Ok(Box::new(BlockTopK {
        block,
        k,
        local,
        score,
    }))
}

impl fmt::Display for BlockTopK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(
            f,
            &[
                Some(&self.block),
                Some(&self.k),
                Some(&self.local),
                Some(&self.score.name()),
            ],
        )
    }
}

/// The summaries of one KV head's key blocks: the means (`[blocks, d]`), or the per-channel
/// minima and maxima.
#[derive(Debug)]
enum Summary {
    Mean(Array2<f32>),
    Bound(Array2<f32>, Array2<f32>),
}

impl Summary {
    /// The summaries of the blocks of `keys`' rows (`[n, d]`), the last one possibly short.
    fn of(score: Score, keys: ArrayView2<f32>, block: usize) -> Self {
        let (n, d) = keys.dim();
        let blocks = n.div_ceil(block);
        match score {
            Score::Mean => {
                let mut mean = Array2::zeros((blocks, d));
                for (c, mut row) in mean.outer_iter_mut().enumerate() {
                    let rows = keys.slice(s![c * block..((c + 1) * block).min(n), ..]);
                    let inv = 1.0 / rows.nrows() as f32;
                    for k in rows.outer_iter() {
                        row.zip_mut_with(&k, |m, &x| *m += x);
                    }
                    row.mapv_inplace(|m| m * inv);
                }
                Summary::Mean(mean)
            }
            Score::Bound => {
                let mut lo = Array2::from_elem((blocks, d), f32::INFINITY);
                let mut hi = Array2::from_elem((blocks, d), f32::NEG_INFINITY);
                for (j, k) in keys.outer_iter().enumerate() {
                    lo.row_mut(j / block).zip_mut_with(&k, |m, &x| *m = m.min(x));
                    hi.row_mut(j / block).zip_mut_with(&k, |m, &x| *m = m.max(x));
                }
                Summary::Bound(lo, hi)
            }
        }
    }

    fn bytes(score: Score, n_kv: usize, d: usize, block: usize) -> u64 {
        let one = (n_kv.div_ceil(block) * d * 4) as u64;
        match score {
            Score::Mean => one,
            Score::Bound => 2 * one,
        }
    }

    /// Into `agg[c]`, for each candidate block `c < agg.len()`, the largest score over the
    /// query rows `q` (`[rows, d]`); `buf` holds the `[rows, blocks]` scores.
    ///
    /// Quest's bound is two GEMMs: with `lo <= hi`, `max(x lo, x hi)` is `x hi` for `x >= 0`
    /// and `x lo` otherwise, so the bound is `max(q, 0) . hi + min(q, 0) . lo`.
    fn score(
        &self,
        q: ArrayView2<f32>,
        agg: &mut [f32],
        buf: &mut Vec<f32>,
        parts: &mut (Array2<f32>, Array2<f32>),
    ) {
        let (rows, blocks) = (q.nrows(), agg.len());
        if buf.len() < rows * blocks {
            buf.resize(rows * blocks, 0.0);
        }
        let mut sc = ndarray::ArrayViewMut2::from_shape((rows, blocks), &mut buf[..rows * blocks])
            .expect("the buffer holds rows x blocks floats");
        match self {
            Summary::Mean(mean) => {
                gemm(1.0, &q, &mean.slice(s![..blocks, ..]).t(), 0.0, &mut sc);
            }
            Summary::Bound(lo, hi) => {
                if parts.0.dim() != q.dim() {
                    *parts = (Array2::zeros(q.dim()), Array2::zeros(q.dim()));
                }
                let (pos, neg) = parts;
                pos.zip_mut_with(&q, |p, &x| *p = x.max(0.0));
                neg.zip_mut_with(&q, |n, &x| *n = x.min(0.0));
                gemm(1.0, &pos.view(), &hi.slice(s![..blocks, ..]).t(), 0.0, &mut sc);
                gemm(1.0, &neg.view(), &lo.slice(s![..blocks, ..]).t(), 1.0, &mut sc);
            }
        }
        agg.fill(f32::NEG_INFINITY);
        for row in sc.outer_iter() {
            agg.iter_mut().zip(row).for_each(|(a, &x)| *a = a.max(x));
        }
    }
}

/// The kept key blocks of one query block, as a pattern valid for that block's rows: key `j`
/// is allowed when its block was kept.
#[derive(Debug)]
struct Kept<'a> {
    block: usize,
    /// Sorted, distinct.
    blocks: &'a [u32],
}

impl Kept<'_> {
    fn has(&self, j: usize) -> bool {
        self.blocks.binary_search(&((j / self.block) as u32)).is_ok()
    }
}

impl Pattern for Kept<'_> {
    fn allows(&self, _g: Geometry, _i: usize, j: usize) -> bool {
        self.has(j)
    }

    fn classify(&self, _g: Geometry, _rows: Range<usize>, cols: Range<usize>) -> Tile {
        let (first, last) = (cols.start / self.block, (cols.end - 1) / self.block);
        let kept = (first..=last)
            .filter(|&c| self.blocks.binary_search(&(c as u32)).is_ok())
            .count();
        match kept {
            0 => Tile::Empty,
            n if n == last - first + 1 => Tile::Full,
            _ => Tile::Partial,
        }
    }

    fn mask_row(&self, _g: Geometry, _i: usize, c0: usize, row: &mut [f32]) {
        for (t, x) in row.iter_mut().enumerate() {
            if !self.has(c0 + t) {
                *x = f32::NEG_INFINITY;
            }
        }
    }

    fn mask_key_major(&self, _g: Geometry, tile: &mut KeyMajor<'_>) {
        for (j, col) in tile.columns() {
            if !self.has(j) {
                col.fill(f32::NEG_INFINITY);
            }
        }
    }

    fn key_ranges(&self, g: Geometry, _rows: Range<usize>) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for &c in self.blocks {
            let r = (c as usize * self.block).min(g.n_kv)..((c as usize + 1) * self.block).min(g.n_kv);
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ if r.is_empty() => {}
                _ => out.push(r),
            }
        }
        out
    }
}

/// One worker's scratch.
struct Scratch {
    engine: RowsScratch,
    /// A query block's scores against the candidate blocks.
    scores: Vec<f32>,
    /// The best score of each candidate block.
    agg: Vec<f32>,
    /// The scores of the candidates not kept anyway.
    others: Vec<f32>,
    idx: Vec<u32>,
    kept: Vec<u32>,
    /// `score=bound`: the positive and negative parts of a query block.
    parts: (Array2<f32>, Array2<f32>),
}

impl BlockTopK {
    /// The key blocks query block `rows` of batch element `b` may see (`0..candidates`) and
    /// the ones always kept (`forced`, a range of blocks), under the call's mask.
    fn candidates(&self, call: &Call<'_>, b: usize, rows: &Range<usize>) -> (usize, Range<usize>) {
        self.candidates_of(call.shape().geometry(), call.opts().causal, call.key_len(b), rows)
    }

    /// [`candidates`](Self::candidates) for `key_len` valid keys: the blocks up to the last
    /// row's position (causal) or every valid block, and as forced the blocks holding the
    /// rows' positions (one, unless the rows straddle key blocks) and the `local - 1` before
    /// them; none when `local = 0`.
    fn candidates_of(&self, g: Geometry, causal: bool, key_len: usize, rows: &Range<usize>) -> (usize, Range<usize>) {
        let valid = key_len.div_ceil(self.block);
        let (p0, p1) = first_last(g, rows);
        let candidates = if causal {
            if p1 < 0 {
                return (0, 0..0);
            }
            (p1 as usize / self.block + 1).min(valid)
        } else {
            valid
        };
        if candidates == 0 || self.local == 0 {
            return (candidates, 0..0);
        }
        let own = |p: isize| (p.max(0) as usize / self.block).min(candidates - 1);
        let (first, last) = (own(p0), own(p1));
        (candidates, (first + 1).saturating_sub(self.local)..last + 1)
    }

    /// Into `ws.kept` (sorted), the key blocks the query rows `rows` of (b, h) attend.
    fn choose(&self, call: &Call<'_>, summary: &Summary, (b, h): (usize, usize), rows: Range<usize>, ws: &mut Scratch) {
        let (candidates, forced) = self.candidates(call, b, &rows);
        ws.kept.clear();
        ws.kept.extend(forced.start as u32..forced.end as u32);
        let others = candidates - forced.len();
        if others <= self.k {
            ws.kept.clear();
            ws.kept.extend(0..candidates as u32);
            return;
        }
        let (q, _, _) = head(call, b, h);
        ws.agg.resize(candidates, 0.0);
        summary.score(q.slice(s![rows, ..]), &mut ws.agg, &mut ws.scores, &mut ws.parts);
        // The forced blocks compete no further.
        for c in forced.clone() {
            ws.agg[c] = f32::NEG_INFINITY;
        }
        ws.others.clear();
        ws.others.extend(
            (0..candidates)
                .filter(|c| !forced.contains(c))
                .map(|c| ws.agg[c]),
        );
        top_k(&ws.others, self.k, &mut ws.idx);
        // Back from the index among the others to the block.
        ws.kept.extend(ws.idx.iter().map(|&t| {
            let t = t as usize;
            (if t < forced.start { t } else { t + forced.len() }) as u32
        }));
        ws.kept.sort_unstable();
    }

    fn summaries(&self, call: &Call<'_>) -> Vec<Summary> {
        let shape = call.shape();
        let mut out = Vec::with_capacity(shape.batch() * shape.kv_heads());
        for b in 0..shape.batch() {
            for kvh in 0..shape.kv_heads() {
                let keys = call.k().slice_move(s![b, kvh, ..call.key_len(b), ..]);
                out.push(Summary::of(self.score, keys, self.block));
            }
        }
        out
    }

    /// A worker's scratch, every buffer at its largest (so none grows, and reallocates,
    /// block by block).
    fn scratch(&self, shape: &Shape) -> Scratch {
        let blocks = shape.n_kv().div_ceil(self.block);
        let rows = self.block.min(shape.n_q());
        Scratch {
            engine: RowsScratch::new(self.tiling(), shape),
            scores: vec![0.0; rows * blocks],
            agg: Vec::with_capacity(blocks),
            others: Vec::with_capacity(blocks),
            idx: Vec::with_capacity(blocks),
            kept: Vec::with_capacity(blocks),
            parts: match self.score {
                Score::Mean => (Array2::zeros((0, 0)), Array2::zeros((0, 0))),
                Score::Bound => (
                    Array2::zeros((rows, shape.head_dim())),
                    Array2::zeros((rows, shape.head_dim())),
                ),
            },
        }
    }

    fn tiling(&self) -> Tiling {
        Tiling {
            bq: self.block,
            bk: self.block,
        }
    }
}

impl Attention for BlockTopK {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Selected
    }

    fn supports(&self, feature: Feature) -> bool {
        // Selection ignores modifiers: soft-capping keeps the order of scores, ALiBi does not.
        feature != Feature::Alibi
    }

    fn unsupported(&self, _shape: &Shape, opts: &Options) -> Vec<String> {
        match opts.scale {
            // Blocks are ranked by unscaled scores, which a negative scale would reverse.
            Some(sc) if sc <= 0.0 => vec![format!(
                "blocktopk ranks blocks by q . k and needs a positive score scale, got {sc}"
            )],
            _ => Vec::new(),
        }
    }

    fn cost(&self, s: &Shape, opts: &Options, threads: usize) -> Cost {
        let g = s.geometry();
        let valid = s.n_kv().div_ceil(self.block);
        let mut per_head = 0.0;
        for r0 in (0..s.n_q()).step_by(self.block) {
            let rows = r0..(r0 + self.block).min(s.n_q());
            let (candidates, forced) = self.candidates_of(g, opts.causal, s.n_kv(), &rows);
            let forced = forced.len();
            let kept = if candidates - forced <= self.k {
                candidates
            } else {
                per_head += match self.score {
                    Score::Mean => gemm_flops(rows.len(), s.head_dim(), candidates),
                    Score::Bound => 2.0 * gemm_flops(rows.len(), s.head_dim(), candidates),
                };
                forced + self.k
            };
            // Each kept block is one tile, computed whole (the causal one masked); the
            // sequence's last block may be short.
            let keys = (kept * self.block).min(s.n_kv());
            per_head += gemm_flops(rows.len(), s.head_dim() + s.v_dim(), keys);
        }
        let heads = s.batch() * s.heads();
        let pooling = (s.batch() * s.kv_heads() * s.n_kv() * s.head_dim()) as f64;
        let busy = heads.min(threads) as u64;
        let rows = self.block.min(s.n_q());
        let scratch = RowsScratch::bytes(self.tiling(), s)
            + (rows * valid + 4 * valid) as u64 * 4
            + match self.score {
                Score::Mean => 0,
                // The positive and negative parts of the block's queries.
                Score::Bound => (2 * rows * s.head_dim()) as u64 * 4,
            };
        Cost {
            flops: per_head * heads as f64 + pooling,
            workspace_bytes: busy * scratch
                + (s.batch() * s.kv_heads()) as u64
                    * Summary::bytes(self.score, s.n_kv(), s.head_dim(), self.block),
        }
    }

    fn forward(&self, call: &Call<'_>, out: Out<'_>) -> Result<()> {
        let shape = call.shape();
        let summaries = self.summaries(call);
        let isa = Isa::detect();
        // One scratch per thread for a run of heads, their blocks in turn (per-block tasks
        // would keep several scratches alive per thread under rayon's work stealing).
        for_each_head_with(
            out.into_view(),
            || self.scratch(&shape),
            |ws, b, h, mut head_out| {
                let summary = &summaries[b * shape.kv_heads() + shape.kv_head_of(h)];
                for (blk, block_out) in head_out
                    .axis_chunks_iter_mut(Axis(0), self.block)
                    .enumerate()
                {
                    let r0 = blk * self.block;
                    let rows = r0..r0 + block_out.nrows();
                    self.choose(call, summary, (b, h), rows, ws);
                    let kept = Kept {
                        block: self.block,
                        blocks: &ws.kept,
                    };
                    let mask = Mask::new(Some(&kept), call.opts().causal);
                    attend_rows(call, mask, (b, h, r0), self.block, isa, &mut ws.engine, block_out);
                }
            },
        );
        Ok(())
    }

    fn decoder(&self, shape: &Shape, opts: &DecodeOptions) -> Option<Result<Box<dyn Decoder>>> {
        if let Some(sc) = opts.scale
            && sc <= 0.0
        {
            return Some(Err(ErrorKind::Unsupported {
                variant: self.to_string(),
                reasons: vec![format!(
                    "blocktopk ranks blocks by q . k and needs a positive score scale, got {sc}"
                )],
            }
            .into()));
        }
        Some(BlockDecoder::new(*self, shape, opts).map(|d| Box::new(d) as Box<dyn Decoder>))
    }

    fn chosen(&self, call: &Call<'_>, b: usize, h: usize, rows: &[usize]) -> Option<Vec<Vec<u32>>> {
        let shape = call.shape();
        let summaries = self.summaries(call);
        let summary = &summaries[b * shape.kv_heads() + shape.kv_head_of(h)];
        let mut ws = self.scratch(&shape);
        let key_len = call.key_len(b);
        let keys = rows
            .iter()
            .map(|&i| {
                let r0 = i / self.block * self.block;
                self.choose(call, summary, (b, h), r0..(r0 + self.block).min(shape.n_q()), &mut ws);
                // Only the keys the row may attend (causal, padding): the engine masks the
                // rest of the kept blocks, and the density counts what is attended.
                let allowed = allowed_keys(call, b, i).min(key_len);
                ws.kept
                    .iter()
                    .flat_map(|&c| {
                        let c = c as usize;
                        (c * self.block).min(allowed) as u32..((c + 1) * self.block).min(allowed) as u32
                    })
                    .collect()
            })
            .collect();
        Some(keys)
    }
}

/// Decoding: a KV cache, the key blocks' summaries kept up to date as keys arrive, and per
/// step and query head the choice [`BlockTopK::choose`] makes for a one-row query block
/// (its own block and the `local - 1` before it forced, the `k` best of the others by score,
/// ranked by the same GEMM on the same summaries), attended exactly over the kept blocks of
/// the cache. A step costs O((n / block) d) for scoring plus O((k + local) block d).
#[derive(Debug)]
struct BlockDecoder {
    sel: BlockTopK,
    shape: Shape,
    scale: f32,
    isa: Isa,
    caches: Vec<KvCache>,
    /// Per (sequence, KV head): `score=mean`, the running sums of each block's keys (the
    /// means are `sums * (1 / count)`, as [`Summary::of`] computes them).
    sums: Vec<Array2<f32>>,
    summaries: Vec<Summary>,
    len: usize,
    last_read: usize,
}

impl BlockDecoder {
    fn new(sel: BlockTopK, shape: &Shape, opts: &DecodeOptions) -> Result<Self> {
        opts.check()?;
        let (bk, d, dv) = (shape.batch() * shape.kv_heads(), shape.head_dim(), shape.v_dim());
        let cap = opts.capacity.max(1);
        let blocks = cap.div_ceil(sel.block);
        let empty = || match sel.score {
            Score::Mean => Summary::Mean(Array2::zeros((blocks, d))),
            Score::Bound => Summary::Bound(
                Array2::from_elem((blocks, d), f32::INFINITY),
                Array2::from_elem((blocks, d), f32::NEG_INFINITY),
            ),
        };
        Ok(Self {
            sel,
            shape: *shape,
            scale: opts.scale_for(shape),
            isa: opts.isa(),
            caches: (0..bk).map(|_| KvCache::new(opts.kv, d, dv, cap)).collect(),
            sums: match sel.score {
                Score::Mean => vec![Array2::zeros((blocks, d)); bk],
                Score::Bound => Vec::new(),
            },
            summaries: (0..bk).map(|_| empty()).collect(),
            len: 0,
            last_read: 0,
        })
    }

    /// Appends the key and value rows of every (sequence, KV head) at position `pos`.
    fn append(&mut self, pos: usize, k: ArrayView2<f32>, v: ArrayView2<f32>) {
        let (block, d) = (self.sel.block, self.shape.head_dim());
        let c = pos / block;
        for (i, cache) in self.caches.iter_mut().enumerate() {
            if cache.slots() <= pos {
                cache.grow((2 * cache.slots()).max(pos + 1));
            }
            cache.set(pos, k.row(i), v.row(i));
            let grow = |a: &mut Array2<f32>, fill: f32| {
                if a.nrows() <= c {
                    let mut g = Array2::from_elem((2 * a.nrows().max(c + 1), d), fill);
                    g.slice_mut(s![..a.nrows(), ..]).assign(a);
                    *a = g;
                }
            };
            match &mut self.summaries[i] {
                Summary::Mean(mean) => {
                    let sums = &mut self.sums[i];
                    grow(sums, 0.0);
                    grow(mean, 0.0);
                    let mut row = sums.row_mut(c);
                    row.zip_mut_with(&k.row(i), |m, &x| *m += x);
                    let inv = 1.0 / (pos - c * block + 1) as f32;
                    mean.row_mut(c).zip_mut_with(&row, |m, &x| *m = x * inv);
                }
                Summary::Bound(lo, hi) => {
                    grow(lo, f32::INFINITY);
                    grow(hi, f32::NEG_INFINITY);
                    lo.row_mut(c).zip_mut_with(&k.row(i), |m, &x| *m = m.min(x));
                    hi.row_mut(c).zip_mut_with(&k.row(i), |m, &x| *m = m.max(x));
                }
            }
        }
    }

    /// The kept blocks (sorted) of query row `q` (unscaled) at position `p`, and whether
    /// they were scored (not every candidate kept).
    fn kept(&self, summary: &Summary, q: ArrayView2<f32>, p: usize) -> (Vec<u32>, bool) {
        let sel = &self.sel;
        let candidates = p / sel.block + 1;
        let forced = if sel.local == 0 {
            0..0
        } else {
            let own = candidates - 1;
            (own + 1).saturating_sub(sel.local)..own + 1
        };
        if candidates - forced.len() <= sel.k {
            return ((0..candidates as u32).collect(), false);
        }
        let (mut agg, mut buf) = (vec![0f32; candidates], Vec::new());
        let mut parts = (Array2::zeros((0, 0)), Array2::zeros((0, 0)));
        summary.score(q, &mut agg, &mut buf, &mut parts);
        let others: Vec<f32> = (0..candidates)
            .filter(|c| !forced.contains(c))
            .map(|c| agg[c])
            .collect();
        let mut idx = Vec::new();
        top_k(&others, sel.k, &mut idx);
        let mut kept: Vec<u32> = forced.clone().map(|c| c as u32).collect();
        kept.extend(idx.iter().map(|&t| {
            let t = t as usize;
            (if t < forced.start { t } else { t + forced.len() }) as u32
        }));
        kept.sort_unstable();
        (kept, true)
    }
}

impl Decoder for BlockDecoder {
    fn prefill(&mut self, k: ArrayView4<'_, f32>, v: ArrayView4<'_, f32>) -> Result<()> {
        check_prefill(&self.shape, &k, &v)?;
        let (bn, hk, p) = (self.shape.batch(), self.shape.kv_heads(), k.shape()[2]);
        let (d, dv) = (self.shape.head_dim(), self.shape.v_dim());
        for t in 0..p {
            let kt = k.slice(s![.., .., t, ..]).to_shape((bn * hk, d)).expect("checked").to_owned();
            let vt = v.slice(s![.., .., t, ..]).to_shape((bn * hk, dv)).expect("checked").to_owned();
            self.append(self.len, kt.view(), vt.view());
            self.len += 1;
        }
        Ok(())
    }

    fn step(
        &mut self,
        q: ArrayView3<'_, f32>,
        k: ArrayView3<'_, f32>,
        v: ArrayView3<'_, f32>,
        mut out: ArrayViewMut3<'_, f32>,
    ) -> Result<()> {
        check_step(&self.shape, &q, &k, &v, &out)?;
        let (bn, hk, h) = (self.shape.batch(), self.shape.kv_heads(), self.shape.heads());
        let (d, dv) = (self.shape.head_dim(), self.shape.v_dim());
        let pos = self.len;
        let kt = k.to_shape((bn * hk, d)).expect("checked").to_owned();
        let vt = v.to_shape((bn * hk, dv)).expect("checked").to_owned();
        self.append(pos, kt.view(), vt.view());
        self.len = pos + 1;
        let this = &*self;
        let head = |i: usize| -> (Vec<f32>, usize, bool) {
            let (b, hh) = (i / h, i % h);
            let c = b * hk + this.shape.kv_head_of(hh);
            let qr = q.slice(s![b, hh..hh + 1, ..]);
            let (kept, scored) = this.kept(&this.summaries[c], qr, pos);
            let qs: Vec<f32> = qr.iter().map(|&x| x * this.scale).collect();
            let mut sum = GroupSum::new(1, dv);
            let mut keys = 0;
            for &blk in &kept {
                let r = blk as usize * this.sel.block..((blk as usize + 1) * this.sel.block).min(pos + 1);
                keys += r.len();
                let mut st = KvPartial::new(1, dv);
                dispatch::kv_scan(this.isa, &qs, d, this.caches[c].data(), r, &mut st);
                sum.add(&st);
            }
            let mut row = vec![0f32; dv];
            sum.write(0, &mut row);
            (row, keys, scored)
        };
        let rows: Vec<(Vec<f32>, usize, bool)> = if bn * h > 1 && rayon::current_num_threads() > 1 {
            (0..bn * h).into_par_iter().map(head).collect()
        } else {
            (0..bn * h).map(head).collect()
        };
        let bytes = self.caches[0].bytes() / self.caches[0].slots().max(1);
        self.last_read = 0;
        for (i, (row, keys, scored)) in rows.iter().enumerate() {
            out.slice_mut(s![i / h, i % h, ..])
                .iter_mut()
                .zip(row)
                .for_each(|(o, &x)| *o = x);
            // The kept keys, and the summaries scored (once per query head).
            let blocks = pos / self.sel.block + 1;
            let per_summary = match (self.sel.score, scored) {
                (_, false) => 0,
                (Score::Mean, true) => 1,
                (Score::Bound, true) => 2,
            };
            self.last_read += keys * bytes + blocks * d * 4 * per_summary;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn state_bytes(&self) -> usize {
        let summaries: usize = self
            .summaries
            .iter()
            .map(|s| match s {
                Summary::Mean(m) => m.len() * 4,
                Summary::Bound(lo, hi) => (lo.len() + hi.len()) * 4,
            })
            .sum();
        let sums: usize = self.sums.iter().map(|a| a.len() * 4).sum();
        self.caches.iter().map(KvCache::bytes).sum::<usize>() + summaries + sums
    }

    fn bytes_read(&self) -> usize {
        self.last_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn the_bound_is_quests_formula_and_bounds_every_key_of_its_block() {
        // 3 queries, 10 keys in blocks of 4 (the last one short), d = 5, fixed values.
        let q = Array2::from_shape_fn((3, 5), |(i, c)| ((i * 7 + c * 3) % 11) as f32 - 5.0);
        let k = Array2::from_shape_fn((10, 5), |(j, c)| ((j * 5 + c * 2) % 13) as f32 - 6.0);
        let (mut agg, mut buf) = (vec![0.0; 3], Vec::new());
        let mut parts = (Array2::zeros((0, 0)), Array2::zeros((0, 0)));
        let bound = Summary::of(Score::Bound, k.view(), 4);
        bound.score(q.view(), &mut agg, &mut buf, &mut parts);
        for (c, &a) in agg.iter().enumerate() {
            let keys = c * 4..(c * 4 + 4).min(10);
            let mut formula = f32::NEG_INFINITY;
            for qi in q.outer_iter() {
                let mut sum = 0.0;
                for ch in 0..5 {
                    let (lo, hi) = keys.clone().fold((f32::MAX, f32::MIN), |(l, h), j| {
                        (l.min(k[[j, ch]]), h.max(k[[j, ch]]))
                    });
                    sum += (qi[ch] * lo).max(qi[ch] * hi);
                }
                formula = formula.max(sum);
                for j in keys.clone() {
                    assert!(qi.dot(&k.row(j)) <= sum + 1e-4, "block {c} key {j}");
                }
            }
            assert!((a - formula).abs() < 1e-4, "block {c}: {a} vs {formula}");
        }
        // The mean score: the largest q . mean(K_block) over the queries.
        let mean = Summary::of(Score::Mean, k.view(), 4);
        mean.score(q.view(), &mut agg, &mut buf, &mut parts);
        for (c, &a) in agg.iter().enumerate() {
            let keys = k.slice(s![c * 4..(c * 4 + 4).min(10), ..]);
            let m = keys.mean_axis(ndarray::Axis(0)).unwrap();
            let best = q.outer_iter().map(|qi| qi.dot(&m)).fold(f32::MIN, f32::max);
            assert!((a - best).abs() < 1e-4, "block {c}: {a} vs {best}");
        }
    }
}
