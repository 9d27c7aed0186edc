//! Data-dependent selection (`topk`, `blocktopk`), sinks, and the low-rank approximations
//! (`nystrom`, `linformer`): what each chooses, checked independently of the variant, the
//! order their prices must come in, and errors that fall with the budget.

use std::path::Path;

use attnbench::attention::{Fidelity, Problem, attend, chosen};
use attnbench::check::{cases, check};
use attnbench::oracle::{compare, dropped_mass, dropped_mass_chosen, oracle, sample_rows};
use attnbench::registry::Registry;
use attnbench::workload::{gaussian, load_npy_dir};
use attnbench::{Options, Shape};

fn chosen_all(spec: &str, p: &Problem<'_>) -> attnbench::attention::Chosen {
    let v = Registry::builtin().build(spec).unwrap();
    let rows: Vec<usize> = (0..p.shape().n_q()).collect();
    chosen(v.as_ref(), p, &rows)
        .unwrap()
        .expect("a selected variant")
}

#[test]
fn topk_chooses_each_querys_highest_scores_among_its_allowed_keys() {
    let shape = Shape::new(1, 2, 1, 200, 200, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.0, 7);
    for causal in [false, true] {
        let opts = Options::new().causal(causal);
        let lengths = [180];
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)
            .unwrap()
            .with_key_lengths(&lengths)
            .unwrap();
        let c = chosen_all("topk(k=20)", &p);
        let scale = p.scale();
        for h in 0..2 {
            for i in 0..200 {
                let allowed = if causal { (i + 1).min(180) } else { 180 };
                let keys = c.keys(0, h, i);
                assert_eq!(keys.len(), 20.min(allowed), "row {i}");
                assert!(keys.iter().all(|&j| (j as usize) < allowed), "row {i}");
                // Scores recomputed here in f64: every chosen key scores at least as high as
                // every other allowed key (up to f32 rounding of the variant's scores).
                let score = |j: usize| -> f64 {
                    (0..16)
                        .map(|c| qkv.q[[0, h, i, c]] as f64 * qkv.k[[0, 0, j, c]] as f64)
                        .sum::<f64>()
                        * scale as f64
                };
                let worst_in = keys
                    .iter()
                    .map(|&j| score(j as usize))
                    .fold(f64::MAX, f64::min);
                let best_out = (0..allowed)
                    .filter(|&j| !keys.contains(&(j as u32)))
                    .map(score)
                    .fold(f64::MIN, f64::max);
                assert!(
                    worst_in >= best_out - 1e-5,
                    "row {i}: {worst_in} < {best_out}"
                );
            }
        }
    }
}

#[test]
fn blocktopk_chooses_whole_blocks_its_own_first_and_never_a_future_one() {
    let shape = Shape::new(1, 3, 1, 300, 300, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.0, 3);
    for (causal, score) in [(true, "mean"), (true, "bound"), (false, "mean")] {
        let opts = Options::new().causal(causal);
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
        let c = chosen_all(
            &format!("blocktopk(block=16,k=3,local=2,score={score})"),
            &p,
        );
        for h in 0..3 {
            for i in 0..300 {
                let keys = c.keys(0, h, i);
                let mut blocks: Vec<u32> = keys.iter().map(|&j| j / 16).collect();
                blocks.dedup();
                // Whole blocks (the last block of the sequence is 300 - 288 = 12 keys), but
                // causally only up to the row itself in its own block.
                for &b in &blocks {
                    let len = keys.iter().filter(|&&j| j / 16 == b).count();
                    let whole = if b == 18 { 12 } else { 16 };
                    let expected = if causal && b as usize == i / 16 {
                        i % 16 + 1
                    } else {
                        whole
                    };
                    assert_eq!(len, expected, "row {i} block {b}");
                }
                // The query block's own block and the one before it are always there.
                let own = (i / 16 * 16 + 15).min(299) as u32 / 16;
                assert!(blocks.contains(&own), "row {i}");
                if own > 0 {
                    assert!(blocks.contains(&(own - 1)), "row {i}");
                }
                let candidates = if causal { own as usize + 1 } else { 19 };
                let forced = 2.min(own as usize + 1);
                assert_eq!(
                    blocks.len(),
                    candidates.min(3 + forced),
                    "row {i}: {blocks:?}"
                );
                if causal {
                    assert!(blocks.iter().all(|&b| b <= own), "row {i}");
                }
            }
        }
    }
}

#[test]
fn blocktopk_keeps_every_rows_own_block_when_a_query_block_straddles_key_blocks() {
    // 40 queries against 300 keys, causal: query block 0 (positions 260..=275) straddles key
    // blocks 16 and 17, and its rows may attend only up to their own position.
    let shape = Shape::new(1, 1, 1, 40, 300, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.0, 5);
    let p = Problem::new(
        qkv.q.view(),
        qkv.k.view(),
        qkv.v.view(),
        Options::new().causal(true),
    )
    .unwrap();
    for spec in [
        "blocktopk(block=16,k=0,local=1)",
        "blocktopk(block=16,k=2,local=1)",
    ] {
        let c = chosen_all(spec, &p);
        for i in 0..40 {
            let pos = (i + 260) as u32;
            let keys = c.keys(0, 0, i);
            assert!(keys.contains(&pos), "{spec} row {i}: its own key");
            assert!(
                keys.iter().all(|&j| j <= pos),
                "{spec} row {i}: a future key"
            );
        }
    }
}

#[test]
fn selection_variants_pass_their_own_check_where_they_really_select() {
    // Small blocks and k, so that the conformance cases (n <= 300) leave keys out.
    let reg = Registry::builtin();
    for spec in [
        "topk(k=5)",
        "blocktopk(block=8,k=2,local=1)",
        "blocktopk(block=8,k=1,local=0,score=bound)",
        "sinks(s=3,w=4)",
        "lsh(buckets=4,rounds=1,chunk=8)",
        "lsh(buckets=8,rounds=3,chunk=16)",
    ] {
        let v = reg.build(spec).unwrap();
        let mut selective = 0;
        for case in cases() {
            let outcome = check(v.as_ref(), &case, 11);
            assert!(
                !outcome.is_failure(),
                "{spec} on {}: {outcome:?}",
                case.name
            );
            // Their error against dense attention shows that keys were left out.
            if case.shape.n_kv() >= 77 && case.opts.features().is_empty() {
                let qkv = gaussian(&case.shape, case.input_scale, 11);
                let out = attend(
                    v.as_ref(),
                    qkv.q.view(),
                    qkv.k.view(),
                    qkv.v.view(),
                    &case.opts,
                )
                .unwrap();
                let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), case.opts).unwrap();
                if compare(out.view(), oracle(&p, None).view()).rel_frobenius > 1e-2 {
                    selective += 1;
                }
            }
        }
        assert!(
            selective >= 5,
            "{spec}: only {selective} cases left keys out"
        );
        if v.fidelity() == Fidelity::Selected {
            assert!(v.pattern().is_none(), "{spec}");
        }
    }
}

/// The bundled SmolLM2 layer (causal, GQA 9/3, d = 64), its first `n` tokens.
fn llm(n: usize) -> attnbench::workload::Qkv {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lm");
    load_npy_dir(&dir).unwrap().prefix(n)
}

#[test]
fn on_real_activations_top_k_keeps_the_most_mass_and_more_blocks_keep_more() {
    let qkv = llm(1024);
    let p = Problem::new(
        qkv.q.view(),
        qkv.k.view(),
        qkv.v.view(),
        Options::new().causal(true),
    )
    .unwrap();
    let rows = sample_rows(1024, 48, 5);
    let reg = Registry::builtin();
    let price = |spec: &str| {
        let v = reg.build(spec).unwrap();
        match v.pattern() {
            Some(pat) => dropped_mass(&p, pat, &rows),
            None => dropped_mass_chosen(&p, &chosen(v.as_ref(), &p, &rows).unwrap().unwrap()),
        }
    };
    // 4 blocks of 32 = 128 keys per query (fewer where fewer precede it) for each method.
    let topk = price("topk(k=128)");
    let block = price("blocktopk(block=32,k=3,local=1)");
    let bound = price("blocktopk(block=32,k=3,local=1,score=bound)");
    let window = price("window(w=127)");
    let sinks = price("sinks(s=4,w=123)");
    // Top-k keeps the most softmax mass of any choice of as many keys per row (a theorem):
    // every other method at the same count drops at least as much.
    for (name, other) in [
        ("blocktopk", block),
        ("bound", bound),
        ("window", window),
        ("sinks", sinks),
    ] {
        assert!(topk <= other + 1e-12, "topk {topk} vs {name} {other}");
    }
    // Sinks hold what the window drops on a sink-heavy layer.
    assert!(sinks < 0.5 * window, "sinks {sinks} vs window {window}");
    // Block selection with more blocks keeps a superset (the same scores, one more taken).
    let mut last = f64::INFINITY;
    for k in [1, 2, 4, 8, 16] {
        let m = price(&format!("blocktopk(block=32,k={k},local=1)"));
        assert!(m <= last + 1e-12, "k = {k}: {m} after {last}");
        last = m;
    }
    assert!(last < 0.5 * block, "k = 16 drops {last}, k = 3 {block}");
    // LSH: more rounds add rounds (the first ones unchanged), so a superset of keys.
    let mut last = f64::INFINITY;
    for rounds in [1, 2, 4, 8] {
        let m = price(&format!("lsh(buckets=16,rounds={rounds},chunk=32)"));
        assert!(m <= last + 1e-12, "rounds = {rounds}: {m} after {last}");
        last = m;
    }
    assert!(last >= topk - 1e-12);
}

#[test]
fn lsh_chooses_its_chunks_of_the_sorted_order_and_its_own_key() {
    let shape = Shape::new(1, 2, 1, 256, 256, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.0, 9);
    for causal in [false, true] {
        let p = Problem::new(
            qkv.q.view(),
            qkv.k.view(),
            qkv.v.view(),
            Options::new().causal(causal),
        )
        .unwrap();
        let c = chosen_all("lsh(buckets=8,rounds=2,chunk=32)", &p);
        for h in 0..2 {
            for i in 0..256 {
                let keys = c.keys(0, h, i);
                // Its own key; at most two chunks of 32 per round (plus itself); never a
                // future key.
                assert!(keys.contains(&(i as u32)), "row {i}");
                assert!(keys.len() <= 2 * 2 * 32 + 1, "row {i}: {}", keys.len());
                if causal {
                    assert!(keys.iter().all(|&j| j as usize <= i), "row {i}");
                } else {
                    assert!(keys.len() >= 33, "row {i}: {}", keys.len());
                }
            }
        }
    }
}

fn error(spec: &str, qkv: &attnbench::workload::Qkv) -> f64 {
    let v = Registry::builtin().build(spec).unwrap();
    let opts = Options::new();
    let out = attend(v.as_ref(), qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    compare(out.view(), oracle(&p, None).view()).rel_frobenius
}

#[test]
fn low_rank_errors_fall_as_their_budget_grows() {
    let shape = Shape::new(1, 2, 2, 256, 256, 32, 32).unwrap();
    let qkv = gaussian(&shape, 1.0, 21);
    let falls = |specs: &[String]| -> Vec<f64> {
        let e: Vec<f64> = specs.iter().map(|s| error(s, &qkv)).collect();
        for w in e.windows(2) {
            assert!(w[1] < w[0], "{specs:?}: {e:?}");
        }
        e
    };
    let nystrom = falls(&[8, 32, 128, 256].map(|m| format!("nystrom(landmarks={m})")));
    // Six iterations are not the exact inverse: not exact even at m = n.
    assert!(
        nystrom[3] > 1e-3 && nystrom[3] < 0.5 * nystrom[0],
        "{nystrom:?}"
    );
    let mean = falls(&[16, 64, 128, 256].map(|k| format!("linformer(k={k},proj=mean)")));
    // At k = n every segment is one key: exact.
    assert!(mean[3] < 1e-5, "{mean:?}");
    // Untrained Gaussian projections: the error falls with k but stays at or above that of
    // a zero output (relative error 1), as the module documents.
    let gauss = falls(&[16, 64, 256, 1024].map(|k| format!("linformer(k={k},proj=gauss)")));
    assert!(gauss.iter().all(|&e| e > 0.9), "{gauss:?}");
}

#[test]
fn nystrom_with_the_exact_inverse_is_worse_than_with_six_iterations() {
    let shape = Shape::new(1, 2, 2, 256, 256, 32, 32).unwrap();
    let qkv = gaussian(&shape, 1.0, 21);
    let six = error("nystrom(landmarks=64,iters=6)", &qkv);
    let many = error("nystrom(landmarks=64,iters=40)", &qkv);
    assert!(many > 2.0 * six, "6 iterations {six}, 40 iterations {many}");
}

#[test]
fn causal_calls_are_refused_where_there_is_no_causal_form() {
    let shape = Shape::new(1, 1, 1, 64, 64, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.0, 1);
    for spec in ["nystrom", "linformer", "linformer(proj=mean)"] {
        let v = Registry::builtin().build(spec).unwrap();
        let e = attend(
            v.as_ref(),
            qkv.q.view(),
            qkv.k.view(),
            qkv.v.view(),
            &Options::new().causal(true),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no causal form"), "{spec}: {e}");
    }
}

#[test]
fn low_rank_effective_weights_reproduce_their_outputs() {
    let shape = Shape::new(1, 2, 1, 96, 96, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.0, 4);
    let opts = Options::new();
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    for spec in [
        "nystrom(landmarks=16)",
        "linformer(k=24,proj=gauss)",
        "linformer(k=24,proj=mean)",
    ] {
        let v = Registry::builtin().build(spec).unwrap();
        let out = attend(v.as_ref(), qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
        for h in 0..2 {
            let w = attnbench::attention::weights(v.as_ref(), &p, 0, h)
                .unwrap()
                .unwrap();
            let vals = qkv.v.slice(ndarray::s![0, 0, .., ..]).mapv(f64::from);
            let again = w.dot(&vals);
            let got = out.slice(ndarray::s![0, h, .., ..]).mapv(f64::from);
            let diff: ndarray::Array2<f64> = &again - &got;
            let rel = diff.mapv(|x| x * x).sum().sqrt() / got.mapv(|x| x * x).sum().sqrt();
            assert!(rel < 1e-4, "{spec} head {h}: {rel}");
        }
    }
}
