//! The built-in attention variants, one file each, and [`BUILTIN`], their list.
//!
//! Each file holds the variant's type, its [`VariantInfo`] (`INFO`: name, summary,
//! parameters, presets, constructor) and its `Display`, which writes the canonical spec from
//! that parameter list. Adding a variant is one new file and one name in the `builtin!` line
//! below; the CLI, `attnbench check`, the sweep, the benches, the conformance and pattern
//! tests and the variant table of the README (`attnbench list --markdown`) all enumerate the
//! registry. `attnbench list` prints every variant with its parameters.
//!
//! [`sparse`] is not a variant: it turns any [`Pattern`](crate::Pattern) into one on the
//! [tiled engine](crate::engine).

use crate::spec::VariantInfo;

pub(crate) mod shared;
pub mod sparse;

/// Declares each built-in variant's module and lists its `INFO` in [`BUILTIN`], in order.
macro_rules! builtin {
    ($($variant:ident),* $(,)?) => {
        $(pub mod $variant;)*

        /// The built-in variants, in the order they are listed and swept.
        pub const BUILTIN: &[VariantInfo] = &[$($variant::INFO),*];
    };
}

builtin![
    full, flash, window, sinks, local, strided, fixed, longformer, bigbird, dilated, linear, topk,
    blocktopk, lsh, nystrom, linformer, retention
];
