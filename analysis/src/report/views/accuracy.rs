//! Test accuracy by kernel size x train mode x init, over seeds.

use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::Result;
use crate::plot::LineChart;
use crate::report::grouping::*;
use crate::report::section::Section;

/// The name of this view's table: test accuracy over seeds by every factor that varies, the
/// table `convsweep run` prints at the end.
pub const TABLE: &str = "accuracy";

/// The accuracy view: final test accuracy aggregated over seeds, plotted against k.
pub fn view(trials: &DataFrame, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
    let g = grouping(&["kernel_size", "train_mode", "init"], varying);
    let agg = aggregate(
        trials,
        Aggregation {
            factors: &g,
            metric: "final_test_acc",
            scale: 100.0,
            min_seeds,
        },
    )?;
    // Trials whose loss turned non-finite (failed for good, never retried), per configuration:
    // beside the accuracy, so that a learning-rate axis shows where training diverged.
    let by: Vec<Expr> = g.iter().map(|f| col(*f)).collect();
    let diverged = trials
        .clone()
        .lazy()
        .group_by(by.clone())
        .agg([col("diverged").cast(DataType::UInt32).sum().alias("diverged")]);
    let agg = agg
        .lazy()
        .join(
            diverged,
            by.clone(),
            by,
            JoinArgs {
                nulls_equal: true,
                ..JoinArgs::new(JoinType::Left)
            },
        )
        .sort(
            g.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    let mut s = Section::new(
        "accuracy",
        "Test accuracy by kernel size x train mode x init",
        "Final-epoch test accuracy (%) over seeds: mean, sample std, 95% confidence half-width (t). \
         Flags mark groups with fewer seeds than the sweep or with failed, stopped or unfinished trials; \
         `diverged` counts trials whose training loss turned non-finite (not retried: the same spec \
         diverges again).",
    );
    let series: Vec<&str> = g.iter().copied().filter(|f| *f != "kernel_size").collect();
    s.plots.push((
        "accuracy".into(),
        LineChart {
            title: "Test accuracy vs kernel size".into(),
            x_label: "kernel size".into(),
            y_label: "test accuracy (%)".into(),
            x_log2: false,
            lines: lines_by(&agg, "kernel_size", &series, "mean", Some("ci95")),
        }
        .svg(),
    ));
    s.tables.push((TABLE.into(), agg));
    Ok(s)
}
