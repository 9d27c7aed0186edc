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

/// Keys per block of a decoding KV cache. K is stored key-major in blocks of this many keys,
/// `[head_dim][KV_BLOCK]` each, so one vector load holds one dimension of 16 keys and the
/// scores of a block need no horizontal sums; V is stored as rows `[slots][v_dim]`.
pub const KV_BLOCK: usize = 16;

/// One KV head's cache as the decode scan reads it: K in blocks of [`KV_BLOCK`] keys
/// (`[slots / KV_BLOCK][d][KV_BLOCK]`), V in rows (`[slots][dv]`), in one storage format.
#[derive(Debug, Clone, Copy)]
pub enum KvData<'a> {
    /// `f32` (exact).
    F32 {
        /// Blocked keys.
        k: &'a [f32],
        /// Value rows.
        v: &'a [f32],
    },
    /// IEEE binary16 bits.
    F16 {
        /// Blocked keys.
        k: &'a [u16],
        /// Value rows.
        v: &'a [u16],
    },
    /// `bf16` bits.
    Bf16 {
        /// Blocked keys.
        k: &'a [u16],
        /// Value rows.
        v: &'a [u16],
    },
}

impl KvData<'_> {
    /// Slots (keys) the buffers hold, given the dimensions; `None` unless K holds whole
    /// blocks and V holds the same number of rows.
    pub fn slots(&self, d: usize, dv: usize) -> Option<usize> {
        let (k, v) = match self {
            KvData::F32 { k, v } => (k.len(), v.len()),
            KvData::F16 { k, v } | KvData::Bf16 { k, v } => (k.len(), v.len()),
        };
        let block = d.checked_mul(KV_BLOCK)?;
        if d == 0 || dv == 0 || !k.is_multiple_of(block) {
            return None;
        }
        let slots = k / block * KV_BLOCK;
        (v == slots.checked_mul(dv)?).then_some(slots)
    }
}

/// The online-softmax state of `g` queries scanning keys: running maxima `m` (`-inf` before
/// any key), sums `l` and unnormalized outputs `acc` (`[g][dv]`), all relative to `m`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvPartial {
    /// Queries.
    pub g: usize,
    /// Value dimension.
    pub dv: usize,
    /// Running maxima.
    pub m: Vec<f32>,
    /// Running sums.
    pub l: Vec<f32>,
    /// Unnormalized outputs, `[g][dv]`.
    pub acc: Vec<f32>,
}

impl KvPartial {
    /// The state before any key.
    pub fn new(g: usize, dv: usize) -> Self {
        Self {
            g,
            dv,
            m: vec![f32::NEG_INFINITY; g],
            l: vec![0.0; g],
            acc: vec![0.0; g * dv],
        }
    }
}
