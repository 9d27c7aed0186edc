//! Attention maps: what each head attends to, under full attention and under each variant.
//!
//! For every selected (sequence, head) of a workload, [`write_maps`] draws the `n x n` weights
//! of full softmax attention next to each variant's effective weights
//! ([`Attention::weights`]: the renormalized masked weights of a pattern variant, the
//! normalized `phi(q) . phi(k)` of linear attention) and their absolute difference, and
//! records per-head statistics ([`MapStats`]) that make specialised heads visible: heads that
//! look at the previous token, heads that stay within a local band, heads that park their
//! attention on the first token.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};

use crate::attention::{self, Attention, Fidelity, Options, Problem};
use crate::error::{Error, ErrorKind, Result};
use crate::oracle;
use crate::report::charts::{WeightPanel, save_weight_maps};
use crate::shape::Shape;
use crate::workload::{Qkv, Workload, gaussian, load_npy_dir};

/// The band of [`MapStats::local_mass`]: keys within this distance of the query.
pub const LOCAL_BAND: usize = 32;

/// Statistics of one attention map, each a mean over its query rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapStats {
    /// Shannon entropy of each row's weights, nats (0 = one key; ln n = uniform).
    pub entropy: f64,
    /// Weight within `+-LOCAL_BAND` positions of the query.
    pub local_mass: f64,
    /// Weight on the first token.
    pub first_mass: f64,
    /// Weight on the previous token (`j = i - 1`; rows `i >= 1`).
    pub prev_mass: f64,
}

impl MapStats {
    /// The statistics of `w` (`[n_q, n_kv]`, self-attention positions).
    pub fn of(w: &Array2<f64>) -> Self {
        let n = w.nrows().max(1) as f64;
        let mut s = Self {
            entropy: 0.0,
            local_mass: 0.0,
            first_mass: 0.0,
            prev_mass: 0.0,
        };
        for (i, row) in w.outer_iter().enumerate() {
            s.entropy -= row
                .iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| p * p.ln())
                .sum::<f64>();
            let lo = i.saturating_sub(LOCAL_BAND);
            let hi = (i + LOCAL_BAND + 1).min(row.len());
            if lo < hi {
                s.local_mass += row.slice(ndarray::s![lo..hi]).sum();
            }
            s.first_mass += row[0];
            if i >= 1 && i - 1 < row.len() {
                s.prev_mass += row[i - 1];
            }
        }
        s.entropy /= n;
        s.local_mass /= n;
        s.first_mass /= n;
        s.prev_mass /= (w.nrows().saturating_sub(1)).max(1) as f64;
        s
    }

    /// A short description of what the head does, from its statistics (thresholds: more
    /// than 0.3 of the weight on the previous or the first token, more than 0.6 in the
    /// local band; heuristics for spotting heads, not a taxonomy).
    pub fn kind(&self) -> &'static str {
        if self.prev_mass > 0.3 {
            "previous-token"
        } else if self.first_mass > 0.3 {
            "first-token"
        } else if self.local_mass > 0.6 {
            "local"
        } else {
            "broad"
        }
    }
}

/// One row of `maps.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct MapRow {
    /// The sequence (file prefix for npy workloads).
    pub sequence: String,
    /// The head.
    pub head: usize,
    /// `full` or the variant spec.
    pub variant: String,
    /// Statistics of the map (the columns entropy, local_mass, first_mass, prev_mass).
    pub stats: MapStats,
    /// Mean total-variation distance of each row from full attention's (0 = identical,
    /// 1 = disjoint); empty for full attention itself.
    pub tv_vs_full: Option<f64>,
    /// The image holding this head's panels.
    pub image: String,
}

/// What `attnbench maps` draws.
#[derive(Debug)]
pub struct MapsConfig {
    /// The inputs (real activations from `npy:DIR`, or Gaussian: 1 sequence x 4 heads x d 64).
    pub workload: Workload,
    /// The variants drawn next to full attention.
    pub variants: Vec<Box<dyn Attention>>,
    /// Heads to draw; `None`: all.
    pub heads: Option<Vec<usize>>,
    /// Sequence length (a prefix of the npy positions); `None`: all of them, up to 512.
    pub n: Option<usize>,
    /// Causal masking.
    pub causal: bool,
    /// Log colour scale.
    pub log: bool,
    /// The output directory; created, and must not hold an earlier `maps.csv`.
    pub out_dir: PathBuf,
    /// Seed of a Gaussian workload.
    pub seed: u64,
}

/// The files [`write_maps`] wrote.
#[derive(Debug, Clone)]
pub struct MapsOutput {
    /// One PNG per (sequence, head).
    pub images: Vec<PathBuf>,
    /// Every map's statistics.
    pub rows: Vec<MapRow>,
    /// `maps.csv`.
    pub csv: PathBuf,
    /// `maps.md`: the statistics as a table, with the images.
    pub markdown: PathBuf,
}

fn bad(option: &'static str, message: String) -> Error {
    Error::new(ErrorKind::BadOption { option, message })
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Draws the maps and writes `maps.csv` and `maps.md` into `cfg.out_dir`.
pub fn write_maps(cfg: &MapsConfig) -> Result<MapsOutput> {
    let (qkv, names) = match &cfg.workload {
        Workload::Npy { dir } => {
            let data = load_npy_dir(dir)?;
            (data.qkv, data.prefixes)
        }
        Workload::Gaussian { scale } => {
            let n = cfg.n.unwrap_or(256);
            if n == 0 {
                return Err(bad("n", "must be at least 1".into()));
            }
            let shape = Shape::self_attention(1, 4, n, 64)?;
            (gaussian(&shape, *scale, cfg.seed), vec!["gaussian".into()])
        }
    };
    let max_len = qkv.q.shape()[2];
    let n = cfg.n.unwrap_or(max_len.min(512));
    if n == 0 || n > max_len {
        return Err(bad(
            "n",
            format!("must be between 1 and the workload's {max_len} positions, got {n}"),
        ));
    }
    let heads_available = qkv.q.shape()[1];
    let heads = cfg
        .heads
        .clone()
        .unwrap_or_else(|| (0..heads_available).collect());
    if heads.is_empty() {
        return Err(bad("heads", "no heads selected".into()));
    }
    if let Some(h) = heads.iter().find(|&&h| h >= heads_available) {
        return Err(bad(
            "heads",
            format!("head {h} does not exist; the workload has heads 0..{heads_available}"),
        ));
    }
    let qkv = Qkv {
        q: qkv.q.slice(ndarray::s![.., .., ..n, ..]).to_owned(),
        k: qkv.k.slice(ndarray::s![.., .., ..n, ..]).to_owned(),
        v: qkv.v.slice(ndarray::s![.., .., ..n, ..]).to_owned(),
    };
    let opts = Options::new().causal(cfg.causal);
    let problem = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)?;
    let csv_path = cfg.out_dir.join("maps.csv");
    if csv_path.exists() {
        return Err(io(
            &csv_path,
            "exists: maps never overwrite an earlier run; choose another --out",
        ));
    }
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| io(&cfg.out_dir, e))?;

    let mut images = Vec::new();
    let mut rows = Vec::new();
    for (b, name) in names.iter().enumerate() {
        for &h in &heads {
            let stem = format!("{name}_h{h}");
            let full = oracle::weights(&problem, None, b, h);
            let full_stats = MapStats::of(&full);
            let max = full.iter().cloned().fold(0.0, f64::max);
            let mut panels = vec![WeightPanel {
                title: format!("full, head {h} ({})", full_stats.kind()),
                caption: caption(&full_stats),
                weights: full.clone(),
                max,
            }];
            let mut head_rows = vec![(String::from("full"), full_stats, None)];
            for v in &cfg.variants {
                let w = attention::weights(v.as_ref(), &problem, b, h)?.or_else(|| {
                    (v.fidelity() == Fidelity::Exact)
                        .then(|| oracle::weights(&problem, v.pattern(), b, h))
                });
                let Some(w) = w else {
                    continue;
                };
                let stats = MapStats::of(&w);
                let diff = (&w - &full).mapv(f64::abs);
                let tv = 0.5 * diff.sum_axis(Axis(1)).mean().unwrap_or(0.0);
                panels.push(WeightPanel {
                    title: v.to_string(),
                    caption: caption(&stats),
                    weights: w,
                    max,
                });
                panels.push(WeightPanel {
                    title: format!("|{} - full|", v.name()),
                    caption: format!("mean row total variation {tv:.3}"),
                    weights: diff,
                    max,
                });
                head_rows.push((v.to_string(), stats, Some(tv)));
            }
            let title = format!(
                "{name}, head {h}, n = {n}{}",
                if cfg.causal { ", causal" } else { "" }
            );
            let png = save_weight_maps(&panels, &title, cfg.log, &cfg.out_dir, &stem)?;
            let image = png
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            for (variant, stats, tv_vs_full) in head_rows {
                rows.push(MapRow {
                    sequence: name.clone(),
                    head: h,
                    variant,
                    stats,
                    tv_vs_full,
                    image: image.clone(),
                });
            }
            images.push(png);
        }
    }

    let mut writer = csv::Writer::from_path(&csv_path).map_err(|e| io(&csv_path, e))?;
    writer
        .write_record([
            "sequence",
            "head",
            "variant",
            "entropy",
            "local_mass",
            "first_mass",
            "prev_mass",
            "tv_vs_full",
            "image",
        ])
        .map_err(|e| io(&csv_path, e))?;
    for r in &rows {
        let s = r.stats;
        writer
            .write_record([
                r.sequence.clone(),
                r.head.to_string(),
                r.variant.clone(),
                s.entropy.to_string(),
                s.local_mass.to_string(),
                s.first_mass.to_string(),
                s.prev_mass.to_string(),
                r.tv_vs_full.map_or(String::new(), |t| t.to_string()),
                r.image.clone(),
            ])
            .map_err(|e| io(&csv_path, e))?;
    }
    writer.flush().map_err(|e| io(&csv_path, e))?;
    let markdown = cfg.out_dir.join("maps.md");
    std::fs::write(&markdown, maps_markdown(cfg, n, &rows)).map_err(|e| io(&markdown, e))?;
    Ok(MapsOutput {
        images,
        rows,
        csv: csv_path,
        markdown,
    })
}

fn caption(s: &MapStats) -> String {
    format!(
        "entropy {:.2}  local±{LOCAL_BAND} {:.2}  first {:.2}  prev {:.2}",
        s.entropy, s.local_mass, s.first_mass, s.prev_mass
    )
}

/// The statistics table of every map, grouped by image.
pub fn maps_table(rows: &[MapRow], image_prefix: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| sequence | head | kind (full) | variant | entropy | local ±{LOCAL_BAND} | first token | previous token | TV vs full |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let mut kind = "";
    for r in rows {
        if r.variant == "full" {
            kind = r.stats.kind();
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | `{}` | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.sequence,
            r.head,
            kind,
            r.variant,
            r.stats.entropy,
            r.stats.local_mass,
            r.stats.first_mass,
            r.stats.prev_mass,
            r.tv_vs_full.map_or("-".into(), |t| format!("{t:.3}"))
        );
    }
    let mut seen = Vec::new();
    for r in rows {
        if !seen.contains(&&r.image) {
            seen.push(&r.image);
            let _ = writeln!(
                md,
                "\n![{} head {}]({image_prefix}{})",
                r.sequence, r.head, r.image
            );
        }
    }
    md
}

fn maps_markdown(cfg: &MapsConfig, n: usize, rows: &[MapRow]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Attention maps: {}\n", cfg.workload);
    let _ = writeln!(
        md,
        "n = {n}{}. Each image: full softmax attention, then per variant its effective weights and |variant - full|, all on the scale of full attention's largest weight. Statistics are means over query rows; kinds, checked in this order: previous-token (> 0.3 of the weight on j = i - 1), first-token (> 0.3 on j = 0), local (> 0.6 within ±{LOCAL_BAND}; uniform weights would put (2 x {LOCAL_BAND} + 1) / n there), else broad.\n",
        if cfg.causal { ", causal" } else { "" }
    );
    md.push_str(&maps_table(rows, ""));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_known_maps() {
        // Previous-token head on 4 positions (row 0 looks at itself).
        let mut w = Array2::zeros((4, 4));
        w[[0, 0]] = 1.0;
        for i in 1..4 {
            w[[i, i - 1]] = 1.0;
        }
        let s = MapStats::of(&w);
        assert_eq!((s.entropy, s.prev_mass, s.local_mass), (0.0, 1.0, 1.0));
        assert_eq!(s.first_mass, 0.5);
        assert_eq!(s.kind(), "previous-token");
        // Uniform: entropy ln n, first-token mass 1/n.
        let u = Array2::from_elem((100, 100), 0.01);
        let s = MapStats::of(&u);
        assert!((s.entropy - 100f64.ln()).abs() < 1e-12);
        assert!((s.first_mass - 0.01).abs() < 1e-12);
        assert_eq!(s.kind(), "broad");
        // Everything on the first token.
        let mut f = Array2::zeros((50, 50));
        f.column_mut(0).fill(1.0);
        assert_eq!(MapStats::of(&f).kind(), "first-token");
    }
}
