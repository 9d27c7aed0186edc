//! [`Shape`]: the sizes of one attention call, validated once at the boundary.

use std::fmt;

use ndarray::{ArrayView4, Dimension};

use crate::error::{Error, ErrorKind, Result};

/// The sizes of one attention call.
///
/// Q is `[batch, heads, n_q, head_dim]`, K is `[batch, kv_heads, n_kv, head_dim]`, V is
/// `[batch, kv_heads, n_kv, v_dim]` and the output is `[batch, heads, n_q, v_dim]`.
/// The fields are private and the only constructors, [`Shape::new`], [`Shape::from_views`]
/// and [`Shape::self_attention`], validate: every size is at least 1 and `heads` is a
/// multiple of `kv_heads`. Kernels and [`Attention::cost`](crate::Attention::cost) rely on
/// this (no division by zero, no empty loop bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Batch size.
    batch: usize,
    /// Query heads.
    heads: usize,
    /// Key/value heads (`heads` for multi-head, 1 for multi-query attention).
    kv_heads: usize,
    /// Query sequence length.
    n_q: usize,
    /// Key/value sequence length.
    n_kv: usize,
    /// Query/key head dimension.
    head_dim: usize,
    /// Value head dimension (usually equal to `head_dim`).
    v_dim: usize,
}

/// Bytes of an `f32` tensor of `dims`, saturating.
fn f32_bytes(dims: [usize; 4]) -> u64 {
    dims.iter().fold(4u64, |a, &d| a.saturating_mul(d as u64))
}

impl Shape {
    /// A self-attention shape: `n_q = n_kv = n`, `kv_heads = heads`, `v_dim = head_dim`.
    pub fn self_attention(batch: usize, heads: usize, n: usize, head_dim: usize) -> Result<Self> {
        Self::new(batch, heads, heads, n, n, head_dim, head_dim)
    }

    /// A validated shape. See [`Shape`] for the meaning of each size.
    pub fn new(
        batch: usize,
        heads: usize,
        kv_heads: usize,
        n_q: usize,
        n_kv: usize,
        head_dim: usize,
        v_dim: usize,
    ) -> Result<Self> {
        let shape = Self {
            batch,
            heads,
            kv_heads,
            n_q,
            n_kv,
            head_dim,
            v_dim,
        };
        check_nonzero("q", &shape.q_dims())?;
        check_nonzero("k", &shape.k_dims())?;
        check_nonzero("v", &shape.v_dims())?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(ErrorKind::HeadsNotMultiple { heads, kv_heads }.into());
        }
        Ok(shape)
    }

    /// Validates the shapes of Q, K and V against each other.
    pub fn from_views(
        q: &ArrayView4<f32>,
        k: &ArrayView4<f32>,
        v: &ArrayView4<f32>,
    ) -> Result<Self> {
        let qd = q.raw_dim().into_pattern();
        let kd = k.raw_dim().into_pattern();
        let vd = v.raw_dim().into_pattern();
        check_nonzero("q", &[qd.0, qd.1, qd.2, qd.3])?;
        check_nonzero("k", &[kd.0, kd.1, kd.2, kd.3])?;
        check_nonzero("v", &[vd.0, vd.1, vd.2, vd.3])?;
        let same = |what: &str, expected: usize, got: usize| -> Result<()> {
            if expected == got {
                Ok(())
            } else {
                Err(ErrorKind::ShapeMismatch {
                    what: what.to_string(),
                    expected,
                    got,
                }
                .into())
            }
        };
        same("batch of k (axis 0) vs q", qd.0, kd.0)?;
        same("batch of v (axis 0) vs q", qd.0, vd.0)?;
        same("kv_heads of v (axis 1) vs k", kd.1, vd.1)?;
        same("seq length n_kv of v (axis 2) vs k", kd.2, vd.2)?;
        same("head_dim of k (axis 3) vs q", qd.3, kd.3)?;
        Self::new(qd.0, qd.1, kd.1, qd.2, kd.2, qd.3, vd.3)
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Query heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Key/value heads (`heads` for multi-head, 1 for multi-query attention).
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// Query sequence length.
    pub fn n_q(&self) -> usize {
        self.n_q
    }

    /// Key/value sequence length.
    pub fn n_kv(&self) -> usize {
        self.n_kv
    }

    /// Query/key head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Value head dimension (usually equal to `head_dim`).
    pub fn v_dim(&self) -> usize {
        self.v_dim
    }

    /// `[batch, heads, n_q, head_dim]`.
    pub fn q_dims(&self) -> [usize; 4] {
        [self.batch, self.heads, self.n_q, self.head_dim]
    }

    /// `[batch, kv_heads, n_kv, head_dim]`.
    pub fn k_dims(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.n_kv, self.head_dim]
    }

    /// `[batch, kv_heads, n_kv, v_dim]`.
    pub fn v_dims(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.n_kv, self.v_dim]
    }

    /// `[batch, heads, n_q, v_dim]`.
    pub fn out_dims(&self) -> [usize; 4] {
        [self.batch, self.heads, self.n_q, self.v_dim]
    }

    /// Bytes of the `f32` inputs of one call: Q, K and V (saturating at `u64::MAX`).
    pub fn input_bytes(&self) -> u64 {
        [self.q_dims(), self.k_dims(), self.v_dims()]
            .iter()
            .fold(0u64, |a, &d| a.saturating_add(f32_bytes(d)))
    }

    /// Bytes of the `f32` output of one call (saturating at `u64::MAX`).
    pub fn output_bytes(&self) -> u64 {
        f32_bytes(self.out_dims())
    }

    /// Query heads that share one key/value head (`heads / kv_heads`).
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The key/value head that query head `head` reads.
    pub fn kv_head_of(&self, head: usize) -> usize {
        head / self.group_size()
    }

    /// The causal alignment offset `n_kv - n_q`: query `i` sits at key position `i + offset`.
    pub fn offset(&self) -> isize {
        self.n_kv as isize - self.n_q as isize
    }

    /// The sequence geometry, which is all a [`Pattern`](crate::pattern::Pattern) needs.
    pub fn geometry(&self) -> crate::pattern::Geometry {
        crate::pattern::Geometry::new(self.n_q, self.n_kv)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "b={} h={} h_kv={} n_q={} n_kv={} d={}",
            self.batch, self.heads, self.kv_heads, self.n_q, self.n_kv, self.head_dim
        )?;
        if self.v_dim != self.head_dim {
            write!(f, " d_v={}", self.v_dim)?;
        }
        Ok(())
    }
}

const AXES: [&str; 4] = ["batch", "heads", "seq", "head_dim"];

fn check_nonzero(tensor: &'static str, dims: &[usize; 4]) -> Result<()> {
    match dims.iter().position(|&n| n == 0) {
        Some(axis) => Err(Error::new(ErrorKind::ZeroDim {
            tensor,
            axis: AXES[axis],
            shape: dims.to_vec(),
        })),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::Shape;

    #[test]
    fn tensor_bytes_count_every_f32_of_q_k_v_and_the_output() {
        // b2, 8 query heads on 2 KV heads, 5 queries against 7 keys, d 3, d_v 4.
        let s = Shape::new(2, 8, 2, 5, 7, 3, 4).unwrap();
        assert_eq!(
            s.input_bytes(),
            4 * (2 * 8 * 5 * 3 + 2 * 2 * 7 * 3 + 2 * 2 * 7 * 4)
        );
        assert_eq!(s.output_bytes(), 4 * 2 * 8 * 5 * 4);
        // Sizes beyond u64 saturate instead of wrapping.
        let huge = Shape::new(1 << 24, 1 << 10, 1 << 10, 1 << 20, 1 << 20, 1 << 10, 1).unwrap();
        assert_eq!(huge.input_bytes(), u64::MAX);
        assert_eq!(huge.output_bytes(), 4u64 << 54);
    }
}
