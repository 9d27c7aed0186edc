//! The run artefacts a sweep writes beside `<run>.csv` and `<run>.json`: everything a report
//! needs besides the rows, so that [`write_report`](crate::report::write_report) reads files
//! only, never builds a variant or reads a workload, and an old run re-plots identically on
//! any machine.
//!
//! - `<run>.patterns.json` ([`Previews`]): what each swept pattern variant attends, drawn at
//!   n = 64 from its registry preview spec (a small instance of the same pattern).
//! - `<run>.maps/` (runs on real activations only): `maps.csv`, one PNG per drawn head and
//!   `gallery.json` ([`Gallery`]): the heads of each kind found and the variants drawn.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::maps::{MapsConfig, write_maps};
use crate::attention::{Attention, Options, Problem};
use crate::error::{Error, Result};
use crate::maps::{HeadKind, MapStats};
use crate::oracle;
use crate::pattern::{Geometry, Mask, Pattern};
use crate::registry::Registry;
use crate::workload::{NpyData, Workload};

/// The length pattern previews are drawn at.
pub const PREVIEW_N: usize = 64;

/// At most this many positions of a real-activation workload are drawn in the gallery.
pub const GALLERY_MAX_N: usize = 256;

/// `<run>.patterns.json` beside the results CSV `csv`.
pub fn patterns_path(csv: &Path) -> PathBuf {
    csv.with_extension("patterns.json")
}

/// `<run>.maps/` beside the results CSV `csv`.
pub fn maps_dir(csv: &Path) -> PathBuf {
    csv.with_extension("maps")
}

/// One pattern preview: its title (the preview spec, `causal` appended) and its rows of
/// allowed (`#`) and masked (`.`) keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    /// The preview spec, with ` causal` for the causal panel.
    pub title: String,
    /// One string per query row, one character per key.
    pub rows: Vec<String>,
}

impl Preview {
    /// The allowed pairs as booleans, row by row.
    pub fn cells(&self) -> Vec<Vec<bool>> {
        self.rows
            .iter()
            .map(|r| r.chars().map(|c| c == '#').collect())
            .collect()
    }
}

/// Every pattern preview of a run (`<run>.patterns.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previews {
    /// The length the previews are drawn at.
    pub n: usize,
    /// Bidirectional and causal panels of each swept pattern variant.
    pub panels: Vec<Preview>,
}

/// Previews of the pattern variants among `variants`, one per registry name (drawn from its
/// [`preview`](crate::spec::VariantInfo::preview) spec, a small instance of the pattern that
/// is legible at n = 64), bidirectional and causal. Variants `registry` does not know are
/// left out.
pub fn pattern_previews(registry: &Registry, variants: &[Box<dyn Attention>]) -> Previews {
    let g = Geometry::new(PREVIEW_N, PREVIEW_N);
    let mut names: Vec<&str> = Vec::new();
    let mut panels = Vec::new();
    for v in variants {
        if v.pattern().is_none() || names.contains(&v.name()) {
            continue;
        }
        names.push(v.name());
        let Some(info) = registry.info(v.name()) else {
            continue;
        };
        let spec = if info.preview.is_empty() {
            info.name
        } else {
            info.preview
        };
        let Ok(small) = registry.build(spec) else {
            continue;
        };
        let Some(pattern) = small.pattern() else {
            continue;
        };
        if !pattern.unsupported(g).is_empty() {
            continue;
        }
        for causal in [false, true] {
            let mask = Mask::new(Some(pattern), causal);
            let rows = (0..g.n_q)
                .map(|i| {
                    (0..g.n_kv)
                        .map(|j| if mask.allows(g, i, j) { '#' } else { '.' })
                        .collect()
                })
                .collect();
            let title = format!("{small}{}", if causal { " causal" } else { "" });
            panels.push(Preview { title, rows });
        }
    }
    Previews {
        n: PREVIEW_N,
        panels,
    }
}

/// What a run's attention-map gallery shows (`<run>.maps/gallery.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gallery {
    /// The workload the maps were drawn from, as in the results.
    pub workload: String,
    /// The positions drawn (a prefix).
    pub n: usize,
    /// Causal masking.
    pub causal: bool,
    /// One (sequence, head) of each kind found, in the order of [`HeadKind::ALL`].
    pub picked: Vec<(String, usize)>,
}

/// Draws the gallery of a run on real activations into [`maps_dir`]`(csv)`: every head is
/// classified from its full-attention statistics, one head of each kind is picked, and those
/// heads of every sequence are drawn under full attention and up to three of `variants`
/// (those other than `full` and `flash`, whose maps are full attention's).
pub fn write_gallery(
    csv: &Path,
    data: &NpyData,
    workload: &Workload,
    variants: &[Box<dyn Attention>],
    causal: bool,
) -> Result<Gallery> {
    let n = data.max_len().min(GALLERY_MAX_N);
    let qkv = data.prefix(n);
    let problem = Problem::new(
        qkv.q.view(),
        qkv.k.view(),
        qkv.v.view(),
        Options::new().causal(causal),
    )?;
    let mut picked: Vec<(String, usize)> = Vec::new();
    for kind in HeadKind::ALL {
        'search: for (b, name) in data.prefixes.iter().enumerate() {
            for h in 0..qkv.q.shape()[1] {
                let w = oracle::weights(&problem, None, b, h);
                if MapStats::of(&w).kind() == kind {
                    picked.push((name.clone(), h));
                    break 'search;
                }
            }
        }
    }
    let mut heads: Vec<usize> = picked.iter().map(|p| p.1).collect();
    heads.sort_unstable();
    heads.dedup();
    let mut specs: Vec<String> = Vec::new();
    for v in variants {
        let spec = v.to_string();
        if !matches!(v.name(), "full" | "flash") && !specs.contains(&spec) && specs.len() < 3 {
            specs.push(spec);
        }
    }
    let mut drawn: Vec<&dyn Attention> = Vec::new();
    for v in variants {
        if specs.contains(&v.to_string()) && !drawn.iter().any(|d| d.to_string() == v.to_string()) {
            drawn.push(v.as_ref());
        }
    }
    let dir = maps_dir(csv);
    write_maps(&MapsConfig {
        workload: workload.clone(),
        variants: drawn,
        heads: Some(heads),
        n: Some(n),
        causal,
        log: true,
        out_dir: dir.clone(),
        seed: 0,
    })?;
    let gallery = Gallery {
        workload: workload.to_string(),
        n,
        causal,
        picked,
    };
    write_json(&dir.join("gallery.json"), &gallery)?;
    Ok(gallery)
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io(path, e))?;
    std::fs::write(path, text).map_err(|e| io(path, e))
}

/// Reads JSON written by [`write_json`]; `None` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| io(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

fn io(path: &Path, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::io(path, e)
}
