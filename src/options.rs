//! [`Options`]: causal masking, the score scale and the score modifiers of one call, their
//! validation, and the [`Feature`]s they ask of a variant.

use crate::error::{ErrorKind, Result};

/// Options of one attention call.
///
/// Built with [`Options::new`] (bidirectional, default scale) and the builder methods.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Options {
    /// Causal masking, aligned bottom-right: query `i` sees key `j` iff `j <= i + n_kv - n_q`.
    /// Default: `false`.
    pub causal: bool,
    /// The factor applied to `q . k` before the softmax. Default (`None`): `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// ALiBi position biases with the standard per-head slopes ([`crate::modifier`]).
    /// Default: `false`.
    pub alibi: bool,
    /// tanh soft-capping of the scaled scores at `±c` ([`crate::modifier`]). Default: none.
    pub softcap: Option<f32>,
    /// Rotary position embedding of Q and K with this base ([`crate::modifier`]; the usual
    /// base is [`ROPE_BASE`]). Default: none.
    pub rope: Option<f32>,
}

/// The usual RoPE base, 10000.
pub const ROPE_BASE: f32 = 10000.0;

impl Options {
    /// Bidirectional attention with the default scale.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets causal masking.
    pub fn causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// Sets the score scale (instead of `1 / sqrt(head_dim)`).
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Adds ALiBi position biases.
    pub fn alibi(mut self, alibi: bool) -> Self {
        self.alibi = alibi;
        self
    }

    /// Soft-caps the scaled scores at `±c` with `c * tanh(s / c)`.
    pub fn softcap(mut self, c: f32) -> Self {
        self.softcap = Some(c);
        self
    }

    /// Applies rotary position embeddings to Q and K with `base` (usually [`ROPE_BASE`]).
    pub fn rope(mut self, base: f32) -> Self {
        self.rope = Some(base);
        self
    }

    /// The score-changing features these options need from a variant.
    pub fn features(&self) -> Vec<Feature> {
        let mut f = Vec::new();
        if self.alibi {
            f.push(Feature::Alibi);
        }
        if self.softcap.is_some() {
            f.push(Feature::Softcap);
        }
        f
    }

    /// The scale used for a head dimension of `head_dim`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.scale
            .unwrap_or_else(|| (1.0 / (head_dim as f64).sqrt()) as f32)
    }

    /// Checks the options for a head dimension of `head_dim` (as [`Problem::new`](crate::Problem::new) does).
    pub fn check(&self, head_dim: usize) -> Result<()> {
        let bad = |option, message| Err(ErrorKind::BadOption { option, message }.into());
        match (self.scale, self.softcap, self.rope) {
            (Some(s), _, _) if !s.is_finite() => bad("scale", format!("must be finite, got {s}")),
            (_, Some(c), _) if !(c.is_finite() && c > 0.0) => {
                bad("softcap", format!("must be positive and finite, got {c}"))
            }
            (_, _, Some(b)) if !(b.is_finite() && b > 1.0) => bad(
                "rope",
                format!("the base must be finite and above 1, got {b}"),
            ),
            (_, _, Some(_)) if head_dim % 2 == 1 => bad(
                "rope",
                format!("rotates pairs of dimensions: head_dim must be even, got {head_dim}"),
            ),
            _ => Ok(()),
        }
    }
}

/// What a variant must implement itself to honour every [`Options`] field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// ALiBi biases on the scores.
    Alibi,
    /// tanh soft-capping of the scores.
    Softcap,
    /// Per-batch key lengths ([`Problem::with_key_lengths`](crate::Problem::with_key_lengths)).
    KeyPadding,
}

impl Feature {
    /// The option's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Alibi => "alibi",
            Feature::Softcap => "softcap",
            Feature::KeyPadding => "key padding",
        }
    }
}
