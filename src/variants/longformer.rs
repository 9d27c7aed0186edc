//! `longformer(w,g)`: Longformer's pattern (Beltagy et al. 2020), a sliding window plus
//! global tokens, exact on the tiled engine.

use std::ops::Range;

use std::fmt;

use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;
use crate::pattern::blocks::clipped_len;
use crate::pattern::{
    Geometry, Global, KeyMajor, Pattern, Tile, Union, Window, fill_outside_union,
};

/// `longformer(w=256,g=16)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "longformer",
    summary: "sliding window + g global tokens (attend and attended by all)",
    time: "O(n (w + g) d)",
    memory: "O(1) in n",
    params: &[
        ParamInfo {
            name: "w",
            default: "256",
            help: "window keys on each side",
        },
        ParamInfo {
            name: "g",
            default: "16",
            help: "global tokens (the first g positions; <= n)",
        },
    ],
    presets: &[],
    preview: "longformer(w=6,g=4)",
    build: |p| {
        boxed(
            &INFO,
            Longformer {
                w: p.usize("w")?,
                g: p.usize("g")?,
            },
        )
    },
};

/// Longformer's pattern: [`Window`] `w` plus [`Global`] `g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Longformer {
    /// The window reach on each side.
    pub w: usize,
    /// The number of global tokens.
    pub g: usize,
}

impl Longformer {
    fn window(&self) -> Window {
        Window { w: self.w }
    }

    fn global(&self) -> Global {
        Global { g: self.g }
    }
}

impl Pattern for Longformer {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        self.window().allows(g, i, j) || self.global().allows(g, i, j)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        Union(self.window(), self.global()).classify(g, rows, cols)
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        let global = self.global();
        let p = g.pos(i);
        if global.is_global_row(p) {
            return;
        }
        // Allowed: the global prefix 0..g and the window lo..=hi; fill the rest.
        let (lo, hi) = self.window().interval(p);
        let c0i = c0 as isize;
        let len = row.len() as isize;
        let idx = |x: isize| (x - c0i).clamp(0, len) as usize;
        let g_end = idx(self.g as isize);
        let (w_start, w_end) = (idx(lo).max(g_end), idx(hi + 1).max(g_end));
        row[g_end..w_start].fill(f32::NEG_INFINITY);
        row[w_end..].fill(f32::NEG_INFINITY);
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        // A key past the prefix is seen by the global rows and by its window.
        let first = g.pos(tile.rows.start);
        let last_global = self.g as isize - 1;
        for (j, col) in tile.columns() {
            if j >= self.g {
                let mut keep = [(0, last_global), self.window().queries_of(j as isize)];
                keep.sort_unstable();
                fill_outside_union(col, first, &keep);
            }
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        Union(self.window(), self.global()).key_ranges(g, rows)
    }

    fn unsupported(&self, g: Geometry) -> Vec<String> {
        self.global().unsupported(g)
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let p = g.pos(i);
        if self.global().is_global_row(p) {
            return g.n_kv;
        }
        let (lo, hi) = self.window().interval(p);
        let prefix = self.g.min(g.n_kv);
        // The window's keys at or beyond g, plus the prefix.
        prefix + clipped_len(lo.max(self.g as isize), hi, g.n_kv)
    }
}

impl fmt::Display for Longformer {
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.w), Some(&self.g)])
    }
}
