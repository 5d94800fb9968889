//! convsweep's analysis: results into Polars frames, aggregates over seeds and reports. The
//! only crate that links Polars.
//!
//! - [`frames`]: the result tables (from a state folder or Parquet) and their export.
//! - [`tables`]: aggregates and Markdown rendering.
//! - [`report`]: the sweep report.

pub mod error;
pub mod frames;
pub mod report;
pub mod tables;

pub use error::{Error, Result};
pub use frames::Frames;

/// Exports a coordinator's state folder to Parquet files in `out`; returns the files written.
pub fn export(state_dir: &std::path::Path, out: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    Frames::from_state_dir(state_dir)?.write_parquet(out)
}
