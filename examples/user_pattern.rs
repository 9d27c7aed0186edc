//! What a user-defined pattern costs on the tiled engine, by how much of [`Pattern`] it
//! implements: the same band `|i - j| <= w` given
//!
//! 1. only `allows` (the engine classifies each tile by scanning its pairs, masks partial
//!    tiles pair by pair, and visits every tile of every query block);
//! 2. `allows` and `key_ranges` (only the tiles near the diagonal are visited; they are still
//!    classified by scanning);
//! 3. the built-in `window(w)` (ranges, O(1) classification and interval masks).
//!
//! Each is timed as the median of a few calls on the same Gaussian inputs, and checked
//! against the built-in one.
//!
//! ```text
//! cargo run --release --example user_pattern -- [n] [w]     # defaults 4096 256
//! ```

use std::fmt;
use std::ops::Range;
use std::time::Instant;

use attnbench::variants::sparse::Sparse;
use attnbench::workload::gaussian;
use attnbench::{Attention, Geometry, Options, Pattern, Registry, Shape, attend};

/// The band, from `allows` alone.
#[derive(Debug, Clone, Copy)]
struct Band {
    w: usize,
}

impl Pattern for Band {
    fn allows(&self, _g: Geometry, i: usize, j: usize) -> bool {
        i.abs_diff(j) <= self.w
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "band(w={})", self.w)
    }
}

/// The band, with the key ranges of a query block.
#[derive(Debug, Clone, Copy)]
struct BandWithRanges {
    w: usize,
}

impl Pattern for BandWithRanges {
    fn allows(&self, _g: Geometry, i: usize, j: usize) -> bool {
        i.abs_diff(j) <= self.w
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        let reach = rows.start.saturating_sub(self.w)..(rows.end + self.w).min(g.n_kv);
        vec![reach]
    }
}

impl fmt::Display for BandWithRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "band+ranges(w={})", self.w)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (n, w) = (
        args.first().copied().unwrap_or(4096),
        args.get(1).copied().unwrap_or(256),
    );
    let shape = Shape::new(1, 8, 8, n, n, 64, 64)?;
    let qkv = gaussian(&shape, 1.0, 0);
    let opts = Options::new();
    let builtin = Registry::builtin().build(&format!("window(w={w})"))?;
    let variants: Vec<Box<dyn Attention>> = vec![
        Box::new(Sparse::new("band", Band { w })),
        Box::new(Sparse::new("band+ranges", BandWithRanges { w })),
        builtin,
    ];
    let reference = attend(
        variants[2].as_ref(),
        qkv.q.view(),
        qkv.k.view(),
        qkv.v.view(),
        &opts,
    )?;
    println!(
        "n = {n}, w = {w}, b = 1, h = 8, d = 64, {} threads",
        rayon::current_num_threads()
    );
    let mut times = Vec::new();
    for v in &variants {
        let mut ms = Vec::new();
        let mut out = None;
        for _ in 0..5 {
            let t = Instant::now();
            out = Some(attend(
                v.as_ref(),
                qkv.q.view(),
                qkv.k.view(),
                qkv.v.view(),
                &opts,
            )?);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let diff = out
            .expect("five calls")
            .iter()
            .zip(reference.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        times.push(ms[2]);
        println!(
            "{:<24} median {:>9.2} ms   max |diff| vs window {diff:.1e}",
            v.to_string(),
            ms[2],
        );
    }
    let window = times[2];
    for (v, t) in variants.iter().zip(&times) {
        println!(
            "{:<24} {:>6.2}x the built-in window's time",
            v.to_string(),
            t / window
        );
    }
    Ok(())
}
