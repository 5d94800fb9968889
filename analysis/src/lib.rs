//! convsweep's analysis: results into Polars frames, aggregates over seeds and reports. The
//! only crate that links Polars. It knows result rows ([`convsweep_proto::results`]), not
//! where they are stored: the CLI reads them and hands them over.
//!
//! - [`frames`]: the result tables (from result rows or Parquet) and their export.
//! - [`aggregate`]: count, mean, std and 95% CI over seeds, with flags for thin groups.
//! - [`report`]: the document and its views of the paper's questions, as HTML, Markdown, CSV
//!   and Parquet.
//! - [`paper`]: the published Tables 1 and 3 and the verdict of a reproduced cell.
//! - [`claims`]: the paper's directional claims as tests over seeds, with verdicts.
//! - [`plot`]: dependency-free SVG charts.
//! - [`tables`]: Markdown and text rendering, numbers formatted for reading.
//! - [`tensorboard`]: a sweep as TensorBoard logs (scalars per trial, hyper-parameters).
//! - [`error`]: [`Error`], what can go wrong while exporting or analysing.

pub mod aggregate;
pub mod claims;
pub mod error;
pub mod frames;
pub mod paper;
pub mod plot;
pub mod report;
pub mod tables;
pub mod tensorboard;

pub use error::{Error, Result};
pub use frames::Frames;
pub use report::Report;
