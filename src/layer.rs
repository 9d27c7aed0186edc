//! The multi-head attention layer around any variant:
//! `MultiHead(X) = Concat(head_1, ..., head_h) W_O + b_O` with
//! `head_i = Attention(X W_Q_i + b_Q_i, M W_K_i + b_K_i, M W_V_i + b_V_i)`, where the memory
//! `M` is `X` itself for self-attention.
//!
//! Weights use the `x @ W` convention: `W_Q` is `[d_model, heads * head_dim]`, `W_K` and `W_V`
//! are `[d_model, kv_heads * head_dim]` (grouped-query attention when `kv_heads < heads`),
//! `W_O` is `[heads * head_dim, d_model]`; head `i` owns columns `i * head_dim ..` of the
//! projections. (PyTorch's `nn.Linear` stores the transpose.) The four projections are
//! GEMM calls on `[batch * n, d_model]` matrices; the core is any
//! [`Attention`] with the layer's [`Options`], and key padding masks memory positions past
//! each batch element's length (queries at padded positions still attend to the valid keys).

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, Array3, Array4, ArrayView2, ArrayView3, Axis};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::attention::{Attention, Options, Problem, run};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::gemm::gemm;

fn layer_error(message: String) -> Error {
    Error::new(ErrorKind::Layer { message })
}

/// The sizes of a [`MultiHeadAttention`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerConfig {
    /// The model width: the last axis of the layer's input and output.
    pub d_model: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Whether the four projections have biases.
    pub bias: bool,
}

impl LayerConfig {
    /// `heads` heads of width `d_model / heads`, as many key/value heads, no biases.
    pub fn new(d_model: usize, heads: usize) -> Result<Self> {
        if d_model == 0 || heads == 0 {
            return Err(layer_error(format!(
                "d_model and heads must be at least 1, got d_model={d_model} heads={heads}"
            )));
        }
        if !d_model.is_multiple_of(heads) {
            return Err(layer_error(format!(
                "d_model={d_model} is not divisible by heads={heads}; give head_dim explicitly"
            )));
        }
        Ok(Self {
            d_model,
            heads,
            kv_heads: heads,
            head_dim: d_model / heads,
            bias: false,
        })
    }

    /// Sets the key/value heads (grouped-query attention; 1 is multi-query attention).
    pub fn with_kv_heads(mut self, kv_heads: usize) -> Result<Self> {
        if kv_heads == 0 || !self.heads.is_multiple_of(kv_heads) {
            return Err(layer_error(format!(
                "heads={} is not a multiple of kv_heads={kv_heads}",
                self.heads
            )));
        }
        self.kv_heads = kv_heads;
        Ok(self)
    }

    /// Sets the head width instead of `d_model / heads`.
    pub fn with_head_dim(mut self, head_dim: usize) -> Result<Self> {
        if head_dim == 0 {
            return Err(layer_error("head_dim must be at least 1".into()));
        }
        self.head_dim = head_dim;
        Ok(self)
    }

    /// Gives the projections biases (or not).
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Bytes of the four projections' f32 weights (and biases).
    pub fn weight_bytes(&self) -> u64 {
        let (d, wq, wkv) = (
            self.d_model as u64,
            self.q_width() as u64,
            self.kv_width() as u64,
        );
        let biases = if self.bias { wq + 2 * wkv + d } else { 0 };
        4u64.saturating_mul(
            (2 * d)
                .saturating_mul(wq)
                .saturating_add((2 * d).saturating_mul(wkv))
                .saturating_add(biases),
        )
    }

    /// The width of the query projection, `heads * head_dim`.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The width of the key and value projections, `kv_heads * head_dim`.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// The weights of a [`MultiHeadAttention`] layer (`x @ W` convention, see the
/// [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// `[d_model, heads * head_dim]`.
    pub w_q: Array2<f32>,
    /// `[d_model, kv_heads * head_dim]`.
    pub w_k: Array2<f32>,
    /// `[d_model, kv_heads * head_dim]`.
    pub w_v: Array2<f32>,
    /// `[heads * head_dim, d_model]`.
    pub w_o: Array2<f32>,
    /// `[heads * head_dim]`, when the layer has biases.
    pub b_q: Option<Array1<f32>>,
    /// `[kv_heads * head_dim]`, when the layer has biases.
    pub b_k: Option<Array1<f32>>,
    /// `[kv_heads * head_dim]`, when the layer has biases.
    pub b_v: Option<Array1<f32>>,
    /// `[d_model]`, when the layer has biases.
    pub b_o: Option<Array1<f32>>,
}

/// The file stems of the weights, in the order of [`Weights`]' fields.
pub const WEIGHT_FILES: [&str; 8] = ["w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"];

impl Weights {
    /// Glorot/Xavier uniform weights, `U(-a, a)` with `a = sqrt(6 / (fan_in + fan_out))`, from
    /// `seed`; zero biases when the layer has them.
    pub fn xavier(cfg: &LayerConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut glorot = |fan_in: usize, fan_out: usize| {
            let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
            Array2::from_shape_simple_fn((fan_in, fan_out), || rng.random_range(-a..a))
        };
        let (d, wq, wkv) = (cfg.d_model, cfg.q_width(), cfg.kv_width());
        let bias = |n: usize| cfg.bias.then(|| Array1::zeros(n));
        Self {
            w_q: glorot(d, wq),
            w_k: glorot(d, wkv),
            w_v: glorot(d, wkv),
            w_o: glorot(wq, d),
            b_q: bias(wq),
            b_k: bias(wkv),
            b_v: bias(wkv),
            b_o: bias(d),
        }
    }

    /// Loads `w_q.npy`, `w_k.npy`, `w_v.npy`, `w_o.npy` (and `b_q.npy` ... `b_o.npy` when the
    /// layer has biases) from `dir`; shapes are checked against `cfg`.
    pub fn from_npy_dir(cfg: &LayerConfig, dir: &Path) -> Result<Self> {
        let load = |stem: &str| -> Result<ndarray::ArrayD<f32>> {
            crate::npy::read_f32(&dir.join(format!("{stem}.npy")))
        };
        let matrix = |stem: &str| -> Result<Array2<f32>> {
            let a = load(stem)?;
            let shape = a.shape().to_vec();
            a.into_dimensionality().map_err(|_| {
                layer_error(format!("{stem}.npy must be a matrix, got shape {shape:?}"))
            })
        };
        let vector = |stem: &str| -> Result<Option<Array1<f32>>> {
            if !cfg.bias {
                return Ok(None);
            }
            let a = load(stem)?;
            let shape = a.shape().to_vec();
            a.into_dimensionality().map(Some).map_err(|_| {
                layer_error(format!("{stem}.npy must be a vector, got shape {shape:?}"))
            })
        };
        let w = Self {
            w_q: matrix("w_q")?,
            w_k: matrix("w_k")?,
            w_v: matrix("w_v")?,
            w_o: matrix("w_o")?,
            b_q: vector("b_q")?,
            b_k: vector("b_k")?,
            b_v: vector("b_v")?,
            b_o: vector("b_o")?,
        };
        w.check(cfg)?;
        Ok(w)
    }

    /// Checks every shape against `cfg` and that every weight is finite.
    pub fn check(&self, cfg: &LayerConfig) -> Result<()> {
        let (d, wq, wkv) = (cfg.d_model, cfg.q_width(), cfg.kv_width());
        let matrices = [
            ("w_q", &self.w_q, [d, wq]),
            ("w_k", &self.w_k, [d, wkv]),
            ("w_v", &self.w_v, [d, wkv]),
            ("w_o", &self.w_o, [wq, d]),
        ];
        for (name, w, want) in matrices {
            if w.shape() != want {
                return Err(layer_error(format!(
                    "{name} must be {want:?} for d_model={d}, heads={}, kv_heads={}, head_dim={}; got {:?}",
                    cfg.heads,
                    cfg.kv_heads,
                    cfg.head_dim,
                    w.shape()
                )));
            }
            finite(name, w.iter())?;
        }
        let biases = [
            ("b_q", &self.b_q, wq),
            ("b_k", &self.b_k, wkv),
            ("b_v", &self.b_v, wkv),
            ("b_o", &self.b_o, d),
        ];
        for (name, b, want) in biases {
            match (b, cfg.bias) {
                (Some(b), true) if b.len() == want => finite(name, b.iter())?,
                (Some(b), true) => {
                    return Err(layer_error(format!(
                        "{name} must have {want} elements, got {}",
                        b.len()
                    )));
                }
                (None, false) => {}
                (Some(_), false) => {
                    return Err(layer_error(format!(
                        "{name} is given but the layer has no biases"
                    )));
                }
                (None, true) => {
                    return Err(layer_error(format!(
                        "the layer has biases but {name} is missing"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn finite<'a>(name: &str, mut values: impl Iterator<Item = &'a f32>) -> Result<()> {
    match values.position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(layer_error(format!(
            "{name} holds a non-finite value at flat index {i}"
        ))),
    }
}

/// A multi-head attention layer: projections, any attention variant as its core (given per
/// call, so one set of weights can be measured with every variant), and the output
/// projection. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    cfg: LayerConfig,
    weights: Weights,
}

/// Where one layer call spent its time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LayerTimes {
    /// The four projections, including the reshapes to and from heads.
    pub projections: Duration,
    /// The attention core (including its RoPE rotation, when asked for).
    pub core: Duration,
}

impl MultiHeadAttention {
    /// A layer with `weights`, checked against `cfg`.
    pub fn new(cfg: LayerConfig, weights: Weights) -> Result<Self> {
        weights.check(&cfg)?;
        Ok(Self { cfg, weights })
    }

    /// The layer's sizes.
    pub fn config(&self) -> &LayerConfig {
        &self.cfg
    }

    /// The layer's weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Self-attention of `x` (`[batch, n, d_model]`) with `core`: `[batch, n, d_model]`.
    /// `key_lengths` (one per batch element) masks padded positions as keys.
    pub fn forward(
        &self,
        core: &dyn Attention,
        x: ArrayView3<f32>,
        opts: &Options,
        key_lengths: Option<&[usize]>,
    ) -> Result<Array3<f32>> {
        self.forward_timed(core, x, None, opts, key_lengths)
            .map(|r| r.0)
    }

    /// Cross-attention of the queries `x` (`[batch, n_q, d_model]`) to `memory`
    /// (`[batch, n_kv, d_model]`): `[batch, n_q, d_model]`. `key_lengths` masks memory
    /// positions.
    pub fn forward_cross(
        &self,
        core: &dyn Attention,
        x: ArrayView3<f32>,
        memory: ArrayView3<f32>,
        opts: &Options,
        key_lengths: Option<&[usize]>,
    ) -> Result<Array3<f32>> {
        self.forward_timed(core, x, Some(memory), opts, key_lengths)
            .map(|r| r.0)
    }

    /// Like [`forward`](Self::forward) (`memory = None`) or
    /// [`forward_cross`](Self::forward_cross), also returning where the time went.
    pub fn forward_timed(
        &self,
        core: &dyn Attention,
        x: ArrayView3<f32>,
        memory: Option<ArrayView3<f32>>,
        opts: &Options,
        key_lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, LayerTimes)> {
        let (cfg, w) = (&self.cfg, &self.weights);
        let start = Instant::now();
        let (q, k, v) = self.project_qkv(x, memory)?;
        let (batch, n_q) = (x.shape()[0], x.shape()[1]);
        let mut times = LayerTimes {
            projections: start.elapsed(),
            core: Duration::ZERO,
        };

        let start = Instant::now();
        let problem = Problem::new(q.view(), k.view(), v.view(), *opts)?;
        let problem = match key_lengths {
            Some(lengths) => problem.with_key_lengths(lengths)?,
            None => problem,
        };
        let mut heads = Array4::zeros([batch, cfg.heads, n_q, cfg.head_dim]);
        run(core, &problem, heads.view_mut())?;
        times.core = start.elapsed();

        let start = Instant::now();
        // [batch, heads, n_q, head_dim] -> [batch * n_q, heads * head_dim] (Concat).
        let concat = heads
            .permuted_axes([0, 2, 1, 3])
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((batch * n_q, cfg.q_width()))
            .expect("a standard-layout array reshapes");
        let y = project(&concat.view(), &w.w_o, w.b_o.as_ref())
            .into_shape_with_order((batch, n_q, cfg.d_model))
            .expect("a standard-layout array reshapes");
        times.projections += start.elapsed();
        Ok((y, times))
    }
}

impl MultiHeadAttention {
    /// The per-head queries `[batch, heads, n_q, head_dim]`, keys and values
    /// `[batch, kv_heads, n_kv, head_dim]` of `x` (and `memory` for cross-attention): the
    /// core's inputs.
    pub fn project_qkv(
        &self,
        x: ArrayView3<f32>,
        memory: Option<ArrayView3<f32>>,
    ) -> Result<(Array4<f32>, Array4<f32>, Array4<f32>)> {
        let (cfg, w) = (&self.cfg, &self.weights);
        check_input("x", &x, cfg.d_model, None)?;
        if let Some(mem) = &memory {
            check_input("memory", mem, cfg.d_model, Some(x.shape()[0]))?;
        }
        let batch = x.shape()[0];
        let x2 = rows(x);
        let m2_own;
        let m2 = match memory {
            Some(mem) => {
                m2_own = rows(mem);
                &m2_own
            }
            None => &x2,
        };
        Ok((
            to_heads(
                project(&x2.view(), &w.w_q, w.b_q.as_ref()),
                batch,
                cfg.heads,
            ),
            to_heads(
                project(&m2.view(), &w.w_k, w.b_k.as_ref()),
                batch,
                cfg.kv_heads,
            ),
            to_heads(
                project(&m2.view(), &w.w_v, w.b_v.as_ref()),
                batch,
                cfg.kv_heads,
            ),
        ))
    }
}

fn check_input(
    name: &str,
    x: &ArrayView3<f32>,
    d_model: usize,
    batch: Option<usize>,
) -> Result<()> {
    let s = x.shape();
    if s.contains(&0) {
        return Err(layer_error(format!(
            "{name} has a zero-length axis (shape {s:?}); [batch, n, d_model] must all be at least 1"
        )));
    }
    if s[2] != d_model {
        return Err(layer_error(format!(
            "{name} must be [batch, n, d_model={d_model}], got {s:?}"
        )));
    }
    if let Some(b) = batch.filter(|&b| b != s[0]) {
        return Err(layer_error(format!(
            "{name} has batch {} but the queries have batch {b}",
            s[0]
        )));
    }
    if let Some(((b, i, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(layer_error(format!(
            "{name} holds a non-finite value {v} at [batch, position, channel] = [{b}, {i}, {c}]"
        )));
    }
    Ok(())
}

/// `[batch, n, d]` as a standard-layout `[batch * n, d]` matrix.
fn rows(x: ArrayView3<f32>) -> Array2<f32> {
    let (b, n, d) = x.dim();
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order((b * n, d))
        .expect("a standard-layout array reshapes")
}

/// `x w + b` (GEMM; the bias is broadcast into the output first). The rows are split
/// across the rayon pool: each GEMM call runs on one thread.
fn project(x: &ArrayView2<f32>, w: &Array2<f32>, b: Option<&Array1<f32>>) -> Array2<f32> {
    use rayon::prelude::*;
    let mut y = Array2::zeros((x.nrows(), w.ncols()));
    let beta = match b {
        Some(b) => {
            let dim = y.raw_dim();
            y.assign(&b.broadcast(dim).expect("bias width checked"));
            1.0
        }
        None => 0.0,
    };
    // Blocks of at least 64 rows keep each product efficient.
    let rows = x.nrows().div_ceil(rayon::current_num_threads()).max(64);
    let blocks: Vec<_> = x
        .axis_chunks_iter(Axis(0), rows)
        .zip(y.axis_chunks_iter_mut(Axis(0), rows))
        .collect();
    blocks.into_par_iter().for_each(|(x, mut y)| {
        gemm(1.0, &x, &w.view(), beta, &mut y);
    });
    y
}

/// `[batch * n, heads * head_dim]` -> standard-layout `[batch, heads, n, head_dim]`.
fn to_heads(y: Array2<f32>, batch: usize, heads: usize) -> Array4<f32> {
    let (rows, width) = y.dim();
    y.into_shape_with_order((batch, rows / batch, heads, width / heads))
        .expect("a standard-layout array reshapes")
        .permuted_axes([0, 2, 1, 3])
        .as_standard_layout()
        .into_owned()
}
