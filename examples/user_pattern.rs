//! What a user-defined pattern costs on the tiled engine, by how much of [`Pattern`] it
//! implements: the same band `|i - j| <= w` given
//!
//! 1. only `allows` (the engine classifies each tile by scanning its pairs, masks partial
//!    tiles pair by pair, and visits every tile of every query block);
//! 2. `allows` and `key_ranges` (only the tiles near the diagonal are visited; they are still
//!    classified by scanning);
//! 3. only `allows`, wrapped in [`Indexed`] (a block-sparse index built once per geometry:
//!    each query block's full and partial tiles, partial tiles as bit masks);
//! 4. the built-in `window(w)` (ranges, O(1) classification and interval masks).
//!
//! The first call of the indexed band builds its index (timed separately below); the
//! others reuse it, as FlexAttention reuses a `BlockMask`.
//!
//! Each is timed as the median of five calls after a first one on the same Gaussian inputs, and checked
//! against the built-in one.
//!
//! ```text
//! cargo run --release --example user_pattern -- [n] [w]     # defaults 4096 256
//! ```

use std::fmt;
use std::ops::Range;
use std::time::Instant;

use attnbench::pattern::Indexed;
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
        Box::new(Sparse::new(
            "band-indexed",
            Indexed::new(Band { w }, 64, 64),
        )),
        builtin,
    ];
    let window = variants.len() - 1;
    let reference = attend(
        variants[window].as_ref(),
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
        for call in 0..6 {
            let t = Instant::now();
            out = Some(attend(
                v.as_ref(),
                qkv.q.view(),
                qkv.k.view(),
                qkv.v.view(),
                &opts,
            )?);
            let elapsed = t.elapsed().as_secs_f64() * 1e3;
            if call == 0 {
                println!("{:<24} first call {elapsed:>9.2} ms", v.name());
            } else {
                ms.push(elapsed);
            }
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
            v.name(),
            ms[2],
        );
    }
    for (v, t) in variants.iter().zip(&times) {
        let ratio = t / times[window];
        println!("{:<24} {ratio:>6.2}x the built-in window's time", v.name());
    }
    Ok(())
}
