//! What a report takes from the runs' [artefacts](crate::results::artefacts) besides the rows:
//! the pattern previews, and the attention-map gallery of a run on real activations (its PNG
//! panels copied into the report, its statistics read from `maps.csv`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::maps::{LOCAL_BAND, MapRow, maps_table, read_csv};
use crate::results::artefacts::{Gallery, Previews, maps_dir, patterns_path, read_json};

/// The pattern previews recorded beside `csvs`, each panel once (the first run's drawing
/// wins).
pub(super) fn previews(csvs: &[PathBuf]) -> Result<Previews> {
    let mut all = Previews::default();
    for csv in csvs {
        let Some(p) = read_json::<Previews>(&patterns_path(csv))? else {
            continue;
        };
        all.n = p.n;
        for panel in p.panels {
            if !all.panels.iter().any(|q| q.title == panel.title) {
                all.panels.push(panel);
            }
        }
    }
    Ok(all)
}

/// The gallery of the first of `csvs` that recorded one: its images copied into
/// `<dir>/maps/`, and its markdown section (empty when no run recorded a gallery).
pub(super) fn gallery(csvs: &[PathBuf], dir: &Path) -> Result<String> {
    for csv in csvs {
        let src = maps_dir(csv);
        let Some(gallery) = read_json::<Gallery>(&src.join("gallery.json"))? else {
            continue;
        };
        let rows = read_csv(&src.join("maps.csv"))?;
        let dst = dir.join("maps");
        copy_dir(&src, &dst)?;
        return Ok(section(&gallery, &rows));
    }
    Ok(String::new())
}

fn section(gallery: &Gallery, rows: &[MapRow]) -> String {
    let shown: Vec<MapRow> = rows
        .iter()
        .filter(|r| gallery.picked.contains(&(r.sequence.clone(), r.head)))
        .cloned()
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "## Attention maps of the real activations\n");
    let _ = writeln!(
        md,
        "What the heads of `{}` attend to at n = {}{} (log colour scale), under full attention and under the run's variants: one head of each kind found (those heads of every sequence are in `maps/`, statistics in `maps/maps.csv`; `attnbench maps` draws all heads). Kinds are heuristics from the statistics: previous-token (> 0.3 of the weight on the previous token), first-token (> 0.3 on the first), local (> 0.6 within ±{LOCAL_BAND}), else broad.\n",
        gallery.workload,
        gallery.n,
        if gallery.causal { ", causal" } else { "" }
    );
    md.push_str(&maps_table(&shown, "maps/"));
    md
}

/// Copies the files of `src` into `dst` (created), leaving files already there alone.
fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::io(p, e);
    std::fs::create_dir_all(dst).map_err(|e| io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| io(src, e))? {
        let path = entry.map_err(|e| io(src, e))?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = dst.join(name);
        if path.is_file() && !target.exists() {
            std::fs::copy(&path, &target).map_err(|e| io(&target, e))?;
        }
    }
    Ok(())
}
