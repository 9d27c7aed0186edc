//! Stateful decoding: every decoder against the f64 oracle (or, for other kernels, the
//! variant's own batch forward) over the same tokens, the KV stores' rounding, the ring
//! buffers' edges, retention's three forms, bounded state and refusals.

use attnbench::attention::{Attention, Problem, run};
use attnbench::decode::{DecodeOptions, Decoder, KvStore};
use attnbench::kernels::half::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use attnbench::kernels::isa::{Isa, Path};
use attnbench::oracle::oracle;
use attnbench::registry::Registry;
use attnbench::workload::{Qkv, gaussian};
use attnbench::{Options, Shape};
use ndarray::{Array3, Array4, ArrayView4, Axis, s};

/// Prefills `p` tokens of `qkv` (self-attention inputs of length n), then steps through the
/// remaining `n - p`, returning the outputs `[batch, heads, n - p, dv]`.
fn decode(dec: &mut dyn Decoder, qkv: &Qkv, p: usize) -> Array4<f32> {
    let (b, h, n, _) = qkv.q.dim();
    let dv = qkv.v.dim().3;
    dec.prefill(
        qkv.k.slice(s![.., .., ..p, ..]),
        qkv.v.slice(s![.., .., ..p, ..]),
    )
    .unwrap();
    let mut out = Array4::zeros((b, h, n - p, dv));
    for t in p..n {
        let mut o = Array3::zeros((b, h, dv));
        dec.step(
            qkv.q.slice(s![.., .., t, ..]),
            qkv.k.slice(s![.., .., t, ..]),
            qkv.v.slice(s![.., .., t, ..]),
            o.view_mut(),
        )
        .unwrap();
        out.slice_mut(s![.., .., t - p, ..]).assign(&o);
        assert_eq!(dec.len(), t + 1);
    }
    out
}

/// The f64 oracle of the queries `p..n` over every key up to each, under `variant`'s
/// pattern, on K and V as given.
fn reference(variant: &dyn Attention, qkv: &Qkv, p: usize) -> Array4<f64> {
    let q = qkv.q.slice(s![.., .., p.., ..]);
    let prob = Problem::new(q, qkv.k.view(), qkv.v.view(), Options::new().causal(true)).unwrap();
    oracle(&prob, variant.pattern())
}

/// The largest error of any output row relative to that row's norm (at least 1e-3 of the
/// largest row norm, so a near-zero row cannot dominate).
fn rel_err(got: ArrayView4<f32>, want: &Array4<f64>) -> f64 {
    let dv = want.dim().3;
    let rows = want.len() / dv;
    let g = got.to_shape((rows, dv)).unwrap();
    let w = want.to_shape((rows, dv)).unwrap();
    let norms: Vec<f64> = w
        .outer_iter()
        .map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let floor = norms.iter().copied().fold(0.0, f64::max) * 1e-3;
    g.outer_iter()
        .zip(w.outer_iter())
        .zip(&norms)
        .map(|((a, b), &nb)| {
            let e: f64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (f64::from(x) - y).powi(2))
                .sum::<f64>()
                .sqrt();
            e / nb.max(floor)
        })
        .fold(0.0, f64::max)
}

fn inputs(b: usize, h: usize, hk: usize, n: usize, d: usize, dv: usize, seed: u64) -> Qkv {
    let shape = Shape::new(b, h, hk, n, n, d, dv).unwrap();
    gaussian(&shape, 1.5, seed)
}

fn heads(qkv: &Qkv) -> Shape {
    let (b, h, _, d) = qkv.q.dim();
    let (_, hk, _, dv) = qkv.v.dim();
    Shape::new(b, h, hk, 1, 1, d, dv).unwrap()
}

fn decoder(spec: &str, qkv: &Qkv, opts: &DecodeOptions) -> (Box<dyn Attention>, Box<dyn Decoder>) {
    let v = Registry::builtin().build(spec).unwrap();
    let d = v
        .decoder(&heads(qkv), opts)
        .unwrap_or_else(|| panic!("{spec} has a decoder"))
        .unwrap();
    (v, d)
}

/// `x` rounded through `store` and widened back.
fn rounded(x: &Array4<f32>, store: KvStore) -> Array4<f32> {
    match store {
        KvStore::F32 => x.clone(),
        KvStore::F16 => x.mapv(|v| f16_to_f32(f32_to_f16(v))),
        KvStore::Bf16 => x.mapv(|v| bf16_to_f32(f32_to_bf16(v))),
    }
}

/// Every SIMD path this CPU has, the portable one included.
fn paths() -> Vec<Isa> {
    Isa::available().to_vec()
}

#[test]
fn exact_decoders_match_the_oracle_on_every_path_store_and_group() {
    // (batch, heads, kv_heads, d, dv): GQA groups of 1, 3 and 4; value widths with and without
    // a register-blocked AVX-512 scan (48 runs the portable scan at that width).
    for &(b, h, hk, d, dv) in &[
        (1, 8, 2, 64, 64),
        (2, 3, 1, 32, 32),
        (1, 4, 4, 24, 48),
        (1, 6, 2, 64, 128),
    ] {
        let qkv = inputs(b, h, hk, 300, d, dv, 11);
        for store in KvStore::ALL {
            let exact = Qkv {
                q: qkv.q.clone(),
                k: rounded(&qkv.k, store),
                v: rounded(&qkv.v, store),
            };
            for isa in paths() {
                for spec in ["full", "flash"] {
                    let opts = DecodeOptions {
                        kv: store,
                        isa: Some(isa),
                        ..Default::default()
                    };
                    let (v, mut dec) = decoder(spec, &qkv, &opts);
                    let got = decode(dec.as_mut(), &qkv, 137);
                    // Against the oracle on the rounded cache: the kernel's own error only.
                    let e = rel_err(got.view(), &reference(v.as_ref(), &exact, 137));
                    assert!(
                        e < 2e-5,
                        "{spec} {store} {isa} {b}x{h}/{hk} d={d} dv={dv}: {e:e}"
                    );
                    if store != KvStore::F32 {
                        // And against the f32 inputs: the store's rounding shows, bf16 more.
                        let e = rel_err(got.view(), &reference(v.as_ref(), &qkv, 137));
                        let bound = if store == KvStore::F16 { 5e-3 } else { 4e-2 };
                        assert!(e > 1e-5 && e < bound, "{spec} {store}: {e:e} against f32");
                    }
                }
            }
        }
    }
}

#[test]
fn the_split_scan_matches_the_oracle_on_long_caches() {
    // 9000 keys: the step is cut into pieces scanned in parallel and merged.
    let qkv = inputs(1, 4, 2, 9000, 64, 64, 3);
    for isa in paths() {
        let opts = DecodeOptions {
            isa: Some(isa),
            capacity: 9000,
            ..Default::default()
        };
        let (v, mut dec) = decoder("flash", &qkv, &opts);
        let got = decode(dec.as_mut(), &qkv, 8990);
        let e = rel_err(got.view(), &reference(v.as_ref(), &qkv, 8990));
        assert!(e < 2e-5, "{isa}: {e:e}");
        assert_eq!(dec.bytes_read(), 9000 * 2 * 128 * 4);
    }
}

#[test]
fn window_and_sinks_decoders_match_the_oracle_at_every_ring_edge() {
    let qkv = inputs(2, 4, 2, 200, 32, 32, 5);
    // Prompts shorter than the sinks, than the window, equal to it and far beyond; windows
    // that fill their ring exactly (w + 1 = 16, 32) and not.
    for spec in [
        "window(w=0)",
        "window(w=15)",
        "window(w=20)",
        "window(w=31)",
        "sinks(s=4,w=8)",
        "sinks(s=1,w=31)",
        "sinks(s=20,w=5)",
        "sinks(s=0,w=10)",
    ] {
        for p in [0, 3, 16, 40, 150] {
            for isa in paths() {
                for store in [KvStore::F32, KvStore::F16] {
                    let exact = Qkv {
                        q: qkv.q.clone(),
                        k: rounded(&qkv.k, store),
                        v: rounded(&qkv.v, store),
                    };
                    let opts = DecodeOptions {
                        kv: store,
                        isa: Some(isa),
                        ..Default::default()
                    };
                    let (v, mut dec) = decoder(spec, &qkv, &opts);
                    let got = decode(dec.as_mut(), &qkv, p);
                    let e = rel_err(got.view(), &reference(v.as_ref(), &exact, p));
                    assert!(e < 2e-5, "{spec} prompt {p} {isa} {store}: {e:e}");
                }
            }
        }
    }
}

#[test]
fn bounded_decoders_hold_constant_state_and_the_dense_cache_grows() {
    let qkv = inputs(1, 4, 2, 3000, 64, 64, 8);
    for (spec, bounded) in [
        ("window(w=100)", true),
        ("sinks(s=4,w=100)", true),
        ("linear", true),
        ("retention", true),
        ("flash", false),
    ] {
        let (_, mut dec) = decoder(spec, &qkv, &DecodeOptions::default());
        let mut sizes = Vec::new();
        let mut reads = Vec::new();
        dec.prefill(
            qkv.k.slice(s![.., .., ..500, ..]),
            qkv.v.slice(s![.., .., ..500, ..]),
        )
        .unwrap();
        for t in 500..3000 {
            let mut o = Array3::zeros((1, 4, 64));
            dec.step(
                qkv.q.slice(s![.., .., t, ..]),
                qkv.k.slice(s![.., .., t, ..]),
                qkv.v.slice(s![.., .., t, ..]),
                o.view_mut(),
            )
            .unwrap();
            if t % 500 == 0 || t == 2999 {
                sizes.push(dec.state_bytes());
                reads.push(dec.bytes_read());
            }
        }
        if bounded {
            assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{spec}: {sizes:?}");
            assert!(reads.windows(2).all(|w| w[0] == w[1]), "{spec}: {reads:?}");
        } else {
            assert!(sizes.last() > sizes.first(), "{spec}: {sizes:?}");
            assert_eq!(reads.last(), Some(&(3000 * 2 * 128 * 4)), "{spec}");
        }
    }
}

#[test]
fn linear_decoding_equals_the_batch_forward() {
    let qkv = inputs(2, 6, 2, 400, 32, 32, 9);
    for spec in [
        "linear(phi=elu1)",
        "linear(phi=relu)",
        "linear(phi=favor,m=64)",
    ] {
        let (v, mut dec) = decoder(spec, &qkv, &DecodeOptions::default());
        let got = decode(dec.as_mut(), &qkv, 250);
        let prob = Problem::new(
            qkv.q.slice(s![.., .., 250.., ..]),
            qkv.k.view(),
            qkv.v.view(),
            Options::new().causal(true),
        )
        .unwrap();
        let mut want = Array4::zeros(prob.shape().out_dims());
        run(v.as_ref(), &prob, want.view_mut()).unwrap();
        let e = rel_err(got.view(), &want.mapv(f64::from));
        assert!(e < 1e-4, "{spec}: {e:e}");
    }
}

/// Retention in f64, written from the definition: `o_i = sum_{j <= p} gamma^(p - j) w_ij
/// v_j`, `w_ij = s q_i . k_j` (phi = none) or `phi(q_i) . phi(k_j)` normalised (elu1).
fn retention_f64(qkv: &Qkv, n_q: usize, gamma: impl Fn(usize) -> f64, elu1: bool) -> Array4<f64> {
    let (b, h, n, d) = qkv.q.dim();
    let (_, hk, _, dv) = qkv.v.dim();
    let scale = 1.0 / (d as f64).sqrt();
    let phi = |x: f32| {
        let x = f64::from(x);
        if x > 0.0 { x + 1.0 } else { x.exp() }
    };
    let mut out = Array4::zeros((b, h, n_q, dv));
    for bi in 0..b {
        for hi in 0..h {
            let g = hi / (h / hk);
            for i in 0..n_q {
                let p = n - n_q + i;
                let (mut num, mut den) = (vec![0f64; dv], 0f64);
                for j in 0..=p {
                    let w: f64 = (0..d)
                        .map(|c| {
                            let (q, k) = (qkv.q[[bi, hi, p, c]], qkv.k[[bi, g, j, c]]);
                            if elu1 {
                                phi(q) * phi(k)
                            } else {
                                f64::from(q) * scale * f64::from(k)
                            }
                        })
                        .sum::<f64>()
                        * gamma(hi).powi((p - j) as i32);
                    den += w;
                    for (x, c) in num.iter_mut().zip(0..dv) {
                        *x += w * f64::from(qkv.v[[bi, g, j, c]]);
                    }
                }
                for (c, x) in num.into_iter().enumerate() {
                    out[[bi, hi, i, c]] = if elu1 { x / den } else { x };
                }
            }
        }
    }
    out
}

#[test]
fn retentions_three_forms_agree_with_each_other_and_with_f64() {
    let qkv = inputs(2, 4, 2, 333, 32, 32, 13);
    let n_q = 200;
    let q = qkv.q.slice(s![.., .., 333 - n_q.., ..]);
    let prob = Problem::new(q, qkv.k.view(), qkv.v.view(), Options::new().causal(true)).unwrap();
    for (phi, gamma, fixed) in [
        ("none", "retnet", None),
        ("elu1", "retnet", None),
        ("none", "0.9", Some(0.9)),
        ("relu", "1", Some(1.0)),
    ] {
        let mut outs = Vec::new();
        for form in ["parallel", "chunked", "recurrent"] {
            let spec = format!("retention(gamma={gamma},phi={phi},form={form},chunk=48)");
            let v = Registry::builtin().build(&spec).unwrap();
            let mut o = Array4::zeros(prob.shape().out_dims());
            run(v.as_ref(), &prob, o.view_mut()).unwrap();
            outs.push((spec, o));
        }
        if phi != "relu" {
            let want = retention_f64(
                &qkv,
                n_q,
                |h| fixed.unwrap_or_else(|| attnbench::decode::recurrent::retnet_gamma(h)),
                phi == "elu1",
            );
            for (spec, o) in &outs {
                let e = rel_err(o.view(), &want);
                assert!(e < 1e-5, "{spec} against f64: {e:e}");
            }
        }
        let rec = outs[2].1.mapv(f64::from);
        for (spec, o) in &outs[..2] {
            let e = rel_err(o.view(), &rec);
            assert!(e < 1e-5, "{spec} against recurrent: {e:e}");
        }
    }
    // The decoder from a prompt equals the batch forms.
    let (v, mut dec) = decoder("retention", &qkv, &DecodeOptions::default());
    let got = decode(dec.as_mut(), &qkv, 333 - n_q);
    let mut want = Array4::zeros(prob.shape().out_dims());
    run(v.as_ref(), &prob, want.view_mut()).unwrap();
    let e = rel_err(got.view(), &want.mapv(f64::from));
    assert!(e < 1e-5, "decoder against chunked: {e:e}");
    // Bidirectional retention is refused.
    let bi = Problem::new(q, qkv.k.view(), qkv.v.view(), Options::new()).unwrap();
    let mut o = Array4::zeros(bi.shape().out_dims());
    assert!(run(v.as_ref(), &bi, o.view_mut()).is_err());
}

#[test]
fn decoders_refuse_bad_input_with_errors() {
    let qkv = inputs(1, 4, 2, 40, 16, 16, 1);
    let sh = heads(&qkv);
    let reg = Registry::builtin();
    for spec in [
        "flash",
        "window(w=8)",
        "sinks",
        "linear",
        "retention",
        "blocktopk",
    ] {
        let v = reg.build(spec).unwrap();
        let mut dec = v.decoder(&sh, &DecodeOptions::default()).unwrap().unwrap();
        let mut o = Array3::zeros((1, 4, 16));
        // Wrong head counts, wrong widths, a non-finite value.
        let bad_q = Array3::<f32>::zeros((1, 3, 16));
        assert!(
            dec.step(
                bad_q.view(),
                qkv.k.slice(s![.., .., 0, ..]),
                qkv.v.slice(s![.., .., 0, ..]),
                o.view_mut()
            )
            .is_err(),
            "{spec}"
        );
        let bad_k = Array3::<f32>::zeros((1, 2, 15));
        assert!(
            dec.step(
                qkv.q.slice(s![.., .., 0, ..]),
                bad_k.view(),
                qkv.v.slice(s![.., .., 0, ..]),
                o.view_mut()
            )
            .is_err(),
            "{spec}"
        );
        let mut nan = qkv.q.slice(s![.., .., 0, ..]).to_owned();
        nan[[0, 1, 2]] = f32::NAN;
        assert!(
            dec.step(
                nan.view(),
                qkv.k.slice(s![.., .., 0, ..]),
                qkv.v.slice(s![.., .., 0, ..]),
                o.view_mut()
            )
            .is_err(),
            "{spec}"
        );
        let mut bad_out = Array3::zeros((1, 4, 15));
        assert!(
            dec.step(
                qkv.q.slice(s![.., .., 0, ..]),
                qkv.k.slice(s![.., .., 0, ..]),
                qkv.v.slice(s![.., .., 0, ..]),
                bad_out.view_mut()
            )
            .is_err(),
            "{spec}"
        );
        let mut inf = qkv.k.slice(s![.., .., ..4, ..]).to_owned();
        inf[[0, 0, 3, 0]] = f32::INFINITY;
        assert!(
            dec.prefill(inf.view(), qkv.v.slice(s![.., .., ..4, ..]))
                .is_err(),
            "{spec}"
        );
        // Nothing was appended by the refused calls.
        assert_eq!(dec.len(), 0, "{spec}");
        // A non-positive scale is refused at creation.
        let opts = DecodeOptions {
            scale: Some(0.0),
            ..Default::default()
        };
        assert!(v.decoder(&sh, &opts).unwrap().is_err(), "{spec}");
    }
    // Recurrent states keep no KV cache: a half store is refused, not ignored.
    for spec in ["linear", "retention"] {
        let v = reg.build(spec).unwrap();
        let opts = DecodeOptions {
            kv: KvStore::F16,
            ..Default::default()
        };
        assert!(v.decoder(&sh, &opts).unwrap().is_err(), "{spec}");
    }
    // Patterns that are not sinks plus a window have no decoder (the harness decodes them
    // statelessly), nor do the selection and low-rank variants yet.
    for spec in ["strided", "bigbird", "topk", "nystrom"] {
        assert!(
            reg.build(spec)
                .unwrap()
                .decoder(&sh, &DecodeOptions::default())
                .is_none(),
            "{spec}"
        );
    }
    // A path this CPU lacks is refused.
    if Isa::new(Path::Avx512).is_none() {
        let v = reg.build("flash(isa=avx512)").unwrap();
        assert!(v.decoder(&sh, &DecodeOptions::default()).unwrap().is_err());
    }
    let _ = Axis(0);
}

#[test]
fn blocktopk_decoding_chooses_and_attends_as_the_batch_forward() {
    // Each step is the batch forward of one query (the newest position) over every key so
    // far: the same blocks chosen from the same summaries, attended exactly.
    let qkv = inputs(1, 4, 2, 300, 32, 32, 21);
    let p = 100;
    for spec in [
        "blocktopk(block=16,k=3,local=1,score=mean)",
        "blocktopk(block=16,k=2,local=2,score=bound)",
        "blocktopk(block=32,k=2,local=0)",
    ] {
        let (v, mut dec) = decoder(spec, &qkv, &DecodeOptions::default());
        let got = decode(dec.as_mut(), &qkv, p);
        let (b, h, n, _) = qkv.q.dim();
        let dv = qkv.v.dim().3;
        let mut want = Array4::<f32>::zeros((b, h, n - p, dv));
        for t in p..n {
            let prob = Problem::new(
                qkv.q.slice(s![.., .., t..t + 1, ..]),
                qkv.k.slice(s![.., .., ..=t, ..]),
                qkv.v.slice(s![.., .., ..=t, ..]),
                Options::new().causal(true),
            )
            .unwrap();
            let mut o = Array4::zeros(prob.shape().out_dims());
            run(v.as_ref(), &prob, o.view_mut()).unwrap();
            want.slice_mut(s![.., .., t - p..t - p + 1, ..]).assign(&o);
        }
        let e = rel_err(got.view(), &want.mapv(f64::from));
        assert!(e < 1e-5, "{spec}: {e:e}");
        // The selection is real: a few of up to 19 blocks, far from dense attention.
        let dense = reference(Registry::builtin().build("full").unwrap().as_ref(), &qkv, p);
        assert!(rel_err(got.view(), &dense) > 1e-2, "{spec}");
        // The cache and the summaries grow with the context.
        assert!(dec.state_bytes() > 300 * 2 * 64 * 4, "{spec}");
    }
}
