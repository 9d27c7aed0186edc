//! Every public way to run a variant (`attend`, `attend_into`, `attention::run`,
//! `attention::weights`, the multi-head layer) either matches the `f64` oracle under the
//! variant's own mask or returns an error: with RoPE, ALiBi and soft-capping (which the
//! oracle applies and a kernel could silently ignore), and with an output of the wrong size
//! (which a kernel could silently truncate). `Attention::forward` itself cannot be called
//! from outside the crate: its `Call` argument has no public constructor.

use attnbench::attention::{self, run};
use attnbench::layer::{LayerConfig, MultiHeadAttention, Weights};
use attnbench::oracle::{compare, oracle};
use attnbench::workload::gaussian;
use attnbench::{
    Attention, ErrorKind, Fidelity, Options, Problem, ROPE_BASE, Registry, Shape, attend,
    attend_into,
};
use ndarray::{Array3, Array4};

/// Relative Frobenius error an exact variant is held to (as in `attnbench check`).
const EXACT: f64 = 1e-5;

fn option_sets() -> Vec<(&'static str, Options)> {
    vec![
        ("rope", Options::new().rope(ROPE_BASE)),
        ("rope causal", Options::new().rope(ROPE_BASE).causal(true)),
        ("alibi", Options::new().alibi(true)),
        ("softcap", Options::new().softcap(5.0).causal(true)),
        (
            "all three",
            Options::new().rope(500.0).alibi(true).softcap(8.0),
        ),
    ]
}

fn every_variant() -> Vec<Box<dyn Attention>> {
    let reg = Registry::builtin();
    let mut vs = reg.defaults();
    for spec in [
        "flash(isa=portable)",
        "flash(isa=avx2)",
        "flash(isa=avx512)",
    ] {
        vs.push(reg.build(spec).unwrap());
    }
    vs
}

/// Either an error that names the variant's refusal, or an output that matches the oracle
/// (exact variants) or is finite (approximate ones, whose own tests pin their error).
fn judge(v: &dyn Attention, p: &Problem<'_>, got: attnbench::Result<Array4<f32>>, how: &str) {
    match got {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::Unsupported { .. }),
            "{v} via {how}: an error other than a refusal: {e}"
        ),
        Ok(out) if v.fidelity() == Fidelity::Exact => {
            let err = compare(out.view(), oracle(p, v.pattern()).view()).rel_frobenius;
            assert!(err < EXACT, "{v} via {how}: relative error {err:.3e}");
        }
        Ok(out) => assert!(out.iter().all(|x| x.is_finite()), "{v} via {how}"),
    }
}

#[test]
fn every_entry_point_applies_every_modifier_or_refuses() {
    let shape = Shape::new(1, 4, 2, 37, 45, 16, 16).unwrap();
    let qkv = gaussian(&shape, 1.5, 11);
    let mut refusals = 0;
    for v in every_variant() {
        for (label, opts) in option_sets() {
            let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
            let how = format!("attend ({label})");
            let got = attend(v.as_ref(), qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts);
            refusals += got.is_err() as usize;
            judge(v.as_ref(), &p, got, &how);

            let mut out = Array4::from_elem(shape.out_dims(), f32::NAN);
            let got = attend_into(
                v.as_ref(),
                qkv.q.view(),
                qkv.k.view(),
                qkv.v.view(),
                &opts,
                out.view_mut(),
            )
            .map(|()| out);
            judge(v.as_ref(), &p, got, &format!("attend_into ({label})"));

            let mut out = Array4::from_elem(shape.out_dims(), f32::NAN);
            let got = run(v.as_ref(), &p, out.view_mut()).map(|()| out);
            judge(v.as_ref(), &p, got, &format!("run ({label})"));
        }
    }
    // linear refuses ALiBi and soft-capping; a forced ISA the CPU lacks is refused too.
    assert!(refusals >= 3, "only {refusals} refusals");
}

#[test]
fn weights_are_checked_like_forward() {
    let shape = Shape::self_attention(1, 2, 24, 8).unwrap();
    let qkv = gaussian(&shape, 1.0, 3);
    let reg = Registry::builtin();
    let linear = reg.build("linear(phi=elu1)").unwrap();
    let opts = Options::new().alibi(true);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    let e = attention::weights(linear.as_ref(), &p, 0, 0).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }), "{e}");
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), Options::new()).unwrap();
    assert!(attention::weights(linear.as_ref(), &p, 0, 2).is_err());
    assert!(attention::weights(linear.as_ref(), &p, 1, 0).is_err());
    let w = attention::weights(linear.as_ref(), &p, 0, 1)
        .unwrap()
        .unwrap();
    for row in w.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-9);
    }
}

#[test]
fn an_output_of_the_wrong_size_is_an_error_for_every_variant() {
    let shape = Shape::new(2, 4, 2, 9, 12, 8, 6).unwrap();
    let qkv = gaussian(&shape, 1.0, 5);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), Options::new()).unwrap();
    let good = shape.out_dims();
    for v in every_variant() {
        for axis in 0..4 {
            for delta in [-1isize, 1] {
                let mut dims = good;
                dims[axis] = (dims[axis] as isize + delta) as usize;
                let mut out = Array4::<f32>::zeros(dims);
                let e = run(v.as_ref(), &p, out.view_mut()).unwrap_err();
                assert!(
                    matches!(e.kind(), ErrorKind::ShapeMismatch { .. }),
                    "{v}, out {dims:?}: {e}"
                );
                assert!(out.iter().all(|&x| x == 0.0), "{v} wrote into a bad output");
            }
        }
    }
}

#[test]
fn the_layer_applies_rope_through_the_checked_path() {
    // The layer hands its core rotated Q and K through `run`: full and flash agree inside a
    // RoPE layer (each is checked against the oracle with RoPE above), RoPE changes the
    // output, and a core that cannot apply an option is refused.
    let cfg = LayerConfig::new(32, 4).unwrap();
    let layer = MultiHeadAttention::new(cfg, Weights::xavier(&cfg, 1)).unwrap();
    let x = Array3::from_shape_fn((1, 20, 32), |(_, i, j)| {
        ((i * 7 + j * 3) % 11) as f32 / 11.0
    });
    let opts = Options::new().rope(ROPE_BASE).causal(true);
    let reg = Registry::builtin();
    let full = layer.forward(reg.build("full").unwrap().as_ref(), x.view(), &opts, None);
    let flash = layer.forward(reg.build("flash").unwrap().as_ref(), x.view(), &opts, None);
    let no_rope = layer.forward(
        reg.build("flash").unwrap().as_ref(),
        x.view(),
        &Options::new().causal(true),
        None,
    );
    let (full, flash, no_rope) = (full.unwrap(), flash.unwrap(), no_rope.unwrap());
    let diff =
        |a: &Array3<f32>, b: &Array3<f32>| (a - b).iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    assert!(diff(&full, &flash) < 1e-5, "{}", diff(&full, &flash));
    assert!(diff(&flash, &no_rope) > 1e-3, "RoPE changed nothing");
    let linear = reg.build("linear(phi=elu1)").unwrap();
    let e = layer
        .forward(linear.as_ref(), x.view(), &Options::new().alibi(true), None)
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }), "{e}");
}
