//! [`Indexed`]: any pattern with a stored block-sparse index, in the spirit of
//! FlexAttention's `BlockMask`, so a pattern given only [`allows`](Pattern::allows) runs at
//! the speed of a built-in one.
//!
//! A pattern given only `allows` is correct on the tiled engine but slow: every query block
//! visits every key tile, each tile is classified by scanning its pairs and each partial tile
//! is masked pair by pair, per (batch, head) and per call. `Indexed` does that work once per
//! geometry: for every query block of the tiling, the list of its non-empty key tiles, each
//! full or partial, and for a partial tile its pairs as a key-major bit mask. The engine's
//! questions for a tile of the grid (`key_ranges`, `classify`, `mask_key_major`) are then
//! answered from the index; any other question goes to the wrapped pattern. The index is
//! built on first use for a geometry and kept (the last few geometries), and stores
//! O(non-empty tiles) entries: its bytes are reported by [`Pattern::stored_bytes`].

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{Geometry, KeyMajor, Pattern, Tile};

/// How many geometries' indexes an [`Indexed`] keeps.
const KEPT: usize = 4;

/// `pattern` with a block-sparse index per geometry on the tiling `bq x bk` (the engine's
/// tiles: [`Sparse::DEFAULT_TILING`](crate::variants::sparse::Sparse::DEFAULT_TILING) for
/// pattern variants).
pub struct Indexed<P> {
    inner: P,
    bq: usize,
    bk: usize,
    cache: Mutex<Vec<Arc<Index>>>,
}

/// The index of one geometry.
#[derive(Debug)]
struct Index {
    g: Geometry,
    /// Query block `qb`'s tiles are `tiles[offsets[qb]..offsets[qb + 1]]`.
    offsets: Vec<usize>,
    /// `(key tile, bits)`: the tile `c0 = key tile * bk`, and the offset of its bit mask in
    /// `bits` (in tiles), or `FULL`.
    tiles: Vec<(u32, u32)>,
    /// Per partial tile, `bk` keys of `words` words: bit `r` of key `t` set iff query
    /// `r0 + r` may attend key `c0 + t`.
    bits: Vec<u64>,
    words: usize,
}

const FULL: u32 = u32::MAX;

/// One query block's non-empty tiles `(key tile, full)` and its partial tiles' bits, while
/// the index is built.
type BlockTiles = (Vec<(u32, bool)>, Vec<u64>);

impl<P: Pattern> Indexed<P> {
    /// `pattern` indexed on tiles of `bq` queries by `bk` keys (both at least 1).
    pub fn new(pattern: P, bq: usize, bk: usize) -> Self {
        Self {
            inner: pattern,
            bq: bq.max(1),
            bk: bk.max(1),
            cache: Mutex::new(Vec::new()),
        }
    }

    /// The wrapped pattern.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The index of geometry `g`, built if it is not kept. The lock is not held while
    /// building: the build runs on rayon, whose waiting threads may pick up engine tasks that
    /// ask for the index themselves (two concurrent builds of one geometry keep the first).
    fn index(&self, g: Geometry) -> Arc<Index> {
        let lock = || self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ix) = lock().iter().find(|ix| ix.g == g) {
            return Arc::clone(ix);
        }
        let built = Arc::new(self.build(g));
        let mut cache = lock();
        if let Some(ix) = cache.iter().find(|ix| ix.g == g) {
            return Arc::clone(ix);
        }
        if cache.len() == KEPT {
            cache.remove(0);
        }
        cache.push(Arc::clone(&built));
        built
    }

    /// Scans every tile the wrapped pattern's key ranges meet, once, in parallel over query
    /// blocks.
    fn build(&self, g: Geometry) -> Index {
        let (bq, bk) = (self.bq, self.bk);
        let words = bq.div_ceil(64);
        let blocks: Vec<BlockTiles> = (0..g.n_q.div_ceil(bq))
            .into_par_iter()
            .map(|qb| {
                let rows = qb * bq..((qb + 1) * bq).min(g.n_q);
                let mut tiles = Vec::new();
                let mut bits = Vec::new();
                let mut st = vec![0.0f32; bk * bq];
                let mut last = None;
                for r in self.inner.key_ranges(g, rows.clone()) {
                    for kt in r.start / bk..r.end.div_ceil(bk) {
                        if last.is_some_and(|l| kt <= l) {
                            continue; // a tile met by two ranges
                        }
                        last = Some(kt);
                        let cols = kt * bk..((kt + 1) * bk).min(g.n_kv);
                        st.fill(1.0);
                        let mut tile = KeyMajor {
                            rows: rows.clone(),
                            c0: cols.start,
                            cols: cols.len(),
                            st: &mut st,
                            ld: bq,
                        };
                        self.inner.mask_key_major(g, &mut tile);
                        let mut tile_bits = vec![0u64; bk * words];
                        let mut allowed = 0;
                        for (t, col) in st.chunks(bq).take(cols.len()).enumerate() {
                            for (r, &x) in col[..rows.len()].iter().enumerate() {
                                if x == 1.0 {
                                    tile_bits[t * words + r / 64] |= 1 << (r % 64);
                                    allowed += 1;
                                }
                            }
                        }
                        if allowed == rows.len() * cols.len() {
                            tiles.push((kt as u32, true));
                        } else if allowed > 0 {
                            tiles.push((kt as u32, false));
                            bits.extend(tile_bits);
                        }
                    }
                }
                (tiles, bits)
            })
            .collect();
        let mut ix = Index {
            g,
            offsets: vec![0],
            tiles: Vec::new(),
            bits: Vec::new(),
            words,
        };
        for (tiles, bits) in blocks {
            let mut partial = ix.bits.len() / (bk * words);
            for (kt, full) in tiles {
                let slot = if full {
                    FULL
                } else {
                    partial += 1;
                    (partial - 1) as u32
                };
                ix.tiles.push((kt, slot));
            }
            ix.bits.extend(bits);
            ix.offsets.push(ix.tiles.len());
        }
        ix
    }

    /// The query block of `rows` when it is a whole block of the grid.
    fn block_of(&self, g: Geometry, rows: &Range<usize>) -> Option<usize> {
        let aligned = rows.start.is_multiple_of(self.bq)
            && rows.end == (rows.start + self.bq).min(g.n_q)
            && !rows.is_empty();
        aligned.then_some(rows.start / self.bq)
    }

    /// The index entry of the grid tile `rows x cols`: `Some(None)` for an empty tile,
    /// `Some(Some(slot))` for a stored one; `None` when the tile is not on the grid.
    fn entry(&self, g: Geometry, rows: &Range<usize>, cols: &Range<usize>) -> Option<Option<u32>> {
        let qb = self.block_of(g, rows)?;
        let aligned = cols.start.is_multiple_of(self.bk)
            && cols.end == (cols.start + self.bk).min(g.n_kv)
            && !cols.is_empty();
        if !aligned {
            return None;
        }
        let ix = self.index(g);
        let tiles = &ix.tiles[ix.offsets[qb]..ix.offsets[qb + 1]];
        let kt = (cols.start / self.bk) as u32;
        Some(
            tiles
                .binary_search_by_key(&kt, |&(k, _)| k)
                .ok()
                .map(|i| tiles[i].1),
        )
    }
}

impl<P: fmt::Debug> fmt::Debug for Indexed<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Indexed({:?}, {}x{})", self.inner, self.bq, self.bk)
    }
}

impl<P: fmt::Display> fmt::Display for Indexed<P> {
    /// The wrapped pattern's spec: indexing changes the speed, not the pairs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl<P: Pattern> Pattern for Indexed<P> {
    fn streaming(&self) -> Option<(usize, usize)> {
        self.inner().streaming()
    }

    fn allows(&self, g: Geometry, i: usize, j: usize) -> bool {
        self.inner.allows(g, i, j)
    }

    fn classify(&self, g: Geometry, rows: Range<usize>, cols: Range<usize>) -> Tile {
        match self.entry(g, &rows, &cols) {
            Some(None) => Tile::Empty,
            Some(Some(FULL)) => Tile::Full,
            Some(Some(_)) => Tile::Partial,
            None => self.inner.classify(g, rows, cols),
        }
    }

    fn mask_row(&self, g: Geometry, i: usize, c0: usize, row: &mut [f32]) {
        self.inner.mask_row(g, i, c0, row);
    }

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        let slot = match self.entry(g, &tile.rows, &(tile.c0..tile.c0 + tile.cols)) {
            Some(Some(slot)) if slot != FULL => slot as usize,
            Some(Some(_)) => return,
            Some(None) => {
                tile.columns()
                    .for_each(|(_, col)| col.fill(f32::NEG_INFINITY));
                return;
            }
            None => return self.inner.mask_key_major(g, tile),
        };
        let ix = self.index(g);
        let words = ix.words;
        let bits = &ix.bits[slot * self.bk * words..(slot + 1) * self.bk * words];
        for ((_, col), key_bits) in tile.columns().zip(bits.chunks(words)) {
            for (r, x) in col.iter_mut().enumerate() {
                if key_bits[r / 64] >> (r % 64) & 1 == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }

    fn key_ranges(&self, g: Geometry, rows: Range<usize>) -> Vec<Range<usize>> {
        let Some(qb) = self.block_of(g, &rows) else {
            return self.inner.key_ranges(g, rows);
        };
        let ix = self.index(g);
        let mut out: Vec<Range<usize>> = Vec::new();
        for &(kt, _) in &ix.tiles[ix.offsets[qb]..ix.offsets[qb + 1]] {
            let (c0, c1) = (
                kt as usize * self.bk,
                ((kt as usize + 1) * self.bk).min(g.n_kv),
            );
            match out.last_mut() {
                Some(last) if last.end == c0 => last.end = c1,
                _ => out.push(c0..c1),
            }
        }
        out
    }

    fn unsupported(&self, g: Geometry) -> Vec<String> {
        self.inner.unsupported(g)
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        self.inner.keys_in_row(g, i)
    }

    fn density(&self, g: Geometry) -> f64 {
        self.inner.density(g)
    }

    fn prepare(&self, g: Geometry) {
        self.index(g);
    }

    fn stored_bytes(&self, g: Geometry) -> u64 {
        let ix = self.index(g);
        (ix.offsets.len() * size_of::<usize>()
            + ix.tiles.len() * size_of::<(u32, u32)>()
            + ix.bits.len() * size_of::<u64>()) as u64
    }
}
