//! Aggregates over seeds and their rendering as Markdown tables.

use polars::prelude::*;

use crate::error::Result;

/// Mean, standard deviation and count of final test accuracy (in %) of succeeded trials,
/// grouped by `factors`, sorted by them.
pub fn mean_accuracy_by(trials: &DataFrame, factors: &[&str]) -> Result<DataFrame> {
    let by: Vec<Expr> = factors.iter().map(|f| col(*f)).collect();
    let acc = col("final_test_acc") * lit(100.0);
    let df = trials
        .clone()
        .lazy()
        .filter(col("state").eq(lit("succeeded")))
        .group_by(by)
        .agg([
            acc.clone().mean().alias("test_acc_mean"),
            acc.std(1).alias("test_acc_std"),
            col("seed").count().alias("seeds"),
        ])
        .sort(
            factors.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    Ok(df)
}

/// The user's headline grid: test accuracy by kernel size x train mode x init.
pub fn headline(trials: &DataFrame) -> Result<DataFrame> {
    mean_accuracy_by(trials, &["kernel_size", "train_mode", "init"])
}

fn cell(v: AnyValue) -> String {
    match v {
        AnyValue::Null => "".into(),
        AnyValue::Float64(x) if x.is_nan() => "".into(),
        AnyValue::Float64(x) => format!("{x:.2}"),
        AnyValue::Float32(x) => format!("{x:.2}"),
        AnyValue::String(s) => s.to_owned(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// A GitHub-flavoured Markdown table of `df` (floats with two decimals, nulls empty).
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
        let row: Vec<String> = columns.iter().map(|c| c.get(i).map(cell).unwrap_or_default()).collect();
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}
