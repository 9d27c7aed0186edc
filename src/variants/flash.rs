//! `flash`: exact tiled attention with an online softmax, and the tiled engine that runs any
//! [`Pattern`].
//!
//! The query rows of each (batch, head) are cut into blocks of `bq`; each block is one task,
//! and tasks run in parallel. A task walks the keys in tiles of `bk` and, per tile:
//!
//! 1. asks the mask to [classify](Pattern::classify) the `bq x bk` tile: empty tiles are
//!    skipped, full tiles run unmasked, partial tiles set disallowed scores to `-inf`;
//! 2. computes the tile's scores `S = scale * Q_blk K_tile^T` (sgemm);
//! 3. updates each row's running maximum `m` and running sum `l` (online softmax): with
//!    `m' = max(m, max S_row)`, the accumulator row and `l` are rescaled by `e^(m - m')`, and
//!    `P = e^(S - m')` is added to `l`;
//! 4. accumulates `acc += P V_tile` (sgemm).
//!
//! The output row is `acc / l` (zero when the row had no allowed key). The n x n matrix is
//! never formed: a task's workspace is `(bq * bk + bq * d_v + 2 * bq)` floats whatever `n`.
//! This is the algorithm of FlashAttention (Dao et al. 2022), run on the CPU.

use std::fmt;

use ndarray::{ArrayView2, ArrayViewMut2, Axis, s};

use crate::attention::{Attention, Cost, Fidelity, Options, Problem};
use crate::error::Result;
use crate::kernels::exp;
use crate::kernels::gemm::{gemm, gemm_flops, packing_bytes};
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
    /// `bq = 64, bk = 256`, the fastest of the sizes measured at `d = 64` on a 2-core
    /// AVX-512 machine (see the `tiling` example).
    fn default() -> Self {
        Self { bq: 64, bk: 256 }
    }
}

/// Exact dense attention on the tiled engine. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flash {
    /// The block sizes.
    pub tiling: Tiling,
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
            default: "256",
            help: "keys per tile",
        },
    ],
    presets: &[],
    preview: "",
    build,
};

fn build(p: &Params) -> Result<Box<dyn Attention>> {
    Ok(Box::new(Flash {
        tiling: Tiling {
            bq: p.positive("bq")?,
            bk: p.positive("bk")?,
        },
    }))
}

impl fmt::Display for Flash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flash(bq={},bk={})", self.tiling.bq, self.tiling.bk)
    }
}

impl Attention for Flash {
    fn name(&self) -> &'static str {
        "flash"
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }

    fn cost(&self, shape: &Shape, opts: &Options) -> Cost {
        tiled_cost(shape, &Mask::new(None, opts.causal), self.tiling)
    }

    fn forward(&self, p: &Problem<'_>, out: ndarray::ArrayViewMut4<'_, f32>) -> Result<()> {
        tiled_forward(p, &p.mask(None), self.tiling, out);
        Ok(())
    }
}

/// The analytic cost of [`tiled_forward`] under `mask`: the flops of every non-empty tile and
/// the workspace of the busy workers.
pub fn tiled_cost(shape: &Shape, mask: &dyn Pattern, tiling: Tiling) -> Cost {
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
    let heads = (shape.batch * shape.heads) as f64;
    let flops = heads * (gemm_flops(pairs, shape.head_dim, 1) + gemm_flops(pairs, shape.v_dim, 1));
    let tasks = shape.batch * shape.heads * blocks;
    let busy = tasks.min(rayon::current_num_threads()) as u64;
    Cost {
        flops,
        workspace_bytes: busy * worker_bytes(tiling, shape),
    }
}

/// One worker's scratch plus the larger of its two GEMMs' packing buffers.
fn worker_bytes(t: Tiling, s: &Shape) -> u64 {
    let (bq, bk) = (t.bq.min(s.n_q), t.bk.min(s.n_kv));
    let floats = t.bq * t.bk + t.bq * s.v_dim + 2 * t.bq;
    let packing = packing_bytes(bq, s.head_dim, bk).max(packing_bytes(bq, bk, s.v_dim));
    floats as u64 * 4 + packing
}

/// Runs exact softmax attention restricted to `mask` on the tiled engine, writing every row
/// of `out` (`[batch, heads, n_q, v_dim]`).
pub fn tiled_forward(
    p: &Problem<'_>,
    mask: &dyn Pattern,
    tiling: Tiling,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    let shape = p.shape;
    for_each_row_block(
        out,
        tiling.bq,
        || Workspace::new(tiling, shape.v_dim),
        |ws, b, h, r0, block_out| {
            let kvh = shape.kv_head_of(h);
            let rows = block_out.nrows();
            let task = Task {
                q: p.q.slice(s![b, h, r0..r0 + rows, ..]),
                k: p.k.index_axis(Axis(0), b).index_axis_move(Axis(0), kvh),
                v: p.v.index_axis(Axis(0), b).index_axis_move(Axis(0), kvh),
                r0,
                g: shape.geometry(),
                scale: p.scale(),
                mask,
                bk: tiling.bk,
            };
            task.run(ws, block_out);
        },
    );
}

/// Per-worker scratch: one score tile, one accumulator block, and the running max and sum.
struct Workspace {
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Workspace {
    fn new(t: Tiling, v_dim: usize) -> Self {
        Self {
            scores: vec![0.0; t.bq * t.bk],
            acc: vec![0.0; t.bq * v_dim],
            max: vec![0.0; t.bq],
            sum: vec![0.0; t.bq],
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
}

impl Task<'_> {
    fn run(&self, ws: &mut Workspace, mut out: ArrayViewMut2<f32>) {
        let rows = self.q.nrows();
        let dv = self.v.ncols();
        let row_range = self.r0..self.r0 + rows;
        let max = &mut ws.max[..rows];
        let sum = &mut ws.sum[..rows];
        max.fill(f32::NEG_INFINITY);
        sum.fill(0.0);
        let mut acc = ArrayViewMut2::from_shape((rows, dv), &mut ws.acc[..rows * dv])
            .expect("workspace holds bq x d_v");
        acc.fill(0.0);

        for c0 in (0..self.g.n_kv).step_by(self.bk) {
            let c1 = (c0 + self.bk).min(self.g.n_kv);
            let cols = c1 - c0;
            let tile = self.mask.classify(self.g, row_range.clone(), c0..c1);
            if tile == Tile::Empty {
                continue;
            }
            let scores = &mut ws.scores[..rows * cols];
            let mut s_view = ArrayViewMut2::from_shape((rows, cols), &mut *scores)
                .expect("workspace holds bq x bk");
            gemm(
                self.scale,
                &self.q,
                &self.k.slice(s![c0..c1, ..]).t(),
                0.0,
                &mut s_view,
            );
            let score_rows = scores.chunks_exact_mut(cols);
            for (i, row) in score_rows.enumerate() {
                if tile == Tile::Partial {
                    self.mask.mask_row(self.g, self.r0 + i, c0, row);
                }
                let tile_max = exp::max(row);
                if tile_max == f32::NEG_INFINITY {
                    // No allowed key for this row in this tile: contribute nothing.
                    row.fill(0.0);
                    continue;
                }
                let m_new = max[i].max(tile_max);
                let rescale = exp::exp(max[i] - m_new);
                sum[i] = sum[i] * rescale + exp::exp_shifted_sum(row, m_new);
                max[i] = m_new;
                if rescale != 1.0 {
                    acc.row_mut(i).map_inplace(|a| *a *= rescale);
                }
            }
            let p = ArrayView2::from_shape((rows, cols), &ws.scores[..rows * cols])
                .expect("workspace holds bq x bk");
            gemm(1.0, &p, &self.v.slice(s![c0..c1, ..]), 1.0, &mut acc);
        }

        for ((mut o, a), &l) in out.outer_iter_mut().zip(acc.outer_iter()).zip(sum.iter()) {
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            o.zip_mut_with(&a, |o, &a| *o = a * inv);
        }
    }
}
