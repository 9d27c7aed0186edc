//! The parts path: a pattern's gathered [`Part`]s (see [`crate::pattern::parts`]) run as
//! ordinary tiled tasks on gathered rows, their softmax states merged exactly per query.
//!
//! Each (batch, head) is one unit of parallel work. Within it, every part's groups are cut
//! into query blocks of `bq` local rows and key ranges of at most [`SPLIT_KEYS`] local keys;
//! each such task accumulates its running maxima `m_t`, sums `l_t` and accumulator `acc_t`
//! over its keys (the tile path's kernels and masks, in the group's local coordinates), and
//! its rows are merged into the head's output: with `M' = max(M, m_t)`,
//! `a = L e^(M - M')`, `b = l_t e^(m_t - M')`, the normalized row becomes
//! `(o a + acc_t e^(m_t - M')) / (a + b)` (weights in `f64`, the row update in `f32`: a convex
//! combination) and `L = a + b`. The parts' pair sets
//! are disjoint, so every allowed pair is counted once.

use ndarray::{ArrayView2, ArrayViewMut2, s};

use super::task::{Task, Workspace};
use super::{SPLIT_KEYS, Tiling, count_tiles, tile_starts, worker_bytes};
use crate::attention::{Call, Cost};
use crate::kernels::dispatch::{self, Isa};
use crate::kernels::gemm::gemm_flops;
use crate::parallel::for_each_head_with;
use crate::pattern::{Mask, Part};
use crate::shape::Shape;

/// Whether a call runs `parts` on the parts path rather than the tile path: the parts
/// exist, no score modifier depends on positions (a gathered group's local positions are not
/// the sequence's), and there are at least as many (batch, head) pairs as threads (the path's
/// unit of parallel work).
pub(crate) fn use_parts(shape: &Shape, alibi: bool, threads: usize) -> bool {
    !alibi && shape.batch() * shape.heads() >= threads
}

/// The per-head merge state and one worker's task scratch.
struct Scratch {
    ws: Workspace,
    /// Each query row's running maximum and (f64) sum over the parts merged so far.
    m: Vec<f32>,
    l: Vec<f64>,
    /// A scattered group's keys and values, gathered once per (head, group).
    kg: Vec<f32>,
    vg: Vec<f32>,
}

/// The most keys of a scattered group gathered into contiguous rows once per (head, group)
/// (the scratch grows with them); a larger group is gathered tile by tile.
const GATHER_KEYS: usize = SPLIT_KEYS;

/// Runs `parts` (the gathered form of the call's mask) into `out` (`[batch, heads, n_q,
/// v_dim]`), every row written.
pub(crate) fn parts_forward(
    p: &Call<'_>,
    parts: &[Part],
    tiling: Tiling,
    isa: Isa,
    out: ndarray::ArrayViewMut4<'_, f32>,
) {
    let shape = p.shape();
    let t = Tiling {
        bq: tiling.bq.min(shape.n_q()),
        bk: tiling.bk.min(shape.n_kv()),
    };
    let scratch = || Scratch {
        ws: Workspace::new(t, shape.head_dim(), shape.v_dim()),
        m: vec![f32::NEG_INFINITY; shape.n_q()],
        l: vec![0.0; shape.n_q()],
        kg: Vec::new(),
        vg: Vec::new(),
    };
    let (d, dv) = (shape.head_dim(), shape.v_dim());
    for_each_head_with(out, scratch, |sc, b, h, mut slab| {
        slab.fill(0.0);
        sc.m.fill(f32::NEG_INFINITY);
        sc.l.fill(0.0);
        for part in parts {
            let mask = Mask::Pattern(part.pattern.as_ref());
            for &group in &part.groups {
                let g = group.geometry();
                let gather = g.n_kv <= GATHER_KEYS && group.keys.as_range(0..g.n_kv).is_none();
                if gather {
                    let kvh = shape.kv_head_of(h);
                    let (k, v) = (p.k(), p.v());
                    let (k, v) = (k.slice(s![b, kvh, .., ..]), v.slice(s![b, kvh, .., ..]));
                    sc.kg.clear();
                    sc.vg.clear();
                    // Exactly the bytes the cost reports, not a doubling's.
                    sc.kg.reserve_exact(g.n_kv * d);
                    sc.vg.reserve_exact(g.n_kv * dv);
                    for j in 0..g.n_kv {
                        let i = group.keys.index(j);
                        extend_row(&mut sc.kg, k.row(i));
                        extend_row(&mut sc.vg, v.row(i));
                    }
                }
                for r0 in (0..g.n_q).step_by(t.bq) {
                    let rows = r0..(r0 + t.bq).min(g.n_q);
                    for keys in key_ranges(mask, g, rows.clone(), t.bk) {
                        let task =
                            Task::gathered(p, mask, group, (b, h, rows.clone()), keys, t.bk, isa);
                        let task = if gather {
                            let k = ArrayView2::from_shape((g.n_kv, d), &sc.kg[..])
                                .expect("the gathered keys are n_kv x d");
                            let v = ArrayView2::from_shape((g.n_kv, dv), &sc.vg[..])
                                .expect("the gathered values are n_kv x d_v");
                            task.with_gathered_kv(k, v)
                        } else {
                            task
                        };
                        task.accumulate(&mut sc.ws);
                        let queries = rows.clone().map(|a| group.queries.index(a));
                        merge(sc, queries, &mut slab);
                    }
                }
            }
        }
    });
}

/// Appends `row` to `dst`: one copy where the row is contiguous (the usual layout), element
/// by element otherwise.
fn extend_row(dst: &mut Vec<f32>, row: ndarray::ArrayView1<'_, f32>) {
    match row.as_slice() {
        Some(r) => dst.extend_from_slice(r),
        None => dst.extend(row.iter()),
    }
}

/// The local key ranges of one query block's tasks: its key tiles (those meeting the
/// mask's key ranges) cut into contiguous groups of at most [`SPLIT_KEYS`] keys.
fn key_ranges(
    mask: Mask<'_>,
    g: crate::pattern::Geometry,
    rows: std::ops::Range<usize>,
    bk: usize,
) -> Vec<std::ops::Range<usize>> {
    let starts = tile_starts(&mask, g, rows, 0..g.n_kv, bk);
    if starts.is_empty() {
        return Vec::new();
    }
    // Whole tiles, so at most one range per tile (a tile may exceed SPLIT_KEYS).
    let splits = (starts.len() * bk)
        .div_ceil(SPLIT_KEYS)
        .clamp(1, starts.len());
    (0..splits)
        .map(|s| {
            let (a, z) = (s * starts.len() / splits, (s + 1) * starts.len() / splits);
            starts[a]..(starts[z - 1] + bk).min(g.n_kv)
        })
        .collect()
}

/// Merges the task state left in `sc.ws` (rows in order of `queries`, the sequence rows of
/// the block) into the head's normalized output rows and running maxima and sums.
fn merge(
    sc: &mut Scratch,
    queries: impl Iterator<Item = usize>,
    slab: &mut ArrayViewMut2<'_, f32>,
) {
    let ldv = dispatch::padded(slab.ncols());
    for (i, q) in queries.enumerate() {
        let (m_t, l_t) = (sc.ws.m[i], sc.ws.l[i] as f64);
        if m_t == f32::NEG_INFINITY || l_t == 0.0 {
            continue; // nothing allowed in this task
        }
        let acc = &sc.ws.acc[i * ldv..];
        let mut o = slab.row_mut(q);
        let m_new = sc.m[q].max(m_t);
        let a = if sc.l[q] > 0.0 {
            sc.l[q] * ((sc.m[q] - m_new) as f64).exp()
        } else {
            0.0
        };
        let w = ((m_t - m_new) as f64).exp();
        let sum = a + l_t * w;
        // A convex combination of the normalized rows: f32 loses nothing the tolerance sees.
        let (keep, add) = ((a / sum) as f32, (w / sum) as f32);
        let blend = |o: &mut f32, x: f32| *o = *o * keep + x * add;
        match o.as_slice_mut() {
            // Contiguous rows (the engine's own output): a loop the compiler vectorizes.
            Some(o) => o.iter_mut().zip(acc).for_each(|(o, &x)| blend(o, x)),
            None => o.iter_mut().zip(acc).for_each(|(o, &x)| blend(o, x)),
        }
        sc.m[q] = m_new;
        sc.l[q] = sum;
    }
}

/// The analytic cost of [`parts_forward`]: the flops of every non-empty tile of every
/// part's groups, and per busy worker its task scratch and the per-row merge state.
pub(crate) fn parts_cost(shape: &Shape, parts: &[Part], tiling: Tiling, threads: usize) -> Cost {
    let mut pairs = 0usize;
    for part in parts {
        let mask = Mask::Pattern(part.pattern.as_ref());
        for group in &part.groups {
            pairs += count_tiles(mask, group.geometry(), tiling).pairs;
        }
    }
    let heads = (shape.batch() * shape.heads()) as f64;
    let flops =
        heads * (gemm_flops(pairs, shape.head_dim(), 1) + gemm_flops(pairs, shape.v_dim(), 1));
    let busy = (shape.batch() * shape.heads()).min(threads) as u64;
    let mut gathered = 0;
    for part in parts {
        for group in &part.groups {
            let n = group.keys.len();
            if n <= GATHER_KEYS && group.keys.as_range(0..n).is_none() {
                gathered = gathered.max(n * (shape.head_dim() + shape.v_dim()) * 4);
            }
        }
    }
    let merge_state = shape.n_q() as u64 * (4 + 8) + gathered as u64;
    Cost {
        flops,
        workspace_bytes: busy * (worker_bytes(tiling, shape) + merge_state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{Geometry, Window};

    #[test]
    fn key_ranges_are_whole_tiles_of_at_most_split_keys_or_one_tile() {
        let w = Window { w: 30000 };
        let mask = Mask::Pattern(&w);
        let g = Geometry::new(40000, 40000);
        // Tiles wider than SPLIT_KEYS: one range per tile, never an empty one.
        let ranges = key_ranges(mask, g, 0..64, 20000);
        assert_eq!(ranges, vec![0..20000, 20000..40000]);
        // Ordinary tiles: contiguous ranges of at most SPLIT_KEYS keys covering the reach.
        let ranges = key_ranges(mask, g, 0..64, 64);
        assert!(
            ranges
                .iter()
                .all(|r| r.len() <= SPLIT_KEYS && r.start % 64 == 0)
        );
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, 30080); // the tile holding key 30063
        assert!(ranges.windows(2).all(|p| p[0].end == p[1].start));
    }
}
