//! `bigbird(block,w,g,r,seed)`: BigBird's blocked pattern (Zaheer et al. 2020), sliding,
//! global and seeded random blocks, exact on the tiled engine.

use std::ops::Range;

use std::fmt;

use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;
use crate::pattern::{Geometry, KeyMajor, Pattern, Tile};

/// `bigbird(block=64,w=3,g=2,r=3,seed=0)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "bigbird",
    summary: "BigBird blocks: w sliding + g global + r seeded random blocks per query block",
    time: "O(n block (w + g + r) d)",
    memory: "O(1) in n",
    params: &[
        ParamInfo {
            name: "block",
            default: "64",
            help: "block length",
        },
        ParamInfo {
            name: "w",
            default: "3",
            help: "sliding blocks (3 = own block and both neighbours)",
        },
        ParamInfo {
            name: "g",
            default: "2",
            help: "global blocks (the first g)",
        },
        ParamInfo {
            name: "r",
            default: "3",
            help: "random key blocks per query block",
        },
        ParamInfo {
            name: "seed",
            default: "0",
            help: "seed of the random blocks",
        },
    ],
    presets: &[],
    preview: "bigbird(block=8,w=3,g=1,r=2,seed=0)",
    build: |p| {
        boxed(
            &INFO,
            BigBird {
                block: p.positive("block")?,
                w: p.positive("w")?,
                g: p.usize("g")?,
                r: p.usize("r")?,
                seed: p.parse("seed", "a non-negative integer")?,
            },
        )
    },
};

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

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        // Walk the column one query block at a time.
        let nkb = self.key_blocks(g);
        let b = self.block as isize;
        let first = g.pos(tile.rows.start);
        for (j, col) in tile.columns() {
            let kb = j / self.block;
            let mut start = 0;
            while start < col.len() {
                let p = first + start as isize;
                let qb = p.div_euclid(b);
                let end = ((qb + 1) * b - first).clamp(start as isize + 1, col.len() as isize);
                let end = end as usize;
                if !self.block_allowed(qb, kb, nkb) {
                    col[start..end].fill(f32::NEG_INFINITY);
                }
                start = end;
            }
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
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.block), Some(&self.w), Some(&self.g), Some(&self.r), Some(&self.seed)])
    }
}
