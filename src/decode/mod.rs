//! Stateful decoding: a prompt is prefilled, then one token at a time attends what came
//! before, as generation runs attention.
//!
//! A [`Decoder`] holds the state a variant keeps between tokens, for a batch of sequences
//! and grouped-query heads (`heads` a multiple of `kv_heads`, the query heads of a group
//! sharing one KV head, as in [`Shape`]). [`Decoder::prefill`] appends the prompt's keys
//! and values; [`Decoder::step`] appends one token's key and value per sequence, then attends
//! that token's queries to every key up to and including it (causal decoding) and writes the
//! outputs. Variants create decoders through
//! [`Attention::decoder`](crate::attention::Attention::decoder); a variant without one is
//! decoded by the harness's stateless fallback (the whole cache passed to every call).
//!
//! The states:
//! - [`cached`]: a KV cache (`f32`, `f16` or `bf16`, see [`KvStore`]) scanned by one
//!   kernel that reads each key and value once for all the query heads of its group, split
//!   across threads with an exact merge: all of it for exact attention, a ring buffer of the
//!   last `w + 1` keys for a sliding window, the first `s` keys beside it for attention
//!   sinks (state O(s + w), not O(n)).
//! - [`recurrent`]: linear attention's running `sum phi(k) v^T` and normaliser, and
//!   retention's decayed state `S_t = gamma S_{t-1} + k_t v_t^T`: O(m d_v) per token and in
//!   memory, whatever the context.

pub mod cached;
pub mod recurrent;

use std::fmt;

use ndarray::{ArrayView3, ArrayView4, ArrayViewMut3};

use crate::error::{Error, ErrorKind, Result};
use crate::kernels::isa::Isa;
use crate::shape::Shape;

/// How a KV cache stores keys and values. Reads widen to `f32` in registers; scores and
/// sums accumulate in `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvStore {
    /// 4 bytes per element, exact.
    #[default]
    F32,
    /// IEEE binary16, 2 bytes (llama.cpp's default KV cache type): 11 significant bits,
    /// values up to 65504.
    F16,
    /// bfloat16, 2 bytes: 8 significant bits, the range of `f32`.
    Bf16,
}

impl KvStore {
    /// Every store.
    pub const ALL: [KvStore; 3] = [KvStore::F32, KvStore::F16, KvStore::Bf16];

    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            KvStore::F32 => 4,
            KvStore::F16 | KvStore::Bf16 => 2,
        }
    }

    /// The name used on the command line and in results: `f32`, `f16`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            KvStore::F32 => "f32",
            KvStore::F16 => "f16",
            KvStore::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for KvStore {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        KvStore::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ErrorKind::BadOption {
                    option: "kv",
                    message: format!("unknown KV store {s:?}: expected f32, f16 or bf16"),
                }
                .into()
            })
    }
}

/// What a decoder is created with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// The score scale; `None` is `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// The KV cache's storage (decoders without a KV cache refuse anything but `F32`).
    pub kv: KvStore,
    /// Tokens the caller expects to hold (prompt plus generated), so a growing cache
    /// allocates once; a hint, not a limit.
    pub capacity: usize,
    /// The SIMD path of the scan; `None` is the widest this CPU has.
    pub isa: Option<Isa>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            scale: None,
            kv: KvStore::F32,
            capacity: 0,
            isa: None,
        }
    }
}

impl DecodeOptions {
    /// The score scale for `shape`.
    pub fn scale_for(&self, shape: &Shape) -> f32 {
        self.scale.unwrap_or(1.0 / (shape.head_dim() as f32).sqrt())
    }

    /// The SIMD path.
    pub fn isa(&self) -> Isa {
        self.isa.unwrap_or_else(Isa::detect)
    }

    /// Checks the options for `shape` (a finite positive scale).
    pub fn check(&self) -> Result<()> {
        if let Some(s) = self.scale
            && !(s.is_finite() && s > 0.0)
        {
            return Err(ErrorKind::BadOption {
                option: "scale",
                message: format!("the score scale must be finite and positive, got {s}"),
            }
            .into());
        }
        Ok(())
    }

    /// The error of a decoder that keeps no KV cache being asked for a half-precision one.
    pub fn refuse_store(&self, variant: &str) -> Result<()> {
        if self.kv == KvStore::F32 {
            return Ok(());
        }
        Err(ErrorKind::Unsupported {
            variant: variant.to_string(),
            reasons: vec![format!(
                "{variant} keeps no KV cache, so the {} store does not apply",
                self.kv
            )],
        }
        .into())
    }
}

/// The state a variant keeps between generated tokens. See the [module docs](self).
pub trait Decoder: Send {
    /// Appends a prompt: `k: [batch, kv_heads, p, head_dim]`, `v: [batch, kv_heads, p,
    /// v_dim]` (may be called more than once; positions continue).
    fn prefill(&mut self, k: ArrayView4<'_, f32>, v: ArrayView4<'_, f32>) -> Result<()>;

    /// Appends one token per sequence (`k: [batch, kv_heads, head_dim]`, `v: [batch,
    /// kv_heads, v_dim]`), then attends its queries `q: [batch, heads, head_dim]` to every
    /// key up to and including it, writing `out: [batch, heads, v_dim]`.
    fn step(
        &mut self,
        q: ArrayView3<'_, f32>,
        k: ArrayView3<'_, f32>,
        v: ArrayView3<'_, f32>,
        out: ArrayViewMut3<'_, f32>,
    ) -> Result<()>;

    /// Tokens seen so far (the position the next token takes).
    fn len(&self) -> usize;

    /// Whether no token was seen yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of state held now (allocated, all sequences).
    fn state_bytes(&self) -> usize;

    /// Bytes of state the last step read (all sequences and heads): the traffic that bounds
    /// its time when the state exceeds the caches.
    fn bytes_read(&self) -> usize;
}

/// The shape of a decoder's inputs: `q`/`out` as `[batch, heads, ·]`, `k`/`v` as
/// `[batch, kv_heads, ·]` with the last axis `head_dim` (`v_dim` for v and out).
pub(crate) fn check_step(
    shape: &Shape,
    q: &ArrayView3<'_, f32>,
    k: &ArrayView3<'_, f32>,
    v: &ArrayView3<'_, f32>,
    out: &ArrayViewMut3<'_, f32>,
) -> Result<()> {
    let (b, h, hk, d, dv) = (
        shape.batch(),
        shape.heads(),
        shape.kv_heads(),
        shape.head_dim(),
        shape.v_dim(),
    );
    for (name, got, want) in [
        ("q", q.shape(), [b, h, d]),
        ("k", k.shape(), [b, hk, d]),
        ("v", v.shape(), [b, hk, dv]),
        ("out", out.shape(), [b, h, dv]),
    ] {
        for (axis, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if g != w {
                return Err(ErrorKind::ShapeMismatch {
                    what: format!("decoding step: {name} axis {axis}"),
                    expected: w,
                    got: g,
                }
                .into());
            }
        }
    }
    for (name, x) in [("q", q), ("k", k), ("v", v)] {
        if let Some(((i, j, c), &value)) = x.indexed_iter().find(|(_, x)| !x.is_finite()) {
            return Err(ErrorKind::NonFinite {
                tensor: name,
                index: [i, j, 0, c],
                value,
            }
            .into());
        }
    }
    Ok(())
}

/// Checks a prompt's keys and values against `shape`.
pub(crate) fn check_prefill(
    shape: &Shape,
    k: &ArrayView4<'_, f32>,
    v: &ArrayView4<'_, f32>,
) -> Result<()> {
    let (b, hk, d, dv) = (
        shape.batch(),
        shape.kv_heads(),
        shape.head_dim(),
        shape.v_dim(),
    );
    let p = k.shape()[2];
    for (name, got, want) in [
        ("k", k.shape(), [b, hk, p, d]),
        ("v", v.shape(), [b, hk, p, dv]),
    ] {
        for (axis, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if g != w {
                return Err(ErrorKind::ShapeMismatch {
                    what: format!("prefill: {name} axis {axis}"),
                    expected: w,
                    got: g,
                }
                .into());
            }
        }
    }
    for (name, x) in [("k", k), ("v", v)] {
        if let Some(((i, j, s, c), &value)) = x.indexed_iter().find(|(_, x)| !x.is_finite()) {
            return Err(ErrorKind::NonFinite {
                tensor: name,
                index: [i, j, s, c],
                value,
            }
            .into());
        }
    }
    Ok(())
}
