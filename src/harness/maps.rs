//! Attention maps of a workload: for every selected (sequence, head), the `n x n` weights of
//! full softmax attention next to each variant's effective weights
//! ([`crate::attention::weights`]: the renormalized masked weights of a pattern variant, the
//! normalized `phi(q) . phi(k)` of linear attention) and their absolute difference, drawn as
//! PNG panels, with the statistics of [`crate::maps`] in `maps.csv` and `maps.md`.
//! `attnbench maps` runs it, and a sweep on real activations writes a gallery of it beside
//! its results for the report.

use std::fmt::Write as _;
use std::path::PathBuf;

use ndarray::Axis;

use crate::attention::{self, Attention, Fidelity, Options, Problem};
use crate::error::{Error, ErrorKind, Result};
use crate::maps::{LOCAL_BAND, MapRow, MapStats, maps_table, write_csv};
use crate::oracle;
use crate::report::heatmaps::{WeightPanel, save_weight_maps};
use crate::shape::Shape;
use crate::workload::{Qkv, Workload, gaussian, load_npy_dir_within};

/// What `attnbench maps` draws.
#[derive(Debug)]
pub struct MapsConfig<'a> {
    /// The inputs (real activations from `npy:DIR`, or Gaussian: 1 sequence x 4 heads x d 64).
    pub workload: Workload,
    /// The variants drawn next to full attention.
    pub variants: Vec<&'a dyn Attention>,
    /// Heads to draw; `None`: all.
    pub heads: Option<Vec<usize>>,
    /// Sequence length (a prefix of the npy positions); `None`: all of them, up to 512.
    pub n: Option<usize>,
    /// Causal masking and score modifiers of every map (those of the run, for a gallery).
    pub opts: Options,
    /// Log colour scale.
    pub log: bool,
    /// The output directory; created, and must not hold an earlier `maps.csv`.
    pub out_dir: PathBuf,
    /// Seed of a Gaussian workload.
    pub seed: u64,
    /// The memory budget in bytes: the inputs and the maps' `n x n` f64 matrices (with the
    /// variants' workspaces) must fit in it, or nothing is computed.
    pub max_memory: u64,
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

/// Bytes the maps of one head need at once beyond the inputs: full attention's `n x n` f64
/// weights and their panel copy, each variant's weights and difference (and the difference's
/// temporary), and the largest workspace of a variant computing its weights.
fn map_bytes(cfg: &MapsConfig<'_>, shape: &Shape) -> u64 {
    let n = shape.n_kv() as u64;
    let matrices = 3 + 3 * cfg.variants.len() as u64;
    let workspace = cfg
        .variants
        .iter()
        .map(|v| v.cost(shape, &cfg.opts, 1).workspace_bytes)
        .max()
        .unwrap_or(0);
    (8 * matrices)
        .saturating_mul(n.saturating_mul(n))
        .saturating_add(workspace)
}

/// Refuses maps of `shape` whose inputs and matrices exceed `cfg.max_memory`.
fn check_budget(cfg: &MapsConfig<'_>, shape: &Shape) -> Result<()> {
    let needed = map_bytes(cfg, shape).saturating_add(shape.input_bytes());
    if needed > cfg.max_memory {
        return Err(bad(
            "max-memory",
            format!(
                "maps at n = {} need ~{} MB (n x n f64 weights of full attention and of {} variant(s), inputs, workspaces), over the budget of {} MB; draw a shorter prefix with --n",
                shape.n_kv(),
                needed >> 20,
                cfg.variants.len(),
                cfg.max_memory >> 20
            ),
        ));
    }
    Ok(())
}

/// Draws the maps and writes `maps.csv` and `maps.md` into `cfg.out_dir`.
pub fn write_maps(cfg: &MapsConfig<'_>) -> Result<MapsOutput> {
    if let Some(h) = cfg.heads.as_ref().and_then(|heads| {
        heads
            .iter()
            .enumerate()
            .find(|(i, h)| heads[..*i].contains(h))
            .map(|(_, h)| *h)
    }) {
        return Err(bad("heads", format!("head {h} is listed twice")));
    }
    for (i, v) in cfg.variants.iter().enumerate() {
        let spec = v.to_string();
        if spec == "full" {
            return Err(bad(
                "variants",
                "full attention is always drawn first; leave `full` out of --variants".into(),
            ));
        }
        if cfg.variants[..i].iter().any(|u| u.to_string() == spec) {
            return Err(bad("variants", format!("{spec} is listed twice")));
        }
    }
    let (qkv, names) = match &cfg.workload {
        Workload::Npy { dir } => {
            let data = load_npy_dir_within(dir, cfg.max_memory)?;
            data.meta.check(&cfg.opts)?;
            (data.qkv, data.inputs)
        }
        Workload::Structured { layer } => {
            let n = cfg.n.unwrap_or(512);
            if n == 0 {
                return Err(bad("n", "must be at least 1".into()));
            }
            cfg.workload.meta()?.check(&cfg.opts)?;
            let cal = crate::workload::structured::Calibration::builtin()
                .layer(*layer)
                .expect("validated when parsed");
            let d = crate::workload::structured::HEAD_DIM;
            let shape = Shape::new(1, cal.heads(), cal.kv_heads(), n, n, d, d)?;
            check_budget(cfg, &shape)?;
            (
                cal.generate(n, n, cfg.seed),
                vec![format!("structured_L{layer}")],
            )
        }
        Workload::Gaussian { scale } => {
            let n = cfg.n.unwrap_or(256);
            if n == 0 {
                return Err(bad("n", "must be at least 1".into()));
            }
            let shape = Shape::self_attention(1, 4, n, 64)?;
            check_budget(cfg, &shape)?;
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
            format!(
                "head {h} does not exist; the workload has heads 0 to {}",
                heads_available - 1
            ),
        ));
    }
    let qkv = Qkv {
        q: qkv.q.slice(ndarray::s![.., .., ..n, ..]).to_owned(),
        k: qkv.k.slice(ndarray::s![.., .., ..n, ..]).to_owned(),
        v: qkv.v.slice(ndarray::s![.., .., ..n, ..]).to_owned(),
    };
    let opts = cfg.opts;
    let problem = Problem::new(qkv.q.view(), qkv.k.view(), qkv.v.view(), opts)?;
    check_budget(cfg, &problem.shape())?;
    let csv_path = cfg.out_dir.join("maps.csv");
    if csv_path.exists() {
        return Err(Error::io(
            &csv_path,
            "exists: maps never overwrite an earlier run; choose another --out",
        ));
    }
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;

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
                // A variant that cannot run these options (e.g. linear with ALiBi) has no map.
                let w = match attention::weights(*v, &problem, b, h) {
                    Err(e) if matches!(e.kind(), ErrorKind::Unsupported { .. }) => continue,
                    w => w?,
                };
                let w = match (w, v.fidelity()) {
                    (Some(w), _) => Some(w),
                    (None, Fidelity::Exact) => Some(oracle::weights(&problem, v.pattern(), b, h)),
                    (None, Fidelity::Selected) => {
                        let rows: Vec<usize> = (0..problem.shape().n_q()).collect();
                        attention::chosen(*v, &problem, &rows)?
                            .map(|c| oracle::weights_chosen(&problem, &c, b, h))
                    }
                    (None, _) => None,
                };
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
                if cfg.opts.causal { ", causal" } else { "" }
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

    write_csv(&csv_path, &rows)?;
    let markdown = cfg.out_dir.join("maps.md");
    std::fs::write(&markdown, maps_markdown(cfg, n, &rows)).map_err(|e| Error::io(&markdown, e))?;
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

fn maps_markdown(cfg: &MapsConfig<'_>, n: usize, rows: &[MapRow]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Attention maps: {}\n", cfg.workload);
    let _ = writeln!(
        md,
        "n = {n}{}. Each image: full softmax attention, then per variant its effective weights and |variant - full|, all on the scale of full attention's largest weight (maps of more than 256 positions are down-sampled, each pixel the largest weight it covers, with a strip on the left of each panel repeating the first key's column, where attention sinks are). Statistics are means over query rows; kinds, checked in this order: previous-token (> 0.3 of the weight on j = i - 1), first-token (> 0.3 on j = 0), local (> 0.6 within ±{LOCAL_BAND}; uniform weights would put (2 x {LOCAL_BAND} + 1) / n there), else broad.\n",
        if cfg.opts.causal { ", causal" } else { "" }
    );
    md.push_str(&maps_table(rows, ""));
    md
}
