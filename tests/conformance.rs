//! Registry-driven conformance: every registered variant, with its defaults and with block
//! sizes chosen to stress tile edges, against the f64 oracle on every check case. A variant
//! added to the registry is tested here without writing a test.

use attnbench::check::{self, Outcome, exact_tolerance};
use attnbench::oracle::{compare, oracle};
use attnbench::workload::gaussian;
use attnbench::{Attention, Fidelity, Options, Problem, Registry, Shape, attend};
use ndarray::{Array4, Axis};

/// Every registered variant with default parameters, plus extra specs that stress edges.
fn variants_under_test() -> Vec<Box<dyn Attention>> {
    let reg = Registry::builtin();
    let mut vs = reg.defaults();
    vs.extend(
        reg.build_list(concat!(
            "flash(bq=1,bk=1),flash(bq=7,bk=5),flash(bq=128,bk=128),flash(bq=16,bk=1024),",
            "flash(isa=avx512),flash(isa=avx2),flash(isa=portable),flash(bq=7,bk=5,isa=portable),",
            "flash(dtype=bf16),flash(dtype=bf16,isa=portable),flash(bq=7,bk=6,dtype=bf16),",
            "window(w=0),window(w=5),local(block=16),strided(stride=7),fixed(block=16,c=4),",
            "longformer(w=8,g=2),bigbird(block=8,w=3,g=1,r=2,seed=3),dilated(w=5,dilation=3)"
        ))
        .unwrap(),
    );
    vs
}

#[test]
fn every_variant_passes_every_case() {
    let mut failures = Vec::new();
    for v in variants_under_test() {
        for case in check::cases() {
            let outcome = check::check(v.as_ref(), &case, 42);
            if let Outcome::Ran { stats, .. } = &outcome
                && v.fidelity() == Fidelity::Exact
            {
                assert!(stats.rel_frobenius.is_finite());
            }
            if outcome.is_failure() {
                failures.push(format!(
                    "{v} on {} ({}): {outcome:?}",
                    case.name, case.shape
                ));
            }
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// The error of an exact variant against the f64 oracle, and the tolerance it is held to
/// (its precision's: `check::exact_tolerance`).
fn exact_error(v: &dyn Attention, shape: Shape, causal: bool, seed: u64) -> (f64, f64) {
    let qkv = gaussian(&shape, 1.0, seed);
    let opts = Options::new().causal(causal);
    let out = attend(v, qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    let reference = oracle(&p, v.pattern());
    let e = compare(out.view(), reference.view()).rel_frobenius;
    (e, exact_tolerance(v, &p, &reference))
}

#[test]
fn edge_shapes() {
    let edges = [
        Shape::new(1, 1, 1, 1, 1, 1, 1).unwrap(),
        Shape::new(1, 1, 1, 1, 1, 64, 64).unwrap(),
        Shape::new(1, 3, 3, 5, 5, 1, 1).unwrap(),
        // Decoding: one query against a long KV cache.
        Shape::new(1, 2, 1, 1, 5000, 64, 64).unwrap(),
        // A long KV with a few queries (speculative decoding / chunked prefill).
        Shape::new(1, 2, 2, 3, 2049, 32, 16).unwrap(),
        // One (batch, head) only: fewer query blocks than threads, so the tiled engine splits
        // the keys across threads and merges the partial softmax results.
        Shape::new(1, 1, 1, 1, 5000, 64, 64).unwrap(),
        Shape::new(1, 1, 1, 70, 3001, 16, 24).unwrap(),
    ];
    for v in variants_under_test() {
        if v.fidelity() != Fidelity::Exact {
            continue;
        }
        for shape in edges {
            if !v.unsupported(&shape, &Options::new()).is_empty() {
                continue;
            }
            for causal in [false, true] {
                let (e, tolerance) = exact_error(v.as_ref(), shape, causal, 7);
                assert!(
                    e <= tolerance,
                    "{v} on {shape} causal={causal}: {e:e} > {tolerance:e}"
                );
            }
        }
    }
}

#[test]
fn strided_views_are_accepted() {
    // Q, K and V stored as [b, n, h, d] and viewed as [b, h, n, d]; out as a transposed view.
    let shape = Shape::new(2, 4, 2, 45, 45, 16, 8).unwrap();
    let qkv = gaussian(&shape, 1.0, 3);
    let relayout = |a: &Array4<f32>| {
        let mut t = a
            .view()
            .permuted_axes([0, 2, 1, 3])
            .as_standard_layout()
            .into_owned();
        t.swap_axes(1, 2);
        t
    };
    let (q, k, v) = (relayout(&qkv.q), relayout(&qkv.k), relayout(&qkv.v));
    assert!(!q.is_standard_layout());
    let opts = Options::new().causal(true);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    for variant in variants_under_test() {
        if !variant.unsupported(&shape, &opts).is_empty() {
            continue;
        }
        let mut out_storage = Array4::<f32>::from_elem([2, 45, 4, 8], f32::NAN);
        let mut out = out_storage.view_mut();
        out.swap_axes(1, 2);
        attnbench::attend_into(variant.as_ref(), q.view(), k.view(), v.view(), &opts, out).unwrap();
        let mut got = out_storage.view();
        got.swap_axes(1, 2);
        // Exact variants against the oracle; the others against themselves on contiguous
        // inputs, so a stride bug cannot hide behind approximation error.
        let reference = if variant.fidelity() == Fidelity::Exact {
            oracle(&p, variant.pattern())
        } else {
            attend(
                variant.as_ref(),
                qkv.q.view(),
                qkv.k.view(),
                qkv.v.view(),
                &opts,
            )
            .unwrap()
            .mapv(f64::from)
        };
        let e = compare(got, reference.view()).rel_frobenius;
        let tolerance = if variant.fidelity() == Fidelity::Exact {
            exact_tolerance(variant.as_ref(), &p, &reference)
        } else {
            check::EXACT_TOLERANCE
        };
        assert!(e <= tolerance, "{variant}: {e:e} > {tolerance:e}");
    }
}

#[test]
fn heads_sharing_a_kv_head_differ_only_by_their_queries() {
    // With identical queries, the heads of one GQA group must give identical outputs.
    let shape = Shape::new(1, 4, 2, 33, 33, 16, 16).unwrap();
    let mut qkv = gaussian(&shape, 1.0, 11);
    let first = qkv.q.index_axis(Axis(1), 0).to_owned();
    for h in 1..4 {
        qkv.q.index_axis_mut(Axis(1), h).assign(&first);
    }
    for v in variants_under_test() {
        if !v.unsupported(&shape, &Options::new()).is_empty() {
            continue;
        }
        let out = attend(
            v.as_ref(),
            qkv.q.view(),
            qkv.k.view(),
            qkv.v.view(),
            &Options::new(),
        )
        .unwrap();
        let close = |a: usize, b: usize| {
            out.index_axis(Axis(1), a)
                .iter()
                .zip(out.index_axis(Axis(1), b).iter())
                .all(|(x, y)| (x - y).abs() < 1e-6)
        };
        assert!(close(0, 1), "{v}: heads 0 and 1 share kv head 0");
        assert!(close(2, 3), "{v}: heads 2 and 3 share kv head 1");
        assert!(!close(1, 2), "{v}: heads 1 and 2 read different kv heads");
    }
}

#[test]
fn gathered_parts_match_the_oracle_where_the_engine_takes_them() {
    // The stride-like patterns run on gathered parts when there are at least as many
    // (batch, head) pairs as threads and no ALiBi; with ALiBi they keep the tile path. Both
    // paths against the oracle: lengths that are no multiple of any block or stride, GQA,
    // key padding, causal or not, one and two threads.
    let reg = Registry::builtin();
    let specs = "strided(stride=7),strided(stride=64),dilated(w=9,dilation=3),\
                 dilated(w=40,dilation=2),fixed(block=16,c=4),fixed(block=64,c=7)";
    let shape = Shape::new(2, 4, 2, 333, 333, 16, 8).unwrap();
    let qkv = gaussian(&shape, 1.0, 11);
    let lengths = [333, 250];
    for v in reg.build_list(specs).unwrap() {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (causal, alibi) in [(false, false), (true, false), (false, true)] {
                let opts = Options::new().causal(causal).alibi(alibi);
                let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)
                    .unwrap()
                    .with_key_lengths(&lengths)
                    .unwrap();
                let mut out = Array4::from_elem(shape.out_dims(), f32::NAN);
                pool.install(|| attnbench::attention::run(v.as_ref(), &p, out.view_mut()))
                    .unwrap();
                let e = compare(out.view(), oracle(&p, v.pattern()).view()).rel_frobenius;
                assert!(
                    e <= check::EXACT_TOLERANCE,
                    "{v} threads={threads} causal={causal} alibi={alibi}: {e:e}"
                );
            }
        }
        // The parts path computes fewer pairs than the tile path on the same mask.
        let opts = Options::new();
        let parts = v.cost(&shape, &opts, 1).flops;
        let tiles = v.cost(&shape, &opts.alibi(true), 1).flops;
        assert!(
            parts < tiles,
            "{v}: parts {parts:e} vs tiles {tiles:e} flops"
        );
    }
}
