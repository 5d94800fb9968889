//! How views group, label and look up rows: the factor columns, which of them vary, the
//! grouping of a view (its own factors, then every other that varies), labels and cells.

use std::collections::BTreeMap;

use convsweep_proto::numbers::{percent, readable};
use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::Result;
use crate::plot::Line;

/// Columns that describe what a trial is (its factors), in the order reports name them.
pub const FACTORS: &[&str] = &[
    "dataset",
    "arch",
    "depth",
    "width",
    "kernel_size",
    "expansion",
    "inter_op",
    "train_mode",
    "init",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "label_smoothing",
    "warmup_epochs",
    "optimizer",
    "loss",
    "mixup",
    "cutmix",
    "precision",
    "schedule",
    "augment",
    "train_size",
    "test_size",
    "image_size",
];

pub(crate) fn cell(df: &DataFrame, column: &str, i: usize) -> String {
    match df.column(column).ok().and_then(|c| c.get(i).ok()) {
        None | Some(AnyValue::Null) => "-".into(),
        Some(AnyValue::String(s)) => s.to_owned(),
        Some(AnyValue::StringOwned(s)) => s.to_string(),
        Some(AnyValue::Float64(x)) => readable(x),
        Some(v) => v.to_string(),
    }
}

pub(crate) fn f64_at(df: &DataFrame, column: &str, i: usize) -> Option<f64> {
    let c = df.column(column).ok()?.cast(&DataType::Float64).ok()?;
    c.f64().ok()?.get(i)
}

/// Factor columns with more than one distinct value (nulls count as a value).
pub fn varying_factors(trials: &DataFrame) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for f in FACTORS {
        if let Ok(c) = trials.column(f)
            && c.as_materialized_series().n_unique()? > 1
        {
            out.push(*f);
        }
    }
    Ok(out)
}

/// `view` factors followed by every other varying factor.
pub(crate) fn grouping(view: &[&'static str], varying: &[&'static str]) -> Vec<&'static str> {
    let mut g: Vec<&'static str> = view.to_vec();
    g.extend(varying.iter().filter(|f| !view.contains(f)));
    g
}

/// `name=value` labels of the given columns of row `i`.
pub(crate) fn label(df: &DataFrame, columns: &[&str], i: usize) -> String {
    columns
        .iter()
        .map(|c| {
            let v = cell(df, c, i);
            match *c {
                "kernel_size" => format!("k={v}"),
                "expansion" if v == "-" => "no LC".into(),
                "expansion" => format!("E={v}"),
                "train_mode" | "init" | "dataset" | "inter_op" => v,
                other => format!("{other}={v}"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn seeds(trials: &DataFrame) -> Result<u32> {
    Ok(trials.column("seed")?.as_materialized_series().n_unique()? as u32)
}

/// Mean ± std (n) as text, or `-`.
pub(crate) fn pm(mean: Option<f64>, std: Option<f64>, n: u32) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{} ± {} ({n})", percent(m), percent(s)),
        (Some(m), None) => format!("{} ({n})", percent(m)),
        _ => "-".into(),
    }
}

/// Lines of `agg` against `x`, one per combination of the other `series` columns, with the
/// CI band.
pub(crate) fn lines_by(agg: &DataFrame, x: &str, series: &[&str], y: &str, band: Option<&str>) -> Vec<Line> {
    let mut by: BTreeMap<String, Line> = BTreeMap::new();
    for i in 0..agg.height() {
        let (Some(xv), Some(yv)) = (f64_at(agg, x, i), f64_at(agg, y, i)) else {
            continue;
        };
        let name = label(agg, series, i);
        let line = by.entry(name.clone()).or_insert_with(|| Line {
            name,
            ..Default::default()
        });
        line.points.push((xv, yv));
        if let Some(b) = band.and_then(|b| f64_at(agg, b, i)) {
            line.band.push((xv, yv - b, yv + b));
        }
    }
    by.into_values().collect()
}

/// The x axis for views "against E and k": the kernel size when it varies, else the
/// expansion (on a log2 axis), else none.
pub(crate) fn x_axis(varying: &[&'static str]) -> Option<(&'static str, &'static str, bool)> {
    if varying.contains(&"kernel_size") {
        Some(("kernel_size", "kernel size", false))
    } else if varying.contains(&"expansion") {
        Some(("expansion", "LC expansion E", true))
    } else {
        None
    }
}

/// Mean, std and n of final test accuracy (%) of the succeeded trials `filter` selects, by
/// `by` (an [`aggregate`] of them: groups without a succeeded or stopped trial are absent; a
/// group's stopped trials are in its flag only).
pub(crate) fn stats_by(trials: &DataFrame, by: &[&str], filter: Expr) -> Result<DataFrame> {
    // Stopped trials come along to be named in the flags (never in a mean).
    let succeeded = trials
        .clone()
        .lazy()
        .filter(filter.and(col("state").eq(lit("succeeded")).or(col("state").eq(lit("stopped")))))
        .collect()?;
    aggregate(
        &succeeded,
        Aggregation {
            factors: by,
            metric: "final_test_acc",
            scale: 100.0,
            min_seeds: 0,
        },
    )
}

/// `robustness` (or any per-trial frame) with the trials' factors and state joined on.
pub(crate) fn with_factors(frame: &DataFrame, trials: &DataFrame, varying: &[&'static str]) -> Result<DataFrame> {
    let mut keep: Vec<Expr> = vec![col("trial_id"), col("state"), col("seed")];
    keep.extend(varying.iter().map(|c| col(*c)));
    Ok(frame
        .clone()
        .lazy()
        .join(
            trials.clone().lazy().select(keep),
            [col("trial_id")],
            [col("trial_id")],
            JoinArgs::new(JoinType::Inner),
        )
        .collect()?)
}
