//! The tiled engine: exact softmax attention restricted to any [`Mask`], on which `flash`
//! and every pattern variant run.
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
//! 4. accumulates `acc += P V_tile` (SIMD microkernel).
//!
//! Keys past a batch element's key length (key padding) are never visited. The output row is
//! `acc / l` (zero when the row had no allowed key). The n x n matrix is never formed: a
//! task's workspace is `(bq * bk + bq * d_v + 2 * bq)` floats whatever `n`. This is the
//! algorithm of FlashAttention (Dao et al. 2022), run on the CPU.
//!
//! - this file: [`Tiling`], [`tiled_cost`], [`tiled_forward`] and how keys are split;
//! - `task`: one query block (its `Workspace` and tile loop), the
//!   single-query (decoding) path, and the engine's key-major causal mask;
//! - `split`: key ranges processed in parallel and merged exactly in `f64`;
//! - `parts`: a pattern's gathered [`Part`](crate::pattern::Part)s (strided's stripes per
//!   residue class, dilated's steps, fixed's summary columns) run as dense tasks on gathered
//!   rows and merged per query, where the pattern offers them.

mod parts;
mod split;
mod task;

use crate::attention::{Call, Cost, Options};
use crate::kernels::dispatch::{self, Isa};
use crate::kernels::gemm::gemm_flops;
use crate::parallel::for_each_row_block;
use crate::pattern::{Mask, Pattern, Tile};
use crate::shape::Shape;

use split::split_kv_forward;
pub(crate) use task::Bf16Kv;
use task::{Task, Workspace};

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
    /// is the 4 query vectors of the AVX-512 panel's 6 x 4 register block; its 128 x 64 score tile
    /// (32 KiB) is L1-sized, and the K and V tiles (32 KiB each at d = 64) stay in L2.
    fn default() -> Self {
        Self { bq: 64, bk: 128 }
    }
}

/// The starts of the key tiles of `keys` (steps of `bk` from `keys.start`) that meet the
/// mask's [`key_ranges`](Pattern::key_ranges) for the query rows `rows`, in order: the only
/// tiles the engine classifies, so the work per query block follows the pattern's reach
/// rather than the sequence length.
pub(crate) fn tile_starts(
    mask: &Mask<'_>,
    g: crate::pattern::Geometry,
    rows: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
    bk: usize,
) -> Vec<usize> {
    let mut starts = Vec::new();
    // The first tile start not yet emitted (ranges are sorted; several may meet one tile).
    let mut next = keys.start;
    for r in mask.key_ranges(g, rows) {
        let (lo, hi) = (r.start.max(keys.start), r.end.min(keys.end));
        if lo >= hi {
            continue;
        }
        let mut c0 = (keys.start + (lo - keys.start) / bk * bk).max(next);
        while c0 < hi {
            starts.push(c0);
            c0 += bk;
        }
        next = next.max(c0);
    }
    starts
}

/// The analytic cost of [`tiled_forward`] under `mask` (on the parts path where it takes it):
/// the flops of every non-empty tile and the workspace of the busy workers.
pub fn tiled_cost(
    shape: &Shape,
    opts: &Options,
    mask: Mask<'_>,
    tiling: Tiling,
    threads: usize,
) -> Cost {
    let g = shape.geometry();
    if parts::use_parts(shape, opts.alibi, threads)
        && let Some(parts) = mask.parts(g, opts.causal)
    {
        let mut cost = parts::parts_cost(shape, &parts, tiling, threads);
        cost.workspace_bytes += mask.stored_bytes(g);
        return cost;
    }
    let TileCount {
        pairs,
        blocks,
        most_tiles,
    } = count_tiles(mask, g, tiling);
    let heads = (shape.batch() * shape.heads()) as f64;
    let flops =
        heads * (gemm_flops(pairs, shape.head_dim(), 1) + gemm_flops(pairs, shape.v_dim(), 1));
    let tasks = shape.batch() * shape.heads() * blocks;
    let busy = tasks.min(threads) as u64;
    // As split_kv_forward: the most ranges any block is cut into.
    let splits = if kv_splits(shape, tiling, threads) > 1 {
        splits_for_threads(shape, tiling, threads)
            .max((most_tiles * tiling.bk).div_ceil(SPLIT_KEYS))
            .min(most_tiles)
            .max(1)
    } else {
        1
    };
    // Split keys: each block in flight also keeps every range's maxima, sums and
    // accumulator, and an f64 row for the merge.
    let parts = if splits > 1 {
        let rows = tiling.bq.min(shape.n_q());
        busy * (splits * rows * (dispatch::padded(shape.v_dim()) + 2) * 4 + shape.v_dim() * 8)
            as u64
    } else {
        0
    };
    Cost {
        flops,
        workspace_bytes: busy.min(tasks as u64 * splits as u64) * worker_bytes(tiling, shape)
            + parts
            + mask.stored_bytes(g),
    }
}

/// What the engine computes under a mask on one (batch, head) of geometry `g`.
struct TileCount {
    /// The pairs of every non-empty tile (masked ones included).
    pairs: usize,
    /// The query blocks.
    blocks: usize,
    /// The most key tiles any query block visits.
    most_tiles: usize,
}

fn count_tiles(mask: Mask<'_>, g: crate::pattern::Geometry, tiling: Tiling) -> TileCount {
    let mut count = TileCount {
        pairs: 0,
        blocks: 0,
        most_tiles: 0,
    };
    for r0 in (0..g.n_q).step_by(tiling.bq) {
        let rows = r0..(r0 + tiling.bq).min(g.n_q);
        count.blocks += 1;
        let starts = tile_starts(&mask, g, rows.clone(), 0..g.n_kv, tiling.bk);
        count.most_tiles = count.most_tiles.max(starts.len());
        for c0 in starts {
            let cols = c0..(c0 + tiling.bk).min(g.n_kv);
            if mask.classify(g, rows.clone(), cols.clone()) != Tile::Empty {
                count.pairs += rows.len() * cols.len();
            }
        }
    }
    count
}

/// One worker's scratch ([`Workspace`]).
fn worker_bytes(t: Tiling, s: &Shape) -> u64 {
    let t = Tiling {
        bq: t.bq.min(s.n_q()),
        bk: t.bk.min(s.n_kv()),
    };
    Workspace::bytes(t, s.head_dim(), s.v_dim())
}

/// Keys a task accumulates in `f32` at most before its partial result is merged (in `f64`)
/// with the others'. Over 262144 keys of near-uniform attention a single `f32` accumulation
/// reached a relative error of 8.6e-6, close to the 1e-5 an exact variant is held to.
pub const SPLIT_KEYS: usize = 16384;

/// Into how many key ranges each query block's keys are cut: enough for every thread to be
/// busy when there are fewer query blocks than threads (decoding, b = h = 1), and ranges of
/// at most [`SPLIT_KEYS`] keys; always whole tiles, so at most one range per tile.
fn kv_splits(shape: &Shape, tiling: Tiling, threads: usize) -> usize {
    let for_accuracy = shape.n_kv().div_ceil(SPLIT_KEYS);
    splits_for_threads(shape, tiling, threads)
        .max(for_accuracy)
        .min(shape.n_kv().div_ceil(tiling.bk))
}

/// The key ranges per query block that keep every thread busy when there are fewer query
/// blocks than threads (decoding, b = h = 1); 1 otherwise.
fn splits_for_threads(shape: &Shape, tiling: Tiling, threads: usize) -> usize {
    let tasks = shape.batch() * shape.heads() * shape.n_q().div_ceil(tiling.bq);
    if tasks < threads {
        (2 * threads).div_ceil(tasks)
    } else {
        1
    }
}

/// Runs exact softmax attention restricted to `mask` on the tiled engine, writing every row
/// of `out` (`[batch, heads, n_q, v_dim]`).
pub fn tiled_forward(
    p: &Call<'_>,
    mask: Mask<'_>,
    tiling: Tiling,
    isa: Isa,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    forward_with(p, mask, tiling, isa, None, out);
}

/// [`tiled_forward`] in `bf16`: Q, K, V and every tile's probabilities rounded to `bfloat16`,
/// both products accumulated in `f32` (with `vdpbf16ps` where the CPU has AVX512-BF16), the
/// softmax and the output in `f32`. K and V are converted once per call ([`bf16_bytes`]).
/// Always on the tile path (a pattern's gathered parts are `f32` only).
pub fn tiled_forward_bf16(
    p: &Call<'_>,
    mask: Mask<'_>,
    tiling: Tiling,
    isa: Isa,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    let kv = Bf16Kv::new(p);
    forward_with(p, mask, tiling, isa, Some(&kv), out);
}

/// The bytes [`tiled_forward_bf16`] adds to [`tiled_cost`]: the converted keys and values and
/// each busy worker's pair-interleaved buffers.
pub fn bf16_bytes(shape: &Shape, tiling: Tiling, threads: usize) -> u64 {
    let t = Tiling {
        bq: tiling.bq.min(shape.n_q()),
        bk: tiling.bk.min(shape.n_kv()),
    };
    let tasks = shape.batch() * shape.heads() * shape.n_q().div_ceil(t.bq);
    // Split keys run up to two workspaces per thread (the block's and its ranges').
    let workers = 2 * tasks.min(threads) as u64;
    Bf16Kv::bytes(shape) + workers * Workspace::bf16_bytes(t, shape.head_dim())
}

/// The engine's forward, in `f32` or (with `bf16`) on the converted keys and values.
fn forward_with(
    p: &Call<'_>,
    mask: Mask<'_>,
    tiling: Tiling,
    isa: Isa,
    bf16: Option<&Bf16Kv>,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    let shape = p.shape();
    mask.prepare(shape.geometry());
    if bf16.is_none()
        && parts::use_parts(&shape, p.opts().alibi, p.threads())
        && let Some(parts) = mask.parts(shape.geometry(), p.opts().causal)
    {
        parts::parts_forward(p, &parts, tiling, isa, out);
        return;
    }
    if kv_splits(&shape, tiling, p.threads()) > 1 {
        let for_threads = splits_for_threads(&shape, tiling, p.threads());
        split_kv_forward(p, mask, tiling, isa, bf16, for_threads, out);
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
            run_block(p, mask, (tiling.bk, isa, bf16), ws, (b, h, r0), block_out)
        },
    );
}

/// One query block of (batch `b`, head `h`) from row `r0` over every key, unsplit, into its
/// output rows.
fn run_block(
    p: &Call<'_>,
    mask: Mask<'_>,
    (bk, isa, bf16): (usize, Isa, Option<&Bf16Kv>),
    ws: &mut Workspace,
    (b, h, r0): (usize, usize, usize),
    block_out: ndarray::ArrayViewMut2<'_, f32>,
) {
    let rows = r0..r0 + block_out.nrows();
    let task = Task::new(p, mask, (b, h, rows), 0..p.shape().n_kv(), bk, isa);
    let task = match bf16 {
        Some(kv) => task.with_bf16(kv.head(b, p.shape().kv_head_of(h))),
        None => task,
    };
    task.run(ws, block_out);
}

/// One worker's scratch for [`attend_rows`], made once per worker of a variant that runs its
/// own query blocks on the engine (block selection).
pub(crate) struct RowsScratch(Workspace);

impl RowsScratch {
    /// Scratch for blocks of at most `tiling.bq` rows and key tiles of `tiling.bk` keys
    /// (both capped at the problem's sizes, as [`tiled_forward`] does).
    pub(crate) fn new(tiling: Tiling, shape: &Shape) -> Self {
        let t = Tiling {
            bq: tiling.bq.min(shape.n_q()),
            bk: tiling.bk.min(shape.n_kv()),
        };
        Self(Workspace::new(t, shape.head_dim(), shape.v_dim()))
    }

    /// The bytes of one [`RowsScratch::new`].
    pub(crate) fn bytes(tiling: Tiling, shape: &Shape) -> u64 {
        worker_bytes(tiling, shape)
    }
}

/// Exact softmax attention of the query rows `rows` of (batch `b`, head `h`) over the keys
/// `mask` admits, visiting key tiles of `bk` from key 0 that meet its
/// [`key_ranges`](Pattern::key_ranges), into `out` (`rows.len()` rows): one engine task,
/// unsplit, for a variant whose mask differs per query block. The keys a mask admits for one
/// block should number at most [`SPLIT_KEYS`] (a single `f32` accumulation).
pub(crate) fn attend_rows(
    p: &Call<'_>,
    mask: Mask<'_>,
    (b, h, r0): (usize, usize, usize),
    bk: usize,
    isa: Isa,
    ws: &mut RowsScratch,
    out: ndarray::ArrayViewMut2<'_, f32>,
) {
    run_block(
        p,
        mask,
        (bk.min(p.shape().n_kv()), isa, None),
        &mut ws.0,
        (b, h, r0),
        out,
    );
}

#[cfg(test)]
mod tile_tests {
    use super::*;
    use crate::pattern::{Geometry, Window};

    #[test]
    fn tile_starts_follow_the_key_ranges_on_the_task_grid() {
        let g = Geometry::new(200, 200);
        // A window of 3 around rows 100..104: keys 97..107, the tiles of 16 from 0 that meet
        // them, each once.
        let w = Window { w: 3 };
        let mask = Mask::new(Some(&w), false);
        assert_eq!(tile_starts(&mask, g, 100..104, 0..200, 16), vec![96]);
        assert_eq!(tile_starts(&mask, g, 100..120, 0..200, 16), vec![96, 112]);
        // A split task's keys start its own grid.
        assert_eq!(
            tile_starts(&mask, g, 100..120, 90..200, 16),
            vec![90, 106, 122]
        );
        // Dense: every tile.
        let all: Vec<usize> = (0..200).step_by(16).collect();
        assert_eq!(tile_starts(&Mask::Dense, g, 0..4, 0..200, 16), all);
        // Causal, first rows: only the first tile.
        assert_eq!(tile_starts(&Mask::Causal, g, 0..4, 0..200, 16), vec![0]);
    }
}
