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

/// A plain-text table of `df` for a terminal: every column (none elided), cells as in
/// [`format_cell`], numbers right-aligned.
pub fn to_text(df: &DataFrame) -> String {
    let columns = df.columns();
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|c| c.name().to_string()).collect()];
    for i in 0..df.height() {
        grid.push(
            columns
                .iter()
                .map(|c| c.get(i).map(format_cell).unwrap_or_default())
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|j| grid.iter().map(|row| row[j].chars().count()).max().unwrap_or(0))
        .collect();
    let numeric: Vec<bool> = columns.iter().map(|c| c.dtype().is_primitive_numeric()).collect();
    let mut out = String::new();
    for (r, row) in grid.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, cell)| {
                if numeric[j] && r > 0 {
                    format!("{cell:>w$}", w = widths[j])
                } else {
                    format!("{cell:<w$}", w = widths[j])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if r == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_tables_show_every_column_aligned() {
        let names: Vec<String> = (0..14).map(|i| format!("column_{i}")).collect();
        let columns: Vec<Column> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Column::new(n.as_str().into(), [i as f64 + 0.5, 100.0]))
            .collect();
        let df = DataFrame::new_infer_height(columns).unwrap();
        let text = to_text(&df);
        for n in &names {
            assert!(text.contains(n.as_str()), "{n} in\n{text}");
        }
        assert!(!text.contains('…'), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "header, rule, two rows");
        assert!(lines[2].starts_with("    0.50"), "right-aligned to the header: {text}");
    }
}
