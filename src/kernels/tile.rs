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

/// One cache line of `f32`s: the unit an [`AlignedBuf`] is allocated in.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; PAD]);

/// A zero-initialized `f32` buffer that starts on a 64-byte boundary, so that every row of a
/// tile whose stride is a multiple of [`PAD`] is a whole number of cache lines and every
/// 512-bit load from it is aligned. An unaligned 512-bit load spans two lines; measured on
/// one tile in cache (`examples/kernels`, full-width AVX-512), a 16-byte offset of the query
/// and score tiles cost the P V product a quarter of its rate.
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBuf {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; PAD]); len.div_ceil(PAD)],
            len,
        }
    }

    /// Bytes allocated for `len` floats (whole lines).
    pub fn bytes(len: usize) -> usize {
        len.div_ceil(PAD) * std::mem::size_of::<Line>()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over `[f32; PAD]` with no padding (64 bytes, align 64),
        // so the vector's storage is `lines.len() * PAD` contiguous initialized `f32`s, and
        // `len <= lines.len() * PAD` by construction.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as for `deref`; the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_start_on_a_line_and_hold_their_length() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let mut b = AlignedBuf::zeros(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0.0));
            assert_eq!(b.as_ptr() as usize % 64, 0);
            b.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert_eq!(
                b.iter().sum::<f32>(),
                (0..len).map(|i| i as f32).sum::<f32>()
            );
            assert!(AlignedBuf::bytes(len) >= 4 * len && AlignedBuf::bytes(len).is_multiple_of(64));
        }
    }
}
