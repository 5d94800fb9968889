//! One view of a report: its heading, text, tables and plots.

use polars::prelude::DataFrame;

/// One view: text, tables and plots.
#[derive(Debug, Clone)]
pub struct Section {
    /// Anchor and file-name stem.
    pub id: String,
    /// Heading.
    pub title: String,
    /// What the view shows and how to read it.
    pub text: String,
    /// Named tables.
    pub tables: Vec<(String, DataFrame)>,
    /// Named SVG plots.
    pub plots: Vec<(String, String)>,
}

impl Section {
    /// An empty view with its anchor, heading and text.
    pub fn new(id: &str, title: &str, text: &str) -> Section {
        Section {
            id: id.into(),
            title: title.into(),
            text: text.into(),
            tables: Vec::new(),
            plots: Vec::new(),
        }
    }
}
