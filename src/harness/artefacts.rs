//! Makes the attention-map gallery of a sweep on real activations, one of the run
//! [artefacts](crate::results::artefacts). (The other, the pattern previews, comes from the
//! registry: [`Registry::previews`](crate::registry::Registry::previews).)

use std::path::Path;

use super::maps::{MapsConfig, write_maps};
use crate::attention::{Attention, Fidelity, Options, Problem};
use crate::error::Result;
use crate::maps::{HeadKind, MapStats};
use crate::oracle;
use crate::results::artefacts::{GALLERY_MAX_N, Gallery, maps_dir, write_json};
use crate::workload::{NpyData, Workload};

/// Draws the gallery of a run on real activations into [`maps_dir`]`(csv)`: every head is
/// classified from its full-attention statistics, one head of each kind is picked, and those
/// heads of every sequence are drawn under full attention and up to three of `variants`
/// (not the dense exact ones, whose maps are full attention's), with the run's options
/// (causal masking and score modifiers).
pub fn write_gallery(
    csv: &Path,
    data: &NpyData,
    workload: &Workload,
    variants: &[Box<dyn Attention>],
    opts: Options,
    budget: u64,
) -> Result<Gallery> {
    let n = data.max_len().min(GALLERY_MAX_N);
    let qkv = data.prefix(n);
    let problem = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)?;
    let mut picked: Vec<(String, usize)> = Vec::new();
    for kind in HeadKind::ALL {
        'search: for (b, name) in data.inputs.iter().enumerate() {
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
        // Dense exact variants draw full attention's map again.
        let dense_exact = v.pattern().is_none() && v.fidelity() == Fidelity::Exact;
        if !dense_exact && !specs.contains(&spec) && specs.len() < 3 {
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
        opts,
        log: true,
        out_dir: dir.clone(),
        seed: 0,
        max_memory: budget,
    })?;
    let gallery = Gallery {
        workload: workload.to_string(),
        n,
        causal: opts.causal,
        picked,
    };
    write_json(&dir.join("gallery.json"), &gallery)?;
    Ok(gallery)
}
