//! The GGUF reader, the Llama forward pass and `attnbench perplexity` on a tiny model this
//! test writes itself (random weights in six tensor types, two layers, grouped-query
//! attention), so no download is needed: the reader's decoding against hand-computed blocks,
//! the forward pass against a plain `f64` implementation written here from the Hugging Face
//! conventions (un-permuted Q/K rows, rotate-half RoPE), every bad-file class a clear error,
//! and the command's rows and report.

use std::path::{Path, PathBuf};
use std::process::Command;

use attnbench::model::gguf::{Gguf, TensorType, dequantize};
use attnbench::model::llama::Llama;
use attnbench::model::tokenizer::{PreTokenizer, Tokenizer, byte_alphabet, pre_tokens};
use attnbench::{Attention, ErrorKind, Registry};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

// ---------------------------------------------------------------------------------------
// A GGUF writer, independent of the reader.

const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;
const BF16: u32 = 30;

#[derive(Clone)]
struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Added to the offset written for it (0: where it belongs).
    shift: u64,
}

#[derive(Clone, Default)]
struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<Tensor>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

impl Writer {
    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }
    fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.kv.extend(v.to_le_bytes());
    }
    fn f32(&mut self, k: &str, v: f32) {
        self.key(k, 6);
        self.kv.extend(v.to_le_bytes());
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k, 8);
        put_str(&mut self.kv, v);
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        self.key(k, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) {
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
            shift: 0,
        });
    }
    /// The file: header, metadata, tensor table, data aligned to 32.
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend((offset + t.shift).to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(32);
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for t in &self.tensors {
            out.extend(&t.data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        // The last tensor ends the file.
        let last = self.tensors.last().map_or(0, |t| t.data.len());
        let pad = (32 - last % 32) % 32;
        out.truncate(out.len() - pad);
        out
    }
}

// ---------------------------------------------------------------------------------------
// Plain decoding in f64, written from the ggml block layouts.

fn half(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let e = i32::from((bits >> 10) & 0x1f);
    let m = f64::from(bits & 0x3ff);
    match e {
        0 => sign * m / 1024.0 * 2f64.powi(-14),
        31 => f64::NAN,
        _ => sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
    }
}

/// A random f16 of magnitude in [2^lo, 2^hi), random sign when `signed`.
fn random_half(rng: &mut StdRng, lo: i32, hi: i32, signed: bool) -> u16 {
    let e = rng.random_range(lo + 15..hi + 15) as u16;
    let m: u16 = rng.random_range(0..1024);
    let s = u16::from(signed && rng.random_bool(0.5));
    (s << 15) | (e << 10) | m
}

/// Random data of `rows` rows of `cols` elements of type `ty`, and its values in f64.
fn random_tensor(rng: &mut StdRng, ty: u32, rows: usize, cols: usize) -> (Vec<u8>, Vec<f64>) {
    random_scaled(rng, ty, rows, cols, -7)
}

/// [`random_tensor`] with block scales of magnitude in `[2^lo, 2^(lo + 2))`.
fn random_scaled(
    rng: &mut StdRng,
    ty: u32,
    rows: usize,
    cols: usize,
    lo: i32,
) -> (Vec<u8>, Vec<f64>) {
    let (mut bytes, mut values) = (Vec::new(), Vec::new());
    match ty {
        F32 => {
            for _ in 0..rows * cols {
                let v: f32 = rng.random_range(-0.5..0.5);
                bytes.extend(v.to_le_bytes());
                values.push(f64::from(v));
            }
        }
        F16 => {
            for _ in 0..rows * cols {
                let h = random_half(rng, -6, -1, true);
                bytes.extend(h.to_le_bytes());
                values.push(half(h));
            }
        }
        BF16 => {
            for _ in 0..rows * cols {
                let v: f32 = rng.random_range(-0.4..0.4);
                let b = (v.to_bits() >> 16) as u16;
                bytes.extend(b.to_le_bytes());
                values.push(f64::from(f32::from_bits(u32::from(b) << 16)));
            }
        }
        Q4_0 | Q4_1 | Q8_0 => {
            for _ in 0..rows * cols / 32 {
                let d = random_half(rng, lo, lo + 2, false);
                bytes.extend(d.to_le_bytes());
                let d = half(d);
                if ty == Q8_0 {
                    let q: Vec<i8> = (0..32).map(|_| rng.random_range(-127..=127)).collect();
                    bytes.extend(q.iter().map(|&x| x as u8));
                    values.extend(q.iter().map(|&x| f64::from(x) * d));
                    continue;
                }
                // Q4_1 stores its offset m after d; Q4_0's is -8 d.
                let m = if ty == Q4_1 {
                    let mh = random_half(rng, -5, -3, true);
                    bytes.extend(mh.to_le_bytes());
                    half(mh)
                } else {
                    -8.0 * d
                };
                let q: Vec<u8> = (0..32).map(|_| rng.random_range(0..16)).collect();
                for j in 0..16 {
                    bytes.push(q[j] | (q[j + 16] << 4));
                }
                values.extend(q.iter().map(|&x| f64::from(x) * d + m));
            }
        }
        _ => unreachable!(),
    }
    (bytes, values)
}

// ---------------------------------------------------------------------------------------
// The tiny model.

const D: usize = 32;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 8;
const FF: usize = 64;
const LAYERS: usize = 2;
const BASE: f64 = 10_000.0;
const EPS: f64 = 1e-5;

/// `[rows][cols]` in f64.
type Mat = Vec<Vec<f64>>;

struct Reference {
    embed: Mat,
    blocks: Vec<[Mat; 7]>,
    norms: Vec<[Vec<f64>; 2]>,
    out_norm: Vec<f64>,
    /// A separate output head (`output.weight`), when the file has one.
    head: Option<Mat>,
}

/// A vocabulary of the 256 byte symbols and `merges` merged ones, with their merges.
fn vocabulary() -> (Vec<String>, Vec<String>) {
    let alphabet = byte_alphabet();
    let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    (tokens, merges.iter().map(|m| m.to_string()).collect())
}

fn rows_of(values: &[f64], rows: usize, cols: usize) -> Mat {
    (0..rows)
        .map(|r| values[r * cols..(r + 1) * cols].to_vec())
        .collect()
}

/// llama.cpp's converter: `w.reshape(heads, 2, hd / 2, in).swapaxes(1, 2)`, on rows.
fn permute<T: Clone>(rows: &[T], heads: usize) -> Vec<T> {
    let hd = rows.len() / heads;
    let mut out = Vec::with_capacity(rows.len());
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                out.push(rows[h * hd + j * (hd / 2) + i].clone());
            }
        }
    }
    out
}

/// Writes a random `[rows, cols]` matrix of type `ty` as tensor `name` (rows permuted the
/// converter's way when `heads` is given: Q and K); returns it in the checkpoint's layout.
fn matrix(
    w: &mut Writer,
    rng: &mut StdRng,
    name: &str,
    ty: u32,
    [rows, cols]: [usize; 2],
    heads: Option<usize>,
) -> Mat {
    let (bytes, values) = random_tensor(rng, ty, rows, cols);
    let byte_rows: Vec<Vec<u8>> = bytes
        .chunks(bytes.len() / rows)
        .map(<[u8]>::to_vec)
        .collect();
    let stored = match heads {
        Some(h) => permute(&byte_rows, h).concat(),
        None => bytes,
    };
    w.tensor(name, &[cols as u64, rows as u64], ty, stored);
    rows_of(&values, rows, cols)
}

/// Writes the tiny model; returns the writer and the weights in the checkpoint's layout.
fn tiny_model(seed: u64) -> (Writer, Reference) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (tokens, merges) = vocabulary();
    let vocab = tokens.len();
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    w.str("general.name", "tiny test model");
    w.u32("llama.block_count", LAYERS as u32);
    w.u32("llama.context_length", 64);
    w.u32("llama.embedding_length", D as u32);
    w.u32("llama.feed_forward_length", FF as u32);
    w.u32("llama.attention.head_count", HEADS as u32);
    w.u32("llama.attention.head_count_kv", KV as u32);
    w.f32("llama.rope.freq_base", BASE as f32);
    w.f32("llama.attention.layer_norm_rms_epsilon", EPS as f32);
    w.u32("llama.rope.dimension_count", HD as u32);
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", "smollm");
    w.strs("tokenizer.ggml.tokens", &tokens);
    w.strs("tokenizer.ggml.merges", &merges);
    // Embeddings of at most 0.5 (trained models' are smaller still): logits of a few units.
    let (bytes, embed) = random_scaled(&mut rng, Q8_0, vocab, D, -10);
    w.tensor("token_embd.weight", &[D as u64, vocab as u64], Q8_0, bytes);
    let norm = |rng: &mut StdRng| -> (Vec<u8>, Vec<f64>) {
        let v: Vec<f32> = (0..D).map(|_| rng.random_range(0.5..1.5)).collect();
        (
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            v.iter().map(|&x| f64::from(x)).collect(),
        )
    };
    let mut blocks = Vec::new();
    let mut norms = Vec::new();
    for l in 0..LAYERS {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        let (nb, n1) = norm(&mut rng);
        w.tensor(&name("attn_norm"), &[D as u64], F32, nb);
        // Q and K: random rows in the checkpoint's layout, written permuted.
        let q = matrix(
            &mut w,
            &mut rng,
            &name("attn_q"),
            Q4_1,
            [HEADS * HD, D],
            Some(HEADS),
        );
        let k = matrix(
            &mut w,
            &mut rng,
            &name("attn_k"),
            Q4_0,
            [KV * HD, D],
            Some(KV),
        );
        let v = matrix(&mut w, &mut rng, &name("attn_v"), F16, [KV * HD, D], None);
        let o = matrix(
            &mut w,
            &mut rng,
            &name("attn_output"),
            F32,
            [D, HEADS * HD],
            None,
        );
        let (nb, n2) = norm(&mut rng);
        w.tensor(&name("ffn_norm"), &[D as u64], F32, nb);
        let gate = matrix(&mut w, &mut rng, &name("ffn_gate"), Q4_1, [FF, D], None);
        let up = matrix(&mut w, &mut rng, &name("ffn_up"), Q8_0, [FF, D], None);
        let down = matrix(&mut w, &mut rng, &name("ffn_down"), BF16, [D, FF], None);
        blocks.push([q, k, v, o, gate, up, down]);
        norms.push([n1, n2]);
    }
    let (nb, out_norm) = norm(&mut rng);
    w.tensor("output_norm.weight", &[D as u64], F32, nb);
    let reference = Reference {
        embed: rows_of(&embed, vocab, D),
        blocks,
        norms,
        out_norm,
        head: None,
    };
    (w, reference)
}

/// Adds a separate output head (`output.weight`, F16) to the tiny model.
fn with_output_head(w: &mut Writer, r: &mut Reference, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = r.embed.len();
    let (bytes, values) = random_tensor(&mut rng, F16, vocab, D);
    w.tensor("output.weight", &[D as u64, vocab as u64], F16, bytes);
    r.head = Some(rows_of(&values, vocab, D));
}

fn matvec(m: &Mat, x: &[f64]) -> Vec<f64> {
    m.iter()
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms(x: &[f64], w: &[f64]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + EPS).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

/// Rotate-half RoPE of each head of `x` at position `p`.
fn rope(x: &mut [f64], p: usize) {
    for head in x.chunks_mut(HD) {
        for i in 0..HD / 2 {
            let a = p as f64 * BASE.powf(-2.0 * i as f64 / HD as f64);
            let (u, v) = (head[i], head[i + HD / 2]);
            head[i] = u * a.cos() - v * a.sin();
            head[i + HD / 2] = v * a.cos() + u * a.sin();
        }
    }
}

/// The plain forward pass: per-position next-token NLL, and Q (after RoPE) of layer 1.
fn reference_forward(r: &Reference, tokens: &[u32]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = tokens.len();
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| r.embed[t as usize].clone())
        .collect();
    let mut q_last = Vec::new();
    for (l, [wq, wk, wv, wo, gate, up, down]) in r.blocks.iter().enumerate() {
        let h: Vec<Vec<f64>> = x.iter().map(|row| rms(row, &r.norms[l][0])).collect();
        let mut q: Vec<Vec<f64>> = h.iter().map(|row| matvec(wq, row)).collect();
        let mut k: Vec<Vec<f64>> = h.iter().map(|row| matvec(wk, row)).collect();
        let v: Vec<Vec<f64>> = h.iter().map(|row| matvec(wv, row)).collect();
        for p in 0..n {
            rope(&mut q[p], p);
            rope(&mut k[p], p);
        }
        if l == LAYERS - 1 {
            q_last = q.clone();
        }
        for i in 0..n {
            let mut att = vec![0.0; HEADS * HD];
            for hh in 0..HEADS {
                let kv = hh / (HEADS / KV);
                let qi = &q[i][hh * HD..(hh + 1) * HD];
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k[j][kv * HD..(kv + 1) * HD];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (HD as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    let pj = (sj - m).exp() / z;
                    for c in 0..HD {
                        att[hh * HD + c] += pj * v[j][kv * HD + c];
                    }
                }
            }
            let o = matvec(wo, &att);
            x[i].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        for row in x.iter_mut() {
            let hn = rms(row, &r.norms[l][1]);
            let g = matvec(gate, &hn);
            let u = matvec(up, &hn);
            let a: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let d = matvec(down, &a);
            row.iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
    }
    let nll = (0..n - 1)
        .map(|p| {
            let h = rms(&x[p], &r.out_norm);
            let logits = matvec(r.head.as_ref().unwrap_or(&r.embed), &h);
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            lse - logits[tokens[p + 1] as usize]
        })
        .collect();
    (nll, q_last)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn parse(bytes: Vec<u8>) -> attnbench::Result<Gguf> {
    Gguf::parse(Path::new("tiny.gguf"), bytes)
}

fn random_tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

// ---------------------------------------------------------------------------------------

#[test]
fn blocks_decode_to_their_hand_computed_values() {
    let ty = |n: &str| TensorType::from_name(n).unwrap();
    // Q4_1: d = 0.5, m = -1; element j is the low nibble of byte j, j + 16 the high one.
    let mut b = vec![0x00, 0x38, 0x00, 0xbc];
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = dequantize(ty("Q4_1"), &b).unwrap();
    assert_eq!(v[0], -1.0);
    assert_eq!(v[3], 0.5);
    assert_eq!(v[16], 6.5);
    assert_eq!(v[31], -1.0);
    // Q4_0: d = 2, x = (q - 8) d.
    let mut b = vec![0x00, 0x40];
    b.extend([0x0f; 16]);
    let v = dequantize(ty("Q4_0"), &b).unwrap();
    assert_eq!((v[0], v[16]), (14.0, -16.0));
    // Q8_0: d = 0.25.
    let mut b = vec![0x00, 0x34];
    b.extend((0..32).map(|j: i32| (j - 16) as i8 as u8));
    let v = dequantize(ty("Q8_0"), &b).unwrap();
    assert_eq!((v[0], v[31]), (-4.0, 3.75));
    // F16 (a subnormal, -2, 65504), BF16, F32.
    let v = dequantize(ty("F16"), &[0x01, 0x00, 0x00, 0xc0, 0xff, 0x7b]).unwrap();
    assert_eq!(v, vec![2f32.powi(-24), -2.0, 65504.0]);
    let v = dequantize(ty("BF16"), &[0x80, 0x3f, 0x49, 0x40]).unwrap();
    assert_eq!(v, vec![1.0, 3.140625]);
    assert_eq!(
        dequantize(ty("F32"), &1.5f32.to_le_bytes()).unwrap(),
        vec![1.5]
    );
    // Known layouts that are not decoded.
    assert!(dequantize(ty("Q4_K"), &[0; 144]).is_none());
}

#[test]
fn the_reader_returns_what_the_writer_wrote() {
    let (w, _) = tiny_model(1);
    let g = parse(w.bytes()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.str("general.name").unwrap(), "tiny test model");
    assert_eq!(g.usize("llama.block_count").unwrap(), LAYERS);
    assert_eq!(g.f64("llama.rope.freq_base").unwrap(), BASE);
    assert_eq!(g.tensors.len(), w.tensors.len());
    for t in &w.tensors {
        let (info, raw) = g.raw(&t.name).unwrap();
        assert_eq!(raw, &t.data[..], "{}", t.name);
        assert_eq!(info.ty.id, t.ty);
        assert_eq!(
            info.dims,
            t.dims.iter().map(|&d| d as usize).collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_forward_pass_matches_a_plain_f64_one_in_every_tensor_type() {
    let (w, reference) = tiny_model(2);
    let model = Llama::from_gguf(&parse(w.bytes()).unwrap()).unwrap();
    assert_eq!(
        (model.cfg.heads, model.cfg.kv_heads, model.cfg.head_dim),
        (HEADS, KV, HD)
    );
    let tokens = random_tokens(3, 40, model.cfg.vocab);
    let (want, q_last) = reference_forward(&reference, &tokens);
    let reg = Registry::builtin();
    for spec in ["full", "flash(bq=16,bk=16)", "window(w=64)"] {
        let v = reg.build(spec).unwrap();
        let plan: Vec<&dyn Attention> = (0..LAYERS).map(|_| v.as_ref()).collect();
        let f = model.forward(&tokens, &plan, &[LAYERS - 1]).unwrap();
        assert_eq!(f.nll.len(), tokens.len() - 1);
        // f32 against f64 through two layers: 2.1e-7..2.4e-7 relative here.
        let worst = f
            .nll
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "{spec}: NLL differs by {worst:e} (relative)");
        // Q of the last layer, [heads, n, hd], against the plain one after RoPE.
        let q = &f.captured[0].q;
        let mut worst_q = 0.0f64;
        for p in 0..tokens.len() {
            for h in 0..HEADS {
                for c in 0..HD {
                    let d = (f64::from(q[[h, p, c]]) - q_last[p][h * HD + c]).abs();
                    worst_q = worst_q.max(d / (1.0 + q_last[p][h * HD + c].abs()));
                }
            }
        }
        assert!(worst_q < 1e-5, "{spec}: Q differs by {worst_q:e}");
    }
}

#[test]
fn a_separate_output_head_is_used_when_the_file_has_one() {
    let (mut w, mut reference) = tiny_model(9);
    let tokens = random_tokens(10, 24, reference.embed.len());
    let tied = reference_forward(&reference, &tokens).0;
    with_output_head(&mut w, &mut reference, 11);
    let (want, _) = reference_forward(&reference, &tokens);
    let model = Llama::from_gguf(&parse(w.bytes()).unwrap()).unwrap();
    let v = Registry::builtin().build("flash").unwrap();
    let plan: Vec<&dyn Attention> = (0..LAYERS).map(|_| v.as_ref()).collect();
    let f = model.forward(&tokens, &plan, &[]).unwrap();
    let diff = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0, f64::max)
    };
    assert!(diff(&f.nll, &want) < 1e-6, "{:e}", diff(&f.nll, &want));
    assert!(diff(&want, &tied) > 1e-2, "the head made no difference");
}

#[test]
fn the_permutation_matters_so_the_check_can_fail() {
    // The same model with Q and K stored unpermuted gives other attention: the check above
    // would catch a reader that skipped the un-permutation.
    let (mut w, reference) = tiny_model(2);
    for t in w.tensors.iter_mut() {
        if t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight") {
            let heads = if t.name.contains("attn_q") { HEADS } else { KV };
            let row = t.data.len() / (heads * HD);
            let rows: Vec<Vec<u8>> = t.data.chunks(row).map(<[u8]>::to_vec).collect();
            // Undo the writer's permutation: rows as the checkpoint has them.
            let mut plain = vec![Vec::new(); rows.len()];
            for (dst, src) in permute(&(0..rows.len()).collect::<Vec<_>>(), heads)
                .into_iter()
                .zip(&rows)
            {
                plain[dst] = src.clone();
            }
            t.data = plain.concat();
        }
    }
    let model = Llama::from_gguf(&parse(w.bytes()).unwrap()).unwrap();
    let tokens = random_tokens(3, 40, model.cfg.vocab);
    let (want, _) = reference_forward(&reference, &tokens);
    let v = Registry::builtin().build("full").unwrap();
    let plan: Vec<&dyn Attention> = (0..LAYERS).map(|_| v.as_ref()).collect();
    let f = model.forward(&tokens, &plan, &[]).unwrap();
    let worst = f
        .nll
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst > 1e-3, "unpermuted Q/K gave the same NLL ({worst:e})");
}

#[test]
fn a_bad_file_is_a_clear_error() {
    let (w, _) = tiny_model(4);
    let good = w.bytes();
    let msg = |r: attnbench::Result<Gguf>| r.expect_err("an error").to_string();
    // Wrong magic, version.
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    assert!(msg(parse(b)).contains("not a GGUF file"));
    let mut b = good.clone();
    b[4] = 1;
    assert!(msg(parse(b)).contains("version 1 is not supported"));
    // Truncated anywhere: every prefix is an error, none panics.
    for cut in (0..good.len()).step_by(7).chain([good.len() - 1]) {
        let e = parse(good[..cut].to_vec()).err();
        let e = e.unwrap_or_else(|| panic!("a file cut at {cut} of {} parsed", good.len()));
        assert!(
            matches!(e.kind(), ErrorKind::Format { .. }),
            "cut at {cut}: {e}"
        );
        assert!(
            e.to_string().contains("truncated") || e.to_string().contains("more than"),
            "cut at {cut}: {e}"
        );
    }
    // Unknown tensor type.
    let mut bad = w.clone();
    bad.tensors[0].ty = 99;
    assert!(msg(parse(bad.bytes())).contains("unknown tensor type 99"));
    // A known type that is not decoded: Q4_K (256-element blocks of 144 bytes).
    let mut bad = w.clone();
    let t = bad
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.ffn_up.weight")
        .unwrap();
    t.ty = 12;
    t.dims = vec![256, 8];
    t.data = vec![0; 8 * 144];
    let e = Llama::from_gguf(&parse(bad.bytes()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Q4_K") && e.contains("does not decode"), "{e}");
    // A missing tensor.
    let mut bad = w.clone();
    bad.tensors.retain(|t| t.name != "blk.1.attn_v.weight");
    let e = Llama::from_gguf(&parse(bad.bytes()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor blk.1.attn_v.weight is missing"), "{e}");
    // A shape that does not fit the metadata.
    let mut bad = w.clone();
    let t = bad
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_k.weight")
        .unwrap();
    t.dims = vec![D as u64, (KV * HD / 2) as u64];
    t.data.truncate(t.data.len() / 2);
    let e = Llama::from_gguf(&parse(bad.bytes()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_k.weight has shape [32, 8], expected [32, 16]"),
        "{e}"
    );
    // Rows that are not whole blocks, an absurd count, an absurd string length.
    let mut bad = w.clone();
    bad.tensors[0].dims[0] = 33;
    assert!(msg(parse(bad.bytes())).contains("not whole Q8_0 blocks"));
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(msg(parse(b)).contains("tensor count is 1152921504606846976"));
    let mut b = good.clone();
    b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(msg(parse(b)).contains("the length of metadata key 0"));
    // A tensor that does not start where the previous one ends (aliasing is refused).
    let mut bad = w.clone();
    bad.tensors[1].shift = 32;
    assert!(msg(parse(bad.bytes())).contains(", expected "));
    // A file that ends inside the padding before its data section (a zero-size tensor).
    let mut empty = Writer::default();
    empty.tensor("t", &[0], F32, Vec::new());
    let mut b = empty.bytes();
    b.truncate(57);
    assert!(msg(parse(b)).contains("the data section starts at byte 64"));
    // Scaled RoPE is refused rather than run unscaled.
    let mut scaled = w.clone();
    scaled.str("llama.rope.scaling.type", "linear");
    let e = Llama::from_gguf(&parse(scaled.bytes()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("scales its RoPE"), "{e}");
    // Not a Llama.
    let mut other = Writer::default();
    other.str("general.architecture", "mamba");
    let e = Llama::from_gguf(&parse(other.bytes()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("general.architecture is 'mamba'"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Corrupted bytes anywhere give an error or a model, never a panic or a hang.
    #[test]
    fn corrupted_files_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let (w, _) = tiny_model(5);
        let mut b = w.bytes();
        for (at, byte) in flips {
            let i = at.index(b.len());
            b[i] = byte;
        }
        if let Ok(g) = parse(b) {
            let _ = Llama::from_gguf(&g);
        }
    }

    /// Byte-level BPE loses nothing: any text decodes back from its tokens.
    #[test]
    fn any_text_round_trips_through_the_tokenizer(text in "\\PC{0,40}") {
        let (tokens, merges) = vocabulary();
        let pairs: Vec<(String, String)> = merges.iter().map(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        }).collect();
        for pre in [PreTokenizer::Gpt2, PreTokenizer::Gpt2Digits] {
            let t = Tokenizer::new(tokens.clone(), pairs.clone(), pre).unwrap();
            let ids = t.encode(&text).unwrap();
            prop_assert_eq!(t.decode(&ids).unwrap(), text.clone());
            let pieces = pre_tokens(&text, pre);
            prop_assert_eq!(pieces.concat(), text.clone());
        }
    }
}

#[test]
fn the_tokenizer_splits_and_merges_as_gpt2_does() {
    assert_eq!(
        pre_tokens("Hello world's  test 123\n\n x!?", PreTokenizer::Gpt2),
        vec![
            "Hello", " world", "'s", " ", " test", " 123", "\n\n", " x", "!?"
        ]
    );
    // smollm: digits one by one, and no space joins a digit.
    assert_eq!(
        pre_tokens("in 2007,  42", PreTokenizer::Gpt2Digits),
        vec!["in", " ", "2", "0", "0", "7", ",", "  ", "4", "2"]
    );
    // Letters and digits as \p{L} and \p{N}: a Roman numeral is a number.
    assert_eq!(pre_tokens("aⅫ", PreTokenizer::Gpt2), vec!["a", "Ⅻ"]);
    // A file naming no pre-tokenizer (llama.cpp's "default" is another rule set) needs one.
    let (tokens, merges) = vocabulary();
    let mut bare = Writer::default();
    bare.str("tokenizer.ggml.model", "gpt2");
    bare.strs("tokenizer.ggml.tokens", &tokens);
    bare.strs("tokenizer.ggml.merges", &merges);
    let g = parse(bare.bytes()).unwrap();
    let e = Tokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.pre is None"), "{e}");
    let t = Tokenizer::from_gguf_with(&g, Some(PreTokenizer::Gpt2)).unwrap();
    assert_eq!(t.pre, PreTokenizer::Gpt2);
    let (w, _) = tiny_model(6);
    let g = parse(w.bytes()).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(t.pre, PreTokenizer::Gpt2Digits);
    // "hello" merges to one token, " world" to one ("Ġwor" + "ld"), "x" is its byte.
    let ids = t.encode("hello world x").unwrap();
    let (hello, world) = (256 + 3, 256 + 8);
    // " x": no merge, so the bytes ' ' (Ġ, symbol 32) and 'x'.
    assert_eq!(ids, vec![hello, world, 32, u32::from(b'x')]);
    assert_eq!(t.decode(&ids).unwrap(), "hello world x");
}

fn write_ids(path: &Path, ids: &[u32]) {
    let header = format!(
        "{{'descr': '<i4', 'fortran_order': False, 'shape': ({},), }}",
        ids.len()
    );
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h);
    for &i in ids {
        b.extend((i as i32).to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn perplexity_runs_every_variant_writes_rows_and_a_report_and_never_clobbers() {
    let dir = temp_dir("cli");
    let (w, _) = tiny_model(7);
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, w.bytes()).unwrap();
    let ids = dir.join("ids.npy");
    write_ids(&ids, &random_tokens(8, 64, vocabulary().0.len()));
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_attnbench"))
            .args(["perplexity", "--model"])
            .arg(&model)
            .arg("--tokens")
            .arg(&ids)
            .args([
                "--n",
                "16,32",
                "--variants",
                "flash(bq=16,bk=16),window(w=64),window(w=2),nystrom,linear(phi=elu1)",
                "--threads",
                "2",
                "--out-dir",
            ])
            .arg(dir.join("results"))
            .arg("--no-report")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csvs: Vec<PathBuf> = std::fs::read_dir(dir.join("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    assert_eq!(csvs.len(), 1);
    let rows = attnbench::results::perplexity::read_perplexity_csv(&csvs[0]).unwrap();
    assert_eq!(rows.len(), 12, "{rows:?}");
    for n in [16, 32] {
        let at = |v: &str| {
            rows.iter()
                .find(|r| r.n == n && r.variant.starts_with(v))
                .unwrap()
        };
        let full = at("full");
        assert_eq!((full.windows, full.scored), (64 / n, 64 / n * (n - 1)));
        assert_eq!(full.ppl_ratio, 1.0);
        // Exact dense variants: the same perplexity to 4 significant digits (much closer).
        for dense in ["flash", "window(w=64)"] {
            let r = at(dense);
            assert!(
                (r.ppl / full.ppl - 1.0).abs() < 1e-5,
                "{dense} at {n}: {} vs {}",
                r.ppl,
                full.ppl
            );
            assert!(r.err_middle.unwrap() < 1e-5);
        }
        let narrow = at("window(w=2)");
        assert!(
            (narrow.ppl / full.ppl - 1.0).abs() > 1e-4,
            "window(w=2) at {n}"
        );
        assert!(narrow.err_middle.unwrap() > 1e-3);
        assert_eq!(at("nystrom").status, "unsupported");
        assert!(at("linear").ppl.is_finite());
        assert!(full.attention_s > 0.0 && full.attention_s < full.forward_s);
    }
    // A second run writes new files; the report renders from the CSV.
    let out = run();
    assert!(out.status.success());
    assert_eq!(std::fs::read_dir(dir.join("results")).unwrap().count(), 4);
    let report = dir.join("report");
    let st = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .arg("report")
        .arg(&csvs[0])
        .arg("--out")
        .arg(&report)
        .status()
        .unwrap();
    assert!(st.success());
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("## n = 32 (2 window(s), 62 predictions)"),
        "{md}"
    );
    assert!(md.contains("gives full attention's perplexity"), "{md}");
    assert!(report.join("perplexity_vs_time.svg").exists());
    // A text, tokenized with the model's own vocabulary: "hello" and " world" are one token
    // each, so 24 tokens.
    let text = dir.join("text.txt");
    std::fs::write(&text, "hello world".repeat(12)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_attnbench"))
        .args(["perplexity", "--model"])
        .arg(&model)
        .arg("--text")
        .arg(&text)
        .args([
            "--n",
            "8",
            "--variants",
            "flash",
            "--label",
            "text",
            "--no-report",
            "--out-dir",
        ])
        .arg(dir.join("text"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read_dir(dir.join("text"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let meta: attnbench::results::perplexity::PerplexityMeta =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(
        (meta.tokens, meta.state),
        (24, attnbench::results::record::RunState::Complete)
    );
    // Bad input: a length beyond the tokens, a missing model, a token outside the vocabulary.
    let bad = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_attnbench"))
            .args(["perplexity", "--model"])
            .arg(&model)
            .arg("--tokens")
            .arg(&ids)
            .args(args)
            .arg("--out-dir")
            .arg(dir.join("bad"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(bad(&["--n", "128"]).contains("outside 2..=64"));
    assert!(bad(&["--n", "8", "--max-windows", "0"]).contains("at least 1"));
    assert!(bad(&["--n", "8", "--threads", "0"]).contains("at least 1"));
    assert!(bad(&["--n", "8,8"]).contains("n = 8 is given twice"));
    let empty = dir.join("no-activations");
    std::fs::create_dir_all(&empty).unwrap();
    let e = bad(&["--n", "8", "--check-activations", empty.to_str().unwrap()]);
    assert!(e.contains("holds no *_L<layer>_q.npy"), "{e}");
    assert!(bad(&["--n", "8", "--max-memory", "10K"]).contains("over --max-memory"));
    assert!(bad(&["--n", "8", "--from-layer", "2"]).contains("not below the model's 2 layers"));
    write_ids(&ids, &[1, 2, 100_000]);
    assert!(bad(&["--n", "2"]).contains("token id 100000 is outside"));
    assert!(!dir.join("bad").exists() || std::fs::read_dir(dir.join("bad")).unwrap().count() == 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
