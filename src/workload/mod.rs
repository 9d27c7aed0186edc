//! Input generators.
//!
//! [`gaussian`] draws i.i.d. normal Q, K and V from a seed. Its `scale` multiplies Q and K,
//! so the logits `q . k / sqrt(d)` have standard deviation `scale^2`: larger scales give more
//! peaked attention.

pub mod structured;

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

/// Where a sweep's Q, K and V come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// Seeded i.i.d. normal inputs; `scale` multiplies Q and K (see [`gaussian`]).
    Gaussian {
        /// Multiplies Q and K: larger is more peaked attention.
        scale: f32,
    },
    /// Real activations: every `<prefix>_q.npy`, `<prefix>_k.npy`, `<prefix>_v.npy` triple in
    /// a directory, each `[heads, n, d]` or `[batch, heads, n, d]` float32 or float16 (K and V
    /// may have fewer heads than Q), stacked along the batch axis in file-name order, with an
    /// optional [`NpyMeta`] in `workload.json`. Lengths up to the files' `n` are taken as
    /// prefixes.
    Npy {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// Synthetic inputs calibrated to a layer of a trained LLM (sink, locality and entropy
    /// per head, GQA 9/3, d = 64; see [`structured`]), at any length: causal and rotated like
    /// the real activations, for lengths beyond them.
    Structured {
        /// The calibrated layer of SmolLM2-135M (0, 15 or 29).
        layer: u32,
    },
}

impl Workload {
    /// Whether an npy workload's `workload.json` says the activations were computed causally
    /// (the CLI then sweeps causally by default). `false` for Gaussian inputs, and when the
    /// file is missing or malformed (loading the workload reports the latter).
    pub fn is_causal_data(&self) -> bool {
        match self {
            Workload::Npy { dir } => {
                NpyMeta::read(dir).is_ok_and(|m| m.is_some_and(|m| m.causal == Some(true)))
            }
            Workload::Structured { .. } => true,
            Workload::Gaussian { .. } => false,
        }
    }

    /// What the inputs' maker says about them: the npy workload's `workload.json`; the
    /// structured workload is causal and rotated by construction; nothing for Gaussian.
    pub fn meta(&self) -> crate::Result<NpyMeta> {
        Ok(match self {
            Workload::Npy { dir } => NpyMeta::read(dir)?.unwrap_or_default(),
            Workload::Structured { layer } => NpyMeta {
                causal: Some(true),
                rope_applied: true,
                description: format!(
                    "structured: synthetic, calibrated to SmolLM2-135M layer {layer}"
                ),
            },
            Workload::Gaussian { .. } => NpyMeta::default(),
        })
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workload::Gaussian { scale } => write!(f, "gaussian(scale={scale})"),
            Workload::Npy { dir } => write!(f, "npy:{}", dir.display()),
            Workload::Structured { layer } => write!(f, "structured(layer={layer})"),
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = crate::Error;

    fn from_str(text: &str) -> crate::Result<Self> {
        if let Some(dir) = text.strip_prefix("npy:") {
            if dir.is_empty() {
                return Err(crate::Error::bad_spec(
                    text,
                    "npy: needs a directory, e.g. npy:tests/data/qkv",
                ));
            }
            return Ok(Workload::Npy { dir: dir.into() });
        }
        let spec: crate::spec::Spec = text.parse()?;
        if spec.name == "structured" {
            let layers = structured::Calibration::builtin().layer_ids();
            let mut layer = 15;
            for (k, v) in &spec.params {
                match k.as_str() {
                    "layer" => layer = v.parse().ok().filter(|l| layers.contains(l)).ok_or_else(
                        || {
                            crate::Error::bad_spec(
                                text,
                                format!(
                                    "layer must be a calibrated layer, one of {layers:?}; got '{v}'"
                                ),
                            )
                        },
                    )?,
                    other => {
                        return Err(crate::Error::bad_spec(
                            text,
                            format!(
                                "unknown parameter '{other}' of structured; its parameter is layer"
                            ),
                        ));
                    }
                }
            }
            return Ok(Workload::Structured { layer });
        }
        if spec.name != "gaussian" {
            return Err(crate::Error::bad_spec(
                text,
                "expected gaussian, gaussian(scale=S), structured(layer=L) or npy:DIR",
            ));
        }
        let mut scale = 1.0f32;
        for (k, v) in &spec.params {
            match k.as_str() {
                "scale" => {
                    scale = v
                        .parse()
                        .ok()
                        .filter(|s: &f32| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| {
                            crate::Error::bad_spec(
                                text,
                                format!("scale must be a positive number, got '{v}'"),
                            )
                        })?
                }
                other => {
                    return Err(crate::Error::bad_spec(
                        text,
                        format!("unknown parameter '{other}' of gaussian; its parameter is scale"),
                    ));
                }
            }
        }
        Ok(Workload::Gaussian { scale })
    }
}

/// What `workload.json` beside a directory's `.npy` files says about how the activations
/// were made, so a sweep computes what the model computed. Every field is optional; unknown
/// fields are an error (a misspelt `causal` must not pass silently).
///
/// ```json
/// {"causal": true, "rope_applied": true, "description": "SmolLM2-135M layer 15"}
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpyMeta {
    /// The model computed causal attention on these: a sweep on them is causal by default
    /// (the CLI), and a bidirectional sweep is refused.
    #[serde(default)]
    pub causal: Option<bool>,
    /// Q and K are already rotated (RoPE applied): `--rope` would rotate them twice and is
    /// refused.
    #[serde(default)]
    pub rope_applied: bool,
    /// Free text: the model, layer, text, provenance.
    #[serde(default)]
    pub description: String,
}

impl NpyMeta {
    /// The file name beside the arrays.
    pub const FILE: &'static str = "workload.json";

    /// Reads `dir/workload.json`; `None` when there is none.
    pub fn read(dir: &std::path::Path) -> crate::Result<Option<NpyMeta>> {
        let path = dir.join(Self::FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::Error::io(&path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| crate::Error::format(&path, e.to_string(), e))
    }

    /// Refuses options that would compute something the model did not: bidirectional
    /// attention on causal activations, RoPE on already rotated ones.
    pub fn check(&self, opts: &crate::Options) -> crate::Result<()> {
        let bad = |option: &'static str, message: &str| {
            Err(crate::Error::new(crate::error::ErrorKind::BadOption {
                option,
                message: message.into(),
            }))
        };
        if self.causal == Some(true) && !opts.causal {
            return bad(
                "causal",
                "workload.json says these activations were computed causally; a bidirectional sweep is not what the model computed (use --causal, the CLI's default for this workload)",
            );
        }
        if self.rope_applied && opts.rope.is_some() {
            return bad(
                "rope",
                "workload.json says Q and K are already rotated (rope_applied); --rope would rotate them twice",
            );
        }
        Ok(())
    }
}

/// Q, K and V loaded from a directory of `.npy` files (see [`Workload::Npy`]).
#[derive(Debug, Clone)]
pub struct NpyData {
    /// All triples stacked: `[batch, heads, n, d]` etc.
    pub qkv: Qkv,
    /// The file-name prefixes, one per triple.
    pub prefixes: Vec<String>,
    /// A name per batch entry: the triple's prefix, with `[i]` appended for the entries of a
    /// triple that has a batch axis of its own.
    pub inputs: Vec<String>,
    /// `workload.json`, or the default (nothing known) without one.
    pub meta: NpyMeta,
}

impl NpyData {
    /// The longest available length.
    pub fn max_len(&self) -> usize {
        self.qkv.q.shape()[2]
    }

    /// The first `n` positions of Q, K and V, as standard-layout arrays.
    pub fn prefix(&self, n: usize) -> Qkv {
        use ndarray::s;
        Qkv {
            q: self.qkv.q.slice(s![.., .., ..n, ..]).to_owned(),
            k: self.qkv.k.slice(s![.., .., ..n, ..]).to_owned(),
            v: self.qkv.v.slice(s![.., .., ..n, ..]).to_owned(),
        }
    }
}

/// Loads every `*_q.npy` / `*_k.npy` / `*_v.npy` triple of `dir`.
pub fn load_npy_dir(dir: &std::path::Path) -> crate::Result<NpyData> {
    load_npy_dir_within(dir, u64::MAX)
}

/// The sequence length of an npy directory's first triple, from its headers (no data read).
pub fn npy_dir_len(dir: &std::path::Path) -> crate::Result<usize> {
    let prefixes = npy_prefixes(dir)?;
    let path = dir.join(format!("{}_k.npy", prefixes[0]));
    let header = crate::npy::read_header(&path)?;
    match header.shape.len() {
        3 | 4 => Ok(header.shape[header.shape.len() - 2]),
        r => Err(crate::Error::new(crate::error::ErrorKind::Format {
            path: path.display().to_string(),
            message: format!("rank {r}; expected [heads, n, d] or [batch, heads, n, d]"),
        })),
    }
}

/// The sorted `*_q.npy` prefixes of `dir`: at least one, none with `;` or `=`.
fn npy_prefixes(dir: &std::path::Path) -> crate::Result<Vec<String>> {
    use crate::error::{Error, ErrorKind};
    let format = |path: &std::path::Path, message: String| {
        Error::new(ErrorKind::Format {
            path: path.display().to_string(),
            message,
        })
    };
    let mut prefixes: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix("_q.npy"))
                .map(str::to_string)
        })
        .collect();
    prefixes.sort();
    if let Some(bad) = prefixes.iter().find(|p| p.contains([';', '='])) {
        return Err(format(
            &dir.join(format!("{bad}_q.npy")),
            "file names may not contain ';' or '=' (they name the inputs in the results' err_by_input column)".into(),
        ));
    }
    if prefixes.is_empty() {
        return Err(format(dir, "no *_q.npy files in this directory".into()));
    }
    Ok(prefixes)
}

/// Like [`load_npy_dir`], refusing (from the files' headers, before reading any data) a
/// directory whose arrays would need more than `max_bytes` as `f32`, counted twice: the
/// triples are stacked into one copy.
pub fn load_npy_dir_within(dir: &std::path::Path, max_bytes: u64) -> crate::Result<NpyData> {
    use crate::error::{Error, ErrorKind};
    let format = |path: &std::path::Path, message: String| {
        Error::new(ErrorKind::Format {
            path: path.display().to_string(),
            message,
        })
    };
    let prefixes = npy_prefixes(dir)?;
    let path_of = |prefix: &str, role: &str| -> crate::Result<std::path::PathBuf> {
        let path = dir.join(format!("{prefix}_{role}.npy"));
        // `symlink_metadata`: a dangling link exists, and the reader says it dangles.
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(format(
                &path,
                format!("missing: {prefix}_q.npy has no matching {prefix}_{role}.npy"),
            ));
        }
        Ok(path)
    };
    let mut total = 0u64;
    for prefix in &prefixes {
        for role in ["q", "k", "v"] {
            total += crate::npy::read_header(&path_of(prefix, role)?)?.f32_bytes();
        }
    }
    if total.saturating_mul(2) > max_bytes {
        return Err(format(
            dir,
            format!(
                "the activations need {} MB as float32, twice while stacked: over the memory budget of {} MB",
                total >> 20,
                max_bytes >> 20
            ),
        ));
    }
    let mut triples = Vec::new();
    for prefix in &prefixes {
        let load = |role: &str| -> crate::Result<ndarray::Array4<f32>> {
            let path = path_of(prefix, role)?;
            let a = crate::npy::read_f32(&path)?;
            let a = match a.ndim() {
                3 => a.insert_axis(ndarray::Axis(0)),
                4 => a,
                r => {
                    return Err(format(
                        &path,
                        format!(
                            "rank {r} (shape {:?}); expected [heads, n, d] or [batch, heads, n, d]",
                            a.shape()
                        ),
                    ));
                }
            };
            let a = a
                .into_dimensionality::<ndarray::Ix4>()
                .map_err(|e| format(&path, e.to_string()))?;
            if a.iter().any(|x| !x.is_finite()) {
                return Err(format(&path, "holds NaN or infinite values".into()));
            }
            if a.is_empty() {
                return Err(format(
                    &path,
                    format!("has a zero-length axis (shape {:?})", a.shape()),
                ));
            }
            Ok(a)
        };
        let (q, k, v) = (load("q")?, load("k")?, load("v")?);
        let qkv_shape = crate::shape::Shape::from_views(&q.view(), &k.view(), &v.view())
            .map_err(|e| format(&dir.join(format!("{prefix}_*.npy")), e.to_string()))?;
        if qkv_shape.n_q() != qkv_shape.n_kv() {
            return Err(format(
                &dir.join(format!("{prefix}_q.npy")),
                format!(
                    "q has n = {} but k and v have n = {}",
                    qkv_shape.n_q(),
                    qkv_shape.n_kv()
                ),
            ));
        }
        triples.push((prefix.clone(), Qkv { q, k, v }));
    }
    let first = triples[0].1.clone();
    for (prefix, t) in &triples[1..] {
        for (role, a, b) in [
            ("q", &t.q, &first.q),
            ("k", &t.k, &first.k),
            ("v", &t.v, &first.v),
        ] {
            if a.shape()[1..] != b.shape()[1..] {
                return Err(format(
                    &dir.join(format!("{prefix}_{role}.npy")),
                    format!(
                        "shape {:?} does not match {}_{role}.npy's {:?}; all triples must share heads, n and d",
                        a.shape(),
                        triples[0].0,
                        b.shape()
                    ),
                ));
            }
        }
    }
    let inputs = triples
        .iter()
        .flat_map(|(prefix, t)| {
            let b = t.q.shape()[0];
            (0..b).map(move |i| {
                if b == 1 {
                    prefix.clone()
                } else {
                    format!("{prefix}[{i}]")
                }
            })
        })
        .collect();
    let stack = |pick: fn(&Qkv) -> &ndarray::Array4<f32>| {
        let views: Vec<_> = triples.iter().map(|(_, t)| pick(t).view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views).expect("shapes checked above")
    };
    Ok(NpyData {
        qkv: Qkv {
            q: stack(|t| &t.q),
            k: stack(|t| &t.k),
            v: stack(|t| &t.v),
        },
        prefixes,
        inputs,
        meta: NpyMeta::read(dir)?.unwrap_or_default(),
    })
}
