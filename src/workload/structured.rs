//! `structured`: synthetic Q, K and V whose causal attention has the measured character of a
//! trained LLM's (sink mass on the first token, locality over distance, entropy per head,
//! grouped-query heads), for lengths beyond the real activations (16K to 1M tokens).
//!
//! # The construction
//! Head dimension 64, split as RoPE does (rotate-half: dims `f` and `f + 32` form pair `f`,
//! rotated by `p * theta_f` at position `p`, `theta_f = 1e5^(-f/32)`, SmolLM2's base). Pair 31
//! is reserved for the sink. Every score is built in logit units (`q . k / 8`):
//!
//! - **Keys** of KV head `g`: `k_j = R_j (b_g + w_j)`, a fixed unit vector `b_g` (equal
//!   amplitude on pairs 0..30, random phases) plus content noise `w_j ~ N(0, I/62)`; the first
//!   key has no noise and carries 1 on the sink dimension.
//! - **Queries** of head `h` (reading KV head `h / group`): `q_i = 8 (R_i (lambda a_h + sigma
//!   z_i) + beta e_sink)`, `z_i ~ N(0, I)`, where `a_h` has `b_g`'s phases and amplitudes tilted
//!   by `exp(tilt (f / 30 - 1/2))` (normalised so that `a_h . b_g = 1`). Then
//!   `q_i . k_j / 8 = lambda K_h(i - j) + content + beta [j = 0]` with the kernel
//!   `K_h(D) = sum_f c_f cos(D theta_f)`, 1 at `D = 0` and falling roughly like `-log D`:
//!   `locality` (lambda) sets how much nearby keys win, `tilt` how far "nearby" reaches
//!   (positive: low frequencies, broad; negative: sharp), `content` (sigma) the spread of the
//!   position-free part (peaked, low-entropy rows when large), `sink` (beta) the first key's
//!   logit.
//! - **Values** of KV head `g`: `v_j = v_mean sqrt(64) u_g + e_j` (a common direction `u_g`,
//!   `e_j ~ N(0, I)`), with the first value rescaled to `v_sink` times the rows' RMS norm:
//!   real sink values are small, which is what makes a dropped sink change the output.
//!
//! Every random draw is seeded by (seed, layer, head, position), so the first `n` positions
//! do not depend on the length generated: a length-n input is a prefix of a longer one, as
//! with real activations.
//!
//! # The calibration
//! `structured.json` holds, per layer of the shared SmolLM2-135M data (0, 15, 29), each query
//! head's four parameters fitted by `examples/fit_structured.rs` (Nelder-Mead on the
//! [`HeadStats`] of generated inputs at n = 8192 against those of the real activations), the
//! real and the fitted statistics, and each KV head's value parameters measured on the real V.

use std::sync::OnceLock;

use ndarray::{Array2, Array4, ArrayView2, Axis, s};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::Qkv;

/// The head dimension of the generated inputs (SmolLM2's).
pub const HEAD_DIM: usize = 64;
const PAIRS: usize = HEAD_DIM / 2;
/// The rotation pair reserved for the sink logit.
const SINK_PAIR: usize = PAIRS - 1;
/// The pairs that carry the locality kernel and the content.
const FREE: usize = PAIRS - 1;
const ROPE_BASE: f64 = 1e5;

/// Keys within this distance of the query count as near (`i - j <= NEAR`).
pub const NEAR: usize = 32;
/// The middle distance of the locality profile.
pub const MID: usize = 256;
/// The far distance of the locality profile (reported, not fitted).
pub const FAR: usize = 2048;

/// One query head's generator parameters (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadParams {
    /// Logit gain of the locality kernel (`lambda`).
    pub locality: f64,
    /// Spectral tilt of the kernel: positive is broad, negative sharp.
    pub tilt: f64,
    /// Standard deviation scale of the position-free logits (`sigma`).
    pub content: f64,
    /// The first key's logit (`beta`).
    pub sink: f64,
}

/// One KV head's value parameters, measured on the real V.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvParams {
    /// Norm of the values' mean over their per-dimension spread times `sqrt(64)`.
    pub v_mean: f64,
    /// Norm of the first value over the RMS norm of the others.
    pub v_sink: f64,
}

/// Statistics of one head's causal attention, means over query rows: entropy in nats, and
/// the mass within [`NEAR`], [`MID`], [`FAR`] tokens and on token 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadStats {
    /// Row entropy, nats.
    pub entropy: f64,
    /// Mass on keys `j` with `i - j <= 32`.
    pub near: f64,
    /// Mass on keys with `i - j <= 256`.
    pub mid: f64,
    /// Mass on keys with `i - j <= 2048`.
    pub far: f64,
    /// Mass on the first key.
    pub sink: f64,
}

/// One layer's calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerCalibration {
    /// The layer of the source model.
    pub layer: u32,
    /// Per query head.
    pub heads: Vec<HeadParams>,
    /// Per KV head.
    pub kv: Vec<KvParams>,
    /// The real activations' statistics per query head (the fit's targets).
    pub real: Vec<HeadStats>,
    /// The generated inputs' statistics per query head at the fit.
    pub fitted: Vec<HeadStats>,
}

/// The whole calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Where the targets came from.
    pub source: String,
    /// The length the statistics were measured at.
    pub n: usize,
    /// Query rows (evenly spaced) the statistics are means over.
    pub rows: usize,
    /// The generator seed of the fit.
    pub seed: u64,
    /// Per calibrated layer.
    pub layers: Vec<LayerCalibration>,
}

impl Calibration {
    /// The calibration shipped with the crate (`src/workload/structured.json`).
    pub fn builtin() -> &'static Calibration {
        static CAL: OnceLock<Calibration> = OnceLock::new();
        CAL.get_or_init(|| {
            serde_json::from_str(include_str!("structured.json"))
                .expect("structured.json is valid (a test parses it)")
        })
    }

    /// The calibration of `layer`, if there is one.
    pub fn layer(&self, layer: u32) -> Option<&LayerCalibration> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    /// The calibrated layers.
    pub fn layer_ids(&self) -> Vec<u32> {
        self.layers.iter().map(|l| l.layer).collect()
    }

    /// Every head's real and generated statistics as a markdown table (README's).
    pub fn markdown(&self) -> String {
        let mut t = String::from(
            "| layer | head | entropy real / gen. | near (<= 32) | mid (<= 256) | far (<= 2048, not fitted) | sink (token 0) |\n|---|---|---|---|---|---|---|\n",
        );
        for l in &self.layers {
            for (h, (r, g)) in l.real.iter().zip(&l.fitted).enumerate() {
                t.push_str(&format!(
                    "| {} | {h} | {:.2} / {:.2} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |\n",
                    l.layer,
                    r.entropy,
                    g.entropy,
                    r.near,
                    g.near,
                    r.mid,
                    g.mid,
                    r.far,
                    g.far,
                    r.sink,
                    g.sink
                ));
            }
        }
        t
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// An RNG for one (stream, head, position) of a layer.
fn rng(seed: u64, layer: u32, stream: u64, head: usize, pos: usize) -> StdRng {
    let mut h = mix(seed ^ 0x5354_5255_4354_5552);
    for x in [layer as u64, stream, head as u64, pos as u64] {
        h = mix(h ^ x);
    }
    StdRng::seed_from_u64(h)
}

const KEY: u64 = 1;
const QUERY: u64 = 2;
const VALUE: u64 = 3;
const FIXED: u64 = 4;

/// The rotation frequency of each pair, `1e5^(-f/32)`.
fn thetas() -> &'static [f64; PAIRS] {
    static THETAS: OnceLock<[f64; PAIRS]> = OnceLock::new();
    THETAS.get_or_init(|| std::array::from_fn(|f| ROPE_BASE.powf(-(f as f64) / PAIRS as f64)))
}

/// Rotates `x` (rotate-half layout) to position `p`.
fn rotate(x: &mut [f32], p: usize) {
    for (f, &theta) in thetas().iter().enumerate() {
        let (sin, cos) = (p as f64 * theta).sin_cos();
        let (a, b) = (x[f] as f64, x[f + PAIRS] as f64);
        x[f] = (a * cos - b * sin) as f32;
        x[f + PAIRS] = (a * sin + b * cos) as f32;
    }
}

impl LayerCalibration {
    /// Query heads.
    pub fn heads(&self) -> usize {
        self.heads.len()
    }

    /// KV heads.
    pub fn kv_heads(&self) -> usize {
        self.kv.len()
    }

    fn group(&self) -> usize {
        self.heads() / self.kv_heads().max(1)
    }

    /// The phases of KV head `g`'s base vector, one per free pair.
    fn phases(&self, seed: u64, g: usize) -> Vec<f64> {
        let mut r = rng(seed, self.layer, FIXED, g, 0);
        (0..FREE)
            .map(|_| r.random_range(0.0..std::f64::consts::TAU))
            .collect()
    }

    /// KV head `g`'s unit base vector `b_g` (before rotation), as pair components.
    fn key_base(&self, seed: u64, g: usize) -> Vec<(f64, f64)> {
        let amp = (1.0 / FREE as f64).sqrt();
        let phases = self.phases(seed, g);
        phases
            .iter()
            .map(|phi| (amp * phi.cos(), amp * phi.sin()))
            .collect()
    }

    /// Head `h`'s query base `lambda a_h` under `p` (before rotation): `b_g`'s phases with
    /// the tilted amplitudes, normalised so that `a_h . b_g = 1`.
    fn query_base(&self, p: &HeadParams, seed: u64, h: usize) -> Vec<(f64, f64)> {
        let amp = (1.0 / FREE as f64).sqrt();
        let tilt = |f: usize| (p.tilt * (f as f64 / (FREE - 1) as f64 - 0.5)).exp();
        let norm: f64 = (0..FREE).map(|f| amp * amp * tilt(f)).sum();
        let phases = self.phases(seed, h / self.group());
        phases
            .iter()
            .enumerate()
            .map(|(f, phi)| {
                let c = p.locality * amp * tilt(f) / norm;
                (c * phi.cos(), c * phi.sin())
            })
            .collect()
    }

    /// Key `j` of KV head `g`, from its base.
    fn key(&self, base: &[(f64, f64)], seed: u64, g: usize, j: usize) -> [f32; HEAD_DIM] {
        let mut k = [0f32; HEAD_DIM];
        let noise = (1.0 / (2 * FREE) as f64).sqrt();
        // The first key has no content noise: a fixed draw there would shift the sink logit
        // of every row alike, making the sink mass depend on the seed.
        let noise = if j == 0 { 0.0 } else { noise };
        let mut r = rng(seed, self.layer, KEY, g, j);
        for (f, &(ba, bb)) in base.iter().enumerate() {
            let (wa, wb): (f64, f64) =
                (StandardNormal.sample(&mut r), StandardNormal.sample(&mut r));
            k[f] = (ba + noise * wa) as f32;
            k[f + PAIRS] = (bb + noise * wb) as f32;
        }
        rotate(&mut k, j);
        if j == 0 {
            k[SINK_PAIR] = 1.0;
        }
        k
    }

    /// Query `i` of head `h` under `p` (rather than the calibrated parameters: the fit
    /// varies them), from its base.
    fn query(
        &self,
        p: &HeadParams,
        base: &[(f64, f64)],
        seed: u64,
        h: usize,
        i: usize,
    ) -> [f32; HEAD_DIM] {
        let mut q = [0f32; HEAD_DIM];
        let mut r = rng(seed, self.layer, QUERY, h, i);
        for (f, &(ca, cb)) in base.iter().enumerate() {
            let (za, zb): (f64, f64) =
                (StandardNormal.sample(&mut r), StandardNormal.sample(&mut r));
            q[f] = (8.0 * (ca + p.content * za)) as f32;
            q[f + PAIRS] = (8.0 * (cb + p.content * zb)) as f32;
        }
        rotate(&mut q, i);
        q[SINK_PAIR] = (8.0 * p.sink) as f32;
        q
    }

    /// The keys `0..n` of KV head `g`, `[n, 64]`.
    pub fn keys(&self, seed: u64, g: usize, n: usize) -> Array2<f32> {
        let base = self.key_base(seed, g);
        let mut out = Array2::zeros((n, HEAD_DIM));
        for (j, mut row) in out.outer_iter_mut().enumerate() {
            row.assign(&ndarray::ArrayView1::from(&self.key(&base, seed, g, j)));
        }
        out
    }

    /// The queries at `rows` of head `h` under parameters `p`, `[rows, 64]`.
    pub fn queries(&self, p: &HeadParams, seed: u64, h: usize, rows: &[usize]) -> Array2<f32> {
        let base = self.query_base(p, seed, h);
        let mut out = Array2::zeros((rows.len(), HEAD_DIM));
        for (&i, mut row) in rows.iter().zip(out.outer_iter_mut()) {
            row.assign(&ndarray::ArrayView1::from(
                &self.query(p, &base, seed, h, i),
            ));
        }
        out
    }

    /// The values `0..n` of KV head `g`, `[n, 64]`.
    pub fn values(&self, seed: u64, g: usize, n: usize) -> Array2<f32> {
        let kv = self.kv[g];
        let mut r = rng(seed, self.layer, FIXED, g, 1);
        let mut u: Vec<f64> = (0..HEAD_DIM)
            .map(|_| StandardNormal.sample(&mut r))
            .collect();
        let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        u.iter_mut().for_each(|x| *x /= un);
        let mean = kv.v_mean * (HEAD_DIM as f64).sqrt();
        let mut out = Array2::zeros((n, HEAD_DIM));
        for (j, mut row) in out.outer_iter_mut().enumerate() {
            let mut r = rng(seed, self.layer, VALUE, g, j);
            for (x, &ud) in row.iter_mut().zip(&u) {
                let e: f64 = StandardNormal.sample(&mut r);
                *x = (mean * ud + e) as f32;
            }
            if j == 0 {
                // The RMS norm of the other rows: sqrt(64 (1 + v_mean^2)) in expectation.
                let rms = (HEAD_DIM as f64 * (1.0 + kv.v_mean * kv.v_mean)).sqrt();
                let norm = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                let scale = (kv.v_sink * rms / norm.max(1e-30)) as f32;
                row.mapv_inplace(|x| x * scale);
            }
        }
        out
    }

    /// The layer's inputs at length `n` with the last `n_q` positions as queries:
    /// `[1, heads, n_q, 64]`, `[1, kv_heads, n, 64]` twice.
    pub fn generate(&self, n: usize, n_q: usize, seed: u64) -> Qkv {
        let (h, hk) = (self.heads(), self.kv_heads());
        let mut q = Array4::zeros((1, h, n_q, HEAD_DIM));
        let mut k = Array4::zeros((1, hk, n, HEAD_DIM));
        let mut v = Array4::zeros((1, hk, n, HEAD_DIM));
        let rows: Vec<usize> = (n - n_q..n).collect();
        for head in 0..h {
            q.slice_mut(s![0, head, .., ..]).assign(&self.queries(
                &self.heads[head],
                seed,
                head,
                &rows,
            ));
        }
        for g in 0..hk {
            k.slice_mut(s![0, g, .., ..]).assign(&self.keys(seed, g, n));
            v.slice_mut(s![0, g, .., ..])
                .assign(&self.values(seed, g, n));
        }
        Qkv { q, k, v }
    }
}

/// `count` evenly spaced query rows of `0..n` (all rows when `count >= n`).
pub fn stat_rows(n: usize, count: usize) -> Vec<usize> {
    if count >= n {
        return (0..n).collect();
    }
    (0..count).map(|r| (2 * r + 1) * n / (2 * count)).collect()
}

/// The [`HeadStats`] of causal `softmax(q k^T / sqrt(d))` with queries at positions `rows`
/// (`q` holds one row per entry of `rows`) against keys `k` at positions `0..n`.
pub fn head_stats(q: ArrayView2<f32>, rows: &[usize], k: ArrayView2<f32>) -> HeadStats {
    assert_eq!(q.nrows(), rows.len(), "one query per row");
    let scale = 1.0 / (q.ncols() as f32).sqrt();
    let scores = q.dot(&k.t());
    let mut sum = HeadStats {
        entropy: 0.0,
        near: 0.0,
        mid: 0.0,
        far: 0.0,
        sink: 0.0,
    };
    for (s, &i) in scores.axis_iter(Axis(0)).zip(rows) {
        let s = s.slice(s![..=i]);
        let m = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64 * scale as f64;
        let p: Vec<f64> = s
            .iter()
            .map(|&x| (x as f64 * scale as f64 - m).exp())
            .collect();
        let z: f64 = p.iter().sum();
        let mut within = [0.0f64; 3];
        let mut entropy = 0.0;
        for (j, &pj) in p.iter().enumerate() {
            let pj = pj / z;
            if pj > 0.0 {
                entropy -= pj * pj.ln();
            }
            for (w, d) in within.iter_mut().zip([NEAR, MID, FAR]) {
                if i - j <= d {
                    *w += pj;
                }
            }
        }
        sum.entropy += entropy;
        sum.near += within[0];
        sum.mid += within[1];
        sum.far += within[2];
        sum.sink += p[0] / z;
    }
    let r = rows.len().max(1) as f64;
    HeadStats {
        entropy: sum.entropy / r,
        near: sum.near / r,
        mid: sum.mid / r,
        far: sum.far / r,
        sink: sum.sink / r,
    }
}

/// The [`HeadStats`] of every query head of `qkv` (batch entry 0, queries at positions
/// `0..n`, causal, query head `h` reading KV head `h / (heads / kv_heads)`), over `rows`.
pub fn qkv_stats(qkv: &Qkv, rows: &[usize]) -> Vec<HeadStats> {
    let (h, hk) = (qkv.q.shape()[1], qkv.k.shape()[1]);
    (0..h)
        .map(|head| {
            let q = qkv.q.slice(s![0, head, .., ..]).select(Axis(0), rows);
            let k = qkv.k.slice(s![0, head / (h / hk), .., ..]);
            head_stats(q.view(), rows, k)
        })
        .collect()
}
