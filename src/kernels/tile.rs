//! The tile layout every tiled kernel shares, and the bounds helper of the explicit kernels:
//! the leaf of [`kernels`](super), imported by the portable, AVX2 and AVX-512 files and by
//! the dispatch module, importing none of them.

/// Whether a slice of `len` elements holds `a * b` of them (false when the product
/// overflows): the explicit kernels' bounds checks.
pub fn holds(len: usize, a: usize, b: usize) -> bool {
    a.checked_mul(b).is_some_and(|n| len >= n)
}

/// Lanes that query blocks and value rows are padded to (the widest register block).
pub const PAD: usize = 16;

/// Rounds `n` up to a multiple of [`PAD`].
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(PAD)
}

/// One tile of the tiled engine in transposed layout: scores are stored key-major,
/// `st[j][i]` for key `j` and query `i`, so that every per-query softmax quantity (maximum,
/// sum, rescaling) is a vector over queries.
pub struct Tile<'a> {
    /// Queries transposed: `d x ldq` (`qt[p][i]`), zeros beyond the block's rows.
    pub qt: &'a [f32],
    /// Keys: `cols x d`, row-major.
    pub k: &'a [f32],
    /// Values: `cols x ldv`, row-major, zeros beyond `d_v`.
    pub v: &'a [f32],
    /// Scores / probabilities: `cols x ldq`.
    pub st: &'a mut [f32],
    /// Keys in the tile.
    pub cols: usize,
    /// Head dimension.
    pub d: usize,
    /// Padded query count (row stride of `qt` and `st`).
    pub ldq: usize,
    /// Padded value dimension (row stride of `v` and `acc`).
    pub ldv: usize,
}

/// The per-query running state of the online softmax, `ldq` entries each, plus scratch.
pub struct OnlineState<'a> {
    /// Running maxima (`-inf` before any allowed key).
    pub m: &'a mut [f32],
    /// Running sums.
    pub l: &'a mut [f32],
    /// Written by each step: `e^(m_old - m_new)`, by which the accumulator must be scaled.
    pub rescale: &'a mut [f32],
    /// Scratch.
    pub shift: &'a mut [f32],
    /// Scratch.
    pub sums: &'a mut [f32],
}
