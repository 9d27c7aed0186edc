//! `fixed(block,c)`: the Sparse Transformer fixed pattern (Child et al. 2019), exact on the
//! tiled engine.

use std::ops::Range;

use std::fmt;

use crate::spec::{ParamInfo, VariantInfo};
use crate::variants::sparse::boxed;
use crate::pattern::blocks::clipped_len;
use crate::pattern::parts::{self, Gather, Group, OtherBlocks, Part};
use crate::pattern::{Geometry, KeyMajor, Local, Pattern, Tile, fill_outside_at};

/// `fixed(block=128,c=32)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "fixed",
    summary: "Sparse Transformer fixed: own block + last c positions of every block",
    time: "O(n^2 c d / block): own block + summary columns gathered into dense tiles",
    memory: "O(n) per busy head: merge state and gathered summaries (<= 16384 keys)",
    params: &[
        ParamInfo {
            name: "block",
            default: "128",
            help: "block length",
        },
        ParamInfo {
            name: "c",
            default: "32",
            help: "summary positions per block (<= block)",
        },
    ],
    presets: &[],
    preview: "fixed(block=16,c=4)",
    build: |p| {
        let block = p.positive("block")?;
        let c = p.usize("c")?;
        if c > block {
            return Err(p.invalid("c", &format!("must not exceed block={block}, got {c}")));
        }
        boxed(&INFO, Fixed { block, c })
    },
};

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

    fn mask_key_major(&self, g: Geometry, tile: &mut KeyMajor<'_>) {
        // A summary key is seen by every query, any other key by its own block.
        let first = g.pos(tile.rows.start);
        for (j, col) in tile.columns() {
            if !self.is_summary(j) {
                let (lo, hi) = self.local().queries_of(j as isize);
                fill_outside_at(col, first, lo, hi);
            }
        }
    }

    /// The own block, and the summary columns of the other blocks (causally of the earlier
    /// ones) gathered once into dense key tiles shared by every query.
    fn parts(&self, g: Geometry, causal: bool) -> Option<Vec<Part>> {
        if g.n_q != g.n_kv || self.c == 0 || self.c == self.block {
            return None;
        }
        let summaries = Group {
            queries: Gather::contiguous(0, g.n_q),
            keys: Gather::block_tails(self.block, self.c, g.n_kv),
        };
        let others = OtherBlocks {
            qb: self.block,
            kb: self.c,
            before: causal,
        };
        Some(vec![
            Part {
                groups: parts::whole(g),
                pattern: parts::local(self.local(), causal),
            },
            Part {
                groups: vec![summaries],
                pattern: Box::new(others),
            },
        ])
    }

    fn keys_in_row(&self, g: Geometry, i: usize) -> usize {
        let (lo, hi) = self.local().interval(g.pos(i));
        let (clo, chi) = (lo.max(0), hi.min(g.n_kv as isize - 1));
        clipped_len(lo, hi, g.n_kv) + self.summaries_in(0, g.n_kv as isize - 1)
            - self.summaries_in(clo, chi)
    }
}

impl fmt::Display for Fixed {
    /// The canonical spec, from [`INFO`]'s parameter list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(f, &[Some(&self.block), Some(&self.c)])
    }
}
