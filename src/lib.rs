//! attnbench: a reference CPU benchmark suite for efficient attention.
//!
//! Every attention variant implements one trait, [`Attention`], is registered once in the
//! [`registry`], and is checked against an exact `f64` [`oracle`].
//!
//! # Tensor layout
//! Tensors are `f32` [`ndarray`] views with four axes `[batch, heads, seq, head_dim]`:
//!
//! | tensor | shape |
//! |---|---|
//! | Q | `[batch, heads, n_q, head_dim]` |
//! | K | `[batch, kv_heads, n_kv, head_dim]` |
//! | V | `[batch, kv_heads, n_kv, v_dim]` |
//! | out | `[batch, heads, n_q, v_dim]` |
//!
//! Any strides are accepted (standard row-major arrays are fastest). `heads` must be a
//! multiple of `kv_heads`; query head `h` reads key/value head `h / (heads / kv_heads)`
//! (grouped-query attention; `kv_heads = 1` is multi-query attention). The score scale
//! defaults to `1 / sqrt(head_dim)`. Causal masking is aligned bottom-right: query `i` sees
//! key `j` iff `j <= i + n_kv - n_q`, so one query against a KV cache sees every key. A query
//! with no allowed key gets a zero output row.
//!
//! # Example
//! ```
//! use attnbench::{Options, Registry, attend};
//! use ndarray::Array4;
//!
//! let registry = Registry::builtin();
//! let flash = registry.build("flash(bq=32,bk=64)")?;
//! let q = Array4::<f32>::from_elem([1, 2, 100, 16], 0.1);
//! let k = Array4::<f32>::from_elem([1, 2, 100, 16], 0.2);
//! let v = Array4::<f32>::from_elem([1, 2, 100, 16], 1.0);
//! let out = attend(flash.as_ref(), q.view(), k.view(), v.view(), &Options::new().causal(true))?;
//! assert_eq!(out.shape(), &[1, 2, 100, 16]);
//! assert!((out[[0, 1, 99, 3]] - 1.0).abs() < 1e-6);
//! # Ok::<(), attnbench::Error>(())
//! ```
//!
//! # Variants
//! The built-in variants are listed in [`variants::BUILTIN`]; `attnbench list` prints them
//! with their parameters, and `attnbench list --markdown` the table in README.md.
//!
//! # Modules
//! ARCHITECTURE.md has the code map and the invariants; in short:
//! - [`attention`]: the trait, [`Problem`] (validated input), [`Call`] and [`Out`] (what
//!   [`attention::run`], the one way into a kernel, hands a variant), [`attend`];
//!   [`options`]: [`Options`].
//! - [`pattern`]: sparsity patterns and their tile classification; [`engine`]: the tiled
//!   engine every pattern variant runs on; [`kernels`]: SIMD kernels and GEMM.
//! - [`variants`]: the built-in variants, one file each; [`spec`] and [`registry`]: spec
//!   strings such as `flash(bq=64,bk=128)`.
//! - [`oracle`]: `f64` reference and error metrics; [`check`]: conformance cases.
//! - [`layer`]: the multi-head attention layer around any variant; [`modifier`]: ALiBi,
//!   soft-capping and RoPE; [`workload`]: input generators.
//! - [`harness`]: the sweep and its measurements; [`results`]: the files a run leaves;
//!   [`report`]: charts and `report.md` from those files; [`cli`]: the command line over
//!   any registry.

#![warn(missing_docs)]

pub mod attention;
pub mod check;
pub mod cli;
pub mod decode;
pub mod engine;
pub mod error;
pub mod feature;
pub mod harness;
pub mod kernels;
pub mod layer;
pub mod maps;
pub mod model;
pub mod modifier;
pub mod npy;
pub mod options;
pub mod oracle;
pub mod parallel;
pub mod pattern;
pub mod registry;
pub mod report;
pub mod results;
pub mod shape;
pub mod spec;
pub mod stats;
pub mod variants;
pub mod workload;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use attention::{
    Attention, Call, Cost, Fidelity, Options, Out, Precision, Problem, ROPE_BASE, attend,
    attend_into, reasons,
};
pub use error::{Error, ErrorKind, Result};
pub use modifier::Feature;
pub use pattern::{Geometry, Pattern, Tile};
pub use registry::Registry;
pub use shape::Shape;
