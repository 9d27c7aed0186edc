//! The tiled engine's kernels one at a time, as rates against the same run's one-core FMA
//! peak: the score product, the online softmax and the P V product (into the transposed
//! accumulator) on one tile held in cache, then the three in sequence over the tiles of 4096
//! keys, as one query block of `flash` runs them. Shows which step limits `flash` here.
//!
//! ```text
//! cargo run --release --example kernels            # bq = 64, bk = 128, d = 64
//! cargo run --release --example kernels -- 64 256  # bq = 64, bk = 256
//! ```

use std::time::Instant;

use attnbench::kernels::dispatch::{self, Isa, OnlineState, Path, Tile, fma_chains, padded};
use attnbench::kernels::tile::AlignedBuf;

/// The fastest of 5 timings of `reps` calls, per call.
fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn filled(len: usize, seed: &mut u32) -> AlignedBuf {
    let mut b = AlignedBuf::zeros(len);
    for x in b.iter_mut() {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *x = (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
    }
    b
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (bq, bk, d, n) = (arg(0, 64), arg(1, 128), arg(2, 64), 4096);
    for path in [Path::Avx512, Path::Avx2Fma] {
        let Some(isa) = Isa::new(path) else { continue };
        let peak = (0..5)
            .map(|_| {
                let t = Instant::now();
                let (flops, v) = fma_chains(isa, 20_000_000);
                std::hint::black_box(v);
                flops / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max);
        let (ldq, ldv) = (padded(bq), padded(d));
        let mut seed = 1;
        let qt = filled(d * ldq, &mut seed);
        let k = filled(n * d, &mut seed);
        let v = filled(n * ldv, &mut seed);
        let mut st = AlignedBuf::zeros(bk * ldq);
        let mut acct = AlignedBuf::zeros(d * ldq);
        let mut m = vec![f32::NEG_INFINITY; ldq];
        let mut l = vec![0.0f32; ldq];
        let mut rescale = vec![1.0f32; ldq];
        let (mut s1, mut s2) = (vec![0.0f32; ldq], vec![0.0f32; ldq]);
        let flops = 2.0 * (bq * bk * d) as f64;
        let reps = 2000;
        macro_rules! tile_at {
            ($c0:expr, $st:expr) => {
                Tile {
                    qt: &qt,
                    k: &k[$c0 * d..($c0 + bk) * d],
                    v: &v[$c0 * ldv..($c0 + bk) * ldv],
                    st: $st,
                    cols: bk,
                    d,
                    ldq,
                    ldv,
                }
            };
        }
        let t_scores = best_of(reps, || {
            dispatch::scores(isa, &mut tile_at!(0, &mut st), 0.125)
        });
        let snapshot = st.to_vec();
        let mut step = |st: &mut [f32]| {
            let mut state = OnlineState {
                m: &mut m,
                l: &mut l,
                rescale: &mut rescale,
                shift: &mut s1,
                sums: &mut s2,
            };
            state.m.fill(f32::NEG_INFINITY);
            dispatch::online_softmax(isa, st, bk, ldq, &mut state);
        };
        // Repeated on its own output (probabilities in [0, 1], whose exponentials are too).
        st.copy_from_slice(&snapshot);
        let t_softmax = best_of(reps, || step(&mut st));
        let ones = vec![1.0f32; ldq];
        let t_pv = best_of(reps, || {
            dispatch::accumulate_t(isa, &tile_at!(0, &mut st), &mut acct, d, &ones)
        });
        let in_cache = t_scores + t_softmax + t_pv;
        // The whole key range, tile after tile.
        let t_all = best_of(20, || {
            for c0 in (0..n).step_by(bk) {
                let mut t = tile_at!(c0, &mut st);
                dispatch::scores(isa, &mut t, 0.125);
                let mut state = OnlineState {
                    m: &mut m,
                    l: &mut l,
                    rescale: &mut rescale,
                    shift: &mut s1,
                    sums: &mut s2,
                };
                dispatch::online_softmax(isa, t.st, bk, ldq, &mut state);
                dispatch::accumulate_t(isa, &t, &mut acct, d, &rescale);
            }
        });
        let pct = |f: f64, t: f64| 100.0 * f / t / 1e9 / peak;
        println!(
            "{isa} bq={bq} bk={bk} d={d}: one-core peak {peak:.1} GFLOP/s\n  \
             one tile in cache: scores {:.0}% of peak, P V {:.0}%, softmax {:.0}% of the \
             tile's time; the three {:.0}% of peak\n  {n} keys in tiles: {:.0}% of peak",
            pct(flops, t_scores),
            pct(flops, t_pv),
            100.0 * t_softmax / in_cache,
            pct(2.0 * flops, in_cache),
            pct(2.0 * flops * (n / bk) as f64, t_all),
        );
    }
}
