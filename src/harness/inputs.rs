//! A sweep's inputs at one length: Q, K and V (seeded Gaussian, or a prefix of the `npy:`
//! workload), the multi-head layer and its `X` for layer sweeps, and the shape at each length.

use ndarray::{Array3, Axis};

use super::config::SweepConfig;
use crate::error::Result;
use crate::layer::{LayerConfig, MultiHeadAttention, Weights};
use crate::shape::Shape;
use crate::workload::{NpyData, Qkv, Workload, gaussian};

pub(super) fn inputs(cfg: &SweepConfig, npy: Option<&NpyData>, n: usize) -> Qkv {
    let n_q = cfg.n_q.unwrap_or(n);
    match (npy, &cfg.workload) {
        (Some(data), _) => {
            let mut qkv = data.prefix(n);
            // Decoding queries are the last positions.
            qkv.q = qkv.q.slice(ndarray::s![.., .., n - n_q.., ..]).to_owned();
            qkv
        }
        (None, Workload::Gaussian { scale }) => {
            let shape = Shape::new(
                cfg.batch,
                cfg.heads,
                cfg.kv_heads,
                n_q,
                n,
                cfg.head_dim,
                cfg.head_dim,
            )
            .expect("validated in run_sweep");
            gaussian(&shape, *scale, cfg.seed ^ n as u64)
        }
        (None, Workload::Structured { layer }) => {
            // One sequence for every length (each a prefix of the longest), as real data.
            crate::workload::structured::Calibration::builtin()
                .layer(*layer)
                .expect("validated when parsed")
                .generate(n, n_q, cfg.seed)
        }
        (None, Workload::Npy { .. }) => unreachable!("run_sweep loads npy workloads first"),
    }
}

/// The multi-head layer of a layer sweep at one length, with its inputs.
pub(super) struct LayerInputs {
    pub(super) layer: MultiHeadAttention,
    pub(super) x: Array3<f32>,
    pub(super) memory: Option<Array3<f32>>,
}

impl LayerInputs {
    /// The core's inputs: the projections of `x` (and `memory`).
    pub(super) fn qkv(&self) -> Result<Qkv> {
        let (q, k, v) = self
            .layer
            .project_qkv(self.x.view(), self.memory.as_ref().map(|m| m.view()))?;
        Ok(Qkv { q, k, v })
    }
}

pub(super) fn layer_inputs(cfg: &SweepConfig, n: usize) -> Result<Option<LayerInputs>> {
    let Some(d_model) = cfg.layer else {
        return Ok(None);
    };
    let lc = LayerConfig::new(d_model, cfg.heads)?.with_kv_heads(cfg.kv_heads)?;
    let layer = MultiHeadAttention::new(lc, Weights::xavier(&lc, cfg.seed))?;
    let scale = match cfg.workload {
        Workload::Gaussian { scale } => scale,
        Workload::Npy { .. } | Workload::Structured { .. } => {
            unreachable!("validated: layer sweeps use the Gaussian workload")
        }
    };
    let x = |len: usize, seed: u64| {
        let shape = Shape::new(cfg.batch, 1, 1, 1, len, d_model, d_model).expect("validated");
        let g = gaussian(&shape, scale, seed);
        g.k.index_axis_move(Axis(1), 0)
    };
    let seed = cfg.seed ^ n as u64;
    Ok(Some(match cfg.n_q {
        None => LayerInputs {
            layer,
            x: x(n, seed),
            memory: None,
        },
        Some(n_q) => LayerInputs {
            layer,
            x: x(n_q, seed),
            memory: Some(x(n, seed.wrapping_add(1))),
        },
    }))
}

/// The shape of the sweep's inputs at length `n`: the npy workload's own heads and head
/// dimension when there is one, `d_model / heads` for a layer sweep, else the Gaussian flags.
pub(super) fn input_shape(cfg: &SweepConfig, npy: Option<&NpyData>, n: usize) -> Result<Shape> {
    let (b, h, h_kv, d) = match (npy, cfg.layer, &cfg.workload) {
        (Some(data), ..) => {
            let s = data.qkv.q.shape();
            (s[0], s[1], data.qkv.k.shape()[1], s[3])
        }
        (None, _, Workload::Structured { layer }) => {
            let cal = crate::workload::structured::Calibration::builtin()
                .layer(*layer)
                .expect("validated when parsed");
            (
                1,
                cal.heads(),
                cal.kv_heads(),
                crate::workload::structured::HEAD_DIM,
            )
        }
        (None, Some(d_model), _) => (
            cfg.batch,
            cfg.heads,
            cfg.kv_heads,
            d_model / cfg.heads.max(1),
        ),
        (None, None, _) => (cfg.batch, cfg.heads, cfg.kv_heads, cfg.head_dim),
    };
    Shape::new(b, h, h_kv, cfg.n_q.unwrap_or(n), n, d, d)
}
