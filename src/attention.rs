//! The [`Attention`] trait every variant implements, its options, and the validating
//! entry points [`attend`] and [`attend_into`].

use std::fmt;

use ndarray::{Array4, ArrayView, ArrayView4, ArrayViewMut4, Dimension, Ix4};

use crate::error::{Error, ErrorKind, Result};
use crate::pattern::{Mask, Pattern};
use crate::shape::Shape;

/// How a variant's output relates to softmax attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fidelity {
    /// Equal to softmax attention restricted to the variant's [`pattern`](Attention::pattern)
    /// (dense when it has none), up to float rounding. Checked against the f64 oracle.
    Exact,
    /// An approximation of softmax attention (e.g. random features): its deviation from
    /// dense attention is approximation error, which should fall as its budget grows.
    Approximate,
    /// A different attention kernel (e.g. `elu(x) + 1` linear attention): its deviation from
    /// softmax attention is model mismatch, not approximation error.
    OtherKernel,
}

impl fmt::Display for Fidelity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Fidelity::Exact => "exact",
            Fidelity::Approximate => "approximate",
            Fidelity::OtherKernel => "other-kernel",
        })
    }
}

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
}

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

    /// The scale used for a head dimension of `head_dim`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.scale
            .unwrap_or_else(|| (1.0 / (head_dim as f64).sqrt()) as f32)
    }

    fn validate(&self) -> Result<()> {
        match self.scale {
            Some(s) if !s.is_finite() => Err(ErrorKind::BadOption {
                option: "scale",
                message: format!("must be finite, got {s}"),
            }
            .into()),
            _ => Ok(()),
        }
    }
}

/// The analytic cost of one call, as the variant computes it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    /// Floating-point operations performed (a multiply-add counts as two), including work on
    /// masked-out pairs that the variant computes anyway.
    pub flops: f64,
    /// Heap bytes the variant allocates during the call beyond the caller's output, with the
    /// current rayon pool's thread count.
    pub workspace_bytes: u64,
}

/// One validated attention call: the inputs, their [`Shape`] and the [`Options`].
///
/// Constructed only by [`Problem::new`], which checks everything a kernel relies on, and
/// immutable afterwards (its fields are private), so a variant's
/// [`forward`](Attention::forward) never needs to re-validate.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    q: ArrayView4<'a, f32>,
    k: ArrayView4<'a, f32>,
    v: ArrayView4<'a, f32>,
    shape: Shape,
    opts: Options,
}

impl<'a> Problem<'a> {
    /// Validates shapes, options and finiteness of Q, K and V.
    pub fn new(
        q: ArrayView4<'a, f32>,
        k: ArrayView4<'a, f32>,
        v: ArrayView4<'a, f32>,
        opts: Options,
    ) -> Result<Self> {
        let shape = Shape::from_views(&q, &k, &v)?;
        opts.validate()?;
        check_finite("q", &q)?;
        check_finite("k", &k)?;
        check_finite("v", &v)?;
        Ok(Self {
            q,
            k,
            v,
            shape,
            opts,
        })
    }

    /// Queries `[batch, heads, n_q, head_dim]`.
    pub fn q(&self) -> ArrayView4<'a, f32> {
        self.q
    }

    /// Keys `[batch, kv_heads, n_kv, head_dim]`.
    pub fn k(&self) -> ArrayView4<'a, f32> {
        self.k
    }

    /// Values `[batch, kv_heads, n_kv, v_dim]`.
    pub fn v(&self) -> ArrayView4<'a, f32> {
        self.v
    }

    /// The validated sizes.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The call's options.
    pub fn opts(&self) -> Options {
        self.opts
    }

    /// The score scale in effect.
    pub fn scale(&self) -> f32 {
        self.opts.scale_for(self.shape.head_dim)
    }

    /// The mask this call applies for a variant with the given pattern.
    pub fn mask<'p>(&self, pattern: Option<&'p dyn Pattern>) -> Mask<'p> {
        Mask::new(pattern, self.opts.causal)
    }
}

/// An attention variant.
///
/// Implementations compute `softmax(scale * Q K^T + mask) V` or an approximation of it for
/// every (batch, head), with query head `h` reading key/value head `h / (heads / kv_heads)`.
/// Their `Display` is the canonical spec string, which the [registry](crate::registry) parses
/// back to an equal variant.
pub trait Attention: fmt::Debug + fmt::Display + Send + Sync {
    /// The registry name, e.g. `"flash"`.
    fn name(&self) -> &'static str;

    /// Whether the output is exact softmax attention under [`pattern`](Attention::pattern).
    fn fidelity(&self) -> Fidelity;

    /// The pairs this variant attends exactly; `None` means dense.
    fn pattern(&self) -> Option<&dyn Pattern> {
        None
    }

    /// Every reason this variant cannot run `shape` with `opts`; empty when it can.
    fn unsupported(&self, _shape: &Shape, _opts: &Options) -> Vec<String> {
        Vec::new()
    }

    /// The analytic cost of one call.
    fn cost(&self, shape: &Shape, opts: &Options) -> Cost;

    /// Computes the attention of `problem` into `out` (`[batch, heads, n_q, v_dim]`, any
    /// strides), overwriting it. The caller has validated `problem`, checked
    /// [`unsupported`](Attention::unsupported) and the shape of `out`.
    fn forward(&self, problem: &Problem<'_>, out: ArrayViewMut4<'_, f32>) -> Result<()>;
}

/// Validates the inputs, checks that `variant` supports them, and returns the attention
/// output `[batch, heads, n_q, v_dim]`.
///
/// Q, K and V may be views of any dimensionality; anything but 4 axes is an error.
pub fn attend<D: Dimension>(
    variant: &dyn Attention,
    q: ArrayView<'_, f32, D>,
    k: ArrayView<'_, f32, D>,
    v: ArrayView<'_, f32, D>,
    opts: &Options,
) -> Result<Array4<f32>> {
    let problem = Problem::new(rank4("q", q)?, rank4("k", k)?, rank4("v", v)?, *opts)?;
    let mut out = Array4::zeros(problem.shape.out_dims());
    run(variant, &problem, out.view_mut())?;
    Ok(out)
}

/// Like [`attend`], writing into a caller-allocated `out` of shape `[batch, heads, n_q, v_dim]`.
pub fn attend_into<D: Dimension>(
    variant: &dyn Attention,
    q: ArrayView<'_, f32, D>,
    k: ArrayView<'_, f32, D>,
    v: ArrayView<'_, f32, D>,
    opts: &Options,
    out: ArrayViewMut4<'_, f32>,
) -> Result<()> {
    let problem = Problem::new(rank4("q", q)?, rank4("k", k)?, rank4("v", v)?, *opts)?;
    run(variant, &problem, out)
}

/// Checks `variant`'s reasons and the shape of `out`, then runs `forward` on a validated
/// problem.
pub fn run(
    variant: &dyn Attention,
    problem: &Problem<'_>,
    out: ArrayViewMut4<'_, f32>,
) -> Result<()> {
    let reasons = variant.unsupported(&problem.shape(), &problem.opts());
    if !reasons.is_empty() {
        return Err(ErrorKind::Unsupported {
            variant: variant.to_string(),
            reasons,
        }
        .into());
    }
    let expected = problem.shape().out_dims();
    let got = out.shape();
    for (axis, name) in ["batch", "heads", "n_q", "v_dim"].iter().enumerate() {
        if got[axis] != expected[axis] {
            return Err(ErrorKind::ShapeMismatch {
                what: format!("out axis {axis} ({name}); out must be [batch, heads, n_q, v_dim]"),
                expected: expected[axis],
                got: got[axis],
            }
            .into());
        }
    }
    variant.forward(problem, out)
}

fn rank4<'a, D: Dimension>(
    tensor: &'static str,
    a: ArrayView<'a, f32, D>,
) -> Result<ArrayView4<'a, f32>> {
    let got = a.shape().to_vec();
    a.into_dimensionality::<Ix4>().map_err(|_| {
        Error::new(ErrorKind::Rank {
            tensor,
            expected: 4,
            got,
        })
    })
}

fn check_finite(tensor: &'static str, a: &ArrayView4<f32>) -> Result<()> {
    if a.iter().all(|x| x.is_finite()) {
        return Ok(());
    }
    let ((b, h, s, d), &value) = a
        .indexed_iter()
        .find(|(_, x)| !x.is_finite())
        .expect("a non-finite element exists");
    Err(ErrorKind::NonFinite {
        tensor,
        index: [b, h, s, d],
        value,
    }
    .into())
}
