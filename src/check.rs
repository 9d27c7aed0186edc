//! Conformance checks: every variant against the f64 oracle on a fixed set of small cases.
//!
//! The cases cover what kernels get wrong: lengths that are not a multiple of any block size,
//! cross-attention in both directions (`n_q < n_kv` and `n_q > n_kv`, where causal rows can be
//! empty), head dimensions 1, 16, 64 and 128, `d_v != d`, grouped-query and multi-query heads,
//! batches, a single token, decoding against a long KV, and peaked logits; then the options that
//! change the scores (ALiBi, soft-capping, RoPE, all three at once) and key padding. Each runs
//! causal and bidirectional. `attnbench check` and the conformance tests both use [`check`].

use ndarray::Array4;

use crate::attention::{
    Attention, Fidelity, Options, Precision, Problem, ROPE_BASE, chosen, reasons, run,
};
use crate::oracle::{ErrorStats, compare, oracle, oracle_chosen, plain_bf16_rows};
use crate::shape::Shape;
use crate::workload::gaussian;

/// The relative Frobenius error an exact variant must stay within.
pub const EXACT_TOLERANCE: f64 = 1e-5;

/// One conformance case.
#[derive(Debug, Clone)]
pub struct Case {
    /// A short description, e.g. `"gqa h=8/h_kv=2"`.
    pub name: String,
    /// The sizes.
    pub shape: Shape,
    /// The options (causal masking, score modifiers).
    pub opts: Options,
    /// The scale of the Gaussian Q and K (1 = logits of unit variance).
    pub input_scale: f32,
    /// Per-batch key lengths (key padding), if any.
    pub key_lengths: Option<Vec<usize>>,
}

impl Case {
    fn new(name: &str, shape: [usize; 7], input_scale: f32, opts: Options) -> Self {
        let [b, h, h_kv, n_q, n_kv, d, d_v] = shape;
        Self {
            name: name.to_string(),
            shape: Shape::new(b, h, h_kv, n_q, n_kv, d, d_v).expect("case shapes are valid"),
            opts,
            input_scale,
            key_lengths: None,
        }
    }
}

/// The fixed case list, each bidirectional and causal.
pub fn cases() -> Vec<Case> {
    // [batch, heads, kv_heads, n_q, n_kv, head_dim, v_dim]
    let base: [(&str, [usize; 7], f32); 13] = [
        ("n=77 d=64", [1, 2, 2, 77, 77, 64, 64], 1.0),
        ("n=300 d=16", [1, 2, 2, 300, 300, 16, 16], 1.0),
        ("n=130 d=128", [1, 1, 1, 130, 130, 128, 128], 1.0),
        ("cross n_q=37 n_kv=300", [1, 2, 2, 37, 300, 64, 64], 1.0),
        ("cross n_q=300 n_kv=37", [1, 2, 2, 300, 37, 64, 64], 1.0),
        ("d=64 d_v=32", [1, 2, 2, 100, 100, 64, 32], 1.0),
        ("gqa h=8/h_kv=2", [1, 8, 2, 70, 70, 32, 32], 1.0),
        ("mqa h=4/h_kv=1", [1, 4, 1, 50, 50, 32, 32], 1.0),
        ("batch=2", [2, 2, 2, 65, 65, 32, 32], 1.0),
        ("n=1", [1, 2, 2, 1, 1, 64, 64], 1.0),
        ("d=1", [1, 2, 2, 40, 40, 1, 1], 1.0),
        ("decode n_q=1 n_kv=1000", [1, 4, 2, 1, 1000, 64, 64], 1.0),
        ("peaked logits n=257", [1, 2, 2, 257, 257, 64, 64], 3.0),
    ];
    let none = Options::new();
    let all = none.alibi(true).softcap(5.0).rope(ROPE_BASE);
    let modified: [(&str, [usize; 7], f32, Options); 6] = [
        (
            "alibi n=77",
            [1, 4, 4, 77, 77, 32, 32],
            1.0,
            none.alibi(true),
        ),
        (
            "alibi h=6 cross n_q=40 n_kv=150",
            [1, 6, 3, 40, 150, 32, 32],
            1.0,
            none.alibi(true),
        ),
        (
            "softcap=5 peaked n=257",
            [1, 2, 2, 257, 257, 64, 64],
            3.0,
            none.softcap(5.0),
        ),
        (
            "rope n=300 d=16",
            [1, 2, 2, 300, 300, 16, 16],
            1.0,
            none.rope(ROPE_BASE),
        ),
        (
            "rope cross n_q=37 n_kv=300",
            [1, 2, 2, 37, 300, 64, 64],
            1.0,
            none.rope(ROPE_BASE),
        ),
        (
            "alibi+softcap+rope gqa",
            [1, 8, 2, 70, 70, 32, 32],
            2.0,
            all,
        ),
    ];
    let mut padded = Case::new("key padding batch=3", [3, 2, 2, 65, 65, 32, 32], 1.0, none);
    padded.key_lengths = Some(vec![65, 23, 0]);
    let plain = base
        .iter()
        .map(|&(name, shape, scale)| (name, shape, scale, none));
    plain
        .chain(modified)
        .map(|(name, shape, scale, opts)| Case::new(name, shape, scale, opts))
        .chain([padded])
        .flat_map(|c| {
            [false, true].map(|causal| {
                let mut c = c.clone();
                c.opts.causal = causal;
                if causal {
                    c.name.push_str(" causal");
                }
                c
            })
        })
        .collect()
}

/// The result of one variant on one case.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The variant ran; `passed` says whether an exact variant met [`EXACT_TOLERANCE`]
    /// against the oracle under its own pattern (a selected one: under the keys it chose;
    /// approximate variants are compared with dense attention and pass when their output is
    /// finite).
    Ran {
        /// The error statistics against the oracle.
        stats: ErrorStats,
        /// Whether the check passed.
        passed: bool,
    },
    /// The variant declined the case; the reasons.
    Unsupported(Vec<String>),
    /// The variant returned an error.
    Failed(String),
}

impl Outcome {
    /// Whether this outcome counts as a failure.
    pub fn is_failure(&self) -> bool {
        match self {
            Outcome::Ran { passed, .. } => !passed,
            Outcome::Unsupported(_) => false,
            Outcome::Failed(_) => true,
        }
    }
}

/// Runs `variant` on `case` and compares it with the oracle.
pub fn check(variant: &dyn Attention, case: &Case, seed: u64) -> Outcome {
    check_within(variant, case, seed, u64::MAX)
}

/// Bytes a check of `variant` on `case` needs: the inputs, the output, the oracle's f64
/// output and the variant's analytic workspace.
pub fn check_bytes(variant: &dyn Attention, case: &Case) -> u64 {
    let s = &case.shape;
    // The f64 oracle is twice the f32 output.
    let oracle = s.output_bytes().saturating_mul(2);
    s.input_bytes()
        .saturating_add(s.output_bytes())
        .saturating_add(oracle)
        .saturating_add(variant.cost(s, &case.opts, 1).workspace_bytes)
}

/// Like [`check`], declining a case that needs more than `max_bytes` (see [`check_bytes`]),
/// and reporting a panic of the variant as a failure of this case alone.
pub fn check_within(variant: &dyn Attention, case: &Case, seed: u64, max_bytes: u64) -> Outcome {
    // The variant's own code (its reasons, its cost, its kernel) may panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let why = reasons(variant, &case.shape, &case.opts, case.key_lengths.is_some());
        if !why.is_empty() {
            return Outcome::Unsupported(why);
        }
        let needed = check_bytes(variant, case);
        if needed > max_bytes {
            return Outcome::Unsupported(vec![format!(
                "needs ~{} MB (inputs, output, oracle, workspace), over --max-memory {} MB",
                needed >> 20,
                max_bytes >> 20
            )]);
        }
        checked(variant, case, seed)
    }))
    .unwrap_or_else(|panic| {
        Outcome::Failed(format!("panicked: {}", crate::error::panic_message(&panic)))
    })
}

fn checked(variant: &dyn Attention, case: &Case, seed: u64) -> Outcome {
    let qkv = gaussian(&case.shape, case.input_scale, seed);
    let problem =
        Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), case.opts).and_then(|p| match &case
            .key_lengths
        {
            Some(lengths) => p.with_key_lengths(lengths),
            None => Ok(p),
        });
    let problem = match problem {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // NaN-filled so that a row the variant forgets to write cannot pass.
    let mut out = Array4::from_elem(case.shape.out_dims(), f32::NAN);
    if let Err(e) = run(variant, &problem, out.view_mut()) {
        return Outcome::Failed(e.to_string());
    }
    let (exact, reference) = match variant.fidelity() {
        Fidelity::Exact => (true, oracle(&problem, variant.pattern())),
        Fidelity::Selected => {
            // Checked against the oracle under the keys it chose for every row.
            let rows: Vec<usize> = (0..case.shape.n_q()).collect();
            match chosen(variant, &problem, &rows) {
                Ok(Some(c)) => (true, oracle_chosen(&problem, &c)),
                Ok(None) => {
                    return Outcome::Failed(
                        "a selected variant must report the keys it chose".into(),
                    );
                }
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        Fidelity::Approximate | Fidelity::OtherKernel => (false, oracle(&problem, None)),
    };
    let stats = compare(out.view(), reference.view());
    let finite = out.iter().all(|x| x.is_finite());
    let passed =
        finite && (!exact || stats.rel_frobenius <= exact_tolerance(variant, &problem, &reference));
    Outcome::Ran { stats, passed }
}

/// The relative error an exact `variant` may have against `reference` (the f64 oracle of
/// every row of `problem` under its keys): [`EXACT_TOLERANCE`] in `f32`; in `bf16`, twice a
/// plain `bf16` computation's error ([`plain_bf16_rows`], FlashAttention's rule for low
/// precision) plus [`EXACT_TOLERANCE`].
pub fn exact_tolerance(
    variant: &dyn Attention,
    problem: &Problem<'_>,
    reference: &Array4<f64>,
) -> f64 {
    match variant.precision() {
        Precision::F32 => EXACT_TOLERANCE,
        Precision::Bf16 => {
            let rows: Vec<usize> = (0..problem.shape().n_q()).collect();
            let plain = plain_bf16_rows(problem, variant.pattern(), &rows);
            2.0 * compare(plain.view(), reference.view()).rel_frobenius + EXACT_TOLERANCE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_cover_the_required_shapes() {
        let cs = cases();
        assert_eq!(cs.len(), 40);
        assert!(
            cs.iter()
                .any(|c| c.shape.n_q() != c.shape.n_kv() && c.shape.n_q() > 1)
        );
        assert!(cs.iter().any(|c| c.shape.n_q() > c.shape.n_kv()));
        assert!(cs.iter().any(|c| c.shape.v_dim() != c.shape.head_dim()));
        assert!(
            cs.iter()
                .any(|c| c.shape.kv_heads() == 1 && c.shape.heads() > 1)
        );
        assert!(cs.iter().any(|c| c.shape.batch() == 2));
        for d in [1, 16, 64, 128] {
            assert!(cs.iter().any(|c| c.shape.head_dim() == d), "d = {d}");
        }
        assert_eq!(cs.iter().filter(|c| c.opts.causal).count(), 20);
        assert!(
            cs.iter()
                .any(|c| c.opts.alibi && c.shape.n_q() != c.shape.n_kv())
        );
        assert!(cs.iter().any(|c| c.opts.softcap.is_some()));
        assert!(cs.iter().any(|c| c.opts.rope.is_some()));
        assert!(cs.iter().any(|c| c.key_lengths.is_some()));
    }
}
