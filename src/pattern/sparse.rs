//! The built-in sparse patterns: sliding window, local blocks, Sparse Transformer strided and
//! fixed, Longformer-style global tokens, BigBird blocks and dilated windows.
//!
//! Every pattern is stated on the *aligned* query position `p = i + n_kv - n_q` (see
//! [`Geometry::pos`]), so under self-attention `p = i`. Bounds are inclusive where written
//! with `<=`. Each includes the diagonal `j = p` whenever `0 <= p < n_kv`, so no row of a
//! self-attention is ever empty. Each pattern's `Display` is its spec string.

use std::fmt;
use std::ops::Range;

use super::{Geometry, Pattern, Tile, fill_outside};

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

/// The Sparse Transformer strided pattern (Child et al. 2019): the previous `stride`
/// positions (`|p - j| < stride`; causally `p - stride < j <= p`) and every position `j`
/// with `(p - j) mod stride == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    /// The stride; at least 1.
    pub stride: usize,
}

/// The Sparse Transformer fixed pattern (Child et al. 2019): the query's own block
/// (`p / block == j / block`) and the last `c` positions of every block
/// (`j mod block >= block - c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// The block length; at least 1.
    pub block: usize,
    /// Summary positions per block; at most `block`.
    pub c: usize,
}

/// Global tokens: the first `g` positions attend every key (`0 <= p < g`) and are attended
/// by every query (`j < g`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Global {
    /// The number of global tokens; at most `n_kv`.
    pub g: usize,
}

/// The BigBird blocked pattern (Zaheer et al. 2020) on blocks of `block` positions, with
/// query block `qb = p / block` and key block `kb = j / block`: `w` sliding blocks
/// (`-(w-1)/2 <= kb - qb <= w/2`, so `w = 3` is the block and its two neighbours), `g` global
/// blocks (`kb < g` or `qb < g`), and `r` random key blocks per query block, drawn from
/// `seed` (they may coincide with sliding or global blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BigBird {
    /// The block length; at least 1.
    pub block: usize,
    /// Sliding blocks; at least 1.
    pub w: usize,
    /// Global blocks.
    pub g: usize,
    /// Random blocks per query block.
    pub r: usize,
    /// The seed of the random blocks.
    pub seed: u64,
}

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

// ---------------------------------------------------------------------------------------
// Shared arithmetic.

/// The number of keys in `lo..=hi` that exist (`0..n_kv`).
fn clipped_len(lo: isize, hi: isize, n_kv: usize) -> usize {
    let lo = lo.max(0);
    let hi = hi.min(n_kv as isize - 1);
    (hi - lo + 1).max(0) as usize
}

/// The number of `x` in `lo..=hi` with `x mod s == r mod s`.
fn count_congruent(lo: isize, hi: isize, r: isize, s: usize) -> usize {
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
fn interval_tile(first: (isize, isize), last: (isize, isize), cols: &Range<usize>) -> Tile {
    let (c0, c1) = (cols.start as isize, cols.end as isize - 1);
    if last.1 < c0 || first.0 > c1 {
        Tile::Empty
    } else if last.0 <= c0 && first.1 >= c1 {
        Tile::Full
    } else {
        Tile::Partial
    }
}

fn first_last(g: Geometry, rows: &Range<usize>) -> (isize, isize) {
    (g.pos(rows.start), g.pos(rows.end - 1))
}

/// The `classify`, `mask_row` and `keys_in_row` of a pattern whose allowed keys in row `p`
/// are the interval `self.interval(p)` (see [`interval_tile`] for the conditions).
macro_rules! interval_pattern_methods {
    () => {
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
    };
}

/// `j mod s == p mod s`: the stripes of the strided and dilated patterns.
#[derive(Debug, Clone, Copy)]
struct Stripes {
    s: usize,
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
        let s = self.s as isize;
        let mut phase = (g.pos(i) - c0 as isize).rem_euclid(s) as usize;
        // `phase` counts down to the next allowed key.
        for x in row.iter_mut() {
            if phase != 0 {
                *x = f32::NEG_INFINITY;
                phase -= 1;
            } else {
                phase = self.s - 1;
            }
        }
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        count_congruent(0, g.n_kv as isize - 1, g.pos(i), self.s)
    }
}

// ---------------------------------------------------------------------------------------
// Window.

impl Window {
    fn interval(&self, p: isize) -> (isize, isize) {
        (p - self.w as isize, p + self.w as isize)
    }
}

impl Pattern for Window {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        (g.pos(i) - j as isize).unsigned_abs() <= self.w
    }

    interval_pattern_methods!();
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "window(w={})", self.w)
    }
}

// ---------------------------------------------------------------------------------------
// Local.

impl Local {
    fn interval(&self, p: isize) -> (isize, isize) {
        let b = self.block as isize;
        let start = p.div_euclid(b) * b;
        (start, start + b - 1)
    }
}

impl Pattern for Local {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        let b = self.block as isize;
        g.pos(i).div_euclid(b) == j as isize / b
    }

    interval_pattern_methods!();
}

impl fmt::Display for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "local(block={})", self.block)
    }
}

// ---------------------------------------------------------------------------------------
// Strided.

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
        super::Union(w, s).classify(g, rows, cols)
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "strided(stride={})", self.stride)
    }
}

// ---------------------------------------------------------------------------------------
// Fixed.

impl Fixed {
    fn local(&self) -> Local {
        Local { block: self.block }
    }

    fn is_summary(&self, j: usize) -> bool {
        j % self.block >= self.block - self.c
    }

    /// The number of summary positions below `x`.
    fn summaries_below(&self, x: isize) -> isize {
        let (b, c) = (self.block as isize, self.c as isize);
        let x = x.max(0);
        x / b * c + (x % b - (b - c)).max(0)
    }

    fn summaries_in(&self, lo: isize, hi: isize) -> usize {
        if hi < lo {
            0
        } else {
            (self.summaries_below(hi + 1) - self.summaries_below(lo)) as usize
        }
    }
}

impl Pattern for Fixed {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        self.is_summary(j) || self.local().allows(g, i, j)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let summaries = self.summaries_in(cols.start as isize, cols.end as isize - 1);
        if summaries == cols.len() {
            return Tile::Full;
        }
        match self.local().classify(g, rows, cols) {
            Tile::Empty if summaries == 0 => Tile::Empty,
            Tile::Full => Tile::Full,
            _ => Tile::Partial,
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        let (lo, hi) = self.local().interval(g.pos(i));
        for (j, x) in (c0..).zip(row.iter_mut()) {
            let in_block = (lo..=hi).contains(&(j as isize));
            if !in_block && !self.is_summary(j) {
                *x = f32::NEG_INFINITY;
            }
        }
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let (lo, hi) = self.local().interval(g.pos(i));
        let (clo, chi) = (lo.max(0), hi.min(g.n_kv as isize - 1));
        clipped_len(lo, hi, g.n_kv) + self.summaries_in(0, g.n_kv as isize - 1)
            - self.summaries_in(clo, chi)
    }
}

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fixed(block={},c={})", self.block, self.c)
    }
}

// ---------------------------------------------------------------------------------------
// Global.

impl Global {
    fn is_global_row(&self, p: isize) -> bool {
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
        super::Union(self.window(), self.global()).classify(g, rows, cols)
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "longformer(w={},g={})", self.w, self.g)
    }
}

// ---------------------------------------------------------------------------------------
// BigBird.

/// SplitMix64: a small, well-mixed hash for reproducible random blocks.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl BigBird {
    fn key_blocks(&self, g: Geometry) -> usize {
        g.n_kv.div_ceil(self.block)
    }

    fn query_block(&self, g: Geometry, i: usize) -> isize {
        g.pos(i).div_euclid(self.block as isize)
    }

    /// The `t`-th random key block of query block `qb` (`qb >= 0`).
    fn random_block(&self, qb: isize, t: usize, nkb: usize) -> usize {
        let h = splitmix64(self.seed ^ splitmix64((qb as u64) << 20 ^ t as u64));
        (h % nkb as u64) as usize
    }

    fn slide(&self) -> (isize, isize) {
        (-((self.w as isize - 1) / 2), self.w as isize / 2)
    }

    fn block_allowed(&self, qb: isize, kb: usize, nkb: usize) -> bool {
        let (l, r) = self.slide();
        let d = kb as isize - qb;
        (l..=r).contains(&d)
            || kb < self.g
            || (0..self.g as isize).contains(&qb)
            || (qb >= 0 && (0..self.r).any(|t| self.random_block(qb, t, nkb) == kb))
    }
}

impl Pattern for BigBird {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        self.block_allowed(self.query_block(g, i), j / self.block, self.key_blocks(g))
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let nkb = self.key_blocks(g);
        let (qb0, qb1) = (
            self.query_block(g, rows.start),
            self.query_block(g, rows.end - 1),
        );
        let (kb0, kb1) = (
            (cols.start / self.block) as isize,
            ((cols.end - 1) / self.block) as isize,
        );
        let (l, r) = self.slide();
        let gq = self.g as isize;
        // Every pair covered by one rule: full.
        let sliding_all = kb0 - qb1 >= l && kb1 - qb0 <= r;
        let global_cols = kb1 < gq;
        let global_rows = qb0 >= 0 && qb1 < gq;
        let single_random = qb0 == qb1
            && kb0 == kb1
            && qb0 >= 0
            && (0..self.r).any(|t| self.random_block(qb0, t, nkb) as isize == kb0);
        if sliding_all || global_cols || global_rows || single_random {
            return Tile::Full;
        }
        // No rule touching any pair: empty.
        let sliding_any = kb1 - qb0 >= l && kb0 - qb1 <= r;
        let global_any = kb0 < gq || qb0.max(0) < (qb1 + 1).min(gq);
        let random_any = (qb0.max(0)..=qb1).any(|qb| {
            (0..self.r).any(|t| (kb0..=kb1).contains(&(self.random_block(qb, t, nkb) as isize)))
        });
        if sliding_any || global_any || random_any {
            Tile::Partial
        } else {
            Tile::Empty
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        let nkb = self.key_blocks(g);
        let qb = self.query_block(g, i);
        // Walk the row one key block at a time.
        let mut start = 0;
        while start < row.len() {
            let j = c0 + start;
            let end = (start + self.block - j % self.block).min(row.len());
            if !self.block_allowed(qb, j / self.block, nkb) {
                row[start..end].fill(f32::NEG_INFINITY);
            }
            start = end;
        }
    }

    fn unsupported(&self, g: Geometry) -> Vec<String> {
        let nkb = self.key_blocks(g);
        if self.g > nkb {
            vec![format!(
                "parameter g={} exceeds the {nkb} key blocks of {} keys (block={})",
                self.g, g.n_kv, self.block
            )]
        } else {
            Vec::new()
        }
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let nkb = self.key_blocks(g);
        let qb = self.query_block(g, i);
        (0..nkb)
            .filter(|&kb| self.block_allowed(qb, kb, nkb))
            .map(|kb| self.block.min(g.n_kv - kb * self.block))
            .sum()
    }
}

impl fmt::Display for BigBird {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bigbird(block={},w={},g={},r={},seed={})",
            self.block, self.w, self.g, self.r, self.seed
        )
    }
}

// ---------------------------------------------------------------------------------------
// Dilated.

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

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        let (w, s) = self.parts();
        w.mask_row(g, i, c0, row);
        s.mask_row(g, i, c0, row);
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let p = g.pos(i);
        let (lo, hi) = self.parts().0.interval(p);
        count_congruent(lo.max(0), hi.min(g.n_kv as isize - 1), p, self.dilation)
    }
}

impl fmt::Display for Dilated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dilated(w={},dilation={})", self.w, self.dilation)
    }
}
