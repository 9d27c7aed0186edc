//! Building blocks of sparse patterns, stated on the *aligned* query position
//! `p = i + n_kv - n_q` (see [`Geometry::pos`]), so under self-attention `p = i`: sliding
//! windows, local blocks, global tokens and stripes, with O(1) tile classification and
//! interval row masks, and the interval arithmetic the built-in pattern variants share.
//! Bounds are inclusive where written with `<=`.

use std::ops::Range;

use super::{Geometry, KeyMajor, Pattern, Tile, fill_incongruent, fill_outside, fill_outside_at};

/// Keys within `w` positions: `|p - j| <= w` (so `2w + 1` keys away from the edges).
/// Under causal masking this becomes `p - w <= j <= p` (`w + 1` keys). `w = 0` is the
/// diagonal only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The reach on each side.
    pub w: usize,
}

/// Each query attends the keys of its own block: `p / block == j / block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The block length; at least 1.
    pub block: usize,
}

/// Global tokens: the first `g` positions attend every key (`0 <= p < g`) and are attended
/// by every query (`j < g`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Global {
    /// The number of global tokens; at most `n_kv`.
    pub g: usize,
}

// ---------------------------------------------------------------------------------------
// Shared arithmetic.

/// The number of keys in `lo..=hi` that exist (`0..n_kv`).
pub fn clipped_len(lo: isize, hi: isize, n_kv: usize) -> usize {
    let lo = lo.max(0);
    let hi = hi.min(n_kv as isize - 1);
    (hi - lo + 1).max(0) as usize
}

/// The number of `x` in `lo..=hi` with `x mod s == r mod s`.
pub fn count_congruent(lo: isize, hi: isize, r: isize, s: usize) -> usize {
    if hi < lo {
        return 0;
    }
    let s = s as isize;
    ((hi - r).div_euclid(s) - (lo - 1 - r).div_euclid(s)) as usize
}

/// Classifies a tile for a pattern whose allowed keys in row `p` form an interval
/// `lo(p)..=hi(p)` with `lo` and `hi` non-decreasing in `p` and consecutive intervals
/// touching or overlapping. `first` and `last` are the intervals of the tile's first and
/// last rows.
pub fn interval_tile(first: (isize, isize), last: (isize, isize), cols: &Range<usize>) -> Tile {
    let (c0, c1) = (cols.start as isize, cols.end as isize - 1);
    if last.1 < c0 || first.0 > c1 {
        Tile::Empty
    } else if last.0 <= c0 && first.1 >= c1 {
        Tile::Full
    } else {
        Tile::Partial
    }
}

/// The aligned positions of the first and last rows of `rows`.
pub fn first_last(g: Geometry, rows: &Range<usize>) -> (isize, isize) {
    (g.pos(rows.start), g.pos(rows.end - 1))
}

/// The `key_ranges`, `classify`, `mask_row`, `keys_in_row` and `mask_key_major` of a pattern
/// whose allowed keys in row `p` are the interval `self.interval(p)` (see [`interval_tile`]
/// for the conditions) and whose queries allowed to see key `j` are the positions
/// `self.queries_of(j)`.
macro_rules! interval_pattern_methods {
    () => {
        fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
            // Intervals non-decreasing in p: the hull of the first and last rows'.
            let (p0, p1) = first_last(g, &rows);
            $crate::pattern::clipped_range(self.interval(p0).0, self.interval(p1).1, g.n_kv)
        }

        fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
            let (p0, p1) = first_last(g, &rows);
            interval_tile(self.interval(p0), self.interval(p1), &cols)
        }

        fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
            let (lo, hi) = self.interval(g.pos(i));
            fill_outside(row, c0, lo, hi);
        }

        fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
            let (lo, hi) = self.interval(g.pos(i));
            clipped_len(lo, hi, g.n_kv)
        }

        fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
            let first = g.pos(tile.rows.start);
            for (j, col) in tile.columns() {
                let (lo, hi) = self.queries_of(j as isize);
                fill_outside_at(col, first, lo, hi);
            }
        }
    };
}

/// `j mod s == p mod s`: the stripes of the strided and dilated patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripes {
    /// The period; at least 1.
    pub s: usize,
}

impl Pattern for Stripes {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        (g.pos(i) - j as isize).rem_euclid(self.s as isize) == 0
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        // Two keys of one row differ by 1, so only a single cell can be full when s > 1.
        if self.s == 1
            || (rows.len() == 1 && cols.len() == 1 && self.allows(g, rows.start, cols.start))
        {
            return Tile::Full;
        }
        let (p0, p1) = first_last(g, &rows);
        // p - j over the tile covers lo..=hi without gaps.
        let (lo, hi) = (p0 - (cols.end as isize - 1), p1 - cols.start as isize);
        if count_congruent(lo, hi, 0, self.s) == 0 {
            Tile::Empty
        } else {
            Tile::Partial
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        fill_incongruent(row, c0 as isize, g.pos(i), self.s);
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        let first = g.pos(tile.rows.start);
        for (j, col) in tile.columns() {
            fill_incongruent(col, first, j as isize, self.s);
        }
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        count_congruent(0, g.n_kv as isize - 1, g.pos(i), self.s)
    }
}

// ---------------------------------------------------------------------------------------
// Window.

impl Window {
    /// The allowed keys of aligned position `p`: `lo..=hi` (unclipped).
    pub fn interval(&self, p: isize) -> (isize, isize) {
        (p - self.w as isize, p + self.w as isize)
    }

    /// The positions that may attend key `j`: `j - w..=j + w` (unclipped).
    pub fn queries_of(&self, j: isize) -> (isize, isize) {
        self.interval(j)
    }
}

impl Pattern for Window {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        (g.pos(i) - j as isize).unsigned_abs() <= self.w
    }

    fn streaming(&self) -> Option<(usize, usize)> {
        Some((0, self.w))
    }

    interval_pattern_methods!();
}

// ---------------------------------------------------------------------------------------
// Local.

impl Local {
    /// The allowed keys of aligned position `p`: `lo..=hi` (unclipped).
    pub fn interval(&self, p: isize) -> (isize, isize) {
        let b = self.block as isize;
        let start = p.div_euclid(b) * b;
        (start, start + b - 1)
    }

    /// The positions that may attend key `j`: those of its block.
    pub fn queries_of(&self, j: isize) -> (isize, isize) {
        self.interval(j)
    }
}

impl Pattern for Local {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        let b = self.block as isize;
        g.pos(i).div_euclid(b) == j as isize / b
    }

    interval_pattern_methods!();
}

// ---------------------------------------------------------------------------------------
// Global.

impl Global {
    /// Whether aligned position `p` is a global token.
    pub fn is_global_row(&self, p: isize) -> bool {
        (0..self.g as isize).contains(&p)
    }
}

impl Pattern for Global {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        j < self.g || self.is_global_row(g.pos(i))
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let (p0, p1) = first_last(g, &rows);
        let all_rows_global = self.is_global_row(p0) && self.is_global_row(p1);
        let no_row_global = p0.max(0) >= (p1 + 1).min(self.g as isize);
        if cols.end <= self.g || all_rows_global {
            Tile::Full
        } else if cols.start >= self.g && no_row_global {
            Tile::Empty
        } else {
            Tile::Partial
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        if !self.is_global_row(g.pos(i)) {
            fill_outside(row, c0, 0, self.g as isize - 1);
        }
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        // Keys past the prefix are seen by the global rows only.
        let first = g.pos(tile.rows.start);
        for (j, col) in tile.columns() {
            if j >= self.g {
                fill_outside_at(col, first, 0, self.g as isize - 1);
            }
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        let (p0, p1) = first_last(g, &rows);
        let any_global_row = p0.max(0) < (p1 + 1).min(self.g as isize);
        if any_global_row {
            super::all_keys(g.n_kv)
        } else {
            super::clipped_range(0, self.g as isize - 1, g.n_kv)
        }
    }

    fn unsupported(&self, g: Geometry) -> Vec<String> {
        if self.g > g.n_kv {
            vec![format!(
                "parameter g={} exceeds the {} keys: there cannot be more global tokens than tokens",
                self.g, g.n_kv
            )]
        } else {
            Vec::new()
        }
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        if self.is_global_row(g.pos(i)) {
            g.n_kv
        } else {
            self.g.min(g.n_kv)
        }
    }
}
