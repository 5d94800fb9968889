//! convsweep's analysis: results into Polars frames, aggregates over seeds and reports. The
//! only crate that links Polars.
//!
//! - [`frames`]: the result tables (from a state folder or Parquet) and their export.
//! - [`aggregate`]: count, mean, std and 95% CI over seeds, with flags for thin groups.
//! - [`report`]: the views of the paper's questions, as HTML, Markdown, CSV and Parquet.
//! - [`paper`]: the published Tables 1 and 3 and the check against them.
//! - [`plot`]: dependency-free SVG charts.
//! - [`tables`]: Markdown rendering.

pub mod aggregate;
pub mod error;
pub mod frames;
pub mod paper;
pub mod plot;
pub mod report;
pub mod tables;

pub use error::{Error, Result};
pub use frames::Frames;
pub use report::Report;

/// Exports a coordinator's state folder to Parquet files in `out`; returns the files written.
pub fn export(state_dir: &std::path::Path, out: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    Frames::from_state_dir(state_dir)?.write_parquet(out)
}
