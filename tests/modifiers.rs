//! Score modifiers (ALiBi, soft-capping), RoPE and key padding: hand-computed cases for the
//! oracle and the kernels, refusal by variants that cannot apply them, and option errors.
//! (Every exact variant is also checked against the oracle under each modifier by the
//! conformance cases of `attnbench::check`.)

use attnbench::modifier::alibi_slopes;
use attnbench::oracle::oracle;
use attnbench::{
    Attention, Call, Cost, ErrorKind, Fidelity, Options, Out, Problem, ROPE_BASE, Registry, Shape,
    attend,
};
use ndarray::Array4;

fn exact_variants() -> Vec<Box<dyn Attention>> {
    Registry::builtin()
        .build_list("full,flash,flash(bq=2,bk=1,isa=portable),flash(isa=avx2),window(w=100)")
        .unwrap()
        .into_iter()
        .filter(|v| {
            v.unsupported(&Shape::self_attention(1, 1, 4, 4).unwrap(), &Options::new())
                .is_empty()
        })
        .collect()
}

/// Softmax of `scores`.
fn softmax(scores: &[f64]) -> Vec<f64> {
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let t: f64 = e.iter().sum();
    e.iter().map(|x| x / t).collect()
}

/// V = identity (n_kv x n_kv), so each output row is the attention weights themselves.
fn identity_v(heads: usize, n: usize) -> Array4<f32> {
    Array4::from_shape_fn([1, heads, n, n], |(_, _, j, c)| f32::from(u8::from(j == c)))
}

fn assert_rows(out: &Array4<f32>, h: usize, i: usize, want: &[f64], what: &str) {
    for (j, &w) in want.iter().enumerate() {
        let got = out[[0, h, i, j]] as f64;
        assert!(
            (got - w).abs() < 1e-6,
            "{what}: head {h} row {i} key {j}: {got} vs {w}"
        );
    }
}

#[test]
fn alibi_by_hand() {
    // Zero queries: every score is 0, so the weights are softmax of the biases alone. One
    // query at position 2 against keys 0, 1, 2: biases -2m, -m, 0.
    let (heads, n) = (2, 3);
    let q = Array4::<f32>::zeros([1, heads, 1, 4]);
    let k = Array4::<f32>::from_elem([1, heads, n, 4], 0.3);
    let v = identity_v(heads, n);
    let opts = Options::new().alibi(true);
    assert_eq!(alibi_slopes(2), vec![1.0 / 16.0, 1.0 / 256.0]);
    for variant in exact_variants() {
        let out = attend(variant.as_ref(), q.view(), k.view(), v.view(), &opts).unwrap();
        for (h, m) in [(0, 1.0 / 16.0), (1, 1.0 / 256.0)] {
            assert_rows(
                &out,
                h,
                0,
                &softmax(&[-2.0 * m, -m, 0.0]),
                &variant.to_string(),
            );
        }
    }
    // Bidirectional self-attention uses |i - j|: the middle query sees -m, 0, -m.
    let q = Array4::<f32>::zeros([1, heads, n, 4]);
    let p = Problem::new(q.view(), k.view(), v.view(), opts).unwrap();
    let o = oracle(&p, None);
    let w = softmax(&[-1.0 / 16.0, 0.0, -1.0 / 16.0]);
    for j in 0..n {
        assert!((o[[0, 0, 1, j]] - w[j]).abs() < 1e-12);
    }
}

#[test]
fn softcap_by_hand() {
    // d = 1, scale 1: scores q.k = 10 and 0, capped at c = 2 to 2 tanh(5) and 0.
    let q = Array4::from_elem([1, 1, 1, 1], 10.0f32);
    let k = Array4::from_shape_vec([1, 1, 2, 1], vec![1.0f32, 0.0]).unwrap();
    let v = identity_v(1, 2);
    let opts = Options::new().scale(1.0).softcap(2.0);
    let want = softmax(&[2.0 * 5f64.tanh(), 0.0]);
    for variant in exact_variants() {
        let out = attend(variant.as_ref(), q.view(), k.view(), v.view(), &opts).unwrap();
        assert_rows(&out, 0, 0, &want, &variant.to_string());
    }
    let p = Problem::new(q.view(), k.view(), v.view(), opts).unwrap();
    let o = oracle(&p, None);
    assert!((o[[0, 0, 0, 0]] - want[0]).abs() < 1e-12);
}

#[test]
fn rope_by_hand() {
    // d = 2: the only pair turns by angle p (frequency base^0 = 1). With q = k = (1, 0) at
    // positions i and j the score is cos(i - j).
    let n = 4;
    let q = Array4::from_shape_fn([1, 1, n, 2], |(_, _, _, c)| f32::from(u8::from(c == 0)));
    let v = identity_v(1, n);
    let opts = Options::new().scale(1.0).rope(ROPE_BASE);
    let variants = exact_variants();
    for variant in &variants {
        let out = attend(variant.as_ref(), q.view(), q.view(), v.view(), &opts).unwrap();
        for i in 0..n {
            let want: Vec<f64> = (0..n).map(|j| ((i as f64) - j as f64).cos()).collect();
            assert_rows(&out, 0, i, &softmax(&want), &variant.to_string());
        }
    }
    // Cross-attention: the query sits at the last key position, n - 1.
    let q1 = Array4::from_shape_fn([1, 1, 1, 2], |(_, _, _, c)| f32::from(u8::from(c == 0)));
    let out = attend(variants[0].as_ref(), q1.view(), q.view(), v.view(), &opts).unwrap();
    let want: Vec<f64> = (0..n).map(|j| ((n - 1 - j) as f64).cos()).collect();
    assert_rows(&out, 0, 0, &softmax(&want), "cross");
    // RoPE is applied before any variant runs, so linear attention gets it too.
    let linear = Registry::builtin().build("linear(phi=relu)").unwrap();
    attend(linear.as_ref(), q.view(), q.view(), v.view(), &opts).unwrap();
}

#[test]
fn key_padding_matches_truncated_keys() {
    // Bidirectional: padding keys out is the same as cutting them off.
    let shape = Shape::new(2, 2, 2, 20, 20, 8, 8).unwrap();
    let qkv = attnbench::workload::gaussian(&shape, 1.0, 3);
    let lengths = [20, 9];
    for variant in exact_variants() {
        let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), Options::new())
            .and_then(|p| p.with_key_lengths(&lengths))
            .unwrap();
        let mut out = Array4::from_elem(shape.out_dims(), f32::NAN);
        attnbench::attention::run(variant.as_ref(), &p, out.view_mut()).unwrap();
        let b = ndarray::s![1..2, .., .., ..];
        let cut = ndarray::s![1..2, .., ..9, ..];
        let alone = attend(
            variant.as_ref(),
            qkv.q.slice(b),
            qkv.k.slice(cut),
            qkv.v.slice(cut),
            &Options::new(),
        )
        .unwrap();
        let diff = (&out.slice(b) - &alone).mapv(f32::abs);
        assert!(diff.iter().all(|&d| d < 1e-5), "{variant}");
    }
}

#[test]
fn linear_attention_refuses_score_modifiers() {
    let linear = Registry::builtin().build("linear").unwrap();
    let x = Array4::<f32>::from_elem([1, 2, 8, 4], 0.1);
    for opts in [Options::new().alibi(true), Options::new().softcap(30.0)] {
        let e = attend(linear.as_ref(), x.view(), x.view(), x.view(), &opts).unwrap_err();
        match e.kind() {
            ErrorKind::Unsupported { reasons, .. } => {
                assert!(reasons[0].contains("linear"), "{reasons:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A plug-in that knows nothing of modifiers: plain dense attention through the oracle.
#[derive(Debug)]
struct Plain;

impl std::fmt::Display for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plain")
    }
}

impl Attention for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }
    fn cost(&self, _: &Shape, _: &Options, _threads: usize) -> Cost {
        Cost::default()
    }
    fn forward(&self, p: &Call<'_>, out: Out<'_>) -> attnbench::Result<()> {
        out.into_view().assign(&oracle(p, None).mapv(|x| x as f32));
        Ok(())
    }
}

#[test]
fn plug_ins_are_refused_features_they_do_not_declare() {
    let x = Array4::<f32>::from_elem([1, 2, 8, 4], 0.1);
    for opts in [Options::new().alibi(true), Options::new().softcap(30.0)] {
        let e = attend(&Plain, x.view(), x.view(), x.view(), &opts).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }), "{e}");
    }
    let lengths = [3];
    let p = Problem::new(x.view(), x.view(), x.view(), Options::new())
        .unwrap()
        .with_key_lengths(&lengths)
        .unwrap();
    let mut out = Array4::zeros([1, 2, 8, 4]);
    let e = attnbench::attention::run(&Plain, &p, out.view_mut()).unwrap_err();
    assert!(e.to_string().contains("key padding"), "{e}");
    // RoPE needs nothing from the variant.
    attend(
        &Plain,
        x.view(),
        x.view(),
        x.view(),
        &Options::new().rope(ROPE_BASE),
    )
    .unwrap();
}

#[test]
fn bad_modifier_options_are_errors() {
    let x = Array4::<f32>::from_elem([1, 1, 4, 4], 0.1);
    let odd = Array4::<f32>::from_elem([1, 1, 4, 3], 0.1);
    let flash = Registry::builtin().build("flash").unwrap();
    let cases = [
        (Options::new().softcap(0.0), &x, "softcap"),
        (Options::new().softcap(-3.0), &x, "softcap"),
        (Options::new().softcap(f32::NAN), &x, "softcap"),
        (Options::new().rope(1.0), &x, "rope"),
        (Options::new().rope(f32::INFINITY), &x, "rope"),
        (Options::new().rope(ROPE_BASE), &odd, "rope"),
    ];
    for (opts, t, name) in cases {
        let e = attend(flash.as_ref(), t.view(), t.view(), t.view(), &opts).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BadOption { option, .. } if *option == name),
            "{opts:?}: {e}"
        );
    }
    let p = Problem::new(x.view(), x.view(), x.view(), Options::new()).unwrap();
    let e = p.with_key_lengths(&[1, 2]).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ShapeMismatch { .. }), "{e}");
    let e = p.with_key_lengths(&[5]).unwrap_err();
    assert!(e.to_string().contains("longer than the 4 keys"), "{e}");
}
