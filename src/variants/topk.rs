//! `topk(k)`: exact softmax over each query's `k` highest-scoring keys.
//!
//! It computes every score (one GEMM per block of 64 queries, against the keys the block may
//! attend), keeps each row's `k` largest (`select_nth_unstable`, O(n) per row, ties to the
//! lower key), and attends exactly over them. So it is *not* fast, O(n^2 d) like `full`: it is
//! the oracle of k-sparse selection, the smallest error any method that attends `k` keys per
//! query can reach (for the softmax mass it keeps; it is not always the smallest output
//! error), the floor against which block selection (`blocktopk`) at the same key count is
//! measured. Its own check is the f64 oracle under the keys it chose.

use std::fmt;

use ndarray::{ArrayViewMut2, Axis, s};

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::error::Result;
use crate::kernels::gemm::{gemm, gemm_flops};
use crate::modifier::Feature;
use crate::parallel::for_each_head_with;
use crate::pattern::{Causal, Pattern};
use crate::shape::Shape;
use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::shared::{allowed_keys, attend_chosen, head, top_k};

/// `topk(k=256)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "topk",
    summary: "exact softmax over each query's k highest-scoring keys (all scores computed: the oracle of k-sparse selection, not fast)",
    time: "O(n^2 d): every score, then O(n) selection per query",
    memory: "O(n) per busy thread: a block of score rows",
    params: &[ParamInfo {
        name: "k",
        default: "256",
        help: "keys per query (at least 1); all of them where fewer are allowed",
    }],
    presets: &[],
    preview: "topk(k=8)",
    build: |p| Ok(Box::new(TopK { k: p.positive("k")? })),
};

/// Exact softmax attention over each query's `k` best keys. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    /// Keys per query.
    pub k: usize,
}

/// Query rows per score block (and per parallel task).
const BLOCK: usize = 64;

impl fmt::Display for TopK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.k)])
    }
}

/// One worker's scratch: a block's score rows and a row's key indices.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    idx: Vec<u32>,
}

impl TopK {
    /// The scaled, modified scores of the block of rows `r0..r0 + rows` of (b, h) against the
    /// keys its last row may attend (`[rows, keys]` in `buf`), and that key count. The forward
    /// and [`chosen`](Attention::chosen) both take their scores from here, so they agree.
    fn block_scores<'b>(
        call: &Call<'_>,
        (b, h, r0, rows): (usize, usize, usize, usize),
        buf: &'b mut Vec<f32>,
    ) -> (ArrayViewMut2<'b, f32>, usize) {
        let (q, k, _) = head(call, b, h);
        let keys = allowed_keys(call, b, r0 + rows - 1);
        if buf.len() < rows * keys {
            // Once, at the widest a block can be: growing with the causal blocks would hold
            // the old and the new buffer at each step.
            *buf = vec![0.0; BLOCK.min(call.shape().n_q()) * call.shape().n_kv()];
        }
        let mut scores = ArrayViewMut2::from_shape((rows, keys), &mut buf[..rows * keys])
            .expect("the buffer holds rows x keys floats");
        gemm(
            call.scale(),
            &q.slice(s![r0..r0 + rows, ..]),
            &k.slice(s![..keys, ..]).t(),
            0.0,
            &mut scores,
        );
        let mods = call.score_mods(h);
        if !mods.is_identity() {
            for (r, mut row) in scores.outer_iter_mut().enumerate() {
                let row = row.as_slice_mut().expect("a standard-layout view");
                mods.apply_row(r0 + r, 0, row);
            }
        }
        (scores, keys)
    }
}

impl Attention for TopK {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Selected
    }

    /// Selection runs on the modified scores, so every modifier and key padding apply.
    fn supports(&self, _feature: Feature) -> bool {
        true
    }

    fn cost(&self, s: &Shape, opts: &Options, threads: usize) -> Cost {
        let g = s.geometry();
        let keys_of = |i: usize| {
            if opts.causal {
                Causal.keys_in_row(g, i)
            } else {
                s.n_kv()
            }
        };
        let mut per_head = 0.0;
        for r0 in (0..s.n_q()).step_by(BLOCK) {
            let rows = BLOCK.min(s.n_q() - r0);
            per_head += gemm_flops(rows, s.head_dim(), keys_of(r0 + rows - 1));
            per_head += (r0..r0 + rows)
                .map(|i| gemm_flops(1, self.k.min(keys_of(i)), s.v_dim()))
                .sum::<f64>();
        }
        let heads = s.batch() * s.heads();
        let busy = heads.min(threads) as u64;
        let rows = BLOCK.min(s.n_q());
        Cost {
            flops: per_head * heads as f64,
            workspace_bytes: busy
                * ((rows * s.n_kv() + s.n_kv()) as u64 * 4),
        }
    }

    fn forward(&self, call: &Call<'_>, out: Out<'_>) -> Result<()> {
        // One scratch per thread for a run of heads, their blocks in turn: per-block tasks
        // would keep several blocks of score rows alive per thread (rayon's work stealing).
        for_each_head_with(out.into_view(), Scratch::default, |ws, b, h, mut head_out| {
            let (_, _, v) = head(call, b, h);
            let Scratch { scores, idx } = ws;
            for (blk, mut block_out) in head_out.axis_chunks_iter_mut(Axis(0), BLOCK).enumerate() {
                let (r0, rows) = (blk * BLOCK, block_out.nrows());
                let (scores, _) = Self::block_scores(call, (b, h, r0, rows), scores);
                for (r, mut out_row) in block_out.outer_iter_mut().enumerate() {
                    let row = scores.row(r);
                    let row = &row.as_slice().expect("a standard-layout view")
                        [..allowed_keys(call, b, r0 + r)];
                    top_k(row, self.k, idx);
                    match out_row.as_slice_mut() {
                        Some(o) => attend_chosen(row, idx, &v, o),
                        None => {
                            // An output of any strides: through a contiguous row.
                            let mut o = vec![0.0; out_row.len()];
                            attend_chosen(row, idx, &v, &mut o);
                            out_row.iter_mut().zip(o).for_each(|(x, y)| *x = y);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    fn chosen(&self, call: &Call<'_>, b: usize, h: usize, rows: &[usize]) -> Option<Vec<Vec<u32>>> {
        let mut buf = Vec::new();
        let mut idx = Vec::new();
        let mut held: Option<usize> = None;
        let n_q = call.shape().n_q();
        let mut out = Vec::with_capacity(rows.len());
        let mut scores_of_block: Option<(ndarray::Array2<f32>, usize)> = None;
        for &i in rows {
            // The block the forward computes row i in, with the same scores.
            let r0 = i / BLOCK * BLOCK;
            if held != Some(r0) {
                let block_rows = BLOCK.min(n_q - r0);
                let (scores, keys) = Self::block_scores(call, (b, h, r0, block_rows), &mut buf);
                scores_of_block = Some((scores.to_owned(), keys));
                held = Some(r0);
            }
            let (scores, _) = scores_of_block.as_ref().expect("computed above");
            let row = scores.row(i - r0);
            let row = &row.as_slice().expect("a standard-layout array")[..allowed_keys(call, b, i)];
            top_k(row, self.k, &mut idx);
            out.push(idx.clone());
        }
        Some(out)
    }
}
