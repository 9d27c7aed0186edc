//! A Llama-family decoder read from a GGUF file: token embedding, then per block
//! `x += Wo · Attention(RoPE(Wq · n1(x)), RoPE(Wk · n1(x)), Wv · n1(x))` and
//! `x += W_down · (silu(W_gate · n2(x)) ⊙ W_up · n2(x))`, with `n1`, `n2` RMSNorm, then a
//! final RMSNorm and the output head (the embedding itself when the file has no
//! `output.weight`: tied embeddings).
//!
//! The attention of each block is any [`Attention`] variant, called through the checked path
//! ([`Problem::new`] then [`run`]) with causal masking and the default
//! `1/sqrt(head_dim)` scale; grouped-query attention is the variant's own (query head `h`
//! reads KV head `h / (heads / kv_heads)`).
//!
//! llama.cpp's converter permutes the rows of each head of the Q and K projections so that
//! its RoPE can rotate adjacent pairs `(2i, 2i + 1)`; the Hugging Face checkpoints rotate the
//! halves `(i, i + head_dim / 2)`. [`Llama::from_gguf`] undoes the permutation, so Q and K are
//! in the checkpoint's own layout (and match activations captured from it), and RoPE rotates
//! halves. Attention scores are unchanged either way: the permutation is the same for Q and K.
//!
//! Weights are decoded to `f32` once, at load, and stored transposed (`x @ W`), so every
//! projection is one GEMM over row blocks of the sequence, spread over the rayon pool.

use std::time::{Duration, Instant};

use ndarray::{Array2, Array3, Array4, ArrayView2, Axis, Zip, s};
use rayon::prelude::*;

use super::gguf::Gguf;
use crate::attention::{Attention, Options, Problem, reasons, run};
use crate::error::{Error, Result};
use crate::kernels::gemm::gemm;
use crate::shape::Shape;

/// The sizes and constants of a Llama-family model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of the MLP's hidden layer.
    pub d_ff: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// The context length the model was trained for.
    pub context: usize,
    /// RoPE's base (`theta`).
    pub rope_base: f64,
    /// RMSNorm's epsilon.
    pub eps: f32,
}

impl LlamaConfig {
    /// The configuration a GGUF file's `llama.*` metadata describes.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.str("general.architecture")?;
        if arch != "llama" {
            return Err(g.error(format!(
                "general.architecture is '{arch}'; attnbench runs Llama-family models ('llama')"
            )));
        }
        let key = |k: &str| format!("llama.{k}");
        let heads = g.usize(&key("attention.head_count"))?;
        let d_model = g.usize(&key("embedding_length"))?;
        let kv_heads = match g.get(&key("attention.head_count_kv")) {
            None => heads,
            Some(_) => g.usize(&key("attention.head_count_kv"))?,
        };
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(g.error(format!(
                "{heads} query heads are not a multiple of {kv_heads} key/value heads"
            )));
        }
        if !d_model.is_multiple_of(heads) {
            return Err(g.error(format!(
                "embedding_length {d_model} is not a multiple of {heads} heads"
            )));
        }
        let head_dim = d_model / heads;
        if g.get(&key("rope.dimension_count")).is_some() {
            let rot = g.usize(&key("rope.dimension_count"))?;
            if rot != head_dim {
                return Err(g.error(format!(
                    "rope.dimension_count is {rot}, not the head width {head_dim}: partial rotary embeddings are not supported"
                )));
            }
        }
        if !head_dim.is_multiple_of(2) {
            return Err(g.error(format!("head width {head_dim} is odd; RoPE needs pairs")));
        }
        let vocab = match g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => g.usize(&key("vocab_size"))?,
        };
        let rope_base = match g.get(&key("rope.freq_base")) {
            None => 10_000.0,
            Some(_) => g.f64(&key("rope.freq_base"))?,
        };
        // Scaled RoPE (linear, YaRN, Llama 3's frequency factors) is not implemented: refuse
        // it rather than run unscaled frequencies.
        let scaling = g
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.as_str())
            .filter(|t| *t != "none");
        let factor = g
            .get(&key("rope.scaling.factor"))
            .and_then(|v| v.as_f64())
            .filter(|f| *f != 0.0 && *f != 1.0);
        if scaling.is_some() || factor.is_some() || g.info("rope_freqs.weight").is_ok() {
            return Err(g.error(format!(
                "the model scales its RoPE (type {scaling:?}, factor {factor:?}, or rope_freqs.weight), which attnbench does not implement"
            )));
        }
        let eps = g.f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        if !(rope_base > 1.0 && rope_base.is_finite() && eps >= 0.0 && eps.is_finite()) {
            return Err(g.error(format!(
                "rope.freq_base {rope_base} or layer_norm_rms_epsilon {eps} is out of range"
            )));
        }
        let cfg = Self {
            layers: g.usize(&key("block_count"))?,
            d_model,
            d_ff: g.usize(&key("feed_forward_length"))?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context: g.usize(&key("context_length"))?,
            rope_base,
            eps,
        };
        if cfg.layers == 0 || cfg.d_model == 0 || cfg.d_ff == 0 || cfg.vocab == 0 {
            return Err(g.error(format!("a size of the model is zero: {cfg:?}")));
        }
        Ok(cfg)
    }

    /// Bytes of `f32` weights the model holds once loaded (with the transposed output head).
    pub fn weight_bytes(&self) -> u64 {
        let (d, f, hd) = (self.d_model as u64, self.d_ff as u64, self.head_dim as u64);
        let attn = d * (self.heads as u64 * hd) * 2 + d * (self.kv_heads as u64 * hd) * 2;
        let block = attn + 3 * d * f + 2 * d;
        4 * (self.layers as u64 * block + 2 * self.vocab as u64 * d + d)
    }
}

/// One transformer block's weights, in the `x @ W` convention (`[in, out]`).
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Vec<f32>,
    wq: Array2<f32>,
    wk: Array2<f32>,
    wv: Array2<f32>,
    wo: Array2<f32>,
    ffn_norm: Vec<f32>,
    gate: Array2<f32>,
    up: Array2<f32>,
    down: Array2<f32>,
}

/// A Llama-family model, decoded to `f32`.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Its sizes.
    pub cfg: LlamaConfig,
    /// `[vocab, d_model]`.
    embed: Array2<f32>,
    blocks: Vec<Block>,
    out_norm: Vec<f32>,
    /// `[d_model, vocab]`: the output head, transposed.
    head: Array2<f32>,
}

/// Q, K and V of one layer as the attention saw them: `[heads, n, head_dim]` and
/// `[kv_heads, n, head_dim]`, Q and K after RoPE and before the `1/sqrt(head_dim)` scale.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The layer (0-based).
    pub layer: usize,
    /// Queries.
    pub q: Array3<f32>,
    /// Keys.
    pub k: Array3<f32>,
    /// Values.
    pub v: Array3<f32>,
}

/// What one forward pass over a window of tokens gives.
#[derive(Debug, Clone)]
pub struct Forward {
    /// `nll[p]`: the negative log-likelihood (nats) of token `p + 1` given tokens `0..=p`;
    /// one fewer than the tokens.
    pub nll: Vec<f64>,
    /// Wall time of the whole pass.
    pub total: Duration,
    /// Wall time spent in the attention calls (all layers).
    pub attention: Duration,
    /// The layers asked for in `capture`.
    pub captured: Vec<Captured>,
}

impl Llama {
    /// Decodes the model in `g`; an error naming the tensor when one is missing, of the
    /// wrong shape or of a type that is not decoded.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(g)?;
        let (d, f, hd) = (cfg.d_model, cfg.d_ff, cfg.head_dim);
        let (wq, wkv) = (cfg.heads * hd, cfg.kv_heads * hd);
        let vector = |name: &str, len: usize| g.tensor(name, &[len]);
        // A GGUF matrix of dims [in, out] holds `out` rows of `in`: [out, in] row-major.
        let rows = |name: &str, inp: usize, out: usize| -> Result<Array2<f32>> {
            let data = g.tensor(name, &[inp, out])?;
            Ok(Array2::from_shape_vec((out, inp), data).expect("length checked by shape"))
        };
        let transposed = |m: Array2<f32>| m.t().as_standard_layout().into_owned();
        let embed = rows("token_embd.weight", d, cfg.vocab)?;
        let head = match g.info("output.weight") {
            Ok(_) => transposed(rows("output.weight", d, cfg.vocab)?),
            Err(_) => transposed(embed.clone()),
        };
        // No reservation from `block_count`: the file's tensors bound the layers, and the
        // first missing one ends the loop with an error.
        let mut blocks = Vec::new();
        for l in 0..cfg.layers {
            let name = |t: &str| format!("blk.{l}.{t}.weight");
            let q = unpermute_rope_rows(rows(&name("attn_q"), d, wq)?, cfg.heads, hd);
            let k = unpermute_rope_rows(rows(&name("attn_k"), d, wkv)?, cfg.kv_heads, hd);
            blocks.push(Block {
                attn_norm: vector(&name("attn_norm"), d)?,
                wq: transposed(q),
                wk: transposed(k),
                wv: transposed(rows(&name("attn_v"), d, wkv)?),
                wo: transposed(rows(&name("attn_output"), wq, d)?),
                ffn_norm: vector(&name("ffn_norm"), d)?,
                gate: transposed(rows(&name("ffn_gate"), d, f)?),
                up: transposed(rows(&name("ffn_up"), d, f)?),
                down: transposed(rows(&name("ffn_down"), f, d)?),
            });
        }
        Ok(Self {
            cfg,
            embed,
            blocks,
            out_norm: vector("output_norm.weight", d)?,
            head,
        })
    }

    /// The attention shape of a window of `n` tokens.
    pub fn shape(&self, n: usize) -> Result<Shape> {
        let c = &self.cfg;
        Shape::new(1, c.heads, c.kv_heads, n, n, c.head_dim, c.head_dim)
    }

    /// Runs the model over `tokens` (one window, positions `0..tokens.len()`), with the
    /// attention of block `l` done by `attention[l]`; returns each position's next-token
    /// negative log-likelihood and Q, K, V of the blocks in `capture`.
    pub fn forward(
        &self,
        tokens: &[u32],
        attention: &[&dyn Attention],
        capture: &[usize],
    ) -> Result<Forward> {
        let cfg = &self.cfg;
        let n = tokens.len();
        if n < 2 {
            return Err(model_error(format!(
                "a window needs at least 2 tokens to score one, got {n}"
            )));
        }
        if attention.len() != cfg.layers {
            return Err(model_error(format!(
                "{} attention variants given for {} layers",
                attention.len(),
                cfg.layers
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(model_error(format!(
                "token id {t} is outside the vocabulary of {}",
                cfg.vocab
            )));
        }
        let shape = self.shape(n)?;
        let opts = Options::new().causal(true);
        for (l, a) in attention.iter().enumerate() {
            let why = reasons(*a, &shape, &opts, false);
            if !why.is_empty() {
                return Err(model_error(format!(
                    "{a} cannot run layer {l} ({shape}, causal): {}",
                    why.join("; ")
                )));
            }
        }
        let start = Instant::now();
        let mut attention_time = Duration::ZERO;
        let mut captured = Vec::new();
        let (h, kvh, hd) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let rope = Rope::new(n, hd, cfg.rope_base);
        let mut x = Array2::<f32>::zeros((n, cfg.d_model));
        for (mut row, &t) in x.outer_iter_mut().zip(tokens) {
            row.assign(&self.embed.row(t as usize));
        }
        let mut out = Array4::<f32>::zeros((1, h, n, hd));
        for (l, (block, variant)) in self.blocks.iter().zip(attention).enumerate() {
            let normed = rms_norm(x.view(), &block.attn_norm, cfg.eps);
            let q = heads_first(&linear(normed.view(), block.wq.view()), h, Some(&rope));
            let k = heads_first(&linear(normed.view(), block.wk.view()), kvh, Some(&rope));
            let v = heads_first(&linear(normed.view(), block.wv.view()), kvh, None);
            let t0 = Instant::now();
            let problem = Problem::new(q.view(), k.view(), v.view(), opts)
                .map_err(|e| model_error(format!("layer {l}: {e}")))?;
            run(*variant, &problem, out.view_mut())
                .map_err(|e| model_error(format!("layer {l}, {variant}: {e}")))?;
            attention_time += t0.elapsed();
            if capture.contains(&l) {
                captured.push(Captured {
                    layer: l,
                    q: q.index_axis_move(Axis(0), 0),
                    k: k.index_axis_move(Axis(0), 0),
                    v: v.index_axis_move(Axis(0), 0),
                });
            }
            // [1, heads, n, hd] -> [n, heads * hd].
            let merged = out
                .index_axis(Axis(0), 0)
                .permuted_axes([1, 0, 2])
                .as_standard_layout()
                .into_shape_with_order((n, h * hd))
                .expect("standard layout")
                .into_owned();
            x += &linear(merged.view(), block.wo.view());
            let normed = rms_norm(x.view(), &block.ffn_norm, cfg.eps);
            let mut gate = linear(normed.view(), block.gate.view());
            let up = linear(normed.view(), block.up.view());
            Zip::from(&mut gate).and(&up).par_for_each(|g, &u| {
                *g = *g / (1.0 + (-*g).exp()) * u;
            });
            x += &linear(gate.view(), block.down.view());
        }
        let normed = rms_norm(x.view(), &self.out_norm, cfg.eps);
        let nll = self.next_token_nll(normed.view(), tokens);
        Ok(Forward {
            nll,
            total: start.elapsed(),
            attention: attention_time,
            captured,
        })
    }

    /// `-log softmax(h_p · head)[tokens[p + 1]]` for each position but the last, in row
    /// blocks (the whole `[n, vocab]` logits are never held at once), log-sum-exp in `f64`.
    fn next_token_nll(&self, normed: ArrayView2<f32>, tokens: &[u32]) -> Vec<f64> {
        const ROWS: usize = 256;
        let n = tokens.len();
        let mut nll = vec![0.0; n - 1];
        for (c, chunk) in nll.chunks_mut(ROWS).enumerate() {
            let first = c * ROWS;
            let logits = linear(
                normed.slice(s![first..first + chunk.len(), ..]),
                self.head.view(),
            );
            Zip::from(chunk)
                .and(logits.outer_iter())
                .and(&tokens[first + 1..first + 1 + logits.nrows()])
                .par_for_each(|out, row, &target| {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
                    let sum: f64 = row.iter().map(|&z| f64::from(z - max).exp()).sum();
                    *out = f64::from(max) + sum.ln() - f64::from(row[target as usize]);
                });
        }
        nll
    }
}

fn model_error(message: String) -> Error {
    Error::new(crate::error::ErrorKind::Layer { message })
}

/// Reorders the rows of each head of a Q or K projection (`[heads * hd, in]`) from
/// llama.cpp's layout, where rows `2i` and `2i + 1` are a RoPE pair, to the checkpoint's,
/// where rows `i` and `i + hd / 2` are: the inverse of the converter's
/// `reshape(heads, 2, hd / 2, in).swapaxes(1, 2)`.
fn unpermute_rope_rows(m: Array2<f32>, heads: usize, hd: usize) -> Array2<f32> {
    let half = hd / 2;
    let mut out = Array2::zeros(m.raw_dim());
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                out.row_mut(h * hd + j * half + i)
                    .assign(&m.row(h * hd + 2 * i + j));
            }
        }
    }
    out
}

/// `x @ w` for `x: [n, in]`, `w: [in, out]`, in row blocks across the rayon pool.
fn linear(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    const ROWS: usize = 128;
    let mut out = Array2::<f32>::zeros((x.nrows(), w.ncols()));
    out.axis_chunks_iter_mut(Axis(0), ROWS)
        .into_par_iter()
        .zip(x.axis_chunks_iter(Axis(0), ROWS).into_par_iter())
        .for_each(|(mut ob, xb)| gemm(1.0, &xb, &w, 0.0, &mut ob));
    out
}

/// `x / sqrt(mean(x^2) + eps) * weight` per row, the mean accumulated in `f64`.
fn rms_norm(x: ArrayView2<f32>, weight: &[f32], eps: f32) -> Array2<f32> {
    let mut out = x.to_owned();
    Zip::from(out.outer_iter_mut()).par_for_each(|mut row| {
        let ms = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / row.len() as f64;
        let r = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
        row.iter_mut()
            .zip(weight)
            .for_each(|(v, &w)| *v = *v * r * w);
    });
    out
}

/// The rotate-half RoPE tables: `cos` and `sin` of `p * base^(-2i / hd)`, `[n, hd / 2]`,
/// computed in `f64`.
struct Rope {
    cos: Array2<f32>,
    sin: Array2<f32>,
}

impl Rope {
    fn new(n: usize, hd: usize, base: f64) -> Self {
        let half = hd / 2;
        let angle = |p: usize, i: usize| p as f64 * base.powf(-2.0 * i as f64 / hd as f64);
        Self {
            cos: Array2::from_shape_fn((n, half), |(p, i)| angle(p, i).cos() as f32),
            sin: Array2::from_shape_fn((n, half), |(p, i)| angle(p, i).sin() as f32),
        }
    }
}

/// `[n, heads * hd]` to `[1, heads, n, hd]`, each head's halves rotated by `rope` when given.
fn heads_first(x: &Array2<f32>, heads: usize, rope: Option<&Rope>) -> Array4<f32> {
    let n = x.nrows();
    let hd = x.ncols() / heads;
    let half = hd / 2;
    let mut out = Array4::<f32>::zeros((1, heads, n, hd));
    Zip::indexed(out.index_axis_mut(Axis(0), 0).outer_iter_mut()).par_for_each(|h, mut head| {
        for (p, mut row) in head.outer_iter_mut().enumerate() {
            let src = x.slice(s![p, h * hd..(h + 1) * hd]);
            let Some(rope) = rope else {
                row.assign(&src);
                continue;
            };
            for i in 0..half {
                let (c, sn) = (rope.cos[[p, i]], rope.sin[[p, i]]);
                let (a, b) = (src[i], src[i + half]);
                row[i] = a * c - b * sn;
                row[i + half] = b * c + a * sn;
            }
        }
    });
    out
}
