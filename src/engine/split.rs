//! Split-KV: each query block's keys cut into ranges processed in parallel (decoding, and
//! key ranges longer than [`SPLIT_KEYS`]), then merged exactly in `f64`.

use rayon::prelude::*;

use super::task::{Task, Workspace};
use super::{SPLIT_KEYS, Tiling, run_block, tile_starts};
use crate::attention::Call;
use crate::kernels::dispatch::{self, Isa};
use crate::parallel::for_each_row_block;
use crate::pattern::Mask;

/// The tiled engine with each query block's keys cut into ranges processed in parallel: as
/// many as keep the threads busy (`for_threads`) or keep each range's `f32` accumulation within
/// [`SPLIT_KEYS`] of the keys the block actually visits (its key tiles, see
/// [`tile_starts`]), whichever is more; a block that needs one range (a window's, however long
/// the sequence) runs unsplit. The partial maxima, sums and accumulators are merged exactly:
/// `m = max m_s`, `l = sum l_s e^(m_s - m)`, `acc = sum acc_s e^(m_s - m)`.
pub(super) fn split_kv_forward(
    p: &Call<'_>,
    mask: Mask<'_>,
    tiling: Tiling,
    isa: Isa,
    bf16: Option<&super::Bf16Kv>,
    for_threads: usize,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    let shape = p.shape();
    let g = shape.geometry();
    let t = Tiling {
        bq: tiling.bq.min(shape.n_q()),
        bk: tiling.bk.min(shape.n_kv()),
    };
    let workspace = || Workspace::new(t, shape.head_dim(), shape.v_dim());
    for_each_row_block(out, tiling.bq, workspace, |ws, b, h, r0, mut block_out| {
        let rows = block_out.nrows();
        let starts = tile_starts(&mask, g, r0..r0 + rows, 0..shape.n_kv(), tiling.bk);
        let splits = for_threads
            .max((starts.len() * tiling.bk).div_ceil(SPLIT_KEYS))
            .min(starts.len());
        if splits <= 1 {
            run_block(p, mask, (tiling.bk, isa, bf16), ws, (b, h, r0), block_out);
            return;
        }
        let ldv = dispatch::padded(shape.v_dim());
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..splits)
            .into_par_iter()
            .map_init(workspace, |ws, s| {
                // Contiguous groups of the block's tiles; a task re-derives the same tiles
                // from its range (the ranges start on the same grid of tiles).
                let (a, z) = (s * starts.len() / splits, (s + 1) * starts.len() / splits);
                let k0 = starts[a];
                let k1 = (starts[z - 1] + tiling.bk).min(shape.n_kv());
                let task = Task::new(p, mask, (b, h, r0..r0 + rows), k0..k1, tiling.bk, isa);
                let task = match bf16 {
                    Some(kv) => task.with_bf16(kv.head(b, shape.kv_head_of(h))),
                    None => task,
                };
                task.accumulate(ws);
                (
                    ws.m[..rows].to_vec(),
                    ws.l[..rows].to_vec(),
                    ws.acc[..rows * ldv].to_vec(),
                )
            })
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
    });
}
