//! Rendering tables as Markdown.

use polars::prelude::*;

/// A cell as reports print it: floats with two decimals, nulls (and NaN) empty.
pub fn format_cell(v: AnyValue) -> String {
    match v {
        AnyValue::Null => String::new(),
        AnyValue::Float64(x) if x.is_nan() => String::new(),
        AnyValue::Float64(x) => format!("{x:.2}"),
        AnyValue::Float32(x) => format!("{x:.2}"),
        AnyValue::String(s) => s.to_owned(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// A GitHub-flavoured Markdown table of `df`.
pub fn to_markdown(df: &DataFrame) -> String {
    let columns = df.columns();
    let mut out = String::new();
    let names: Vec<&str> = columns.iter().map(|c| c.name().as_str()).collect();
    out.push_str(&format!("| {} |\n", names.join(" | ")));
    let aligns: Vec<&str> = columns
        .iter()
        .map(|c| {
            if c.dtype().is_primitive_numeric() {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    out.push_str(&format!("| {} |\n", aligns.join(" | ")));
    for i in 0..df.height() {
        let row: Vec<String> = columns
            .iter()
            .map(|c| c.get(i).map(format_cell).unwrap_or_default().replace('|', "\\|"))
            .collect();
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}
