//! Makes the run [artefacts](crate::results::artefacts) of a sweep: the pattern previews of
//! the swept variants, and the attention-map gallery of a run on real activations.

use std::path::Path;

use super::maps::{MapsConfig, write_maps};
use crate::attention::{Attention, Options, Problem};
use crate::error::Result;
use crate::maps::{HeadKind, MapStats};
use crate::oracle;
use crate::pattern::{Geometry, Mask, Pattern};
use crate::registry::Registry;
use crate::results::artefacts::{
    GALLERY_MAX_N, Gallery, PREVIEW_N, Preview, Previews, maps_dir, write_json,
};
use crate::workload::{NpyData, Workload};

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
