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
use rayon::prelude::*;

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
        let (keep, mult) = self.rescale(decay, c);
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

    /// Moves the state to the log-scale of new features `f e^c` and returns `(keep, mult)`:
    /// the factor the old state is multiplied by (`decay` and any rescaling) and the one of
    /// the new features.
    fn rescale(&mut self, decay: f64, c: f32) -> (f64, f64) {
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
        (keep, (c - self.log_scale).exp())
    }

    /// One token in one pass over the state: `S = keep S + f v^T`, `z = keep z + f` (`f`,
    /// `[m]`, true features `f e^c`; `v`, `[dv]`), then each of the query feature rows `fqs`
    /// (`[g][m]`) reads it into `out` (`[g][dv]`) as [`read`](State::read) would, while
    /// the row is in cache. `acc` is scratch of `g * dv`.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        decay: f64,
        f: &[f32],
        c: f32,
        v: &[f64],
        fqs: &[f64],
        normalize: bool,
        acc: &mut [f64],
        out: &mut [f32],
    ) {
        let (keep, mult) = self.rescale(decay, c);
        let (m, dv) = (self.z.len(), self.dv);
        let g = fqs.len() / m;
        acc.fill(0.0);
        let mut den = vec![0f64; g];
        for i in 0..m {
            let fi = f64::from(f[i]) * mult;
            let z = self.z[i] * keep + fi;
            self.z[i] = z;
            let srow = &mut self.s[i * dv..(i + 1) * dv];
            for (x, &y) in srow.iter_mut().zip(v) {
                *x = *x * keep + fi * y;
            }
            for (q, (a, dq)) in acc.chunks_exact_mut(dv).zip(den.iter_mut()).enumerate() {
                let fq = fqs[q * m + i];
                *dq += fq * z;
                for (a, &x) in a.iter_mut().zip(srow.iter()) {
                    *a += fq * x;
                }
            }
        }
        let scale = if self.log_scale == f64::NEG_INFINITY {
            0.0
        } else {
            self.log_scale.exp()
        };
        for ((o, a), dq) in out.chunks_exact_mut(dv).zip(acc.chunks_exact(dv)).zip(den) {
            let div = match (normalize, dq > 0.0) {
                (true, true) => 1.0 / dq,
                (true, false) => 0.0,
                (false, _) => scale,
            };
            for (o, &a) in o.iter_mut().zip(a) {
                *o = (a * div) as f32;
            }
        }
    }

    fn bytes(&self) -> usize {
        (self.s.len() + self.z.len()) * 8 + 8
    }
}

/// Runs `work` on every state, on all threads when a step's work (`states x per_state`
/// multiply-adds) outweighs a rayon round trip; returns the outputs in state order.
fn for_each_state<F>(states: &mut [State], per_state: usize, work: F) -> Vec<Vec<f32>>
where
    F: Fn(usize, &mut State) -> Vec<f32> + Sync,
{
    if states.len() > 1
        && states.len() * per_state >= PARALLEL_WORK
        && rayon::current_num_threads() > 1
    {
        states
            .par_iter_mut()
            .enumerate()
            .map(|(i, st)| work(i, st))
            .collect()
    } else {
        states
            .iter_mut()
            .enumerate()
            .map(|(i, st)| work(i, st))
            .collect()
    }
}

/// A step's multiply-adds above which its states are updated in parallel.
const PARALLEL_WORK: usize = 1 << 15;

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
        let (hk, d, g, dv) = (
            self.shape.kv_heads(),
            self.shape.head_dim(),
            self.shape.group_size(),
            self.shape.v_dim(),
        );
        let m = self.map.dim(d);
        let (map, scale) = (self.map.as_ref(), self.scale);
        // One state per (sequence, KV head), read by its group of query heads.
        let work = |i: usize, st: &mut State| -> Vec<f32> {
            let (b, kvh) = (i / hk, i % hk);
            let (f, c) = key_features(map, k.slice(s![b, kvh..kvh + 1, ..]), scale, d);
            let vv: Vec<f64> = v.slice(s![b, kvh, ..]).iter().map(|&x| x.into()).collect();
            let mut fq = Array2::zeros((g, m));
            map.map_queries(
                q.slice(s![b, kvh * g..(kvh + 1) * g, ..]),
                scale,
                fq.view_mut(),
            );
            let fqs: Vec<f64> = fq.iter().map(|&x| x.into()).collect();
            let (mut acc, mut o) = (vec![0.0; g * dv], vec![0.0; g * dv]);
            let f = f.as_slice().expect("owned");
            st.step(1.0, f, c, &vv, &fqs, true, &mut acc, &mut o);
            o
        };
        let outs = for_each_state(&mut self.states, m * dv * (1 + g), work);
        for (i, o) in outs.iter().enumerate() {
            let (b, kvh) = (i / hk, i % hk);
            for (r, row) in o.chunks_exact(dv).enumerate() {
                out.slice_mut(s![b, kvh * g + r, ..])
                    .iter_mut()
                    .zip(row)
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
        let (h, hk, g, dv) = (
            self.shape.heads(),
            self.shape.kv_heads(),
            self.shape.group_size(),
            self.shape.v_dim(),
        );
        let m = self
            .map
            .as_ref()
            .map_or(self.shape.head_dim(), |f| f.dim(self.shape.head_dim()));
        // Each (sequence, KV head)'s key features and value, shared by its query heads.
        let keys: Vec<(Array2<f32>, f32, Vec<f64>)> = (0..self.shape.batch() * hk)
            .map(|i| {
                let (b, kvh) = (i / hk, i % hk);
                let (f, c) = self.keys(k.slice(s![b, kvh..kvh + 1, ..]));
                let vv = v.slice(s![b, kvh, ..]).iter().map(|&x| x.into()).collect();
                (f, c, vv)
            })
            .collect();
        let (map, scale, gammas) = (self.map.as_deref(), self.scale, &self.gammas);
        // One state per (sequence, query head): each head has its own decay.
        let work = |i: usize, st: &mut State| -> Vec<f32> {
            let (b, head) = (i / h, i % h);
            let (f, c, vv) = &keys[b * hk + head / g];
            let qr = q.slice(s![b, head..head + 1, ..]);
            let fqs: Vec<f64> = match map {
                Some(map) => {
                    let mut fq = Array2::zeros((1, m));
                    map.map_queries(qr, scale, fq.view_mut());
                    fq.iter().map(|&x| x.into()).collect()
                }
                None => qr.iter().map(|&x| f64::from(x * scale)).collect(),
            };
            let (mut acc, mut o) = (vec![0.0; dv], vec![0.0; dv]);
            let f = f.as_slice().expect("owned");
            st.step(
                gammas[head],
                f,
                *c,
                vv,
                &fqs,
                map.is_some(),
                &mut acc,
                &mut o,
            );
            o
        };
        let outs = for_each_state(&mut self.states, 2 * m * dv, work);
        for (i, o) in outs.iter().enumerate() {
            out.slice_mut(s![i / h, i % h, ..])
                .iter_mut()
                .zip(o)
                .for_each(|(o, &x)| *o = x);
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
