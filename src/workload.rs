//! Input generators.
//!
//! [`gaussian`] draws i.i.d. normal Q, K and V from a seed. Its `scale` multiplies Q and K,
//! so the logits `q . k / sqrt(d)` have standard deviation `scale^2`: larger scales give more
//! peaked attention.

use ndarray::Array4;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::shape::Shape;

/// Q, K and V for one shape.
#[derive(Debug, Clone)]
pub struct Qkv {
    /// `[batch, heads, n_q, head_dim]`.
    pub q: Array4<f32>,
    /// `[batch, kv_heads, n_kv, head_dim]`.
    pub k: Array4<f32>,
    /// `[batch, kv_heads, n_kv, v_dim]`.
    pub v: Array4<f32>,
}

/// Seeded i.i.d. normal inputs; Q and K are multiplied by `scale`, V is standard normal.
pub fn gaussian(shape: &Shape, scale: f32, seed: u64) -> Qkv {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |dims: [usize; 4], s: f32| {
        Array4::from_shape_simple_fn(dims, || {
            let x: f32 = StandardNormal.sample(&mut rng);
            x * s
        })
    };
    let q = draw(shape.q_dims(), scale);
    let k = draw(shape.k_dims(), scale);
    let v = draw(shape.v_dims(), 1.0);
    Qkv { q, k, v }
}
