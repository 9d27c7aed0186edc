//! The files a run leaves: the results schema ([`record`]: CSV rows and JSON metadata) and
//! the report's [`artefacts`] beside them. Data only: the harness writes these files and the
//! report reads them, and this module imports neither.

pub mod artefacts;
pub mod decode;
pub mod perplexity;
pub mod record;
