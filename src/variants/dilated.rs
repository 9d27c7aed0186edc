//! `dilated(w,dilation)`: a dilated sliding window, exact on the tiled engine.

use std::ops::Range;

use std::fmt;

use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;
use crate::pattern::blocks::{count_congruent, first_last};
use crate::pattern::parts::{self, Part};
use crate::pattern::{Geometry, KeyMajor, Pattern, Stripes, Tile, Window};

/// `dilated(w=128,dilation=2)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "dilated",
    summary: "dilated window: keys p + k*dilation for |k| <= w",
    time: "O(n w d): a window per residue class, gathered",
    memory: "O(n) per busy head: merge state and a gathered class (<= 16384 keys)",
    params: &[
        ParamInfo {
            name: "w",
            default: "128",
            help: "keys on each side",
        },
        ParamInfo {
            name: "dilation",
            default: "2",
            help: "step between keys",
        },
    ],
    presets: &[],
    preview: "dilated(w=5,dilation=3)",
    build: |p| {
        let (w, dilation) = (p.usize("w")?, p.positive("dilation")?);
        if w.checked_mul(dilation).is_none_or(|reach| reach > 1 << 40) {
            return Err(p.invalid(
                "w",
                &format!("the reach w * dilation = {w} * {dilation} is too large"),
            ));
        }
        boxed(&INFO, Dilated { w, dilation })
    },
};

/// A dilated sliding window: `j = p + k * dilation` for `|k| <= w`, i.e. `|p - j| <= w *
/// dilation` and `(p - j) mod dilation == 0` (`2w + 1` keys; causally `w + 1`).
/// `dilation = 1` is [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dilated {
    /// Keys on each side.
    pub w: usize,
    /// The step between keys; at least 1.
    pub dilation: usize,
}

impl Dilated {
    fn parts(&self) -> (Window, Stripes) {
        (
            Window {
                w: self.w * self.dilation,
            },
            Stripes { s: self.dilation },
        )
    }
}

impl Pattern for Dilated {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        let (w, s) = self.parts();
        w.allows(g, i, j) && s.allows(g, i, j)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let (w, s) = self.parts();
        if self.dilation == 1 {
            return w.classify(g, rows, cols);
        }
        match w.classify(g, rows.clone(), cols.clone()) {
            Tile::Empty => Tile::Empty,
            _ => {
                // The differences p - j over the tile form one range, every value of which
                // some pair realizes; a pair is allowed iff its difference is a multiple of
                // the dilation within the reach.
                let (p0, p1) = first_last(g, &rows);
                let reach = w.w as isize;
                let lo = (p0 - (cols.end as isize - 1)).max(-reach);
                let hi = (p1 - cols.start as isize).min(reach);
                if count_congruent(lo, hi, 0, self.dilation) == 0 {
                    Tile::Empty
                } else {
                    // Neighbouring cells differ by 1 in p - j: only a single cell is full.
                    s.classify(g, rows, cols)
                }
            }
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        // Within the reach of the dilated window.
        self.parts().0.key_ranges(g, rows)
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        let (w, s) = self.parts();
        w.mask_row(g, i, c0, row);
        s.mask_row(g, i, c0, row);
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        let (w, s) = self.parts();
        w.mask_key_major(g, tile);
        s.mask_key_major(g, tile);
    }

    /// Per residue class modulo the dilation, an ordinary window of `w`: the class's
    /// queries and keys gathered, dense tiles again.
    fn parts(&self, g: Geometry, causal: bool) -> Option<Vec<Part>> {
        if g.n_q != g.n_kv || self.dilation == 1 {
            return None;
        }
        Some(vec![Part {
            groups: parts::residues(g, self.dilation),
            pattern: parts::local(Window { w: self.w }, causal),
        }])
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let p = g.pos(i);
        let (lo, hi) = self.parts().0.interval(p);
        count_congruent(lo.max(0), hi.min(g.n_kv as isize - 1), p, self.dilation)
    }
}

impl fmt::Display for Dilated {
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.w), Some(&self.dilation)])
    }
}
