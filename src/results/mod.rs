//! The files a run leaves: the results schema ([`record`]: CSV rows and JSON metadata) and
//! the report's [`artefacts`] beside them. Data only: the harness writes these files and the
//! report reads them, and this module imports neither.

pub mod artefacts;
pub mod decode;
pub mod perplexity;
pub mod record;

/// Whether the CSV at `path` has a column called `column` in its header: how a run's
/// schema (sweep, decode, perplexity) is told from its file alone.
pub fn has_column(path: &std::path::Path, column: &str) -> crate::error::Result<bool> {
    use crate::error::Error;
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    let header = r
        .headers()
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    Ok(header.iter().any(|h| h == column))
}
