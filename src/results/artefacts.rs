//! The run artefacts a sweep writes beside `<run>.csv` and `<run>.json`: everything a report
//! needs besides the rows, so that [`write_report`](crate::report::write_report) reads files
//! only, never builds a variant or reads a workload, and an old run re-plots identically on
//! any machine.
//!
//! - `<run>.patterns.json` ([`Previews`]): what each swept pattern variant attends, drawn at
//!   n = 64 from its registry preview spec (a small instance of the same pattern).
//! - `<run>.maps/` (runs on real activations only): `maps.csv`, one PNG per drawn head and
//!   `gallery.json` ([`Gallery`]): the heads of each kind found and the variants drawn.
//!
//! [`crate::harness::artefacts`] makes them.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The length pattern previews are drawn at.
pub const PREVIEW_N: usize = 64;

/// At most this many positions of a real-activation workload are drawn in the gallery.
pub const GALLERY_MAX_N: usize = 2048;

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

/// What a run's attention-map gallery shows (`<run>.maps/gallery.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gallery {
    /// The workload the maps were drawn from, as in the results.
    pub workload: String,
    /// The positions drawn (a prefix).
    pub n: usize,
    /// Causal masking.
    pub causal: bool,
    /// One (sequence, head) of each kind found, in the order of [`HeadKind::ALL`](crate::maps::HeadKind::ALL).
    pub picked: Vec<(String, usize)>,
}

/// Writes `value` as pretty JSON to `path`.
///
/// Written whole or not at all: into a temporary file beside `path`, synced, then renamed
/// over it, so a full disk or a kill mid-write leaves the earlier contents intact.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::io(path, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Reads JSON written by [`write_json`]; `None` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::format(path, e.to_string(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}
