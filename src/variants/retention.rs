//! `retention(gamma, phi, form, chunk)`: RetNet's retention (Sun et al. 2023), decayed linear
//! attention. Query `i` at position `p` reads every earlier key `j` with weight
//! `gamma^(p - j) phi(q_i) . phi(k_j)`:
//! - `phi=none` (RetNet): `o_i = sum_j gamma^(p-j) (s q_i . k_j) v_j`, with the score scale
//!   `s`, unnormalised (RetNet normalises per head after it, outside attention);
//! - `phi=elu1 | relu`: the same weights divided by their sum (decayed linear attention).
//!
//! One model, three forms that compute the same thing:
//! - `parallel`: the masked, decayed score matrix `(Q K^T) * D`, `D_ij = gamma^(p_i - j)`
//!   for `j <= p_i`, then its product with V: O(n^2 d);
//! - `chunked` (the default): chunks of `c` rows, the state `S = sum gamma^(.) phi(k) v^T`
//!   carried between chunks and a masked `c x c` product within one: O(n c d + n d d_v);
//! - `recurrent`: `S_t = gamma S_{t-1} + phi(k_t) v_t^T`, one token at a time, the decoder of
//!   [`crate::decode::recurrent::Decayed`] (keys before the first query enter its state in
//!   chunks): O(d d_v) per token.
//!
//! `gamma=retnet` gives head `h` RetNet's `1 - 2^(-5 - h)`; a number gives every head that
//! decay. Retention is a different model from softmax attention (an other-kernel variant),
//! and causal by construction: it refuses bidirectional calls.

use std::fmt;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::decode::recurrent::{Decayed, retnet_gamma};
use crate::decode::{DecodeOptions, Decoder};
use crate::error::Result;
use crate::feature::{Elu1, FeatureMap, Relu};
use crate::kernels::gemm::{gemm, gemm_flops};
use crate::parallel::for_each_head;
use crate::shape::Shape;
use crate::spec::{ParamInfo, Params, VariantInfo};

/// The decay of every head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gamma {
    /// RetNet's per-head schedule, [`retnet_gamma`].
    RetNet,
    /// One decay in `(0, 1]` for every head.
    Fixed(f64),
}

/// Which computation of the same model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The decayed score matrix.
    Parallel,
    /// Chunks with a carried state.
    Chunked,
    /// One token at a time.
    Recurrent,
}

/// Retention. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Retention {
    gamma: Gamma,
    phi: Option<&'static str>,
    form: Form,
    chunk: usize,
}

/// `retention(gamma=retnet,phi=none,form=chunked,chunk=64)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "retention",
    summary: "RetNet retention: decayed linear attention sum_j gamma^(i-j) phi(q).phi(k) v_j; causal",
    time: "O(n c d + n d^2) chunked, O(n^2 d) parallel, O(d^2) per token recurrent",
    memory: "O(c^2 + d^2)",
    params: &[
        ParamInfo {
            name: "gamma",
            default: "retnet",
            help: "decay: retnet (head h: 1 - 2^(-5-h)) or one number in (0, 1]",
        },
        ParamInfo {
            name: "phi",
            default: "none",
            help: "feature map: none (RetNet, unnormalised) | elu1 | relu (normalised)",
        },
        ParamInfo {
            name: "form",
            default: "chunked",
            help: "parallel | chunked | recurrent (the same model)",
        },
        ParamInfo {
            name: "chunk",
            default: "64",
            help: "rows per chunk (form=chunked)",
        },
    ],
    presets: &["retention(phi=none)", "retention(phi=elu1)"],
    preview: "",
    build,
};

fn build(p: &Params) -> Result<Box<dyn Attention>> {
    let gamma = match p.raw("gamma") {
        "retnet" => Gamma::RetNet,
        text => match text.parse::<f64>() {
            Ok(g) if g > 0.0 && g <= 1.0 => Gamma::Fixed(g),
            _ => return Err(p.invalid("gamma", "expected retnet or a number in (0, 1]")),
        },
    };
    let phi = match p.raw("phi") {
        "none" => None,
        "elu1" => Some("elu1"),
        "relu" => Some("relu"),
        other => {
            return Err(p.invalid(
                "phi",
                &format!("expected none, elu1 or relu, got '{other}'"),
            ));
        }
    };
    let form = match p.raw("form") {
        "parallel" => Form::Parallel,
        "chunked" => Form::Chunked,
        "recurrent" => Form::Recurrent,
        other => {
            return Err(p.invalid(
                "form",
                &format!("expected parallel, chunked or recurrent, got '{other}'"),
            ));
        }
    };
    Ok(Box::new(Retention {
        gamma,
        phi,
        form,
        chunk: p.positive("chunk")?,
    }))
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gamma = match self.gamma {
            Gamma::RetNet => "retnet".to_string(),
            Gamma::Fixed(g) => g.to_string(),
        };
        let form = match self.form {
            Form::Parallel => "parallel",
            Form::Chunked => "chunked",
            Form::Recurrent => "recurrent",
        };
        INFO.write_spec(
            f,
            &[
                Some(&gamma),
                Some(&self.phi.unwrap_or("none")),
                Some(&form),
                Some(&self.chunk),
            ],
        )
    }
}

impl Retention {
    /// The decay of query head `h`.
    pub fn gamma(&self, h: usize) -> f64 {
        match self.gamma {
            Gamma::RetNet => retnet_gamma(h),
            Gamma::Fixed(g) => g,
        }
    }

    fn map(&self) -> Option<Arc<dyn FeatureMap>> {
        match self.phi {
            Some("elu1") => Some(Arc::new(Elu1)),
            Some(_) => Some(Arc::new(Relu)),
            None => None,
        }
    }

    fn feature_dim(&self, d: usize) -> usize {
        self.map().map_or(d, |m| m.dim(d))
    }
}

/// Query and key features of one head: `(fq, fk)`, `[n_q, m]` and `[n_kv, m]`.
fn features(
    map: Option<&dyn FeatureMap>,
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    scale: f32,
) -> (Array2<f32>, Array2<f32>) {
    match map {
        None => (q.mapv(|x| x * scale), k.to_owned()),
        Some(map) => {
            let m = map.dim(q.ncols());
            let mut fq = Array2::zeros((q.nrows(), m));
            let mut fk = Array2::zeros((k.nrows(), m));
            map.map_queries(q, scale, fq.view_mut());
            // elu1 and relu need no key rescaling (c = 0).
            let c = map.map_keys(k, scale, fk.view_mut());
            debug_assert_eq!(c, 0.0);
            (fq, fk)
        }
    }
}

/// Divides rows by `den` (zero where it is not positive), or nothing when not normalising.
fn finish(mut o: ArrayViewMut2<f32>, den: Option<&[f64]>) {
    if let Some(den) = den {
        for (mut row, &d) in o.outer_iter_mut().zip(den) {
            let inv = if d > 0.0 { (1.0 / d) as f32 } else { 0.0 };
            row.mapv_inplace(|x| x * inv);
        }
    }
}

impl Retention {
    /// The parallel form of one head.
    fn parallel(&self, fq: &Array2<f32>, fk: &Array2<f32>, v: ArrayView2<f32>, gamma: f64, mut o: ArrayViewMut2<f32>) {
        let (n_q, n_kv) = (fq.nrows(), fk.nrows());
        let off = n_kv - n_q;
        let mut a = Array2::<f32>::zeros((n_q, n_kv));
        gemm(1.0, &fq.view(), &fk.t(), 0.0, &mut a.view_mut());
        let ln = gamma.ln();
        let mut den = vec![0f64; n_q];
        for (i, mut row) in a.outer_iter_mut().enumerate() {
            let p = i + off;
            for (j, x) in row.iter_mut().enumerate() {
                *x = if j <= p {
                    *x * (ln * (p - j) as f64).exp() as f32
                } else {
                    0.0
                };
                den[i] += f64::from(*x);
            }
        }
        gemm(1.0, &a.view(), &v, 0.0, &mut o);
        finish(o, self.phi.map(|_| den.as_slice()));
    }

    /// The chunked form of one head.
    fn chunked(&self, fq: &Array2<f32>, fk: &Array2<f32>, v: ArrayView2<f32>, gamma: f64, mut o: ArrayViewMut2<f32>) {
        let (n_q, n_kv, m, dv) = (fq.nrows(), fk.nrows(), fk.ncols(), v.ncols());
        let off = n_kv - n_q;
        let c = self.chunk;
        let ln = gamma.ln();
        let pow = |e: usize| (ln * e as f64).exp();
        // The state over keys before the current chunk, in f64, and an f32 copy for products.
        let mut state = Array2::<f64>::zeros((m, dv));
        let mut z = vec![0f64; m];
        let mut s32 = Array2::<f32>::zeros((m, dv));
        // Adds keys t0..t1 (decayed to t1 - 1), after decaying the state by gamma^(t1 - t0).
        let absorb = |state: &mut Array2<f64>, z: &mut [f64], t0: usize, t1: usize| {
            let decay = pow(t1 - t0);
            state.mapv_inplace(|x| x * decay);
            z.iter_mut().for_each(|x| *x *= decay);
            let mut fw = fk.slice(s![t0..t1, ..]).to_owned();
            for (r, mut row) in fw.outer_iter_mut().enumerate() {
                let w = pow(t1 - 1 - (t0 + r)) as f32;
                row.mapv_inplace(|x| x * w);
            }
            let mut prod = Array2::<f32>::zeros((m, dv));
            gemm(1.0, &fw.t(), &v.slice(s![t0..t1, ..]), 0.0, &mut prod.view_mut());
            state.zip_mut_with(&prod, |x, &y| *x += f64::from(y));
            for (zi, col) in z.iter_mut().zip(fw.columns()) {
                *zi += col.iter().map(|&x| f64::from(x)).sum::<f64>();
            }
        };
        for t0 in (0..off).step_by(c) {
            absorb(&mut state, &mut z, t0, (t0 + c).min(off));
        }
        let mut a = Array2::<f32>::zeros((c, c));
        for i0 in (0..n_q).step_by(c) {
            let i1 = (i0 + c).min(n_q);
            let (p0, p1) = (i0 + off, i1 + off);
            let rows = i1 - i0;
            // Inter-chunk: gamma^(p - p0 + 1) phi(q) S.
            s32.zip_mut_with(&state, |x, &y| *x = y as f32);
            let mut fqd = fq.slice(s![i0..i1, ..]).to_owned();
            let mut den = vec![0f64; rows];
            for (r, mut row) in fqd.outer_iter_mut().enumerate() {
                let w = pow(r + 1) as f32;
                row.mapv_inplace(|x| x * w);
                den[r] = row.iter().zip(&z).map(|(&f, &zz)| f64::from(f) * zz).sum();
            }
            let mut oc = o.slice_mut(s![i0..i1, ..]);
            gemm(1.0, &fqd.view(), &s32.view(), 0.0, &mut oc);
            // Intra-chunk: the masked, decayed c x c block.
            let mut blk = a.slice_mut(s![..rows, ..rows]);
            gemm(1.0, &fq.slice(s![i0..i1, ..]), &fk.slice(s![p0..p1, ..]).t(), 0.0, &mut blk);
            for (r, mut row) in blk.outer_iter_mut().enumerate() {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = if j <= r { *x * pow(r - j) as f32 } else { 0.0 };
                    den[r] += f64::from(*x);
                }
            }
            gemm(1.0, &blk.view(), &v.slice(s![p0..p1, ..]), 1.0, &mut oc);
            finish(oc, self.phi.map(|_| den.as_slice()));
            absorb(&mut state, &mut z, p0, p1);
        }
    }
}

impl Attention for Retention {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::OtherKernel
    }

    fn unsupported(&self, _shape: &Shape, opts: &Options) -> Vec<String> {
        let mut r = Vec::new();
        if !opts.causal {
            r.push(
                "retention is causal: its decay gamma^(i-j) runs over earlier keys only".into(),
            );
        }
        if let Some(scale) = opts.scale
            && scale <= 0.0
        {
            r.push(format!("retention needs a positive score scale, got {scale}"));
        }
        r
    }

    fn cost(&self, s: &Shape, _opts: &Options, _threads: usize) -> Cost {
        let (n_q, n_kv, d, dv) = (s.n_q(), s.n_kv(), s.head_dim(), s.v_dim());
        let m = self.feature_dim(d);
        let c = self.chunk.min(n_q);
        let per_head = match self.form {
            Form::Parallel => gemm_flops(n_q, m, n_kv) + gemm_flops(n_q, n_kv, dv) + (n_q * n_kv) as f64,
            Form::Chunked => {
                gemm_flops(n_kv, m, dv)
                    + gemm_flops(n_q, m, dv)
                    + n_q.div_ceil(c) as f64 * (gemm_flops(c, m, c) + gemm_flops(c, c, dv))
            }
            Form::Recurrent => 4.0 * (n_kv * m * dv) as f64,
        };
        let heads = (s.batch() * s.heads()) as f64;
        let floats = match self.form {
            Form::Parallel => n_q * n_kv + (n_q + n_kv) * m,
            Form::Chunked => (n_q + n_kv) * m + c * c + 3 * m * dv + c * m,
            Form::Recurrent => 2 * m * dv,
        };
        Cost {
            flops: per_head * heads,
            workspace_bytes: (floats * 4) as u64,
        }
    }

    fn forward(&self, call: &Call<'_>, out: Out<'_>) -> Result<()> {
        let shape = call.shape();
        let map = self.map();
        let scale = call.scale();
        if self.form == Form::Recurrent {
            return self.recurrent(call, out);
        }
        // With more queries than keys (bottom-right alignment), the first ones precede
        // every key and get zero rows.
        let skip = shape.n_q().saturating_sub(shape.n_kv());
        for_each_head(out.into_view(), |b, h, mut o| {
            o.slice_mut(s![..skip, ..]).fill(0.0);
            let o = o.slice_move(s![skip.., ..]);
            let kvh = shape.kv_head_of(h);
            let (fq, fk) = features(
                map.as_deref(),
                call.q().slice_move(s![b, h, skip.., ..]),
                call.k().slice_move(s![b, kvh, .., ..]),
                scale,
            );
            let v = call.v().slice_move(s![b, kvh, .., ..]);
            match self.form {
                Form::Parallel => self.parallel(&fq, &fk, v, self.gamma(h), o),
                _ => self.chunked(&fq, &fk, v, self.gamma(h), o),
            }
        });
        Ok(())
    }

    /// RetNet's recurrent form: [`Decayed`] decoding.
    fn decoder(
        &self,
        shape: &Shape,
        opts: &DecodeOptions,
    ) -> Option<Result<Box<dyn Decoder>>> {
        let gammas = (0..shape.heads()).map(|h| self.gamma(h)).collect();
        Some(
            Decayed::new(&self.to_string(), shape, opts, gammas, self.map())
                .map(|d| Box::new(d) as Box<dyn Decoder>),
        )
    }
}

impl Retention {
    /// The recurrent form: one decoder per sequence, the keys before the first query
    /// prefilled, then one step per query.
    fn recurrent(&self, call: &Call<'_>, out: Out<'_>) -> Result<()> {
        let shape = call.shape();
        let one = Shape::new(
            1,
            shape.heads(),
            shape.kv_heads(),
            1,
            1,
            shape.head_dim(),
            shape.v_dim(),
        )?;
        let opts = DecodeOptions {
            scale: Some(call.scale()),
            ..DecodeOptions::default()
        };
        let skip = shape.n_q().saturating_sub(shape.n_kv());
        let off = shape.n_kv() - (shape.n_q() - skip);
        let mut o = out.into_view();
        o.slice_mut(s![.., .., ..skip, ..]).fill(0.0);
        for b in 0..shape.batch() {
            let mut dec = self
                .decoder(&one, &opts)
                .expect("retention decodes")?;
            dec.prefill(
                call.k().slice_move(s![b..b + 1, .., ..off, ..]),
                call.v().slice_move(s![b..b + 1, .., ..off, ..]),
            )?;
            for i in skip..shape.n_q() {
                let j = off + i - skip;
                dec.step(
                    call.q().slice_move(s![b..b + 1, .., i, ..]),
                    call.k().slice_move(s![b..b + 1, .., j, ..]),
                    call.v().slice_move(s![b..b + 1, .., j, ..]),
                    o.slice_mut(s![b..b + 1, .., i, ..]),
                )?;
            }
        }
        Ok(())
    }
}
