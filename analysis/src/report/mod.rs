//! The sweep report: every view of the paper's questions as a table (and a plot where one
//! reads better), written as one self-contained HTML file (SVG inline), a Markdown version
//! (plots as files beside it) and every table as CSV and Parquet.
//!
//! Each view groups by the factors it is about *and* by every other factor that varies in the
//! sweep, so that nothing is silently averaged over; aggregates carry a flag when a group has
//! fewer seeds than the sweep or failed or unfinished trials.
//!
//! - this module: the document ([`Report`]): building it from the views, rendering, writing;
//! - [`section`]: one view's text, tables and plots;
//! - [`grouping`]: the factor columns and how views group, label and look up rows;
//! - [`views`]: one module per view.

pub mod grouping;
pub mod section;
pub mod views;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::frames::Frames;
use crate::plot::escape;
use crate::tables::to_markdown;

pub use grouping::{FACTORS, varying_factors};
pub use section::Section;

/// A built report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Title (the sweep name).
    pub title: String,
    /// One-paragraph summary.
    pub summary: String,
    /// The views.
    pub sections: Vec<Section>,
}

/// Files written by [`Report::write`].
#[derive(Debug, Clone)]
pub struct Written {
    /// report.html.
    pub html: PathBuf,
    /// report.md.
    pub markdown: PathBuf,
    /// tables/*.csv and tables/*.parquet.
    pub tables: Vec<PathBuf>,
    /// plots/*.svg.
    pub plots: Vec<PathBuf>,
}

impl Report {
    /// Builds every view from `frames`.
    pub fn build(frames: &Frames, title: &str) -> Result<Report> {
        let trials = &frames.trials;
        let varying = varying_factors(trials)?;
        let min_seeds = grouping::seeds(trials)?;
        let count = |state: &str| -> Result<usize> {
            Ok(trials
                .clone()
                .lazy()
                .filter(col("state").eq(lit(state)))
                .collect()?
                .height())
        };
        let (succeeded, failed, stopped) = (count("succeeded")?, count("failed")?, count("stopped")?);
        let summary = format!(
            "{} trials: {succeeded} succeeded, {failed} failed, {}{} unfinished; {min_seeds} seed(s); factors that vary: {}.",
            trials.height(),
            if stopped > 0 {
                format!("{stopped} stopped by the stopping rule (censored), ")
            } else {
                String::new()
            },
            trials.height() - succeeded - failed - stopped,
            if varying.is_empty() {
                "none".to_owned()
            } else {
                varying.join(", ")
            }
        );
        let mut sections = vec![
            views::accuracy::view(trials, &varying, min_seeds)?,
            views::layouts::table1(trials, &varying)?,
        ];
        // Table 2 is ImageNet's: only for sweeps with image-folder trials.
        sections.extend(views::layouts::table2(trials, &varying)?);
        sections.extend([
            views::layouts::table3(trials, &varying)?,
            views::gain::view(trials, &varying)?,
            views::robustness::view(frames, &varying, min_seeds)?,
            views::overfitting::view(frames, &varying, min_seeds)?,
            views::filters::view(frames, &varying, min_seeds)?,
            views::cost::view(trials, &varying)?,
            views::paper::view(trials)?,
            views::claims::view(frames)?,
        ]);
        if stopped > 0 {
            // The paper check and the claims compare finished trials only: say so where it counts.
            for s in sections.iter_mut().filter(|s| s.id == "paper" || s.id == "claims") {
                s.text.push_str(&format!(
                    " Finished trials only: the {stopped} trial(s) a stopping rule stopped are censored and left out."
                ));
            }
        }
        sections.extend(views::budget::view(frames)?);
        Ok(Report {
            title: title.into(),
            summary,
            sections,
        })
    }

    /// The table called `name` (each view names its tables, e.g. [`views::accuracy::TABLE`]).
    pub fn table(&self, name: &str) -> Option<&DataFrame> {
        self.sections
            .iter()
            .flat_map(|s| &s.tables)
            .find(|(n, _)| n == name)
            .map(|(_, df)| df)
    }

    /// The Markdown version (plots referenced as `plots/<name>.svg`).
    pub fn markdown(&self) -> String {
        let mut md = format!("# Sweep report: {}\n\n{}\n\n", self.title, self.summary);
        for (i, s) in self.sections.iter().enumerate() {
            let _ = write!(md, "## {}. {}\n\n{}\n\n", i + 1, s.title, s.text);
            for (name, df) in &s.tables {
                let _ = write!(md, "{}\n[{name}.csv](tables/{name}.csv)\n\n", to_markdown(df));
            }
            for (name, _) in &s.plots {
                let _ = write!(md, "![{name}](plots/{name}.svg)\n\n");
            }
        }
        md
    }

    /// The self-contained HTML version (XHTML-compatible, SVG inline).
    pub fn html(&self) -> String {
        let mut h = String::from(
            "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/>",
        );
        let _ = write!(h, "<title>Sweep report: {}</title>", escape(&self.title));
        h.push_str(
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
             table{border-collapse:collapse;margin:1em 0;font-size:13px}\
             td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}\
             th{background:#f3f3f3}td.t{text-align:left}.flag{color:#b00}</style></head><body>",
        );
        let _ = write!(
            h,
            "<h1>Sweep report: {}</h1><p>{}</p><ol>",
            escape(&self.title),
            escape(&self.summary)
        );
        for s in &self.sections {
            let _ = write!(h, "<li><a href=\"#{}\">{}</a></li>", s.id, escape(&s.title));
        }
        h.push_str("</ol>");
        for (i, s) in self.sections.iter().enumerate() {
            let _ = write!(
                h,
                "<h2 id=\"{}\">{}. {}</h2><p>{}</p>",
                s.id,
                i + 1,
                escape(&s.title),
                escape(&s.text)
            );
            for (_, svg) in &s.plots {
                let _ = write!(h, "<div class=\"plot\">{svg}</div>");
            }
            for (_, df) in &s.tables {
                h.push_str(&html_table(df));
            }
        }
        h.push_str("</body></html>\n");
        h
    }

    /// Writes `report.html`, `report.md`, `plots/*.svg` and `tables/*.{csv,parquet}` into
    /// `out` (created when missing).
    pub fn write(&self, out: &Path) -> Result<Written> {
        let io = |p: &Path, e| Error::io(p, e);
        for d in [out.to_owned(), out.join("tables"), out.join("plots")] {
            std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
        let mut written = Written {
            html: out.join("report.html"),
            markdown: out.join("report.md"),
            tables: Vec::new(),
            plots: Vec::new(),
        };
        std::fs::write(&written.html, self.html()).map_err(|e| io(&written.html, e))?;
        std::fs::write(&written.markdown, self.markdown()).map_err(|e| io(&written.markdown, e))?;
        for s in &self.sections {
            for (name, svg) in &s.plots {
                let p = out.join("plots").join(format!("{name}.svg"));
                std::fs::write(&p, svg).map_err(|e| io(&p, e))?;
                written.plots.push(p);
            }
            for (name, df) in &s.tables {
                let csv = out.join("tables").join(format!("{name}.csv"));
                let file = std::fs::File::create(&csv).map_err(|e| io(&csv, e))?;
                CsvWriter::new(file).finish(&mut df.clone())?;
                let parquet = out.join("tables").join(format!("{name}.parquet"));
                let file = std::fs::File::create(&parquet).map_err(|e| io(&parquet, e))?;
                ParquetWriter::new(file).finish(&mut df.clone())?;
                written.tables.extend([csv, parquet]);
            }
        }
        Ok(written)
    }
}

fn html_table(df: &DataFrame) -> String {
    let mut h = String::from("<table><tr>");
    for c in df.columns() {
        let _ = write!(h, "<th>{}</th>", escape(c.name().as_str()));
    }
    h.push_str("</tr>");
    for i in 0..df.height() {
        h.push_str("<tr>");
        for c in df.columns() {
            let v = c
                .get(i)
                .map(|v| crate::tables::format_cell(c.name(), v))
                .unwrap_or_default();
            let class = if c.name().as_str() == "flag" && !v.is_empty() {
                " class=\"t flag\""
            } else if c.dtype().is_primitive_numeric() {
                ""
            } else {
                " class=\"t\""
            };
            let _ = write!(h, "<td{class}>{}</td>", escape(&v));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}
