//! Linear attention: every feature map against a naive O(n^2) evaluation of its own kernel
//! in f64, chunked causal prefix sums for many chunk sizes, FAVOR+ error behaviour, numerical
//! safety on large inputs, and parameter errors.

use attnbench::feature::FeatureMap;
use attnbench::oracle::{compare, oracle};
use attnbench::variants::linear::{Linear, Phi};
use attnbench::workload::gaussian;
use attnbench::{Fidelity, Options, Problem, Registry, Shape, attend};
use ndarray::{Array2, Array4, Axis, s};

/// `sum_j w_ij v_j / sum_j w_ij` with `w_ij = phi(q_i) . phi(k_j)` (masked when causal), in
/// f64, from features computed once for all rows.
fn naive(map: &dyn FeatureMap, p: &Problem<'_>) -> Array4<f64> {
    let sh = p.shape();
    let m = map.dim(sh.head_dim());
    let mut out = Array4::zeros(sh.out_dims());
    for b in 0..sh.batch() {
        for h in 0..sh.heads() {
            let kvh = sh.kv_head_of(h);
            let mut fq = Array2::zeros((sh.n_q(), m));
            map.map_queries(p.q().slice_move(s![b, h, .., ..]), p.scale(), fq.view_mut());
            let mut fk = Array2::zeros((sh.n_kv(), m));
            map.map_keys(
                p.k().slice_move(s![b, kvh, .., ..]),
                p.scale(),
                fk.view_mut(),
            );
            let v = p.v().slice_move(s![b, kvh, .., ..]);
            for i in 0..sh.n_q() {
                let mut den = 0.0f64;
                let mut num = vec![0.0f64; sh.v_dim()];
                for j in 0..p.key_len(b) {
                    if p.opts().causal && j as isize > i as isize + sh.offset() {
                        continue;
                    }
                    let w: f64 = fq
                        .row(i)
                        .iter()
                        .zip(fk.row(j))
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    den += w;
                    for (n, &x) in num.iter_mut().zip(v.row(j)) {
                        *n += w * x as f64;
                    }
                }
                for (d, n) in num.iter().enumerate() {
                    out[[b, h, i, d]] = if den > 0.0 { n / den } else { 0.0 };
                }
            }
        }
    }
    out
}

fn phis() -> Vec<Phi> {
    vec![
        Phi::Elu1,
        Phi::Relu,
        Phi::Favor {
            m: 64,
            seed: 1,
            orthogonal: true,
        },
        Phi::Favor {
            m: 40,
            seed: 2,
            orthogonal: false,
        },
    ]
}

#[test]
fn every_map_matches_its_naive_kernel() {
    let shapes = [
        Shape::new(1, 2, 2, 100, 100, 16, 16).unwrap(),
        Shape::new(1, 2, 2, 37, 150, 16, 8).unwrap(),
        Shape::new(1, 2, 2, 150, 37, 16, 16).unwrap(),
        Shape::new(2, 4, 2, 33, 33, 8, 8).unwrap(),
        Shape::new(1, 2, 1, 1, 500, 16, 16).unwrap(),
        Shape::new(1, 1, 1, 1, 1, 4, 4).unwrap(),
    ];
    for phi in phis() {
        for chunk in [1, 7, 64, 1000] {
            let v = Linear::new(phi.clone(), chunk);
            for shape in shapes {
                for causal in [false, true] {
                    let qkv = gaussian(&shape, 0.7, 5);
                    let opts = Options::new().causal(causal);
                    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
                    let out = attend(&v, qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
                    let e = compare(out.view(), naive(v.feature_map(), &p).view());
                    assert!(
                        e.rel_frobenius < 1e-5,
                        "{v} on {shape} causal={causal}: {e:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn key_padding_matches_the_naive_kernel() {
    let shapes = [
        Shape::new(3, 2, 2, 90, 90, 16, 16).unwrap(),
        Shape::new(3, 2, 1, 30, 90, 16, 8).unwrap(),
    ];
    let lengths = [90, 41, 0];
    for phi in phis() {
        for chunk in [1, 16, 1000] {
            let v = Linear::new(phi.clone(), chunk);
            for shape in shapes {
                for causal in [false, true] {
                    let qkv = gaussian(&shape, 0.7, 8);
                    let opts = Options::new().causal(causal);
                    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)
                        .and_then(|p| p.with_key_lengths(&lengths))
                        .unwrap();
                    let mut out = Array4::from_elem(shape.out_dims(), f32::NAN);
                    attnbench::attention::run(&v, &p, out.view_mut()).unwrap();
                    let e = compare(out.view(), naive(v.feature_map(), &p).view());
                    assert!(
                        e.rel_frobenius < 1e-5,
                        "{v} on {shape} causal={causal}: {e:?}"
                    );
                    // The batch element without keys gives zero rows.
                    assert!(out.index_axis(Axis(0), 2).iter().all(|&x| x == 0.0));
                }
            }
        }
    }
}

/// Mean relative error of FAVOR+ against exact softmax attention over `seeds` seeds.
fn favor_error(m: usize, orthogonal: bool, causal: bool, seeds: u64) -> f64 {
    let shape = Shape::self_attention(1, 4, 128, 16).unwrap();
    // Moderate norms: logits q.k/sqrt(d) with standard deviation 0.25.
    let qkv = gaussian(&shape, 0.5, 9);
    let opts = Options::new().causal(causal);
    let p = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts).unwrap();
    let exact = oracle(&p, None);
    (0..seeds)
        .map(|seed| {
            let v = Linear::new(
                Phi::Favor {
                    m,
                    seed,
                    orthogonal,
                },
                64,
            );
            let out = attend(&v, qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
            compare(out.view(), exact.view()).rel_frobenius
        })
        .sum::<f64>()
        / seeds as f64
}

#[test]
fn favor_error_falls_as_features_grow() {
    for causal in [false, true] {
        let errors: Vec<f64> = [16, 64, 256, 1024]
            .iter()
            .map(|&m| favor_error(m, true, causal, 5))
            .collect();
        assert!(
            errors.windows(2).all(|w| w[1] < w[0]),
            "causal={causal}: {errors:?}"
        );
        // Roughly 1/sqrt(m): 64x the features, at least 3x less error.
        assert!(errors[3] * 3.0 < errors[0], "causal={causal}: {errors:?}");
    }
}

#[test]
fn orthogonal_features_beat_iid_features() {
    // Averaged over 20 seeds: the gain is a variance reduction, clearest when m <= 2d.
    for m in [16, 32] {
        let ortho = favor_error(m, true, false, 20);
        let iid = favor_error(m, false, false, 20);
        assert!(ortho < iid, "m={m}: orthogonal {ortho} vs iid {iid}");
    }
}

#[test]
fn large_norm_inputs_stay_finite() {
    let shape = Shape::self_attention(1, 2, 200, 32).unwrap();
    let mut qkv = gaussian(&shape, 1.0, 3);
    // Scale every q and k row to norm 20, and a few to norm 60.
    for t in [&mut qkv.q, &mut qkv.k] {
        for (r, mut row) in t.lanes_mut(Axis(3)).into_iter().enumerate() {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            let target = if r % 17 == 0 { 60.0 } else { 20.0 };
            row.map_inplace(|x| *x *= target / norm);
        }
    }
    for spec in [
        "linear(phi=elu1)",
        "linear(phi=relu)",
        "linear(phi=favor,m=256)",
        "linear(phi=favor,m=16,orthogonal=false)",
    ] {
        let v = Registry::builtin().build(spec).unwrap();
        for causal in [false, true] {
            let opts = Options::new().causal(causal);
            let out = attend(v.as_ref(), qkv.q.view(), qkv.k.view(), qkv.v.view(), &opts).unwrap();
            assert!(out.iter().all(|x| x.is_finite()), "{spec} causal={causal}");
        }
    }
}

#[test]
fn fidelity_says_approximation_or_other_kernel() {
    let reg = Registry::builtin();
    assert_eq!(
        reg.build("linear(phi=favor)").unwrap().fidelity(),
        Fidelity::Approximate
    );
    assert_eq!(
        reg.build("linear(phi=elu1)").unwrap().fidelity(),
        Fidelity::OtherKernel
    );
    assert_eq!(
        reg.build("linear(phi=relu)").unwrap().fidelity(),
        Fidelity::OtherKernel
    );
}

#[test]
fn decoding_cost_is_linear_in_the_kv_length() {
    let v = Registry::builtin().build("linear(phi=favor)").unwrap();
    let cost = |n_kv| {
        let s = Shape::new(1, 8, 8, 1, n_kv, 64, 64).unwrap();
        v.cost(&s, &Options::new().causal(true), 2)
    };
    let (a, b) = (cost(8192), cost(65536));
    let ratio = b.flops / a.flops;
    assert!((7.5..8.5).contains(&ratio), "{ratio}");
    assert_eq!(a.workspace_bytes, b.workspace_bytes);
}

#[test]
fn bad_parameters_are_clear_errors() {
    let reg = Registry::builtin();
    for (spec, needle) in [
        ("linear(phi=favor,m=0)", "parameter m"),
        ("linear(phi=softmax)", "parameter phi"),
        ("linear(chunk=0)", "parameter chunk"),
        ("linear(phi=elu1,m=64)", "applies only to phi=favor"),
        ("linear(phi=favor,orthogonal=maybe)", "parameter orthogonal"),
    ] {
        let e = reg.build(spec).unwrap_err().to_string();
        assert!(e.contains(needle), "{spec}: {e}");
    }
    let favor = reg.build("linear(phi=favor)").unwrap();
    let shape = Shape::self_attention(1, 1, 4, 4).unwrap();
    let reasons = favor.unsupported(&shape, &Options::new().scale(-0.5));
    assert!(reasons[0].contains("positive scale"), "{reasons:?}");
    let spec = "linear(phi=favor,m=128,seed=3,orthogonal=false,chunk=32)";
    assert_eq!(reg.build(spec).unwrap().to_string(), spec);
}
