//! `full`: textbook attention that materializes the `n_q x n_kv` score matrix.
//!
//! Per (batch, head): `S = scale * Q K^T` (one sgemm), a numerically stable softmax of each
//! row (row maximum subtracted; masked keys excluded; the exponential vectorized at the
//! widest SIMD width the CPU has), `O = P V` (a second sgemm), then each
//! output row divided by its softmax denominator. Soft-capping, ALiBi and key padding are
//! applied to each score row before its softmax. (batch, head) pairs run in parallel, each
//! with its own score matrix, so peak memory is `4 * n_q * n_kv` bytes per busy thread:
//! this is the O(n^2)-memory baseline every efficient variant is compared with.

use std::fmt;

use ndarray::{ArrayViewMut2, Axis};

use crate::decode::{DecodeOptions, Decoder};
use crate::decode::cached::Cached;
use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::error::Result;
use crate::kernels::dispatch::{self, Isa};
use crate::kernels::gemm::{Backend, gemm_flops, gemm_with, packing_bytes};
use crate::modifier::Feature;
use crate::parallel::for_each_head_with;
use crate::pattern::{Causal, Pattern};
use crate::spec::{ParamInfo, Params, VariantInfo};
use crate::shape::Shape;

/// Dense attention through a materialized score matrix. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Full {
    /// The GEMM of its two products.
    pub gemm: Backend,
}

/// The registry entry of [`Full`].
pub const INFO: VariantInfo = VariantInfo {
    name: "full",
    summary: "materializes the n_q x n_kv scores (two sgemm + softmax); O(n^2) memory",
    time: "O(n_q n_kv d)",
    memory: "O(n_q n_kv) per busy thread: the score matrix",
    params: &[ParamInfo {
        name: "gemm",
        default: "gemm",
        help: "GEMM backend: gemm | matrixmultiply (to compare them)",
    }],
    presets: &[],
    preview: "",
    build,
};

fn build(p: &Params) -> Result<Box<dyn Attention>> {
    let raw = p.raw("gemm");
    let gemm = Backend::from_name(raw).ok_or_else(|| {
        p.invalid(
            "gemm",
            &format!("expected gemm or matrixmultiply, got '{raw}'"),
        )
    })?;
    Ok(Box::new(Full { gemm }))
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The default backend is left out: `full` is `full(gemm=gemm)`.
        let backend = (self.gemm != Backend::default()).then(|| self.gemm.name());
        INFO.write_spec(f, &[backend.as_ref().map(|b| b as &dyn fmt::Display)])
    }
}

impl Attention for Full {
    /// A KV cache scanned by the decode kernel (decoding has no score matrix to form).
    fn decoder(
        &self,
        shape: &Shape,
        opts: &DecodeOptions,
    ) -> Option<Result<Box<dyn Decoder>>> {
        Some(Cached::dense(&self.to_string(), shape, opts).map(|d| Box::new(d) as Box<dyn Decoder>))
    }

    fn name(&self) -> &'static str {
        INFO.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }

    fn supports(&self, _feature: Feature) -> bool {
        true
    }

    fn cost(&self, s: &Shape, _opts: &Options, threads: usize) -> Cost {
        // Causal masking does not save work here: every score is computed.
        let per_head =
            gemm_flops(s.n_q(), s.head_dim(), s.n_kv()) + gemm_flops(s.n_q(), s.n_kv(), s.v_dim());
        let pairs = s.batch() * s.heads();
        let busy = pairs.min(threads) as u64;
        Cost {
            flops: per_head * pairs as f64,
            workspace_bytes: busy
                * ((s.n_q() * s.n_kv() + s.n_q()) as u64 * 4
                    + packing_bytes(self.gemm, s.n_q(), s.head_dim(), s.n_kv()).max(packing_bytes(
                        self.gemm,
                        s.n_q(),
                        s.n_kv(),
                        s.v_dim(),
                    ))),
        }
    }

    fn forward(&self, p: &Call<'_>, out: Out<'_>) -> Result<()> {
        // One score matrix per thread, reused across its heads: a fresh one per head would
        // pay the page faults of n_q * n_kv floats every time.
        for_each_head_with(out.into_view(), Vec::new, |scores, b, h, head_out| {
            head_forward(p, self.gemm, b, h, scores, head_out)
        });
        Ok(())
    }
}

fn head_forward(p: &Call<'_>, backend: Backend, b: usize, h: usize, buf: &mut Vec<f32>, mut out: ArrayViewMut2<f32>) {
    let shape = p.shape();
    let kvh = shape.kv_head_of(h);
    let q = p
        .q()
        .index_axis_move(Axis(0), b)
        .index_axis_move(Axis(0), h);
    let k = p
        .k()
        .index_axis_move(Axis(0), b)
        .index_axis_move(Axis(0), kvh);
    let v = p
        .v()
        .index_axis_move(Axis(0), b)
        .index_axis_move(Axis(0), kvh);
    let g = shape.geometry();

    let len = shape.n_q() * shape.n_kv();
    if buf.len() < len {
        // Zeroed allocations of this size come from fresh pages: no memset is paid.
        *buf = vec![0.0; len];
    }
    let mut scores = ArrayViewMut2::from_shape((shape.n_q(), shape.n_kv()), &mut buf[..len])
        .expect("the buffer holds n_q x n_kv floats");
    gemm_with(backend, p.scale(), &q, &k.t(), 0.0, &mut scores);

    let mut inv_sum = vec![0.0f32; shape.n_q()];
    let isa = Isa::detect();
    let mods = p.score_mods(h);
    let key_len = p.key_len(b);
    let rows = scores
        .as_slice_mut()
        .expect("a standard-layout view")
        .chunks_exact_mut(shape.n_kv());
    for (i, (row, inv)) in rows.zip(&mut inv_sum).enumerate() {
        let allowed = if p.opts().causal {
            Causal.keys_in_row(g, i)
        } else {
            shape.n_kv()
        };
        let (seen, masked) = row.split_at_mut(allowed.min(key_len));
        masked.fill(0.0);
        if seen.is_empty() {
            continue;
        }
        if !mods.is_identity() {
            mods.apply_row(i, 0, seen);
        }
        let m = dispatch::max(isa, seen);
        *inv = 1.0 / dispatch::exp_shifted_sum(isa, seen, m);
    }

    gemm_with(backend, 1.0, &scores.view(), &v, 0.0, &mut out);
    for (mut row, &inv) in out.outer_iter_mut().zip(&inv_sum) {
        row.map_inplace(|x| *x *= inv);
    }
}
