//! Sparsity patterns: which (query, key) pairs a variant attends.
//!
//! A [`Pattern`] answers [`allows`](Pattern::allows) for one pair and classifies a whole tile of
//! pairs as [`Tile::Empty`], [`Tile::Full`] or [`Tile::Partial`]. The tiled engine
//! ([`crate::engine`]) uses the classification to skip empty tiles and to run full
//! tiles without per-element masking, so a pattern's cost follows its number of allowed pairs.
//!
//! # Alignment
//! Query `i` and key `j` are indices into their own sequences. When `n_q != n_kv` the query
//! sequence is aligned with the *end* of the key sequence: query `i` sits at key position
//! `i + (n_kv - n_q)` ([`Geometry::pos`]). [`Causal`] therefore lets query `i` see key `j` iff
//! `j <= i + n_kv - n_q`, and a single query against a long KV cache sees every key.
//!
//! Patterns compose with [`Intersection`] and [`Union`]; a variant's effective mask is its own
//! pattern intersected with [`Causal`] when the call is causal.

use std::fmt;
use std::ops::Range;

pub mod blocks;
pub mod indexed;
pub mod parts;

pub use blocks::{Global, Local, Stripes, Window};
pub use indexed::Indexed;
pub use parts::{Gather, Group, OtherBlocks, Part};

/// The sequence lengths a pattern is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Query sequence length.
    pub n_q: usize,
    /// Key sequence length.
    pub n_kv: usize,
}

impl Geometry {
    /// A geometry of `n_q` queries and `n_kv` keys.
    pub fn new(n_q: usize, n_kv: usize) -> Self {
        Self { n_q, n_kv }
    }

    /// `n_kv - n_q`: how far the query sequence is shifted to align with the end of the keys.
    pub fn offset(&self) -> isize {
        self.n_kv as isize - self.n_q as isize
    }

    /// The position of query `i` in key coordinates, `i + n_kv - n_q` (negative when
    /// `n_q > n_kv` and `i` is early).
    pub fn pos(&self, i: usize) -> isize {
        i as isize + self.offset()
    }
}

/// How a rectangular tile of (query, key) pairs relates to a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tile {
    /// No pair in the tile is allowed: the tile is skipped.
    Empty,
    /// Every pair is allowed: the tile is computed without masking.
    Full,
    /// Some pairs are allowed, or the pattern could not tell cheaply: each pair is checked.
    Partial,
}

/// A set of allowed (query, key) pairs.
///
/// Only [`allows`](Pattern::allows) is required. The provided
/// [`classify`](Pattern::classify) scans every pair of the tile, which is correct for any
/// pattern but costs O(tile size); built-in patterns override it with an O(1) answer. An
/// override must never answer `Empty` or `Full` wrongly; answering `Partial` is always safe.
///
/// A query row with no allowed key produces a zero output row in every variant and in the
/// oracle (rather than NaN, which a softmax over nothing would give).
pub trait Pattern: fmt::Debug + Send + Sync {
    /// Whether query `i` may attend key `j` in geometry `g`.
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool;

    /// Classifies the tile `rows x cols` (both non-empty, within the geometry).
    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let mut any = false;
        let mut all = true;
        for i in rows {
            for j in cols.clone() {
                let a = self.allows(g, i, j);
                any |= a;
                all &= a;
            }
        }
        tile_from(any, all)
    }

    /// Sets `row[j - c0]` to `-inf` for every key `j` in `c0..c0 + row.len()` that query `i`
    /// may not attend, leaving the others untouched. The provided version calls
    /// [`allows`](Pattern::allows) per key; built-in patterns override it with interval fills.
    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        for (j, x) in (c0..).zip(row.iter_mut()) {
            if !self.allows(g, i, j) {
                *x = f32::NEG_INFINITY;
            }
        }
    }

    /// Sets to `-inf` the score of every pair of the key-major `tile` the pattern does not
    /// allow, leaving allowed pairs and the padding lanes untouched: the engine's layout,
    /// masked without transposing. The provided version calls [`allows`](Pattern::allows) per
    /// pair; built-in patterns override it with interval fills per key.
    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        let r0 = tile.rows.start;
        for (j, col) in tile.columns() {
            for (r, x) in col.iter_mut().enumerate() {
                if !self.allows(g, r0 + r, j) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// The pattern restated as gathered [`Part`]s for geometry `g` (under causal masking when
    /// `causal`; see [`parts`]): disjoint pair sets, on gathered queries and keys, whose
    /// union is exactly the pattern's pairs. The engine runs them instead of the tile path
    /// where the pattern's pairs are spread over every tile. `None` (provided) keeps the tile
    /// path.
    fn parts(&self, _g: Geometry, _causal: bool) -> Option<Vec<Part>> {
        None
    }

    /// Builds what the pattern keeps for geometry `g` (an [`Indexed`] pattern's index); the
    /// engine calls it before its parallel work. Nothing (provided) for analytic patterns.
    fn prepare(&self, _g: Geometry) {}

    /// Bytes the pattern keeps for geometry `g` (an [`Indexed`] pattern's index); reported in
    /// the variant's workspace. Zero (provided) for analytic patterns.
    fn stored_bytes(&self, _g: Geometry) -> u64 {
        0
    }

    /// Reasons this pattern is not meaningful for geometry `g` (e.g. more global tokens than
    /// keys); empty when it is.
    fn unsupported(&self, _g: Geometry) -> Vec<String> {
        Vec::new()
    }

    /// When causal decoding under this pattern needs only a bounded KV cache: `Some((s,
    /// w))` if a query at position `p` attends exactly the keys `0..s` and `p - w..=p`
    /// (clipped to `0..=p`), so a decoder keeps `s` sinks and a ring of `w + 1`
    /// ([`crate::decode::cached`]). `None` (provided) for every other pattern.
    fn streaming(&self) -> Option<(usize, usize)> {
        None
    }

    /// Key ranges (sorted, disjoint, within `0..n_kv`) outside which no query of `rows` may
    /// attend: the engine classifies only the tiles that meet them, so a window over 1M keys
    /// never visits its empty tiles. A superset is always correct; the default is every key.
    fn key_ranges(&self, g: Geometry, _rows: Range<usize>) -> Vec<Range<usize>> {
        all_keys(g.n_kv)
    }

    /// The number of keys query `i` may attend.
    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        (0..g.n_kv).filter(|&j| self.allows(g, i, j)).count()
    }

    /// The fraction of all `n_q * n_kv` pairs that are allowed.
    fn density(&self, g: Geometry) -> f64 {
        let allowed: usize = (0..g.n_q).map(|i| self.keys_in_row(g, i)).sum();
        allowed as f64 / (g.n_q as f64 * g.n_kv as f64)
    }
}

/// A key-major tile of scores to mask: `st[t * ld + r]` is the score of query `rows.start +
/// r` against key `c0 + t`, for `t < cols`; lanes `r >= rows.len()` are padding.
#[derive(Debug)]
pub struct KeyMajor<'a> {
    /// The tile's query rows.
    pub rows: Range<usize>,
    /// Its first key.
    pub c0: usize,
    /// Its number of keys.
    pub cols: usize,
    /// The scores, one column of `ld` lanes per key.
    pub st: &'a mut [f32],
    /// The lanes per key (at least `rows.len()`).
    pub ld: usize,
}

impl KeyMajor<'_> {
    /// Each key `j` of the tile with its column of scores over the rows (padding excluded).
    pub fn columns(&mut self) -> impl Iterator<Item = (usize, &mut [f32])> + '_ {
        let (c0, n) = (self.c0, self.rows.len());
        self.st
            .chunks_mut(self.ld)
            .take(self.cols)
            .enumerate()
            .map(move |(t, col)| (c0 + t, &mut col[..n]))
    }
}

/// Every key, as a key-range list.
pub fn all_keys(n_kv: usize) -> Vec<Range<usize>> {
    let every = 0..n_kv;
    vec![every]
}

/// The key range `lo..=hi` clipped to `0..n_kv`, as a list of at most one range.
pub fn clipped_range(lo: isize, hi: isize, n_kv: usize) -> Vec<Range<usize>> {
    let (lo, hi) = (lo.max(0), hi.min(n_kv as isize - 1));
    if lo > hi {
        Vec::new()
    } else {
        let range = lo as usize..hi as usize + 1;
        vec![range]
    }
}

/// The union of two sorted, disjoint range lists (sorted and disjoint, touching ranges merged).
pub fn union_ranges(a: &[Range<usize>], b: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut all: Vec<Range<usize>> = a
        .iter()
        .chain(b)
        .filter(|r| !r.is_empty())
        .cloned()
        .collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The intersection of two sorted, disjoint range lists.
pub fn intersect_ranges(a: &[Range<usize>], b: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (lo, hi) = (a[i].start.max(b[j].start), a[i].end.min(b[j].end));
        if lo < hi {
            out.push(lo..hi);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Sets `row[j - c0]` to `-inf` for every `j` outside `lo..=hi`.
pub fn fill_outside(row: &mut [f32], c0: usize, lo: isize, hi: isize) {
    fill_outside_at(row, c0 as isize, lo, hi);
}

/// Sets `row[t]` to `-inf` for every `t` whose index `first + t` lies outside `lo..=hi`: a
/// row of keys from key `first`, or a key-major column of queries from position `first`.
pub fn fill_outside_at(row: &mut [f32], first: isize, lo: isize, hi: isize) {
    let len = row.len() as isize;
    let start = lo.saturating_sub(first).clamp(0, len) as usize;
    let end = hi
        .saturating_sub(first)
        .saturating_add(1)
        .clamp(start as isize, len) as usize;
    row[..start].fill(f32::NEG_INFINITY);
    row[end..].fill(f32::NEG_INFINITY);
}

/// Sets `row[t]` to `-inf` for every `t` whose index `first + t` lies outside the union of
/// the inclusive intervals `keep` (sorted by start; they may overlap).
pub fn fill_outside_union(row: &mut [f32], first: isize, keep: &[(isize, isize)]) {
    let len = row.len() as isize;
    let idx = |x: isize| x.saturating_sub(first).clamp(0, len) as usize;
    let mut cursor = 0;
    for &(lo, hi) in keep {
        if hi < lo {
            continue;
        }
        let (start, end) = (idx(lo), idx(hi.saturating_add(1)));
        if start > cursor {
            row[cursor..start].fill(f32::NEG_INFINITY);
        }
        cursor = cursor.max(end);
    }
    row[cursor..].fill(f32::NEG_INFINITY);
}

/// Sets `row[t]` to `-inf` for every `t` with `first + t` not congruent to `target` modulo
/// `s`: the stripes of a strided pattern along a row of keys or a column of queries.
pub fn fill_incongruent(row: &mut [f32], first: isize, target: isize, s: usize) {
    // `phase` counts down to the next congruent index.
    let mut phase = (target - first).rem_euclid(s as isize) as usize;
    for x in row.iter_mut() {
        if phase != 0 {
            *x = f32::NEG_INFINITY;
            phase -= 1;
        } else {
            phase = s - 1;
        }
    }
}

fn tile_from(any: bool, all: bool) -> Tile {
    match (any, all) {
        (_, true) => Tile::Full,
        (false, _) => Tile::Empty,
        _ => Tile::Partial,
    }
}

/// Every pair is allowed: dense attention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dense;

impl Pattern for Dense {
    fn allows(&self, _g: Geometry, _i: usize, _j: usize) -> bool {
        true
    }

    fn classify(&self, _g: Geometry, _rows: Range<usize>, _cols: Range<usize>) -> Tile {
        Tile::Full
    }

    fn mask_row(&self, _g: Geometry, _i: usize, _c0: usize, _row: &mut [f32]) {}

    fn mask_key_major(&self, _g: Geometry, _tile: &mut KeyMajor<'_>) {}

    fn keys_in_row(&self, g: Geometry, _i: usize) -> usize {
        g.n_kv
    }

    fn density(&self, _g: Geometry) -> f64 {
        1.0
    }
}

/// Causal masking, aligned bottom-right: query `i` sees key `j` iff `j <= i + n_kv - n_q`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Causal;

impl Pattern for Causal {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        j as isize <= g.pos(i)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        // The first row sees the fewest keys and the last row the most.
        let first = g.pos(rows.start);
        let last = g.pos(rows.end - 1);
        if (cols.end - 1) as isize <= first {
            Tile::Full
        } else if cols.start as isize > last {
            Tile::Empty
        } else {
            Tile::Partial
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        fill_outside(row, c0, isize::MIN, g.pos(i));
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        clipped_range(0, g.pos(rows.end - 1), g.n_kv)
    }

    /// Key `j` hides the queries before position `j`: one prefix fill per key.
    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        let first = g.pos(tile.rows.start);
        for (j, col) in tile.columns() {
            fill_outside_at(col, first, j as isize, isize::MAX);
        }
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        (g.pos(i) + 1).clamp(0, g.n_kv as isize) as usize
    }

    fn density(&self, g: Geometry) -> f64 {
        let allowed: usize = (0..g.n_q).map(|i| self.keys_in_row(g, i)).sum();
        allowed as f64 / (g.n_q as f64 * g.n_kv as f64)
    }
}

/// The pairs allowed by both patterns.
#[derive(Debug, Clone, Copy)]
pub struct Intersection<A, B>(pub A, pub B);

impl<A: Pattern, B: Pattern> Pattern for Intersection<A, B> {
    fn prepare(&self, g: Geometry) {
        self.0.prepare(g);
        self.1.prepare(g);
    }

    fn stored_bytes(&self, g: Geometry) -> u64 {
        self.0.stored_bytes(g) + self.1.stored_bytes(g)
    }

    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        self.0.allows(g, i, j) && self.1.allows(g, i, j)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        match self.0.classify(g, rows.clone(), cols.clone()) {
            Tile::Empty => Tile::Empty,
            Tile::Full => self.1.classify(g, rows, cols),
            Tile::Partial => match self.1.classify(g, rows, cols) {
                Tile::Empty => Tile::Empty,
                _ => Tile::Partial,
            },
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        // Masking is idempotent: applying both masks leaves exactly the intersection.
        self.0.mask_row(g, i, c0, row);
        self.1.mask_row(g, i, c0, row);
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        self.0.mask_key_major(g, tile);
        self.1.mask_key_major(g, tile);
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        intersect_ranges(
            &self.0.key_ranges(g, rows.clone()),
            &self.1.key_ranges(g, rows),
        )
    }

    fn unsupported(&self, g: Geometry) -> Vec<String> {
        let mut r = self.0.unsupported(g);
        r.extend(self.1.unsupported(g));
        r
    }
}

/// The pairs allowed by either pattern.
#[derive(Debug, Clone, Copy)]
pub struct Union<A, B>(pub A, pub B);

impl<A: Pattern, B: Pattern> Pattern for Union<A, B> {
    fn prepare(&self, g: Geometry) {
        self.0.prepare(g);
        self.1.prepare(g);
    }

    fn stored_bytes(&self, g: Geometry) -> u64 {
        self.0.stored_bytes(g) + self.1.stored_bytes(g)
    }

    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        self.0.allows(g, i, j) || self.1.allows(g, i, j)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        match self.0.classify(g, rows.clone(), cols.clone()) {
            Tile::Full => Tile::Full,
            Tile::Empty => self.1.classify(g, rows, cols),
            Tile::Partial => match self.1.classify(g, rows, cols) {
                Tile::Full => Tile::Full,
                _ => Tile::Partial,
            },
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        union_ranges(
            &self.0.key_ranges(g, rows.clone()),
            &self.1.key_ranges(g, rows),
        )
    }

    fn unsupported(&self, g: Geometry) -> Vec<String> {
        let mut r = self.0.unsupported(g);
        r.extend(self.1.unsupported(g));
        r
    }
}

/// Forwards every `Pattern` method through a pointer type, so `&P` and `Box<P>` are patterns.
macro_rules! forward_pattern {
    ($($ptr:ty),*) => {$(
        impl<P: Pattern + ?Sized> Pattern for $ptr {
            fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
                (**self).allows(g, i, j)
            }
            fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
                (**self).classify(g, rows, cols)
            }
            fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
                (**self).mask_row(g, i, c0, row)
            }
            fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
                (**self).mask_key_major(g, tile)
            }
            fn unsupported(&self, g: Geometry) -> Vec<String> {
                (**self).unsupported(g)
            }
            fn parts(&self, g: Geometry, causal: bool) -> Option<Vec<Part>> {
                (**self).parts(g, causal)
            }
            fn stored_bytes(&self, g: Geometry) -> u64 {
                (**self).stored_bytes(g)
            }
            fn streaming(&self) -> Option<(usize, usize)> {
                (**self).streaming()
            }
            fn prepare(&self, g: Geometry) {
                (**self).prepare(g)
            }
            fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
                (**self).key_ranges(g, rows)
            }
            fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
                (**self).keys_in_row(g, i)
            }
            fn density(&self, g: Geometry) -> f64 {
                (**self).density(g)
            }
        }
    )*};
}

forward_pattern!(&P, Box<P>);

/// The mask a call actually applies: a variant's pattern (dense when it has none),
/// intersected with [`Causal`] when the call is causal.
#[derive(Debug, Clone, Copy)]
pub enum Mask<'a> {
    /// Every pair.
    Dense,
    /// [`Causal`] alone.
    Causal,
    /// A variant's pattern, bidirectional.
    Pattern(&'a dyn Pattern),
    /// A variant's pattern intersected with [`Causal`].
    CausalPattern(&'a dyn Pattern),
}

impl<'a> Mask<'a> {
    /// The effective mask of `pattern` (dense when `None`) under the causal flag.
    pub fn new(pattern: Option<&'a dyn Pattern>, causal: bool) -> Self {
        match (pattern, causal) {
            (None, false) => Mask::Dense,
            (None, true) => Mask::Causal,
            (Some(p), false) => Mask::Pattern(p),
            (Some(p), true) => Mask::CausalPattern(p),
        }
    }
}

impl Pattern for Mask<'_> {
    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        match *self {
            Mask::Dense => true,
            Mask::Causal => Causal.allows(g, i, j),
            Mask::Pattern(p) => p.allows(g, i, j),
            Mask::CausalPattern(p) => Intersection(Causal, p).allows(g, i, j),
        }
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        match *self {
            Mask::Dense => Tile::Full,
            Mask::Causal => Causal.classify(g, rows, cols),
            Mask::Pattern(p) => p.classify(g, rows, cols),
            Mask::CausalPattern(p) => Intersection(Causal, p).classify(g, rows, cols),
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        match *self {
            Mask::Dense => {}
            Mask::Causal => Causal.mask_row(g, i, c0, row),
            Mask::Pattern(p) => p.mask_row(g, i, c0, row),
            Mask::CausalPattern(p) => Intersection(Causal, p).mask_row(g, i, c0, row),
        }
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        match *self {
            Mask::Dense => {}
            Mask::Causal => Causal.mask_key_major(g, tile),
            Mask::Pattern(p) => p.mask_key_major(g, tile),
            Mask::CausalPattern(p) => Intersection(Causal, p).mask_key_major(g, tile),
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        match *self {
            Mask::Dense => all_keys(g.n_kv),
            Mask::Causal => Causal.key_ranges(g, rows),
            Mask::Pattern(p) => p.key_ranges(g, rows),
            Mask::CausalPattern(p) => Intersection(Causal, p).key_ranges(g, rows),
        }
    }

    fn stored_bytes(&self, g: Geometry) -> u64 {
        match *self {
            Mask::Dense | Mask::Causal => 0,
            Mask::Pattern(p) | Mask::CausalPattern(p) => p.stored_bytes(g),
        }
    }

    fn prepare(&self, g: Geometry) {
        if let Mask::Pattern(p) | Mask::CausalPattern(p) = *self {
            p.prepare(g);
        }
    }

    fn parts(&self, g: Geometry, _causal: bool) -> Option<Vec<Part>> {
        match *self {
            Mask::Dense | Mask::Causal => None,
            Mask::Pattern(p) => p.parts(g, false),
            Mask::CausalPattern(p) => p.parts(g, true),
        }
    }

    fn unsupported(&self, g: Geometry) -> Vec<String> {
        match *self {
            Mask::Dense | Mask::Causal => Vec::new(),
            Mask::Pattern(p) | Mask::CausalPattern(p) => p.unsupported(g),
        }
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        match *self {
            Mask::Dense => g.n_kv,
            Mask::Causal => Causal.keys_in_row(g, i),
            Mask::Pattern(p) => p.keys_in_row(g, i),
            Mask::CausalPattern(p) => Intersection(Causal, p).keys_in_row(g, i),
        }
    }

    fn density(&self, g: Geometry) -> f64 {
        match *self {
            Mask::Dense => 1.0,
            Mask::Causal => Causal.density(g),
            Mask::Pattern(p) => p.density(g),
            Mask::CausalPattern(p) => Intersection(Causal, p).density(g),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(p: &dyn Pattern, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let mut any = false;
        let mut all = true;
        for i in rows {
            for j in cols.clone() {
                any |= p.allows(g, i, j);
                all &= p.allows(g, i, j);
            }
        }
        tile_from(any, all)
    }

    fn mask_string(p: &dyn Pattern, g: Geometry) -> String {
        let mut s = String::new();
        for i in 0..g.n_q {
            for j in 0..g.n_kv {
                s.push(if p.allows(g, i, j) { '#' } else { '.' });
            }
            s.push('\n');
        }
        s
    }

    #[test]
    fn causal_square_is_lower_triangular() {
        let expected = "\
#....
##...
###..
####.
#####
";
        assert_eq!(mask_string(&Causal, Geometry::new(5, 5)), expected);
    }

    #[test]
    fn causal_is_bottom_right_aligned() {
        // Fewer queries than keys: the last query sees every key.
        let expected = "\
###..
####.
#####
";
        assert_eq!(mask_string(&Causal, Geometry::new(3, 5)), expected);
        // More queries than keys: early queries see nothing.
        let expected = "\
..
..
#.
##
";
        assert_eq!(mask_string(&Causal, Geometry::new(4, 2)), expected);
        assert_eq!(Causal.keys_in_row(Geometry::new(4, 2), 0), 0);
        assert_eq!(Causal.keys_in_row(Geometry::new(4, 2), 3), 2);
    }

    #[test]
    fn causal_classification_matches_brute_force() {
        for (n_q, n_kv) in [(17, 17), (5, 40), (40, 5), (1, 33), (33, 1)] {
            let g = Geometry::new(n_q, n_kv);
            for bq in [1, 2, 3, 7] {
                for bk in [1, 4, 5, 16] {
                    for r0 in (0..n_q).step_by(bq) {
                        for c0 in (0..n_kv).step_by(bk) {
                            let rows = r0..(r0 + bq).min(n_q);
                            let cols = c0..(c0 + bk).min(n_kv);
                            assert_eq!(
                                Causal.classify(g, rows.clone(), cols.clone()),
                                brute(&Causal, g, rows.clone(), cols.clone()),
                                "{g:?} {rows:?} {cols:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[derive(Debug)]
    struct Even;
    impl Pattern for Even {
        fn allows(&self, _g: Geometry, _i: usize, j: usize) -> bool {
            j.is_multiple_of(2)
        }
    }

    #[test]
    fn combinators_follow_set_algebra() {
        let g = Geometry::new(6, 6);
        let and = Intersection(Causal, Even);
        let or = Union(Causal, Even);
        for i in 0..6 {
            for j in 0..6 {
                let c = j <= i;
                let e = j % 2 == 0;
                assert_eq!(and.allows(g, i, j), c && e);
                assert_eq!(or.allows(g, i, j), c || e);
            }
        }
        for (rows, cols) in [(0..2, 0..2), (0..1, 4..6), (2..4, 0..6), (4..6, 0..1)] {
            let b = brute(&and, g, rows.clone(), cols.clone());
            let c = and.classify(g, rows.clone(), cols.clone());
            assert!(
                c == b || c == Tile::Partial,
                "{rows:?} {cols:?}: {c:?} vs {b:?}"
            );
            let b = brute(&or, g, rows.clone(), cols.clone());
            let c = or.classify(g, rows.clone(), cols.clone());
            assert!(
                c == b || c == Tile::Partial,
                "{rows:?} {cols:?}: {c:?} vs {b:?}"
            );
        }
        assert_eq!(Even.density(g), 0.5);
        assert!((Causal.density(g) - 21.0 / 36.0).abs() < 1e-12);
    }

    #[test]
    fn mask_combines_pattern_and_causal() {
        let g = Geometry::new(6, 8);
        let m = Mask::new(Some(&Even), true);
        for i in 0..6 {
            for j in 0..8 {
                assert_eq!(m.allows(g, i, j), j % 2 == 0 && j as isize <= g.pos(i));
            }
            assert_eq!(
                m.keys_in_row(g, i),
                (0..8).filter(|&j| m.allows(g, i, j)).count()
            );
        }
        assert!(matches!(Mask::new(None, false), Mask::Dense));
        assert!(matches!(Mask::new(None, true), Mask::Causal));
    }
}
