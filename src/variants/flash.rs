//! `flash`: exact dense attention on the [tiled engine](crate::engine), with an online
//! softmax (FlashAttention, Dao et al. 2022): memory independent of `n`, causal tiles above
//! the diagonal skipped. `flash(dtype=bf16)` stores Q, K, V and the probabilities in
//! `bfloat16` and accumulates both products in `f32` (`vdpbf16ps` where the CPU has
//! AVX512-BF16, the same rounding widened to the `f32` kernels elsewhere); it is exact in
//! `bf16`: held to twice the error of a plain `bf16` computation
//! ([`plain_bf16_rows`](crate::oracle::plain_bf16_rows)).

use std::fmt;

use crate::decode::{DecodeOptions, Decoder};
use crate::decode::cached::Cached;
use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out, Precision};
use crate::decode::KvStore;
use crate::engine::{Tiling, bf16_bytes, tiled_cost, tiled_forward, tiled_forward_bf16};
use crate::error::{ErrorKind, Result};
use crate::kernels::isa::{Isa, Path};
use crate::modifier::Feature;
use crate::pattern::Mask;
use crate::spec::{ParamInfo, Params, VariantInfo};
use crate::shape::Shape;

/// Exact dense attention on the tiled engine. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flash {
    /// The block sizes.
    pub tiling: Tiling,
    /// A forced SIMD path; `None` picks the widest the CPU supports.
    pub isa: Option<Path>,
    /// The storage precision of Q, K, V and the probabilities.
    pub dtype: Precision,
}

/// The registry entry of [`Flash`].
pub const INFO: VariantInfo = VariantInfo {
    name: "flash",
    summary: "tiled with online softmax (FlashAttention); O(n) memory, skips masked tiles",
    time: "O(n_q n_kv d), causal skips masked tiles",
    memory: "O((bq + bk) d + bq bk) per thread, independent of n",
    params: &[
        ParamInfo {
            name: "bq",
            default: "64",
            help: "query rows per block (one parallel task)",
        },
        ParamInfo {
            name: "bk",
            default: "128",
            help: "keys per tile",
        },
        ParamInfo {
            name: "isa",
            default: "auto",
            help: "SIMD path: auto | avx512 | avx2 | portable (to compare paths)",
        },
        ParamInfo {
            name: "dtype",
            default: "f32",
            help: "storage of Q, K, V and P: f32 | bf16 (f32 accumulation; needs an even bk)",
        },
    ],
    presets: &[],
    preview: "",
    build,
};

fn build(p: &Params) -> Result<Box<dyn Attention>> {
    let isa = match p.raw("isa") {
        "auto" => None,
        other => Some(Path::from_spec_name(other).ok_or_else(|| {
            p.invalid(
                "isa",
                &format!("expected auto, avx512, avx2 or portable, got '{other}'"),
            )
        })?),
    };
    let dtype = match p.raw("dtype") {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        other => return Err(p.invalid("dtype", &format!("expected f32 or bf16, got '{other}'"))),
    };
    let bk = p.positive("bk")?;
    if dtype == Precision::Bf16 && !bk.is_multiple_of(2) {
        return Err(p.invalid(
            "bk",
            &format!("dtype=bf16 reduces over key pairs, so bk must be even, got {bk}"),
        ));
    }
    Ok(Box::new(Flash {
        tiling: Tiling {
            bq: p.positive("bq")?,
            bk,
        },
        isa,
        dtype,
    }))
}

impl fmt::Display for Flash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let isa = self.isa.map(Path::spec_name);
        let dtype = (self.dtype != Precision::F32).then_some(self.dtype);
        INFO.write_spec(
            f,
            &[
                Some(&self.tiling.bq),
                Some(&self.tiling.bk),
                isa.as_ref().map(|s| s as &dyn fmt::Display),
                dtype.as_ref().map(|d| d as &dyn fmt::Display),
            ],
        )
    }
}

impl Attention for Flash {
    /// A KV cache scanned by the decode kernel (on this variant's `isa` path when given).
    fn decoder(
        &self,
        shape: &Shape,
        opts: &DecodeOptions,
    ) -> Option<Result<Box<dyn Decoder>>> {
        let mut opts = *opts;
        if self.dtype == Precision::Bf16 {
            // Decoding in bf16: the KV cache is stored in bf16 (queries stay f32).
            opts.kv = KvStore::Bf16;
        }
        if let Some(path) = self.isa {
            match Isa::new(path) {
                Some(isa) => opts.isa = Some(isa),
                None => {
                    return Some(Err(ErrorKind::Unsupported {
                        variant: self.to_string(),
                        reasons: vec![format!("this CPU does not support the {path} path")],
                    }
                    .into()));
                }
            }
        }
        Some(Cached::dense(&self.to_string(), shape, &opts).map(|d| Box::new(d) as Box<dyn Decoder>))
    }

    fn name(&self) -> &'static str {
        INFO.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Exact
    }

    fn precision(&self) -> Precision {
        self.dtype
    }

    fn unsupported(&self, _shape: &Shape, _opts: &Options) -> Vec<String> {
        match self.isa {
            Some(path) if Isa::new(path).is_none() => {
                vec![format!("this CPU does not support the {path} path")]
            }
            _ => Vec::new(),
        }
    }

    fn supports(&self, _feature: Feature) -> bool {
        true
    }

    fn cost(&self, shape: &Shape, opts: &Options, threads: usize) -> Cost {
        let mut cost = tiled_cost(shape, opts, Mask::new(None, opts.causal), self.tiling, threads);
        if self.dtype == Precision::Bf16 {
            cost.workspace_bytes += bf16_bytes(shape, self.tiling, threads);
        }
        cost
    }

    fn forward(&self, p: &Call<'_>, out: Out<'_>) -> Result<()> {
        let isa = match self.isa {
            None => Isa::detect(),
            // `run` refused the call already if the CPU lacks the path (`unsupported`).
            Some(path) => Isa::new(path).ok_or_else(|| ErrorKind::Unsupported {
                variant: self.to_string(),
                reasons: self.unsupported(&p.shape(), &p.opts()),
            })?,
        };
        match self.dtype {
            Precision::F32 => tiled_forward(p, p.mask(None), self.tiling, isa, out.into_view()),
            Precision::Bf16 => {
                tiled_forward_bf16(p, p.mask(None), self.tiling, isa, out.into_view())
            }
        }
        Ok(())
    }
}
