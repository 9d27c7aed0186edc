//! The built-in attention variants, one file each.
//!
//! | variant | file | fidelity | memory |
//! |---|---|---|---|
//! | `full` | [`full`] | exact | O(n^2): the score matrix |
//! | `flash(bq,bk)` | [`flash`] | exact | O(1) in n per worker |
//! | `window`, `local`, `strided`, `fixed`, `longformer`, `bigbird`, `dilated` | [`sparse`] | exact under their pattern | O(1) in n per worker |
//!
//! | `linear(phi=elu1\|relu\|favor)` | [`linear`] | other kernel (elu1, relu) or approximate (favor) | O(chunk m + m d) |
//!
//! [`flash`] also holds the tiled engine ([`flash::tiled_forward`]) on which every
//! pattern-restricted exact variant runs.

pub mod flash;
pub mod full;
pub mod linear;
pub mod sparse;
