//! The analysis crate's error type.

use std::path::Path;

/// What can go wrong while exporting or analysing results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Polars failed (a schema that does not fit, a broken Parquet file).
    #[error("polars: {0}")]
    Polars(#[from] polars::prelude::PolarsError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Results of the analysis crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
