//! Fits the `structured` workload to real LLM activations and prints the calibration JSON
//! (`src/workload/structured.json`):
//!
//! ```text
//! cargo run --release --example fit_structured -- ../shared/data/lm > src/workload/structured.json
//! ```
//!
//! A second argument, an earlier calibration file, starts each head's search from its
//! parameters instead of a coarse grid (a refit after a change to the generator).
//!
//! The directory holds `<prefix>_L<layer>_{q,k,v}.npy` triples (Q `[heads, n, 64]`, K and V
//! `[kv_heads, n, 64]`, RoPE applied, computed causally). For each layer and query head it
//! measures the [`HeadStats`] of the real causal attention at the full length over evenly
//! spaced rows, then fits the head's four generator parameters by Nelder-Mead on the same
//! statistics of generated inputs (same length, rows and a fixed seed; the keys do not depend
//! on the head's parameters, so only its queries are regenerated per evaluation). The value
//! parameters of each KV head are measured directly on the real V. About 3 minutes on 2 cores.

use attnbench::workload::Qkv;
use attnbench::workload::load_npy_dir;
use attnbench::workload::structured::{
    Calibration, HeadParams, HeadStats, KvParams, LayerCalibration, head_stats, qkv_stats,
    stat_rows,
};
use ndarray::{Axis, s};

/// Query rows the statistics are means over.
const ROWS: usize = 512;
/// The generator seed of the fit.
const SEED: u64 = 0;

fn loss(got: &HeadStats, want: &HeadStats) -> f64 {
    ((got.entropy - want.entropy) / 0.1).powi(2)
        + ((got.near - want.near) / 0.02).powi(2)
        + ((got.mid - want.mid) / 0.02).powi(2)
        + ((got.sink - want.sink) / 0.01).powi(2)
}

/// Parameters from the search coordinates (log locality, tilt, log content, sink).
fn params(x: &[f64; 4]) -> HeadParams {
    HeadParams {
        locality: x[0].exp(),
        tilt: x[1],
        content: x[2].exp(),
        sink: x[3],
    }
}

/// `a + t (b - a)`, coordinate-wise.
fn lerp(a: &[f64; 4], b: &[f64; 4], t: f64) -> [f64; 4] {
    std::array::from_fn(|i| a[i] + t * (b[i] - a[i]))
}

/// Nelder-Mead minimisation of `f` from `x0` with initial steps `step`.
fn nelder_mead(
    f: &mut dyn FnMut(&[f64; 4]) -> f64,
    x0: [f64; 4],
    step: [f64; 4],
    iters: usize,
) -> [f64; 4] {
    let mut simplex: Vec<([f64; 4], f64)> = vec![(x0, f(&x0))];
    for (i, dx) in step.iter().enumerate() {
        let mut x = x0;
        x[i] += dx;
        simplex.push((x, f(&x)));
    }
    for _ in 0..iters {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let centre: [f64; 4] =
            std::array::from_fn(|i| simplex[..4].iter().map(|(x, _)| x[i]).sum::<f64>() / 4.0);
        let worst = simplex[4];
        let reflected = lerp(&centre, &worst.0, -1.0);
        let fr = f(&reflected);
        if fr < simplex[0].1 {
            let expanded = lerp(&centre, &worst.0, -2.0);
            let fe = f(&expanded);
            simplex[4] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[3].1 {
            simplex[4] = (reflected, fr);
        } else {
            let contracted = lerp(&centre, &worst.0, 0.5);
            let fc = f(&contracted);
            if fc < worst.1 {
                simplex[4] = (contracted, fc);
            } else {
                // Shrink towards the best vertex.
                let best = simplex[0].0;
                for v in simplex.iter_mut().skip(1) {
                    v.0 = lerp(&best, &v.0, 0.5);
                    v.1 = f(&v.0);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0].0
}

fn layer_of(name: &str) -> Option<u32> {
    name.rsplit_once("_L")?.1.parse().ok()
}

fn kv_params(v: ndarray::ArrayView2<f32>) -> KvParams {
    let rest = v.slice(s![1.., ..]).mapv(|x| x as f64);
    let mean = rest.mean_axis(Axis(0)).expect("rows");
    let sd = ((&rest - &mean).mapv(|x| x * x).mean().expect("rows")).sqrt();
    let rms = rest
        .mapv(|x| x * x)
        .sum_axis(Axis(1))
        .mean()
        .expect("rows")
        .sqrt();
    let v0 = v.row(0).mapv(|x| (x as f64).powi(2)).sum().sqrt();
    KvParams {
        v_mean: mean.mapv(|x| x * x).sum().sqrt() / (sd * (v.ncols() as f64).sqrt()),
        v_sink: v0 / rms,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: fit_structured DIR (e.g. ../shared/data/lm)")?;
    let previous: Option<Calibration> = match std::env::args().nth(2) {
        Some(path) => Some(serde_json::from_str(&std::fs::read_to_string(path)?)?),
        None => None,
    };
    let data = load_npy_dir(std::path::Path::new(&dir))?;
    let n = data.max_len();
    let rows = stat_rows(n, ROWS);
    let mut layers = Vec::new();
    for (b, name) in data.inputs.iter().enumerate() {
        let layer = layer_of(name).ok_or_else(|| format!("{name}: no _L<layer> suffix"))?;
        let one = |a: &ndarray::Array4<f32>| a.slice(s![b..b + 1, .., .., ..]).to_owned();
        let real_qkv = Qkv {
            q: one(&data.qkv.q),
            k: one(&data.qkv.k),
            v: one(&data.qkv.v),
        };
        let real = qkv_stats(&real_qkv, &rows);
        let (h, hk) = (real_qkv.q.shape()[1], real_qkv.k.shape()[1]);
        let kv: Vec<KvParams> = (0..hk)
            .map(|g| kv_params(real_qkv.v.slice(s![0, g, .., ..])))
            .collect();
        let start = HeadParams {
            locality: 1.0,
            tilt: 0.0,
            content: 1.0,
            sink: 0.0,
        };
        let mut cal = LayerCalibration {
            layer,
            heads: vec![start; h],
            kv,
            real: real.clone(),
            fitted: Vec::new(),
        };
        let keys: Vec<_> = (0..hk).map(|g| cal.keys(SEED, g, n)).collect();
        let mut fitted = Vec::new();
        for head in 0..h {
            let k = &keys[head / (h / hk)];
            let want = real[head];
            let stats = |p: &HeadParams| {
                let q = cal.queries(p, SEED, head, &rows);
                head_stats(q.view(), &rows, k.view())
            };
            let mut f = |x: &[f64; 4]| loss(&stats(&params(x)), &want);
            let earlier = previous
                .as_ref()
                .and_then(|c| c.layer(layer))
                .and_then(|l| l.heads.get(head));
            let x = match earlier {
                // From the earlier fit, one Nelder-Mead pass.
                Some(p) => {
                    let x0 = [p.locality.ln(), p.tilt, p.content.ln(), p.sink];
                    nelder_mead(&mut f, x0, [0.3, 0.5, 0.3, 0.7], 120)
                }
                // A coarse grid for the start, then two Nelder-Mead passes.
                None => {
                    let mut best = ([0.0; 4], f64::INFINITY);
                    for l in [0.0f64, 1.5, 3.0, 4.5] {
                        for c in [-1.0f64, 0.0, 1.0] {
                            for sink in [-2.0, 2.0, 6.0] {
                                let x = [l, 0.0, c, sink];
                                let e = f(&x);
                                if e < best.1 {
                                    best = (x, e);
                                }
                            }
                        }
                    }
                    let x = nelder_mead(&mut f, best.0, [0.7, 1.0, 0.5, 1.0], 150);
                    nelder_mead(&mut f, x, [0.2, 0.4, 0.2, 0.3], 150)
                }
            };
            let p = params(&x);
            let got = stats(&p);
            eprintln!(
                "L{layer} h{head}: loss {:.3}; entropy {:.2}/{:.2} near {:.3}/{:.3} mid {:.3}/{:.3} far {:.3}/{:.3} sink {:.3}/{:.3}; {:?}",
                f(&x),
                got.entropy,
                want.entropy,
                got.near,
                want.near,
                got.mid,
                want.mid,
                got.far,
                want.far,
                got.sink,
                want.sink,
                p
            );
            fitted.push((p, got));
        }
        cal.heads = fitted.iter().map(|f| f.0).collect();
        cal.fitted = fitted.iter().map(|f| f.1).collect();
        layers.push(cal);
    }
    let out = Calibration {
        source: format!(
            "SmolLM2-135M-Instruct (Q4_1 GGUF) activations on 8192 tokens of the GPL v3 + LGPL v2.1 ({}; fitted by examples/fit_structured.rs)",
            data.inputs.join(", ")
        ),
        n,
        rows: ROWS,
        seed: SEED,
        layers,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
