//! `strided(stride)`: the Sparse Transformer strided pattern (Child et al. 2019), exact on
//! the tiled engine.

use std::ops::Range;

use std::fmt;

use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;
use crate::pattern::blocks::{clipped_len, count_congruent};
use crate::pattern::parts::{self, OtherBlocks, Part};
use crate::pattern::{
    Geometry, KeyMajor, Pattern, Stripes, Tile, Union, Window, fill_incongruent,
};

/// `strided(stride=128)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "strided",
    summary: "Sparse Transformer strided: previous `stride` positions + every stride-th",
    time: "O(n (stride + n / stride) d): window tiles + stripes gathered per residue class",
    memory: "O(n) per busy head: merge state and gathered stripes",
    params: &[ParamInfo {
        name: "stride",
        default: "128",
        help: "local span and stripe period",
    }],
    presets: &[],
    preview: "strided(stride=8)",
    build: |p| {
        boxed(
            &INFO,
            Strided {
                stride: p.positive("stride")?,
            },
        )
    },
};

/// The Sparse Transformer strided pattern (Child et al. 2019): the previous `stride`
/// positions (`|p - j| < stride`; causally `p - stride < j <= p`) and every position `j`
/// with `(p - j) mod stride == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    /// The stride; at least 1.
    pub stride: usize,
}

impl Strided {
    fn parts(&self) -> (Window, Stripes) {
        (Window { w: self.stride - 1 }, Stripes { s: self.stride })
    }
}

impl Pattern for Strided {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        let (w, s) = self.parts();
        w.allows(g, i, j) || s.allows(g, i, j)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let (w, s) = self.parts();
        Union(w, s).classify(g, rows, cols)
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        // Outside the local window only the stripes survive; inside it everything does.
        let p = g.pos(i);
        let (lo, hi) = self.parts().0.interval(p);
        let c0i = c0 as isize;
        let start = (lo - c0i).clamp(0, row.len() as isize) as usize;
        let end = (hi - c0i + 1).clamp(start as isize, row.len() as isize) as usize;
        let (before, rest) = row.split_at_mut(start);
        let after = &mut rest[end - start..];
        let stripes = Stripes { s: self.stride };
        stripes.mask_row(g, i, c0, before);
        stripes.mask_row(g, i, c0 + end, after);
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        // Key j is seen by the positions of its window and by its residue class.
        let first = g.pos(tile.rows.start);
        let (w, _) = self.parts();
        let len = tile.rows.len() as isize;
        for (j, col) in tile.columns() {
            let j = j as isize;
            let (lo, hi) = w.queries_of(j);
            let start = (lo - first).clamp(0, len) as usize;
            let end = (hi - first + 1).clamp(start as isize, len) as usize;
            let (before, rest) = col.split_at_mut(start);
            fill_incongruent(before, first, j, self.stride);
            fill_incongruent(&mut rest[end - start..], first + end as isize, j, self.stride);
        }
    }

    /// The window, and per residue class the stripes outside it (every key of the class but
    /// the query's own position; causally every earlier one): dense tiles on gathered rows.
    fn parts(&self, g: Geometry, causal: bool) -> Option<Vec<Part>> {
        if g.n_q != g.n_kv || self.stride == 1 {
            return None;
        }
        let (w, _) = self.parts();
        let others = OtherBlocks {
            qb: 1,
            kb: 1,
            before: causal,
        };
        Some(vec![
            Part {
                groups: parts::whole(g),
                pattern: parts::local(w, causal),
            },
            Part {
                groups: parts::residues(g, self.stride),
                pattern: Box::new(others),
            },
        ])
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let p = g.pos(i);
        let (lo, hi) = self.parts().0.interval(p);
        let (clo, chi) = (lo.max(0), hi.min(g.n_kv as isize - 1));
        let window = clipped_len(lo, hi, g.n_kv);
        let stripes = count_congruent(0, g.n_kv as isize - 1, p, self.stride);
        let both = count_congruent(clo, chi, p, self.stride);
        window + stripes - both
    }
}

impl fmt::Display for Strided {
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.stride)])
    }
}
