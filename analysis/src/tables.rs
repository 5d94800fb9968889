//! Rendering tables as Markdown and text, numbers formatted for reading.

use convsweep_proto::numbers::{duration, percent, readable};
use polars::prelude::*;

/// How a column's numbers read: its unit, told by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Accuracies and their differences, in percent or percentage points: one decimal.
    Percent,
    /// Seconds: `12.3s`, `1m12s`.
    Seconds,
    /// Anything else (a learning rate, a radius, a ratio): [`readable`].
    Plain,
}

/// The unit of a report column, from its name: accuracy statistics (`mean`, `std`, `ci95`,
/// the claims' `effect` and interval, the layouts' `learned`/`frozen`/`gain`, any `*acc*` or
/// `*_pct`) are percentages; `*_s`, `*_seconds` (not `*_per_s`) are seconds.
pub fn unit_of(column: &str) -> Unit {
    const PERCENT: [&str; 9] = [
        "mean",
        "std",
        "ci95",
        "ci95_low",
        "ci95_high",
        "effect",
        "learned",
        "frozen",
        "gain",
    ];
    if PERCENT.contains(&column)
        || column.contains("acc")
        || column.ends_with("_pct")
        || column.starts_with("final_minus_best")
        || column.starts_with("baseline ")
        || column.starts_with("LC ")
    {
        Unit::Percent
    } else if (column.ends_with("_s") && !column.ends_with("per_s")) || column.ends_with("seconds") {
        Unit::Seconds
    } else {
        Unit::Plain
    }
}

/// A cell of `column` as reports print it: numbers in the column's [`Unit`], nulls (and NaN)
/// empty. Files (CSV, Parquet) keep the full value.
pub fn format_cell(column: &str, v: AnyValue) -> String {
    let float = |x: f64| match unit_of(column) {
        _ if x.is_nan() => String::new(),
        Unit::Percent => percent(x),
        Unit::Seconds => duration(x),
        Unit::Plain => readable(x),
    };
    match v {
        AnyValue::Null => String::new(),
        AnyValue::Float64(x) => float(x),
        AnyValue::Float32(x) => float(f64::from(x)),
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
            .map(|c| {
                c.get(i)
                    .map(|v| format_cell(c.name(), v))
                    .unwrap_or_default()
                    .replace('|', "\\|")
            })
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
                .map(|c| c.get(i).map(|v| format_cell(c.name(), v)).unwrap_or_default())
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
        assert!(lines[2].starts_with("     0.5"), "right-aligned to the header: {text}");
    }

    #[test]
    fn numbers_read_in_their_columns_unit_and_files_keep_every_digit() {
        let mut df = df!(
            "lr" => [1e-30, 1e30],
            "mean" => [83.14159, 9.96],
            "wall_seconds" => [72.4, 4.25],
            "train_images_per_s" => [312.345, 1.5],
        )
        .unwrap();
        let md = to_markdown(&df);
        assert!(md.contains("| 1e-30 | 83.1 | 1m12s | 312.3 |"), "{md}");
        assert!(md.contains("| 1e30 | 10.0 | 4.25s | 1.5 |"), "{md}");
        let mut csv = Vec::new();
        CsvWriter::new(&mut csv).finish(&mut df).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(
            csv.contains("83.14159") && csv.contains("312.345") && csv.contains("72.4"),
            "{csv}"
        );
        assert_eq!(unit_of("final_test_acc"), Unit::Percent);
        assert_eq!(unit_of("startup_s"), Unit::Seconds);
        assert_eq!(unit_of("eps_x255"), Unit::Plain);
    }
}
