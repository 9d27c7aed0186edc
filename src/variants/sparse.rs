//! Sparse attention as exact softmax attention restricted to a [`Pattern`], on the tiled
//! engine of [`flash`](super::flash): empty tiles are skipped, so the cost follows the
//! number of allowed pairs, O(n * keys-per-row * d), and memory stays O(1) in n per worker.
//!
//! [`Sparse`] turns any pattern with a `Display` spec into a variant; the built-in ones are
//! registered below. A user-defined pattern becomes a variant with [`Sparse::new`].

use std::fmt;

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::engine::{Tiling, tiled_cost, tiled_forward};
use crate::error::Result;
use crate::kernels::isa::Isa;
use crate::pattern::{BigBird, Dilated, Fixed, Local, Longformer, Mask, Pattern, Strided, Window};
use crate::registry::{ParamInfo, VariantInfo};
use crate::shape::Shape;

/// Exact attention restricted to `pattern`, computed by the tiled engine.
#[derive(Debug, Clone)]
pub struct Sparse<P> {
    name: &'static str,
    pattern: P,
    tiling: Tiling,
}

impl<P: Pattern + fmt::Display> Sparse<P> {
    /// A variant called `name` attending exactly the pairs `pattern` allows, with
    /// [`Sparse::DEFAULT_TILING`].
    pub fn new(name: &'static str, pattern: P) -> Self {
        Self {
            name,
            pattern,
            tiling: Self::DEFAULT_TILING,
        }
    }

    /// Tiles of 64 x 64: fine enough that a sliding window of a few hundred keys wastes
    /// little work on partial tiles, coarse enough for efficient GEMMs.
    pub const DEFAULT_TILING: Tiling = Tiling { bq: 64, bk: 64 };

    /// The same variant with other block sizes.
    pub fn with_tiling(mut self, tiling: Tiling) -> Self {
        self.tiling = tiling;
        self
    }

    /// The pattern.
    pub fn pattern_ref(&self) -> &P {
        &self.pattern
    }
}

impl<P: Pattern + fmt::Display> fmt::Display for Sparse<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.pattern, f)
    }
}

impl<P: Pattern + fmt::Display + 'static> Attention for Sparse<P> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }

    fn pattern(&self) -> Option<&dyn Pattern> {
        Some(&self.pattern)
    }

    fn unsupported(&self, shape: &Shape, _opts: &Options) -> Vec<String> {
        self.pattern.unsupported(shape.geometry())
    }

    /// The tiled engine applies every feature.
    fn supports(&self, _feature: crate::modifier::Feature) -> bool {
        true
    }

    fn cost(&self, shape: &Shape, opts: &Options, threads: usize) -> Cost {
        tiled_cost(
            shape,
            Mask::new(Some(&self.pattern), opts.causal),
            self.tiling,
            threads,
        )
    }

    fn forward(&self, p: &Call<'_>, out: Out<'_>) -> Result<()> {
        tiled_forward(
            p,
            p.mask(Some(&self.pattern)),
            self.tiling,
            Isa::detect(),
            out.into_view(),
        );
        Ok(())
    }
}

fn boxed<P: Pattern + fmt::Display + 'static>(
    name: &'static str,
    p: P,
) -> Result<Box<dyn Attention>> {
    Ok(Box::new(Sparse::new(name, p)))
}

/// `window(w=256)`.
pub const WINDOW: VariantInfo = VariantInfo {
    name: "window",
    summary: "sliding window |p - j| <= w, p = i + n_kv - n_q (causal: p - w <= j <= p)",
    params: &[ParamInfo {
        name: "w",
        default: "256",
        help: "keys on each side (inclusive); 0 = self only",
    }],
    presets: &[],
    preview: "window(w=8)",
    build: |p| boxed("window", Window { w: p.usize("w")? }),
};

/// `local(block=128)`.
pub const LOCAL: VariantInfo = VariantInfo {
    name: "local",
    summary: "block-diagonal: each query attends its own block",
    params: &[ParamInfo {
        name: "block",
        default: "128",
        help: "block length",
    }],
    presets: &[],
    preview: "local(block=16)",
    build: |p| {
        boxed(
            "local",
            Local {
                block: p.positive("block")?,
            },
        )
    },
};

/// `strided(stride=128)`.
pub const STRIDED: VariantInfo = VariantInfo {
    name: "strided",
    summary: "Sparse Transformer strided: previous `stride` positions + every stride-th",
    params: &[ParamInfo {
        name: "stride",
        default: "128",
        help: "local span and stripe period",
    }],
    presets: &[],
    preview: "strided(stride=8)",
    build: |p| {
        boxed(
            "strided",
            Strided {
                stride: p.positive("stride")?,
            },
        )
    },
};

/// `fixed(block=128,c=32)`.
pub const FIXED: VariantInfo = VariantInfo {
    name: "fixed",
    summary: "Sparse Transformer fixed: own block + last c positions of every block",
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
        boxed("fixed", Fixed { block, c })
    },
};

/// `longformer(w=256,g=16)`.
pub const LONGFORMER: VariantInfo = VariantInfo {
    name: "longformer",
    summary: "sliding window + g global tokens (attend and attended by all)",
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
            "longformer",
            Longformer {
                w: p.usize("w")?,
                g: p.usize("g")?,
            },
        )
    },
};

/// `bigbird(block=64,w=3,g=2,r=3,seed=0)`.
pub const BIGBIRD: VariantInfo = VariantInfo {
    name: "bigbird",
    summary: "BigBird blocks: w sliding + g global + r seeded random blocks per query block",
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
            "bigbird",
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

/// `dilated(w=128,dilation=2)`.
pub const DILATED: VariantInfo = VariantInfo {
    name: "dilated",
    summary: "dilated window: keys p + k*dilation for |k| <= w",
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
        boxed("dilated", Dilated { w, dilation })
    },
};
