//! Sparse attention as exact softmax attention restricted to a [`Pattern`], on the tiled
//! [engine](crate::engine): empty tiles are skipped, so the cost follows the
//! number of allowed pairs, O(n * keys-per-row * d), and memory stays O(1) in n per worker.
//!
//! [`Sparse`] turns any pattern with a `Display` spec into a variant. Each built-in pattern
//! variant is one file of [`crate::variants`] (`window.rs`, `bigbird.rs`, ...) holding its
//! pattern, its `VariantInfo` and its `Display`; a user-defined pattern becomes a variant the
//! same way, or directly with [`Sparse::new`].

use std::fmt;

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::decode::cached::Cached;
use crate::decode::{DecodeOptions, Decoder};
use crate::engine::{Tiling, tiled_cost, tiled_forward};
use crate::error::Result;
use crate::kernels::isa::Isa;
use crate::pattern::{Mask, Pattern};
use crate::shape::Shape;
use crate::spec::VariantInfo;

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
    /// Patterns that attend sinks plus a window ([`Pattern::streaming`]) decode with a
    /// bounded cache; the others have no decoder.
    fn decoder(&self, shape: &Shape, opts: &DecodeOptions) -> Option<Result<Box<dyn Decoder>>> {
        let (sinks, w) = self.pattern.streaming()?;
        Some(
            Cached::streaming(&self.to_string(), shape, opts, sinks, w)
                .map(|d| Box::new(d) as Box<dyn Decoder>),
        )
    }

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
            opts,
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

/// A [`Sparse`] variant of `pattern`, named after `info`: the `build` of a pattern
/// variant's [`VariantInfo`].
pub fn boxed<P: Pattern + fmt::Display + 'static>(
    info: &VariantInfo,
    pattern: P,
) -> Result<Box<dyn Attention>> {
    Ok(Box::new(Sparse::new(info.name, pattern)))
}
