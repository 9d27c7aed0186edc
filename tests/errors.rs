//! Every input error of `attend` is a typed error with a message naming the problem.

use attnbench::{
    Attention, Call, Cost, ErrorKind, Fidelity, Options, Out, Registry, Shape, attend, attend_into,
};
use ndarray::{Array, Array4, IxDyn};

fn arr(dims: [usize; 4]) -> Array4<f32> {
    Array4::from_elem(dims, 0.5)
}

fn flash() -> Box<dyn Attention> {
    Registry::builtin().build("flash").unwrap()
}

fn err_of(q: &Array4<f32>, k: &Array4<f32>, v: &Array4<f32>) -> attnbench::Error {
    attend(
        flash().as_ref(),
        q.view(),
        k.view(),
        v.view(),
        &Options::new(),
    )
    .unwrap_err()
}

#[test]
fn wrong_rank_names_the_tensor_and_shape() {
    let q = Array::<f32, _>::zeros(IxDyn(&[2, 8, 16]));
    let k = Array::<f32, _>::zeros(IxDyn(&[1, 2, 8, 16]));
    let e = attend(
        flash().as_ref(),
        q.view(),
        k.view(),
        k.view(),
        &Options::new(),
    )
    .unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::Rank {
            tensor: "q",
            expected: 4,
            ..
        }
    ));
    assert!(e.to_string().contains("[2, 8, 16]"), "{e}");
}

#[test]
fn zero_dimensions_name_the_axis() {
    let good = arr([1, 2, 8, 16]);
    for (axis, name) in [(0, "batch"), (1, "heads"), (2, "seq"), (3, "head_dim")] {
        let mut dims = [1, 2, 8, 16];
        dims[axis] = 0;
        let e = err_of(&arr(dims), &good, &good);
        assert!(
            matches!(e.kind(), ErrorKind::ZeroDim { tensor: "q", axis, .. } if *axis == name),
            "{e}"
        );
        assert!(e.to_string().contains(name), "{e}");
    }
    let e = err_of(&good, &arr([1, 2, 0, 16]), &arr([1, 2, 0, 16]));
    assert!(
        matches!(e.kind(), ErrorKind::ZeroDim { tensor: "k", .. }),
        "{e}"
    );
}

#[test]
fn mismatched_axes_say_expected_and_got() {
    let q = arr([2, 4, 8, 16]);
    let kv = arr([2, 2, 8, 16]);
    // (k, v, what the message names, expected, got)
    let cases = [
        (arr([1, 2, 8, 16]), kv.clone(), "batch of k", 2, 1),
        (kv.clone(), arr([1, 2, 8, 16]), "batch of v", 2, 1),
        (kv.clone(), arr([2, 1, 8, 16]), "kv_heads of v", 2, 1),
        (kv.clone(), arr([2, 2, 9, 16]), "n_kv of v", 8, 9),
        (
            arr([2, 2, 8, 32]),
            arr([2, 2, 8, 32]),
            "head_dim of k",
            16,
            32,
        ),
    ];
    for (k, v, what_prefix, expected_n, got_n) in cases {
        let e = err_of(&q, &k, &v);
        match e.kind() {
            ErrorKind::ShapeMismatch {
                what,
                expected,
                got,
            } => {
                assert!(what.contains(what_prefix), "{e}");
                assert_eq!((*expected, *got), (expected_n, got_n), "{e}");
            }
            other => panic!("expected a shape mismatch for {what_prefix}, got {other:?}"),
        }
    }
}

#[test]
fn heads_must_be_a_multiple_of_kv_heads() {
    let e = err_of(
        &arr([1, 6, 8, 16]),
        &arr([1, 4, 8, 16]),
        &arr([1, 4, 8, 16]),
    );
    assert_eq!(
        e.kind(),
        &ErrorKind::HeadsNotMultiple {
            heads: 6,
            kv_heads: 4
        }
    );
    assert!(e.to_string().contains("not a multiple"), "{e}");
}

#[test]
fn out_with_the_wrong_v_dim_is_rejected() {
    let q = arr([1, 2, 8, 16]);
    let v = arr([1, 2, 8, 8]);
    let mut out = arr([1, 2, 8, 16]);
    let e = attend_into(
        flash().as_ref(),
        q.view(),
        q.view(),
        v.view(),
        &Options::new(),
        out.view_mut(),
    )
    .unwrap_err();
    match e.kind() {
        ErrorKind::ShapeMismatch {
            what,
            expected,
            got,
        } => {
            assert!(what.contains("v_dim"), "{e}");
            assert_eq!((*expected, *got), (8, 16));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_inputs_are_located() {
    for (tensor, value) in [
        ("q", f32::NAN),
        ("k", f32::INFINITY),
        ("v", f32::NEG_INFINITY),
    ] {
        let mut q = arr([1, 2, 8, 16]);
        let mut k = q.clone();
        let mut v = q.clone();
        let target = match tensor {
            "q" => &mut q,
            "k" => &mut k,
            _ => &mut v,
        };
        target[[0, 1, 5, 3]] = value;
        let e = err_of(&q, &k, &v);
        match e.kind() {
            ErrorKind::NonFinite {
                tensor: t, index, ..
            } => {
                assert_eq!(*t, tensor);
                assert_eq!(*index, [0, 1, 5, 3]);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("non-finite"), "{e}");
    }
}

#[test]
fn a_non_finite_scale_is_rejected() {
    let q = arr([1, 1, 4, 4]);
    let e = attend(
        flash().as_ref(),
        q.view(),
        q.view(),
        q.view(),
        &Options::new().scale(f32::NAN),
    )
    .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::BadOption {
                option: "scale",
                ..
            }
        ),
        "{e}"
    );
}

/// A variant that declines everything, for two reasons.
#[derive(Debug)]
struct Picky;

impl std::fmt::Display for Picky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("picky")
    }
}

impl Attention for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }
    fn unsupported(&self, shape: &Shape, opts: &Options) -> Vec<String> {
        let mut r = Vec::new();
        if shape.head_dim() != 128 {
            r.push(format!("head_dim must be 128, got {}", shape.head_dim()));
        }
        if opts.causal {
            r.push("causal masking is not supported".into());
        }
        r
    }
    fn cost(&self, _: &Shape, _: &Options, _threads: usize) -> Cost {
        Cost::default()
    }
    fn forward(&self, _: &Call<'_>, _: Out<'_>) -> attnbench::Result<()> {
        unreachable!("never called: every input is unsupported")
    }
}

#[test]
fn unsupported_lists_every_reason() {
    let q = arr([1, 1, 4, 4]);
    let e = attend(
        &Picky,
        q.view(),
        q.view(),
        q.view(),
        &Options::new().causal(true),
    )
    .unwrap_err();
    match e.kind() {
        ErrorKind::Unsupported { variant, reasons } => {
            assert_eq!(variant, "picky");
            assert_eq!(reasons.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("head_dim must be 128") && msg.contains("causal"),
        "{msg}"
    );
}
