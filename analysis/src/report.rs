//! The sweep report (Markdown for now).

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::frames::Frames;
use crate::tables::{headline, to_markdown};

/// Writes `report.md` into `out` and returns its path and the headline table.
pub fn write_markdown_report(frames: &Frames, title: &str, out: &Path) -> Result<(PathBuf, DataFrame)> {
    let table = headline(&frames.trials)?;
    let total = frames.trials.height();
    let succeeded = frames
        .trials
        .clone()
        .lazy()
        .filter(col("state").eq(lit("succeeded")))
        .collect()?
        .height();
    let mut md = format!("# Sweep report: {title}\n\n");
    md.push_str(&format!("{succeeded} of {total} trials succeeded.\n\n"));
    md.push_str("## Test accuracy (%) by kernel size x train mode x init\n\n");
    md.push_str("Mean and standard deviation over seeds of the final-epoch test accuracy.\n\n");
    md.push_str(&to_markdown(&table));
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?;
    Ok((path, table))
}
