//! The learning gain: learned minus frozen accuracy against kernel size.

use polars::prelude::*;

use crate::error::Result;
use crate::plot::LineChart;
use crate::report::grouping::*;
use crate::report::section::Section;

/// The gain view: learned minus frozen mean accuracy for otherwise equal configurations.
pub fn view(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
    let g: Vec<&'static str> = grouping(&["kernel_size", "expansion", "init"], varying)
        .into_iter()
        .filter(|f| *f != "train_mode")
        .collect();
    let mut by = g.clone();
    by.push("train_mode");
    let stats = stats_by(trials, &by, lit(true))?;
    let learned = stats
        .clone()
        .lazy()
        .filter(col("train_mode").eq(lit("learned")))
        .select(
            g.iter()
                .map(|c| col(*c))
                .chain([col("mean").alias("learned")])
                .collect::<Vec<_>>(),
        );
    let frozen = stats.lazy().filter(col("train_mode").eq(lit("frozen"))).select(
        g.iter()
            .map(|c| col(*c))
            .chain([col("mean").alias("frozen")])
            .collect::<Vec<_>>(),
    );
    let keys: Vec<Expr> = g.iter().map(|c| col(*c)).collect();
    let mut args = JoinArgs::new(JoinType::Inner);
    args.nulls_equal = true;
    let df = learned
        .join(frozen, keys.clone(), keys, args)
        .with_column((col("learned") - col("frozen")).alias("gain"))
        .sort(
            g.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    let series: Vec<&str> = g.iter().copied().filter(|f| *f != "kernel_size").collect();
    let mut s = Section::new(
        "gain",
        "Learning gain: learned minus frozen accuracy against kernel size",
        "Mean test accuracy (%) of learned minus frozen spatial filters for otherwise equal \
         configurations. The paper finds the gap grows with k and shrinks with E.",
    );
    s.plots.push((
        "gain".into(),
        LineChart {
            title: "Learned - frozen test accuracy".into(),
            x_label: "kernel size".into(),
            y_label: "gain (percentage points)".into(),
            x_log2: false,
            lines: lines_by(&df, "kernel_size", &series, "gain", None),
        }
        .svg(),
    ));
    s.tables.push(("gain".into(), df));
    Ok(s)
}
