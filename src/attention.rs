//! The [`Attention`] trait every variant implements, its options, and the validating
//! entry points [`attend`] and [`attend_into`].

use std::fmt;

use ndarray::{Array2, Array4, ArrayView, ArrayView4, ArrayViewMut4, Dimension, Ix4};

use crate::error::{Error, ErrorKind, Result};
use crate::modifier::{self, Feature, ScoreMods};
use crate::pattern::{Mask, Pattern};
use crate::shape::Shape;

pub use crate::options::{Options, ROPE_BASE};

/// How a variant's output relates to softmax attention. Serialised (the `fidelity` column of
/// results) as its `Display`: `exact`, `approximate`, `other-kernel`, `selected`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Fidelity {
    /// Equal to softmax attention restricted to the variant's [`pattern`](Attention::pattern)
    /// (dense when it has none), up to float rounding. Checked against the f64 oracle. (The
    /// default, which only fills a blank results record.)
    #[default]
    Exact,
    /// An approximation of softmax attention (e.g. random features): its deviation from
    /// dense attention is approximation error, which should fall as its budget grows.
    Approximate,
    /// A different attention kernel (e.g. `elu(x) + 1` linear attention): its deviation from
    /// softmax attention is model mismatch, not approximation error.
    OtherKernel,
    /// Exact softmax attention over keys chosen from the data (top-k, block selection): equal,
    /// up to float rounding, to the f64 oracle under the keys it
    /// [chose](Attention::chosen), which is its own check (so a selection bug and a kernel
    /// bug are told apart); its deviation from dense attention is the price of selection.
    Selected,
}

/// The storage precision of a variant's inputs and probabilities ([`Attention::precision`]);
/// accumulation and the softmax are `f32` in both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// `f32` throughout.
    #[default]
    F32,
    /// Q, K, V and the probabilities rounded to `bfloat16`, both products accumulated in
    /// `f32`.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl fmt::Display for Fidelity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Fidelity::Exact => "exact",
            Fidelity::Approximate => "approximate",
            Fidelity::OtherKernel => "other-kernel",
            Fidelity::Selected => "selected",
        })
    }
}

/// The analytic cost of one call, as the variant computes it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    /// Floating-point operations performed (a multiply-add counts as two), including work on
    /// masked-out pairs that the variant computes anyway.
    pub flops: f64,
    /// Heap bytes the variant allocates during the call beyond the caller's output, on the
    /// thread count given to [`Attention::cost`].
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
    key_lengths: Option<&'a [usize]>,
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
        opts.check(shape.head_dim())?;
        check_finite("q", &q)?;
        check_finite("k", &k)?;
        check_finite("v", &v)?;
        check_range(&q, &k, &v)?;
        Ok(Self {
            q,
            k,
            v,
            shape,
            opts,
            key_lengths: None,
        })
    }

    /// Masks keys at positions `>= lengths[b]` of batch element `b` (key padding): they get
    /// no weight, and a query with no remaining key gets a zero row. Needs one length per
    /// batch element, each at most `n_kv`.
    pub fn with_key_lengths(mut self, lengths: &'a [usize]) -> Result<Self> {
        if lengths.len() != self.shape.batch() {
            return Err(ErrorKind::ShapeMismatch {
                what: "key lengths: one per batch element".into(),
                expected: self.shape.batch(),
                got: lengths.len(),
            }
            .into());
        }
        if let Some((b, &len)) = lengths
            .iter()
            .enumerate()
            .find(|(_, l)| **l > self.shape.n_kv())
        {
            return Err(ErrorKind::BadOption {
                option: "key lengths",
                message: format!(
                    "batch element {b} has length {len}, longer than the {} keys",
                    self.shape.n_kv()
                ),
            }
            .into());
        }
        self.key_lengths = Some(lengths);
        Ok(self)
    }

    /// The valid keys of batch element `b`: `n_kv` unless key lengths were given.
    pub fn key_len(&self, b: usize) -> usize {
        self.key_lengths.map_or(self.shape.n_kv(), |l| l[b])
    }

    /// The per-batch key lengths, if any.
    pub fn key_lengths(&self) -> Option<&'a [usize]> {
        self.key_lengths
    }

    /// The score modifiers of query head `h`.
    pub fn score_mods(&self, h: usize) -> ScoreMods {
        ScoreMods::for_head(&self.shape, &self.opts, h)
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
        self.opts.scale_for(self.shape.head_dim())
    }

    /// The mask this call applies for a variant with the given pattern.
    pub fn mask<'p>(&self, pattern: Option<&'p dyn Pattern>) -> Mask<'p> {
        Mask::new(pattern, self.opts.causal)
    }
}

/// One call of one variant that [`run`] has checked, the only value a variant's
/// [`forward`](Attention::forward) receives.
///
/// Only [`run`] and [`weights`] build it, after checking the variant's [`reasons`] for the
/// problem, so a kernel may rely on: validated shapes and finite inputs ([`Problem::new`]),
/// every requested [`Feature`] supported, and RoPE already applied to Q and K (its
/// [`opts`](Problem::opts) then carry `rope: None`). It dereferences to the [`Problem`] it
/// was made from (with the rotated inputs), and carries the worker thread count in effect.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    problem: Problem<'a>,
    threads: usize,
}

impl<'a> Call<'a> {
    /// The worker threads of the rayon pool the call runs in (at least 1).
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl<'a> std::ops::Deref for Call<'a> {
    type Target = Problem<'a>;

    fn deref(&self) -> &Problem<'a> {
        &self.problem
    }
}

/// An output view whose dimensions were checked against a [`Shape`]: `[batch, heads, n_q,
/// v_dim]`, any strides.
#[derive(Debug)]
pub struct Out<'a> {
    view: ArrayViewMut4<'a, f32>,
}

impl<'a> Out<'a> {
    /// Checks that `view` is `[batch, heads, n_q, v_dim]` of `shape`; an error names the first
    /// axis that differs.
    pub fn new(view: ArrayViewMut4<'a, f32>, shape: &Shape) -> Result<Self> {
        let expected = shape.out_dims();
        let got = view.shape();
        for (axis, name) in ["batch", "heads", "n_q", "v_dim"].iter().enumerate() {
            if got[axis] != expected[axis] {
                return Err(ErrorKind::ShapeMismatch {
                    what: format!(
                        "out axis {axis} ({name}); out must be [batch, heads, n_q, v_dim]"
                    ),
                    expected: expected[axis],
                    got: got[axis],
                }
                .into());
            }
        }
        Ok(Self { view })
    }

    /// The checked view.
    pub fn into_view(self) -> ArrayViewMut4<'a, f32> {
        self.view
    }
}

/// An attention variant.
///
/// Implementations compute `softmax(scale * Q K^T + mask) V` or an approximation of it for
/// every (batch, head), with query head `h` reading key/value head `h / (heads / kv_heads)`.
/// Their `Display` is the canonical spec string, which the [registry](crate::registry) parses
/// back to an equal variant. A variant is run only through [`run`] (or [`attend`],
/// [`attend_into`]), which hands [`forward`](Attention::forward) a [`Call`] nothing else can
/// build.
pub trait Attention: fmt::Debug + fmt::Display + Send + Sync {
    /// The registry name, e.g. `"flash"`.
    fn name(&self) -> &'static str;

    /// Whether the output is exact softmax attention under [`pattern`](Attention::pattern).
    fn fidelity(&self) -> Fidelity;

    /// The precision its inputs and probabilities are stored in: an exact variant in `bf16`
    /// is held to twice the error of a plain `bf16` computation
    /// ([`plain_bf16_rows`](crate::oracle::plain_bf16_rows)) rather than of a plain `f32` one.
    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// The pairs this variant attends exactly; `None` means dense.
    fn pattern(&self) -> Option<&dyn Pattern> {
        None
    }

    /// Every reason this variant cannot run `shape` with `opts`; empty when it can.
    ///
    /// Callers use [`reasons`], which adds the [`Feature`]s the variant does not
    /// [`support`](Attention::supports).
    fn unsupported(&self, _shape: &Shape, _opts: &Options) -> Vec<String> {
        Vec::new()
    }

    /// Whether `forward` applies `feature` (ALiBi, soft-capping, key padding). The default is
    /// `false`, so a variant that ignores a feature is refused rather than silently wrong.
    fn supports(&self, _feature: Feature) -> bool {
        false
    }

    /// The analytic cost of one call of `shape` with `opts` on `threads` worker threads.
    fn cost(&self, shape: &Shape, opts: &Options, threads: usize) -> Cost;

    /// The attention weights this variant effectively applies to (batch `b`, query head `h`)
    /// of `call`: `[n_q, n_kv]`, rows summing to 1 (or zero), for attention maps. Callers use
    /// the free function [`weights`].
    ///
    /// The default, `None`, means: the softmax weights under [`pattern`](Attention::pattern)
    /// for an exact variant ([`crate::oracle::weights`]), not available otherwise. Variants
    /// that compute a different kernel (e.g. linear attention) override it.
    fn weights(&self, _call: &Call<'_>, _b: usize, _h: usize) -> Option<Array2<f64>> {
        None
    }

    /// The keys a [`Selected`](Fidelity::Selected) variant attends for the query rows `rows`
    /// of (batch `b`, query head `h`) of `call`: one list per row, any order, as the variant's
    /// forward chooses them (from the same scores). Callers use the free function [`chosen`].
    /// The default, `None`, is right for every other fidelity.
    fn chosen(
        &self,
        _call: &Call<'_>,
        _b: usize,
        _h: usize,
        _rows: &[usize],
    ) -> Option<Vec<Vec<u32>>> {
        None
    }

    /// Variants whose output depends on a random draw (random features): the same variant
    /// with `seed` instead of its own, so the harness can report the error's mean and spread
    /// over several draws. The default, `None`, means the output depends on no draw.
    fn with_seed(&self, _seed: u64) -> Option<Box<dyn Attention>> {
        None
    }

    /// A stateful decoder for causal generation with `shape`'s batch, heads and head
    /// dimensions (its `n_q` and `n_kv` are ignored): see [`crate::decode`]. The default,
    /// `None`, means the variant has none, and callers decode it statelessly (the whole
    /// cache passed to every call).
    fn decoder(
        &self,
        _shape: &Shape,
        _opts: &crate::decode::DecodeOptions,
    ) -> Option<Result<Box<dyn crate::decode::Decoder>>> {
        None
    }

    /// Computes the attention of `call` into `out`, overwriting it.
    ///
    /// # Shapes
    /// `out`: `[batch, heads, n_q, v_dim]` of `call.shape()`, checked by [`Out::new`].
    fn forward(&self, call: &Call<'_>, out: Out<'_>) -> Result<()>;
}

/// Every reason `variant` cannot run `shape` with `opts` and, when `key_padding`, per-batch key
/// lengths: its own [`unsupported`](Attention::unsupported) reasons and the features it does
/// not [`support`](Attention::supports).
pub fn reasons(
    variant: &dyn Attention,
    shape: &Shape,
    opts: &Options,
    key_padding: bool,
) -> Vec<String> {
    let mut r = variant.unsupported(shape, opts);
    let mut needed = opts.features();
    if key_padding {
        needed.push(Feature::KeyPadding);
    }
    for f in needed {
        if !variant.supports(f) {
            r.push(format!("{} does not apply {}", variant.name(), f.name()));
        }
    }
    r
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

/// Checks `variant`'s [`reasons`] and the shape of `out`, applies RoPE to Q and K when the
/// options ask for it, then runs `forward` on the checked [`Call`]: the one way into a
/// kernel.
pub fn run(
    variant: &dyn Attention,
    problem: &Problem<'_>,
    out: ArrayViewMut4<'_, f32>,
) -> Result<()> {
    let out = Out::new(out, &problem.shape())?;
    with_call(variant, problem, |call| variant.forward(call, out))
}

/// The attention weights `variant` applies to (batch `b`, query head `h`) of `problem`
/// (`[n_q, n_kv]`, see [`Attention::weights`]), after the same checks as [`run`]; `None` when
/// the variant does not expose them. An error if `b` or `h` is out of range.
pub fn weights(
    variant: &dyn Attention,
    problem: &Problem<'_>,
    b: usize,
    h: usize,
) -> Result<Option<Array2<f64>>> {
    let shape = problem.shape();
    for (what, index, len) in [("batch", b, shape.batch()), ("head", h, shape.heads())] {
        if index >= len {
            return Err(ErrorKind::OutOfRange { what, index, len }.into());
        }
    }
    with_call(variant, problem, |call| Ok(variant.weights(call, b, h)))
}

/// The keys a [`Selected`](Fidelity::Selected) `variant` chooses for the query rows `rows` of
/// every (batch, head) of `problem` (see [`Attention::chosen`]), after the same checks as
/// [`run`]; `None` when the variant chooses none. An error if a row is out of range.
pub fn chosen(
    variant: &dyn Attention,
    problem: &Problem<'_>,
    rows: &[usize],
) -> Result<Option<Chosen>> {
    let shape = problem.shape();
    if let Some(&bad) = rows.iter().find(|&&r| r >= shape.n_q()) {
        return Err(ErrorKind::OutOfRange {
            what: "query row",
            index: bad,
            len: shape.n_q(),
        }
        .into());
    }
    with_call(variant, problem, |call| {
        let mut keys = Vec::with_capacity(shape.batch() * shape.heads());
        for b in 0..shape.batch() {
            for h in 0..shape.heads() {
                match variant.chosen(call, b, h, rows) {
                    Some(k) if k.len() == rows.len() => keys.push(k),
                    Some(k) => {
                        return Err(ErrorKind::ShapeMismatch {
                            what: format!("{variant}: chosen keys, one list per row"),
                            expected: rows.len(),
                            got: k.len(),
                        }
                        .into());
                    }
                    None => return Ok(None),
                }
            }
        }
        Ok(Some(Chosen::new(
            shape.batch(),
            shape.heads(),
            rows.to_vec(),
            keys,
        )))
    })
}

/// The keys a data-dependent variant ([`Selected`](crate::attention::Fidelity::Selected))
/// chose for some query rows of every (batch, head) of one problem: what its own check runs
/// the oracle under ([`oracle_chosen`](crate::oracle::oracle_chosen)), and the set its price of selection
/// ([`dropped_mass_chosen`](crate::oracle::dropped_mass_chosen)) is measured on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    batch: usize,
    heads: usize,
    rows: Vec<usize>,
    /// `keys[b * heads + h][r]`: the keys of query `rows[r]` of (b, h), sorted, distinct.
    keys: Vec<Vec<Vec<u32>>>,
}

impl Chosen {
    /// The keys chosen for query rows `rows` of each (batch, head): `keys[b * heads + h][r]`
    /// for query `rows[r]`, in any order (they are sorted here).
    ///
    /// # Panics
    /// If `keys` is not `batch * heads` lists of `rows.len()` rows.
    pub fn new(batch: usize, heads: usize, rows: Vec<usize>, mut keys: Vec<Vec<Vec<u32>>>) -> Self {
        assert_eq!(keys.len(), batch * heads, "one key list per (batch, head)");
        for per_head in &mut keys {
            assert_eq!(per_head.len(), rows.len(), "one key list per row");
            for row in per_head.iter_mut() {
                row.sort_unstable();
                row.dedup();
            }
        }
        Self {
            batch,
            heads,
            rows,
            keys,
        }
    }

    /// The query rows the keys were chosen for.
    pub fn rows(&self) -> &[usize] {
        &self.rows
    }

    /// The keys chosen for query `rows()[r]` of (batch `b`, head `h`), sorted.
    pub fn keys(&self, b: usize, h: usize, r: usize) -> &[u32] {
        &self.keys[b * self.heads + h][r]
    }

    /// Whether key `j` was chosen for query `rows()[r]` of (b, h).
    pub fn contains(&self, b: usize, h: usize, r: usize, j: usize) -> bool {
        u32::try_from(j).is_ok_and(|j| self.keys(b, h, r).binary_search(&j).is_ok())
    }

    /// The chosen (query, key) pairs over every (batch, head).
    pub fn pairs(&self) -> usize {
        self.keys.iter().flatten().map(Vec::len).sum()
    }

    /// Whether the keys were chosen for (a subset of the rows of) a problem of `shape`.
    pub fn fits(&self, shape: &Shape) -> bool {
        self.batch == shape.batch()
            && self.heads == shape.heads()
            && self.rows.iter().all(|&r| r < shape.n_q())
    }
}

/// Checks `variant`'s reasons for `problem`, applies RoPE, and calls `f` with the checked
/// call.
fn with_call<T>(
    variant: &dyn Attention,
    problem: &Problem<'_>,
    f: impl FnOnce(&Call<'_>) -> Result<T>,
) -> Result<T> {
    let reasons = reasons(
        variant,
        &problem.shape(),
        &problem.opts(),
        problem.key_lengths.is_some(),
    );
    if !reasons.is_empty() {
        return Err(ErrorKind::Unsupported {
            variant: variant.to_string(),
            reasons,
        }
        .into());
    }
    let threads = rayon::current_num_threads();
    match problem.opts.rope {
        None => f(&Call {
            problem: *problem,
            threads,
        }),
        Some(base) => {
            let offset = problem.shape.offset();
            let q = modifier::rope(problem.q, offset, base);
            let k = modifier::rope(problem.k, 0, base);
            let rotated = Problem {
                q: q.view(),
                k: k.view(),
                opts: Options {
                    rope: None,
                    ..problem.opts
                },
                ..*problem
            };
            f(&Call {
                problem: rotated,
                threads,
            })
        }
    }
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

/// What f32 attention can hold: partial sums of `q . k` are bounded by `|q| |k|`
/// (Cauchy-Schwarz) and those of `p . v` by `n_kv max|v|`; beyond `RANGE` (a quarter of
/// `f32::MAX`) they could overflow.
const RANGE: f64 = f32::MAX as f64 / 4.0;

/// Refuses finite inputs whose scores or weighted sums could overflow `f32` (an exact
/// kernel would then be wrong through no fault of its own).
fn check_range(q: &ArrayView4<f32>, k: &ArrayView4<f32>, v: &ArrayView4<f32>) -> Result<()> {
    let sq = |r: &[f32]| r.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
    let max_norm = |a: &ArrayView4<f32>| {
        let d = a.shape()[3];
        match a.as_slice() {
            Some(s) => s.chunks_exact(d).map(sq).fold(0.0, f64::max),
            None => a
                .rows()
                .into_iter()
                .map(|r| r.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
                .fold(0.0, f64::max),
        }
        .sqrt()
    };
    let (nq, nk) = (max_norm(q), max_norm(k));
    if nq * nk > RANGE {
        return Err(ErrorKind::InputRange {
            message: format!(
                "the largest |q| ({nq:.3e}) times the largest |k| ({nk:.3e}) is {:.3e}; scores could overflow f32 (max {:.3e})",
                nq * nk,
                f32::MAX
            ),
        }
        .into());
    }
    let max_v = v.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
    let n_kv = v.shape()[2] as f64;
    if max_v * n_kv > RANGE {
        return Err(ErrorKind::InputRange {
            message: format!(
                "the largest |v| ({max_v:.3e}) times the {n_kv} keys is {:.3e}; weighted sums of v could overflow f32",
                max_v * n_kv
            ),
        }
        .into());
    }
    Ok(())
}

fn check_finite(tensor: &'static str, a: &ArrayView4<f32>) -> Result<()> {
    // Branch-free over contiguous memory, so that the check vectorizes.
    let all_finite = match a.as_slice_memory_order() {
        Some(s) => s
            .chunks(1024)
            .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite())),
        None => a.iter().all(|x| x.is_finite()),
    };
    if all_finite {
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
