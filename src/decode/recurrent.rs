//! Recurrent decoders: a fixed-size state per head instead of a cache.
//!
//! - [`LinearDecoder`]: linear attention's `S = sum_j phi(k_j) v_j^T` (`[m, d_v]`) and
//!   `z = sum_j phi(k_j)` per (sequence, KV head); a token's output is
//!   `phi(q) S / phi(q) z`. Key features that a map returns as `f e^c` (Performer's
//!   stabilised exponentials) are kept relative to the largest `c` seen, like an online
//!   softmax's maximum.
//! - [`Decayed`]: retention (Sun et al. 2023, RetNet) and decayed linear attention:
//!   `S_t = gamma S_{t-1} + phi(k_t) v_t^T` per (sequence, query head) with that head's
//!   decay `gamma`; without a feature map (`phi = identity`, queries scaled by the score
//!   scale) the output is `q_t S_t`, RetNet's unnormalised retention; with one it is
//!   `phi(q_t) S_t / phi(q_t) z_t`, `z_t = gamma z_{t-1} + phi(k_t)`.
//!
//! States are `f64` (a million tokens of `f32` additions would lose digits); a prompt
//! enters them in chunks as `f32` products accumulated in `f64`. Per token: O(m d_v) work and
//! memory, whatever the context.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut3, Axis, s};

use super::{DecodeOptions, Decoder, check_prefill, check_step};
use crate::error::{ErrorKind, Result};
use crate::feature::FeatureMap;
use crate::kernels::gemm::gemm;
use crate::shape::Shape;

/// Prompt rows entering a state per product.
const CHUNK: usize = 256;

/// One running state: `s` (`[m][dv]`), `z` (`[m]`), true values `s e^log_scale`.
#[derive(Debug, Clone)]
struct State {
    s: Vec<f64>,
    z: Vec<f64>,
    log_scale: f64,
    dv: usize,
}

impl State {
    fn new(m: usize, dv: usize) -> Self {
        Self {
            s: vec![0.0; m * dv],
            z: vec![0.0; m],
            log_scale: f64::NEG_INFINITY,
            dv,
        }
    }

    /// Multiplies the state by `decay`, then adds `w_j f_j v_j^T` and `w_j f_j` over the rows
    /// of `f` (`[rows, m]`, true features `f e^c`) and `v` (`[rows, dv]`).
    fn add(&mut self, decay: f64, f: ArrayView2<f32>, c: f32, v: ArrayView2<f32>, w: &[f32]) {
        let c = f64::from(c);
        let mut keep = decay;
        if c > self.log_scale {
            keep *= if self.log_scale == f64::NEG_INFINITY {
                0.0
            } else {
                (self.log_scale - c).exp()
            };
            self.log_scale = c;
        }
        let mult = (c - self.log_scale).exp();
        if keep != 1.0 {
            self.s.iter_mut().for_each(|x| *x *= keep);
            self.z.iter_mut().for_each(|x| *x *= keep);
        }
        let (rows, m) = f.dim();
        if rows == 1 {
            let fw = w[0];
            for i in 0..m {
                let fi = f64::from(f[[0, i]] * fw) * mult;
                self.z[i] += fi;
                let srow = &mut self.s[i * self.dv..(i + 1) * self.dv];
                for (x, &y) in srow.iter_mut().zip(v.row(0)) {
                    *x += fi * f64::from(y);
                }
            }
            return;
        }
        let mut fw = f.to_owned();
        for (mut row, &wj) in fw.outer_iter_mut().zip(w) {
            row.mapv_inplace(|x| x * wj);
        }
        let mut prod = Array2::<f32>::zeros((m, self.dv));
        gemm(1.0, &fw.t(), &v, 0.0, &mut prod.view_mut());
        for (x, &y) in self.s.iter_mut().zip(prod.iter()) {
            *x += f64::from(y) * mult;
        }
        for (i, col) in fw.axis_iter(Axis(1)).enumerate() {
            self.z[i] += col.iter().map(|&x| f64::from(x)).sum::<f64>() * mult;
        }
    }

    /// `fq S` into `out`, divided by `fq z` when `normalize` (zero when that is not
    /// positive).
    fn read(&self, fq: &[f32], normalize: bool, out: &mut [f32]) {
        let mut acc = vec![0f64; self.dv];
        for (i, &f) in fq.iter().enumerate() {
            let f = f64::from(f);
            for (a, &x) in acc.iter_mut().zip(&self.s[i * self.dv..(i + 1) * self.dv]) {
                *a += f * x;
            }
        }
        let scale = if self.log_scale == f64::NEG_INFINITY {
            0.0
        } else {
            self.log_scale.exp()
        };
        let div = if normalize {
            let den: f64 = fq
                .iter()
                .zip(&self.z)
                .map(|(&f, &z)| f64::from(f) * z)
                .sum();
            if den > 0.0 { 1.0 / den } else { 0.0 }
        } else {
            scale
        };
        for (o, a) in out.iter_mut().zip(acc) {
            *o = (a * div) as f32;
        }
    }

    fn bytes(&self) -> usize {
        (self.s.len() + self.z.len()) * 8 + 8
    }
}

/// Linear attention decoding. See the [module docs](self).
#[derive(Debug)]
pub struct LinearDecoder {
    shape: Shape,
    map: Arc<dyn FeatureMap>,
    scale: f32,
    states: Vec<State>,
    len: usize,
}

impl LinearDecoder {
    /// A decoder for `shape` with feature map `map`; refuses a half-precision KV store (it
    /// keeps no cache).
    pub fn new(
        name: &str,
        shape: &Shape,
        opts: &DecodeOptions,
        map: Arc<dyn FeatureMap>,
    ) -> Result<Self> {
        opts.check()?;
        opts.refuse_store(name)?;
        let m = map.dim(shape.head_dim());
        Ok(Self {
            shape: *shape,
            scale: opts.scale_for(shape),
            states: vec![State::new(m, shape.v_dim()); shape.batch() * shape.kv_heads()],
            map,
            len: 0,
        })
    }
}

/// Features of `x` (`[rows, d]`) as keys: `(f, c)`.
fn key_features(
    map: &dyn FeatureMap,
    x: ArrayView2<f32>,
    scale: f32,
    d: usize,
) -> (Array2<f32>, f32) {
    let mut f = Array2::zeros((x.nrows(), map.dim(d)));
    let c = map.map_keys(x, scale, f.view_mut());
    (f, c)
}

impl Decoder for LinearDecoder {
    fn prefill(&mut self, k: ArrayView4<'_, f32>, v: ArrayView4<'_, f32>) -> Result<()> {
        check_prefill(&self.shape, &k, &v)?;
        let (hk, d, p) = (self.shape.kv_heads(), self.shape.head_dim(), k.shape()[2]);
        let ones = vec![1f32; CHUNK];
        for (i, st) in self.states.iter_mut().enumerate() {
            let (b, g) = (i / hk, i % hk);
            for t0 in (0..p).step_by(CHUNK) {
                let t1 = (t0 + CHUNK).min(p);
                let (f, c) = key_features(
                    self.map.as_ref(),
                    k.slice(s![b, g, t0..t1, ..]),
                    self.scale,
                    d,
                );
                st.add(1.0, f.view(), c, v.slice(s![b, g, t0..t1, ..]), &ones);
            }
        }
        self.len += p;
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
        let (hk, d, g) = (
            self.shape.kv_heads(),
            self.shape.head_dim(),
            self.shape.group_size(),
        );
        let m = self.map.dim(d);
        let mut fq = Array2::zeros((1, m));
        let mut row = vec![0f32; self.shape.v_dim()];
        for (i, st) in self.states.iter_mut().enumerate() {
            let (b, kvh) = (i / hk, i % hk);
            let kr = k.slice(s![b, kvh..kvh + 1, ..]);
            let (f, c) = key_features(self.map.as_ref(), kr, self.scale, d);
            st.add(1.0, f.view(), c, v.slice(s![b, kvh..kvh + 1, ..]), &[1.0]);
            for h in kvh * g..(kvh + 1) * g {
                self.map
                    .map_queries(q.slice(s![b, h..h + 1, ..]), self.scale, fq.view_mut());
                st.read(fq.as_slice().expect("owned"), true, &mut row);
                out.slice_mut(s![b, h, ..])
                    .iter_mut()
                    .zip(&row)
                    .for_each(|(o, &x)| *o = x);
            }
        }
        self.len += 1;
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn state_bytes(&self) -> usize {
        self.states.iter().map(State::bytes).sum()
    }

    fn bytes_read(&self) -> usize {
        self.state_bytes()
    }
}

/// RetNet's decay of query head `h` of `heads`: `1 - 2^(-5 - h)` (from 0.969 for the first
/// head to `1 - 2^-(4 + heads)`), so heads see from tens to thousands of tokens back.
pub fn retnet_gamma(h: usize) -> f64 {
    1.0 - 2f64.powi(-5 - h as i32)
}

/// Retention (decayed linear attention) decoding. See the [module docs](self).
#[derive(Debug)]
pub struct Decayed {
    shape: Shape,
    map: Option<Arc<dyn FeatureMap>>,
    gammas: Vec<f64>,
    scale: f32,
    states: Vec<State>,
    len: usize,
}

impl Decayed {
    /// A decoder with per-query-head decays `gammas` (each in `(0, 1]`) and an optional
    /// feature map (`None`: RetNet's unnormalised retention).
    pub fn new(
        name: &str,
        shape: &Shape,
        opts: &DecodeOptions,
        gammas: Vec<f64>,
        map: Option<Arc<dyn FeatureMap>>,
    ) -> Result<Self> {
        opts.check()?;
        opts.refuse_store(name)?;
        if gammas.len() != shape.heads() || gammas.iter().any(|&g| !(g > 0.0 && g <= 1.0)) {
            return Err(ErrorKind::BadOption {
                option: "gamma",
                message: format!("one decay in (0, 1] per query head, got {gammas:?}"),
            }
            .into());
        }
        let m = map
            .as_ref()
            .map_or(shape.head_dim(), |f| f.dim(shape.head_dim()));
        Ok(Self {
            shape: *shape,
            gammas,
            scale: opts.scale_for(shape),
            states: vec![State::new(m, shape.v_dim()); shape.batch() * shape.heads()],
            map,
            len: 0,
        })
    }

    /// Features of key rows `x`: the map's, or `x` itself.
    fn keys(&self, x: ArrayView2<f32>) -> (Array2<f32>, f32) {
        match &self.map {
            Some(map) => key_features(map.as_ref(), x, self.scale, self.shape.head_dim()),
            None => (x.to_owned(), 0.0),
        }
    }
}

impl Decoder for Decayed {
    fn prefill(&mut self, k: ArrayView4<'_, f32>, v: ArrayView4<'_, f32>) -> Result<()> {
        check_prefill(&self.shape, &k, &v)?;
        let (h, g, p) = (self.shape.heads(), self.shape.group_size(), k.shape()[2]);
        for t0 in (0..p).step_by(CHUNK) {
            let t1 = (t0 + CHUNK).min(p);
            for b in 0..self.shape.batch() {
                for kvh in 0..self.shape.kv_heads() {
                    let (f, c) = self.keys(k.slice(s![b, kvh, t0..t1, ..]));
                    let vv = v.slice(s![b, kvh, t0..t1, ..]);
                    for head in kvh * g..(kvh + 1) * g {
                        let gamma = self.gammas[head];
                        // Row j of the chunk is (t1 - 1 - j) steps older than its last row.
                        let w: Vec<f32> = (t0..t1)
                            .map(|j| gamma.powi((t1 - 1 - j) as i32) as f32)
                            .collect();
                        let decay = gamma.powi((t1 - t0) as i32);
                        self.states[b * h + head].add(decay, f.view(), c, vv, &w);
                    }
                }
            }
        }
        self.len += p;
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
        let (h, g, d) = (
            self.shape.heads(),
            self.shape.group_size(),
            self.shape.head_dim(),
        );
        let m = self.map.as_ref().map_or(d, |f| f.dim(d));
        let mut fq = Array2::zeros((1, m));
        let mut row = vec![0f32; self.shape.v_dim()];
        for b in 0..self.shape.batch() {
            for kvh in 0..self.shape.kv_heads() {
                let (f, c) = self.keys(k.slice(s![b, kvh..kvh + 1, ..]));
                let vv = v.slice(s![b, kvh..kvh + 1, ..]);
                for head in kvh * g..(kvh + 1) * g {
                    let st = &mut self.states[b * h + head];
                    st.add(self.gammas[head], f.view(), c, vv, &[1.0]);
                    let qr = q.slice(s![b, head..head + 1, ..]);
                    match &self.map {
                        Some(map) => map.map_queries(qr, self.scale, fq.view_mut()),
                        None => fq.assign(&qr.mapv(|x| x * self.scale)),
                    }
                    st.read(fq.as_slice().expect("owned"), self.map.is_some(), &mut row);
                    out.slice_mut(s![b, head, ..])
                        .iter_mut()
                        .zip(&row)
                        .for_each(|(o, &x)| *o = x);
                }
            }
        }
        self.len += 1;
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn state_bytes(&self) -> usize {
        self.states.iter().map(State::bytes).sum()
    }

    fn bytes_read(&self) -> usize {
        self.state_bytes()
    }
}
