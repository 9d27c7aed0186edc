//! `flash(dtype=bf16)`: exact in `bf16`, held to twice the error of a plain `bf16`
//! computation against the f64 oracle (FlashAttention's rule for low precision), on Gaussian
//! inputs and on the bundled LLM activations; the `vdpbf16ps` kernels against the widening
//! path that runs everywhere; and the spec's refusals. (Every check case runs it too, in
//! `tests/conformance.rs`.)

use std::path::Path;

use attnbench::kernels::dispatch::{Bf16Dot, Isa};
use attnbench::oracle::{
    compare, oracle, oracle_rows, plain_bf16_rows, plain_f32_rows, sample_rows,
};
use attnbench::registry::Registry;
use attnbench::workload::{gaussian, load_npy_dir};
use attnbench::{Attention, Options, Precision, Problem, Shape, attend};
use ndarray::Array4;

fn build(spec: &str) -> Box<dyn Attention> {
    Registry::builtin().build(spec).unwrap()
}

/// `(error of the variant, error of the plain bf16 computation)` against the f64 oracle,
/// on every row.
fn errors(spec: &str, shape: Shape, causal: bool, seed: u64) -> (f64, f64) {
    let v = build(spec);
    let qkv = gaussian(&shape, 1.0, seed);
    let opts = Options::new().causal(causal);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    let out = attend(v.as_ref(), qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
    let reference = oracle(&p, None);
    let rows: Vec<usize> = (0..shape.n_q()).collect();
    let plain = plain_bf16_rows(&p, None, &rows);
    (
        compare(out.view(), reference.view()).rel_frobenius,
        compare(plain.view(), reference.view()).rel_frobenius,
    )
}

#[test]
fn bf16_flash_is_within_twice_a_plain_bf16_computation() {
    // Self and cross attention, GQA, causal, odd lengths (a key pair split by the end) and
    // an odd head dimension (the widening path even with AVX512-BF16).
    let shapes = [
        (Shape::new(1, 4, 4, 300, 300, 64, 64).unwrap(), false),
        (Shape::new(1, 4, 4, 300, 300, 64, 64).unwrap(), true),
        (Shape::new(2, 6, 2, 77, 129, 32, 48).unwrap(), false),
        (Shape::new(1, 2, 1, 1, 513, 64, 64).unwrap(), true),
        (Shape::new(1, 2, 2, 65, 65, 17, 17).unwrap(), true),
    ];
    for spec in [
        "flash(dtype=bf16)",
        "flash(dtype=bf16,isa=portable)",
        "flash(bq=7,bk=6,dtype=bf16)",
    ] {
        for (i, &(shape, causal)) in shapes.iter().enumerate() {
            let (err, plain) = errors(spec, shape, causal, i as u64);
            assert!(
                err <= 2.0 * plain,
                "{spec} on {shape} causal={causal}: {err:.3e} vs plain bf16 {plain:.3e}"
            );
            // Really rounded: far above f32 rounding, near bf16's (2^-9 = 2e-3 relative).
            assert!(
                err > 1e-4 && plain > 1e-4,
                "{spec} on {shape}: {err:.3e}, {plain:.3e}"
            );
        }
    }
}

#[test]
fn the_bf16_dot_kernels_agree_with_the_widening_path() {
    if Bf16Dot::detect(Isa::detect()).is_none() {
        eprintln!("no AVX512-BF16 here: only the widening path runs (tested above)");
        return;
    }
    for (shape, causal) in [
        (Shape::new(1, 3, 3, 200, 200, 64, 64).unwrap(), true),
        (Shape::new(1, 2, 1, 40, 257, 32, 80).unwrap(), false),
    ] {
        let qkv = gaussian(&shape, 1.0, 9);
        let opts = Options::new().causal(causal);
        let run = |spec: &str| {
            attend(
                build(spec).as_ref(),
                qkv.q.view(),
                qkv.k.view(),
                qkv.v.view(),
                &opts,
            )
            .unwrap()
        };
        let (dot, wide) = (
            run("flash(dtype=bf16)"),
            run("flash(dtype=bf16,isa=portable)"),
        );
        // The same rounded operands; only the order of the f32 sums differs, but a score
        // that differs in its last bits can flip its probability's rounding to bf16 (a
        // 2^-8 step): measured 1.9e-5 on the first shape, against bf16 errors of ~3e-3.
        let wide64 = wide.mapv(f64::from);
        let diff = compare(dot.view(), wide64.view()).rel_frobenius;
        assert!(diff < 1e-4, "{shape}: {diff:.3e}");
    }
}

#[test]
fn on_real_activations_bf16_keeps_the_rule_and_is_much_less_precise_than_f32() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lm");
    let qkv = load_npy_dir(&dir).unwrap().prefix(1024);
    let opts = Options::new().causal(true);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    let rows = sample_rows(1024, 64, 3);
    let reference = oracle_rows(&p, None, &rows);
    let rows_of = |out: &Array4<f32>| out.select(ndarray::Axis(2), &rows);
    let err = |spec: &str| {
        let out = attend(
            build(spec).as_ref(),
            qkv.q.view(),
            qkv.k.view(),
            qkv.v.view(),
            &opts,
        )
        .unwrap();
        compare(rows_of(&out).view(), reference.view()).rel_frobenius
    };
    let (bf16, f32) = (err("flash(dtype=bf16)"), err("flash"));
    let plain_bf16 = compare(plain_bf16_rows(&p, None, &rows).view(), reference.view());
    let plain_f32 = compare(plain_f32_rows(&p, None, &rows).view(), reference.view());
    assert!(
        bf16 <= 2.0 * plain_bf16.rel_frobenius,
        "{bf16:.3e} vs {plain_bf16:?}"
    );
    assert!(bf16 > 10.0 * f32, "bf16 {bf16:.3e} vs f32 {f32:.3e}");
    assert!(f32 <= 2.0 * plain_f32.rel_frobenius + 1e-6, "{f32:.3e}");
}

#[test]
fn the_spec_names_its_precision_and_refuses_what_it_cannot_run() {
    let v = build("flash(dtype=bf16)");
    assert_eq!(v.precision(), Precision::Bf16);
    assert_eq!(v.to_string(), "flash(bq=64,bk=128,dtype=bf16)");
    assert_eq!(build("flash").precision(), Precision::F32);
    assert_eq!(build("flash(dtype=f32)").to_string(), "flash(bq=64,bk=128)");
    let reg = Registry::builtin();
    let err = reg.build("flash(dtype=f16)").unwrap_err().to_string();
    assert!(err.contains("expected f32 or bf16"), "{err}");
    let err = reg.build("flash(bk=5,dtype=bf16)").unwrap_err().to_string();
    assert!(err.contains("bk must be even"), "{err}");
}

#[test]
fn pair_counts_whose_products_overflow_are_refused() {
    let Some(tok) = Bf16Dot::detect(Isa::detect()) else {
        return;
    };
    // 2 * pairs wraps to 0 in usize: the kernel must panic, not read past the empty slices.
    let refused = std::panic::catch_unwind(|| {
        let mut acct = vec![0.0f32; 16];
        attnbench::kernels::dispatch::accumulate_t_bf16(
            tok,
            &[],
            &[],
            &mut acct,
            (1 << 63, 1, 16),
            &[1.0; 16],
        );
    });
    assert!(refused.is_err());
}
