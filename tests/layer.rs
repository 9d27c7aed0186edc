//! The multi-head attention layer against an f64 reference layer (projections, masked
//! softmax attention per head, output projection, all in f64), a hand-computed tiny case,
//! weights from .npy files, and configuration and input errors.

use std::path::PathBuf;

use attnbench::layer::{LayerConfig, MultiHeadAttention, Weights};
use attnbench::{ErrorKind, Options, Registry};
use ndarray::{Array1, Array2, Array3, ArrayView3, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

fn randn(shape: (usize, usize, usize), seed: u64) -> Array3<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array3::from_shape_simple_fn(shape, || StandardNormal.sample(&mut rng))
}

fn f64m(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(f64::from)
}

/// `x w + b` in f64 for `x: [n, d_in]`.
fn proj(x: &Array2<f64>, w: &Array2<f32>, b: &Option<Array1<f32>>) -> Array2<f64> {
    let mut y = x.dot(&f64m(w));
    if let Some(b) = b {
        y += &b.mapv(f64::from);
    }
    y
}

/// The layer in f64, written from the definition, one batch element at a time.
fn reference(
    cfg: &LayerConfig,
    w: &Weights,
    x: ArrayView3<f32>,
    memory: Option<ArrayView3<f32>>,
    causal: bool,
    key_lengths: Option<&[usize]>,
) -> Array3<f64> {
    let mem = memory.unwrap_or(x);
    let (batch, n_q, _) = x.dim();
    let n_kv = mem.shape()[1];
    let hd = cfg.head_dim;
    let mut out = Array3::zeros((batch, n_q, cfg.d_model));
    for b in 0..batch {
        let xb = x.slice(s![b, .., ..]).mapv(f64::from);
        let mb = mem.slice(s![b, .., ..]).mapv(f64::from);
        let (q, k, v) = (
            proj(&xb, &w.w_q, &w.b_q),
            proj(&mb, &w.w_k, &w.b_k),
            proj(&mb, &w.w_v, &w.b_v),
        );
        let valid = key_lengths.map_or(n_kv, |l| l[b]);
        let mut concat = Array2::<f64>::zeros((n_q, cfg.q_width()));
        for h in 0..cfg.heads {
            let kvh = h / (cfg.heads / cfg.kv_heads);
            let qh = q.slice(s![.., h * hd..(h + 1) * hd]);
            let kh = k.slice(s![.., kvh * hd..(kvh + 1) * hd]);
            let vh = v.slice(s![.., kvh * hd..(kvh + 1) * hd]);
            for i in 0..n_q {
                let keys: Vec<usize> = (0..valid)
                    .filter(|&j| !causal || j as isize <= i as isize + n_kv as isize - n_q as isize)
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| qh.row(i).dot(&kh.row(j)) / (hd as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let total: f64 = e.iter().sum();
                for (&j, &p) in keys.iter().zip(&e) {
                    let mut row = concat.slice_mut(s![i, h * hd..(h + 1) * hd]);
                    row.scaled_add(p / total, &vh.row(j));
                }
            }
        }
        out.slice_mut(s![b, .., ..])
            .assign(&proj(&concat, &w.w_o, &w.b_o));
    }
    out
}

fn rel_error(got: &Array3<f32>, want: &Array3<f64>) -> f64 {
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

/// Xavier weights with random (non-zero) biases when the layer has them.
fn weights(cfg: &LayerConfig, seed: u64) -> Weights {
    let mut w = Weights::xavier(cfg, seed);
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let mut rnd = |b: &mut Option<Array1<f32>>| {
        if let Some(b) = b {
            b.mapv_inplace(|_| 0.1 * Distribution::<f32>::sample(&StandardNormal, &mut rng));
        }
    };
    rnd(&mut w.b_q);
    rnd(&mut w.b_k);
    rnd(&mut w.b_v);
    rnd(&mut w.b_o);
    w
}

#[test]
fn layer_matches_the_f64_reference() {
    struct Case {
        cfg: LayerConfig,
        batch: usize,
        n_q: usize,
        n_kv: Option<usize>,
        causal: bool,
        key_lengths: Option<Vec<usize>>,
    }
    let case = |cfg, batch, n_q, n_kv, causal, key_lengths| Case {
        cfg,
        batch,
        n_q,
        n_kv,
        causal,
        key_lengths,
    };
    let cases = [
        case(
            LayerConfig::new(32, 4).unwrap().with_bias(true),
            2,
            23,
            None,
            false,
            None,
        ),
        case(LayerConfig::new(32, 4).unwrap(), 1, 40, None, true, None),
        case(
            LayerConfig::new(48, 6)
                .unwrap()
                .with_kv_heads(2)
                .unwrap()
                .with_bias(true),
            3,
            17,
            None,
            true,
            Some(vec![17, 5, 1]),
        ),
        case(
            LayerConfig::new(16, 2).unwrap().with_head_dim(24).unwrap(),
            2,
            7,
            Some(19),
            false,
            Some(vec![19, 11]),
        ),
        case(
            LayerConfig::new(64, 8).unwrap().with_kv_heads(1).unwrap(),
            1,
            5,
            Some(30),
            true,
            None,
        ),
    ];
    let registry = Registry::builtin();
    for (ci, c) in cases.iter().enumerate() {
        let w = weights(&c.cfg, ci as u64);
        let x = randn((c.batch, c.n_q, c.cfg.d_model), 10 + ci as u64);
        let memory = c
            .n_kv
            .map(|n| randn((c.batch, n, c.cfg.d_model), 20 + ci as u64));
        let want = reference(
            &c.cfg,
            &w,
            x.view(),
            memory.as_ref().map(|m| m.view()),
            c.causal,
            c.key_lengths.as_deref(),
        );
        for core in ["full", "flash", "flash(bq=3,bk=5)", "window(w=100)"] {
            let layer = MultiHeadAttention::new(c.cfg, w.clone()).unwrap();
            let core = registry.build(core).unwrap();
            let core = core.as_ref();
            let opts = Options::new().causal(c.causal);
            let lengths = c.key_lengths.as_deref();
            let got = match &memory {
                None => layer.forward(core, x.view(), &opts, lengths),
                Some(m) => layer.forward_cross(core, x.view(), m.view(), &opts, lengths),
            }
            .unwrap();
            let e = rel_error(&got, &want);
            assert!(e < 1e-5, "case {ci} core {core}: relative error {e:.2e}");
        }
    }
}

#[test]
fn tiny_layer_by_hand() {
    // d_model = 4, heads = 2 (head_dim 2), W_Q = W_K = W_V = I, W_O = 2 I, b_O = (.5, 0, 0, -.5).
    // x_0 = (1, 0, 0, 1), x_1 = (0, 1, 1, 0). Head 0 sees dims 0-1, head 1 dims 2-3; each
    // query matches one key with score 1/sqrt(2) and the other with 0, so the weights are
    // (a, 1 - a) with a = 1 / (1 + e^(-1/sqrt 2)) = 0.66976155.
    let cfg = LayerConfig::new(4, 2).unwrap().with_bias(true);
    let eye = Array2::<f32>::eye(4);
    let zero = Some(Array1::<f32>::zeros(4));
    let w = Weights {
        w_q: eye.clone(),
        w_k: eye.clone(),
        w_v: eye.clone(),
        w_o: &eye * 2.0,
        b_q: zero.clone(),
        b_k: zero.clone(),
        b_v: zero,
        b_o: Some(Array1::from(vec![0.5, 0.0, 0.0, -0.5])),
    };
    let x =
        Array3::from_shape_vec((1, 2, 4), vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]).unwrap();
    let a = 0.669_761_55_f32;
    let layer = MultiHeadAttention::new(cfg, w).unwrap();
    let flash = Registry::builtin().build("flash").unwrap();
    let y = layer
        .forward(flash.as_ref(), x.view(), &Options::new(), None)
        .unwrap();
    let want = [
        [
            2.0 * a + 0.5,
            2.0 * (1.0 - a),
            2.0 * (1.0 - a),
            2.0 * a - 0.5,
        ],
        [
            2.0 * (1.0 - a) + 0.5,
            2.0 * a,
            2.0 * a,
            2.0 * (1.0 - a) - 0.5,
        ],
    ];
    for i in 0..2 {
        for c in 0..4 {
            assert!((y[[0, i, c]] - want[i][c]).abs() < 1e-6, "{y:?}");
        }
    }
    // Causal: position 0 sees only itself, so head outputs are x_0's halves.
    let y = layer
        .forward(flash.as_ref(), x.view(), &Options::new().causal(true), None)
        .unwrap();
    let want0 = [2.5, 0.0, 0.0, 1.5];
    for c in 0..4 {
        assert!((y[[0, 0, c]] - want0[c]).abs() < 1e-6, "{y:?}");
    }
    assert!((y[[0, 1, 1]] - 2.0 * a).abs() < 1e-6);
}

#[test]
fn any_variant_is_a_core() {
    let cfg = LayerConfig::new(64, 4).unwrap();
    let x = randn((1, 300, 64), 3);
    for core in Registry::builtin().defaults() {
        let name = core.to_string();
        let layer = MultiHeadAttention::new(cfg, Weights::xavier(&cfg, 1)).unwrap();
        // A causal-only core (retention) refuses the bidirectional layer with a reason; it
        // must then run the causal one.
        let y = match layer.forward(core.as_ref(), x.view(), &Options::new(), None) {
            Ok(y) => y,
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Unsupported { reasons, .. } if !reasons.is_empty()),
                    "{name}: {e}"
                );
                layer
                    .forward(core.as_ref(), x.view(), &Options::new().causal(true), None)
                    .unwrap_or_else(|e| panic!("{name} causal: {e}"))
            }
        };
        assert_eq!(y.dim(), (1, 300, 64), "{name}");
        assert!(y.iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn xavier_weights_are_seeded_and_bounded() {
    let cfg = LayerConfig::new(256, 8).unwrap().with_bias(true);
    let a = Weights::xavier(&cfg, 7);
    assert_eq!(a, Weights::xavier(&cfg, 7));
    assert_ne!(a.w_q, Weights::xavier(&cfg, 8).w_q);
    // U(-a, a) with a = sqrt(6 / 512): variance a^2 / 3 = 1 / 256.
    let bound = (6.0f32 / 512.0).sqrt();
    assert!(a.w_q.iter().all(|w| w.abs() <= bound));
    let var = a.w_q.iter().map(|w| (*w as f64).powi(2)).sum::<f64>() / a.w_q.len() as f64;
    assert!((var * 256.0 - 1.0).abs() < 0.02, "variance {var}");
    assert!(a.b_o.as_ref().unwrap().iter().all(|&b| b == 0.0));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnbench-layer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn weights_load_from_npy() {
    use attnbench::npy::encode_f32;
    let cfg = LayerConfig::new(12, 3).unwrap().with_bias(true);
    let w = weights(&cfg, 4);
    let dir = temp_dir("npy");
    let arrays: [(&str, Vec<usize>, Vec<f32>); 8] = [
        (
            "w_q",
            w.w_q.shape().to_vec(),
            w.w_q.iter().copied().collect(),
        ),
        (
            "w_k",
            w.w_k.shape().to_vec(),
            w.w_k.iter().copied().collect(),
        ),
        (
            "w_v",
            w.w_v.shape().to_vec(),
            w.w_v.iter().copied().collect(),
        ),
        (
            "w_o",
            w.w_o.shape().to_vec(),
            w.w_o.iter().copied().collect(),
        ),
        ("b_q", vec![12], w.b_q.clone().unwrap().to_vec()),
        ("b_k", vec![12], w.b_k.clone().unwrap().to_vec()),
        ("b_v", vec![12], w.b_v.clone().unwrap().to_vec()),
        ("b_o", vec![12], w.b_o.clone().unwrap().to_vec()),
    ];
    for (stem, shape, data) in &arrays {
        std::fs::write(dir.join(format!("{stem}.npy")), encode_f32(shape, data)).unwrap();
    }
    assert_eq!(Weights::from_npy_dir(&cfg, &dir).unwrap(), w);
    // Shapes are checked against the configuration.
    let other = LayerConfig::new(12, 3)
        .unwrap()
        .with_head_dim(2)
        .unwrap()
        .with_bias(true);
    let e = Weights::from_npy_dir(&other, &dir).unwrap_err();
    assert!(e.to_string().contains("w_q must be [12, 6]"), "{e}");
    std::fs::remove_file(dir.join("b_v.npy")).unwrap();
    let e = Weights::from_npy_dir(&cfg, &dir).unwrap_err();
    assert!(e.to_string().contains("b_v.npy"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configurations_and_inputs_are_errors() {
    let layer_err = |r: attnbench::Result<LayerConfig>| match r.unwrap_err().kind() {
        ErrorKind::Layer { message } => message.clone(),
        other => panic!("{other:?}"),
    };
    assert!(layer_err(LayerConfig::new(30, 4)).contains("not divisible"));
    assert!(layer_err(LayerConfig::new(0, 4)).contains("at least 1"));
    assert!(layer_err(LayerConfig::new(32, 8).unwrap().with_kv_heads(3)).contains("kv_heads=3"));
    assert!(layer_err(LayerConfig::new(32, 8).unwrap().with_kv_heads(0)).contains("kv_heads=0"));
    assert!(layer_err(LayerConfig::new(32, 8).unwrap().with_head_dim(0)).contains("head_dim"));

    let cfg = LayerConfig::new(8, 2).unwrap();
    let mut w = Weights::xavier(&cfg, 0);
    w.w_o = Array2::zeros((8, 7));
    let e = MultiHeadAttention::new(cfg, w).unwrap_err();
    assert!(e.to_string().contains("w_o must be [8, 8]"), "{e}");
    let e = MultiHeadAttention::new(cfg.with_bias(true), Weights::xavier(&cfg, 0)).unwrap_err();
    assert!(e.to_string().contains("b_q is missing"), "{e}");
    let mut w = Weights::xavier(&cfg, 0);
    w.w_k[[1, 1]] = f32::NAN;
    assert!(MultiHeadAttention::new(cfg, w).is_err());

    let layer = MultiHeadAttention::new(cfg, Weights::xavier(&cfg, 0)).unwrap();
    let flash = Registry::builtin().build("flash").unwrap();
    let f = flash.as_ref();
    let opts = Options::new();
    let msg = |r: attnbench::Result<Array3<f32>>| r.unwrap_err().to_string();
    let x = Array3::<f32>::zeros((2, 5, 8));
    let narrow = Array3::<f32>::zeros((2, 5, 7));
    assert!(msg(layer.forward(f, narrow.view(), &opts, None)).contains("d_model=8"));
    let empty = Array3::<f32>::zeros((0, 5, 8));
    assert!(msg(layer.forward(f, empty.view(), &opts, None)).contains("zero-length"));
    let mut bad = x.clone();
    bad[[1, 3, 2]] = f32::INFINITY;
    assert!(msg(layer.forward(f, bad.view(), &opts, None)).contains("[1, 3, 2]"));
    let memory = Array3::<f32>::zeros((3, 4, 8));
    assert!(msg(layer.forward_cross(f, x.view(), memory.view(), &opts, None)).contains("batch 3"));
    assert!(msg(layer.forward(f, x.view(), &opts, Some(&[5]))).contains("key lengths"));
    assert!(msg(layer.forward(f, x.view(), &opts, Some(&[5, 6]))).contains("longer than"));
}
