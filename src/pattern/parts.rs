//! Gathered parts: a pattern restated as a few dense-friendly sub-problems on gathered rows.
//!
//! Some patterns spread their allowed pairs over every key tile (the Sparse Transformer's
//! stripes, a dilated window's steps, the fixed pattern's summary columns), so the tile path
//! computes whole tiles to keep a few pairs. Their pairs become dense after a reordering of
//! the sequence: the stripe keys `j ≡ p (mod s)` are the same for every query of one residue
//! class, so grouping queries and keys by residue (the Sparse Transformer's reshape of the
//! sequence into `[n / s, s]`) turns the stripes into dense tiles. A pattern offers such a
//! reordering through [`Pattern::parts`]: a list of [`Part`]s whose pair sets are disjoint
//! and together are exactly the pattern's. The engine runs each part on the gathered rows
//! with its own (local) pattern and merges the parts' softmax states exactly.

use std::fmt;
use std::ops::Range;

use super::{Geometry, KeyMajor, Pattern, Tile};

/// An increasing map from local indices `0..len` to sequence indices: runs of `run`
/// consecutive indices, one run every `period`, starting at `start`. Index `a` maps to
/// `start + (a / run) * period + a % run`.
///
/// `contiguous(start, len)` is the identity on `start..start + len`; `strided(r, s, len)`
/// is the residue class `r, r + s, ...`; runs of `c` out of every `b` are the fixed
/// pattern's summary columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gather {
    start: usize,
    period: usize,
    run: usize,
    len: usize,
}

impl Gather {
    /// The indices `start..start + len`.
    pub fn contiguous(start: usize, len: usize) -> Self {
        let run = len.max(1);
        Self {
            start,
            period: run,
            run,
            len,
        }
    }

    /// The indices below `n` congruent to `r` modulo `s` (`r < s`).
    pub fn residue(r: usize, s: usize, n: usize) -> Self {
        Self {
            start: r,
            period: s.max(1),
            run: 1,
            len: if r < n { (n - r).div_ceil(s.max(1)) } else { 0 },
        }
    }

    /// The indices below `n` whose offset within their block of `block` is at least
    /// `block - c`: the last `c` of every block (`0 < c <= block`).
    pub fn block_tails(block: usize, c: usize, n: usize) -> Self {
        let full = n / block * c;
        let partial = (n % block).saturating_sub(block - c);
        Self {
            start: block - c,
            period: block,
            run: c,
            len: full + partial,
        }
    }

    /// The number of indices.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sequence index of local index `a` (`a < len`).
    #[inline]
    pub fn index(&self, a: usize) -> usize {
        self.start + (a / self.run) * self.period + a % self.run
    }

    /// The sequence indices of the local indices `local`, when they are consecutive.
    pub fn as_range(&self, local: Range<usize>) -> Option<Range<usize>> {
        if local.is_empty() {
            return Some(0..0);
        }
        let (a, z) = (local.start, local.end - 1);
        let consecutive = self.run == self.period || a / self.run == z / self.run;
        consecutive.then(|| self.index(a)..self.index(z) + 1)
    }

    /// The number of local indices whose sequence index is below `limit` (the map is
    /// increasing).
    pub fn count_below(&self, limit: usize) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.index(mid) < limit {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Queries and keys gathered into one dense sub-problem: local query `a` is sequence query
/// `queries.index(a)`, local key `b` is sequence key `keys.index(b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// The group's queries.
    pub queries: Gather,
    /// The group's keys.
    pub keys: Gather,
}

impl Group {
    /// The group's local geometry: `queries.len()` queries, `keys.len()` keys.
    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.queries.len(), self.keys.len())
    }
}

/// One part of a pattern: groups whose query sets are disjoint, and the pairs of each group
/// as a pattern in the group's local coordinates ([`Group::geometry`]; under a causal call
/// the local pattern includes the causal condition).
pub struct Part {
    /// The groups; a query in none of them gets nothing from this part.
    pub groups: Vec<Group>,
    /// The allowed pairs of every group, in its local indices.
    pub pattern: Box<dyn Pattern>,
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Part")
            .field("groups", &self.groups.len())
            .field("pattern", &self.pattern)
            .finish()
    }
}

/// Pairs between different blocks: query `a` in block `a / qb`, key `b` in block `b / kb`;
/// allowed iff the blocks differ, or (`before`) iff the key's block comes first. Local
/// coordinates of gathered parts: with `qb = kb = 1` it is "every key but the query's own"
/// (or "every earlier key"), the stripes of a residue class outside the query's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherBlocks {
    /// Queries per block; at least 1.
    pub qb: usize,
    /// Keys per block; at least 1.
    pub kb: usize,
    /// Only keys of earlier blocks (the causal form).
    pub before: bool,
}

impl OtherBlocks {
    /// The query rows of key block `kblock` that may not see it: `lo..hi` (rows of the same
    /// block, and under `before` every earlier row too).
    fn hidden_rows(&self, kblock: usize) -> (usize, usize) {
        let end = (kblock + 1) * self.qb;
        if self.before {
            (0, end)
        } else {
            (kblock * self.qb, end)
        }
    }
}

impl Pattern for OtherBlocks {
    fn allows(&self, _g: Geometry, i: usize, j: usize) -> bool {
        let (qblock, kblock) = (i / self.qb, j / self.kb);
        if self.before {
            kblock < qblock
        } else {
            kblock != qblock
        }
    }

    fn classify(&self, _g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        let (q0, q1) = (rows.start / self.qb, (rows.end - 1) / self.qb);
        let (k0, k1) = (cols.start / self.kb, (cols.end - 1) / self.kb);
        if self.before {
            if k1 < q0 {
                Tile::Full
            } else if k0 >= q1 {
                Tile::Empty
            } else {
                Tile::Partial
            }
        } else if k1 < q0 || k0 > q1 {
            Tile::Full
        } else if q0 == q1 && k0 == k1 && q0 == k0 {
            Tile::Empty
        } else {
            Tile::Partial
        }
    }

    fn mask_row(&self, _g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        // The keys of the query's block (and, under `before`, every later key) are hidden.
        let qblock = i / self.qb;
        let (lo, hi) = (qblock * self.kb, (qblock + 1) * self.kb);
        let hi = if self.before { usize::MAX } else { hi };
        let c1 = c0 + row.len();
        let (lo, hi) = (lo.clamp(c0, c1) - c0, hi.clamp(c0, c1) - c0);
        row[lo..hi].fill(f32::NEG_INFINITY);
    }

    fn mask_key_major(&self, _g: Geometry, tile: &mut KeyMajor<'_>) {
        let r0 = tile.rows.start;
        for (j, col) in tile.columns() {
            let (lo, hi) = self.hidden_rows(j / self.kb);
            let a = lo.saturating_sub(r0).min(col.len());
            let z = hi.saturating_sub(r0).clamp(a, col.len());
            col[a..z].fill(f32::NEG_INFINITY);
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        if self.before {
            let end = (rows.end - 1) / self.qb * self.kb;
            super::clipped_range(0, end as isize - 1, g.n_kv)
        } else {
            super::all_keys(g.n_kv)
        }
    }
}

/// `pattern` in a part's local coordinates, intersected with [`Causal`](super::Causal) when
/// `causal`: right for a group whose queries and keys are gathered by the same increasing
/// map, where local order is sequence order.
pub fn local<P: Pattern + 'static>(pattern: P, causal: bool) -> Box<dyn Pattern> {
    if causal {
        Box::new(super::Intersection(super::Causal, pattern))
    } else {
        Box::new(pattern)
    }
}

/// Every query against every key: the one group of an ungathered part.
pub fn whole(g: Geometry) -> Vec<Group> {
    vec![Group {
        queries: Gather::contiguous(0, g.n_q),
        keys: Gather::contiguous(0, g.n_kv),
    }]
}

/// The residue classes modulo `s` of a square geometry, queries and keys alike.
pub fn residues(g: Geometry, s: usize) -> Vec<Group> {
    (0..s.min(g.n_kv))
        .map(|r| Group {
            queries: Gather::residue(r, s, g.n_q),
            keys: Gather::residue(r, s, g.n_kv),
        })
        .collect()
}
