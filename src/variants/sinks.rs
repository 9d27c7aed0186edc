//! `sinks(s, w)`: StreamingLLM's attention sinks (Xiao et al. 2023): the first `s` keys and a
//! sliding window of `w`, exact on the tiled engine.
//!
//! Trained LLMs put much of each head's mass on the first tokens whatever they say (the
//! bundled SmolLM2 layer 15 puts 23-68% on token 0); a window alone drops that mass and
//! renormalizes over its neighbours, which is why windowed decoding fails after the first
//! window. Keeping `s` sink keys beside the window restores it at the cost of `s` keys.

use std::fmt;
use std::ops::Range;

use crate::pattern::blocks::{clipped_len, first_last};
use crate::pattern::{
    Geometry, KeyMajor, Pattern, Tile, Window, clipped_range, fill_outside_at,
    fill_outside_union, union_ranges,
};
use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;

/// `sinks(s=4,w=256)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "sinks",
    summary: "StreamingLLM: the first s keys (attention sinks) + a sliding window |p - j| <= w",
    time: "O(n (s + w) d)",
    memory: "O(1) in n",
    params: &[
        ParamInfo {
            name: "s",
            default: "4",
            help: "sink keys: the first s positions, seen by every query",
        },
        ParamInfo {
            name: "w",
            default: "256",
            help: "window keys on each side (inclusive), as window(w)",
        },
    ],
    presets: &[],
    preview: "sinks(s=2,w=6)",
    build: |p| {
        boxed(
            &INFO,
            Sinks {
                s: p.usize("s")?,
                w: p.usize("w")?,
            },
        )
    },
};

/// Keys `j < s` and keys with `|p - j| <= w` (causally `p - w <= j <= p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sinks {
    /// The sink keys: positions `0..s`.
    pub s: usize,
    /// The window's reach on each side.
    pub w: usize,
}

impl Sinks {
    fn window(&self) -> Window {
        Window { w: self.w }
    }
}

impl Pattern for Sinks {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        j < self.s || self.window().allows(g, i, j)
    }

    fn streaming(&self) -> Option<(usize, usize)> {
        Some((self.s, self.w))
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        if cols.end <= self.s {
            return Tile::Full;
        }
        let window = self.window().classify(g, rows.clone(), cols.clone());
        if cols.start >= self.s || window == Tile::Full {
            return window;
        }
        // The tile holds sink keys and others: the sinks are allowed, the rest may not be.
        let (p0, p1) = first_last(g, &rows);
        let rest_full = p1 - self.w as isize <= self.s as isize
            && p0 + self.w as isize >= cols.end as isize - 1;
        if rest_full { Tile::Full } else { Tile::Partial }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        let (lo, hi) = self.window().interval(g.pos(i));
        let sinks = (0, self.s as isize - 1);
        let keep = if lo <= sinks.0 {
            [(lo, hi), sinks]
        } else {
            [sinks, (lo, hi)]
        };
        fill_outside_union(row, c0 as isize, &keep);
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        let first = g.pos(tile.rows.start);
        let window = self.window();
        for (j, col) in tile.columns() {
            if j >= self.s {
                let (lo, hi) = window.queries_of(j as isize);
                fill_outside_at(col, first, lo, hi);
            }
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        let (p0, p1) = first_last(g, &rows);
        let window = clipped_range(p0 - self.w as isize, p1 + self.w as isize, g.n_kv);
        union_ranges(&clipped_range(0, self.s as isize - 1, g.n_kv), &window)
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let (lo, hi) = self.window().interval(g.pos(i));
        let s = self.s.min(g.n_kv) as isize;
        // The window's keys plus the sinks it does not already hold.
        let overlap = clipped_len(lo.max(0), hi.min(s - 1), g.n_kv);
        clipped_len(lo, hi, g.n_kv) + s as usize - overlap
    }
}

impl fmt::Display for Sinks {
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.s), Some(&self.w)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_are_the_prefix_and_the_window() {
        let p = Sinks { s: 2, w: 1 };
        let g = Geometry::new(8, 8);
        let row6: Vec<usize> = (0..8).filter(|&j| p.allows(g, 6, j)).collect();
        assert_eq!(row6, vec![0, 1, 5, 6, 7]);
        let row1: Vec<usize> = (0..8).filter(|&j| p.allows(g, 1, j)).collect();
        assert_eq!(row1, vec![0, 1, 2]);
        for i in 0..8 {
            let n = (0..8).filter(|&j| p.allows(g, i, j)).count();
            assert_eq!(p.keys_in_row(g, i), n, "row {i}");
        }
    }
}
