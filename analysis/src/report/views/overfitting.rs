//! Overfitting: learning curves, the generalisation gap, the final epoch against the best.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::Result;
use crate::frames::Frames;
use crate::plot::{Line, LineChart};
use crate::report::grouping::*;
use crate::report::section::Section;

/// The overfitting view: learning curves per configuration and the final gaps.
pub fn view(frames: &Frames, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
    let mut s = Section::new(
        "overfitting",
        "Overfitting: learning curves, generalisation gap, final vs best epoch",
        "Per configuration, train (solid) and test (dashed) accuracy per epoch, mean over seeds with \
         the min-max band; the table gives the final gap (train - test accuracy and test - train \
         loss) and how far the last epoch falls below the best one.",
    );
    let per_epoch = with_factors(&frames.epochs, &frames.trials, varying)?;
    let keys: Vec<Expr> = varying.iter().map(|c| col(*c)).chain([col("epoch")]).collect();
    let curves = per_epoch
        .lazy()
        .group_by(keys)
        .agg([
            (col("train_acc") * lit(100.0)).mean().alias("train"),
            (col("train_acc") * lit(100.0)).min().alias("train_lo"),
            (col("train_acc") * lit(100.0)).max().alias("train_hi"),
            (col("test_acc") * lit(100.0)).mean().alias("test"),
            (col("test_acc") * lit(100.0)).min().alias("test_lo"),
            (col("test_acc") * lit(100.0)).max().alias("test_hi"),
        ])
        .sort(
            varying
                .iter()
                .map(|c| (*c).to_owned())
                .chain(["epoch".to_owned()])
                .collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    let mut configs: BTreeMap<String, (Line, Line)> = BTreeMap::new();
    for i in 0..curves.height() {
        let name = label(&curves, varying, i);
        let e = f64_at(&curves, "epoch", i).unwrap_or(0.0);
        let entry = configs.entry(name).or_insert_with(|| {
            (
                Line {
                    name: "train".into(),
                    ..Default::default()
                },
                Line {
                    name: "test".into(),
                    dashed: true,
                    ..Default::default()
                },
            )
        });
        for (line, prefix) in [(&mut entry.0, "train"), (&mut entry.1, "test")] {
            if let Some(y) = f64_at(&curves, prefix, i) {
                line.points.push((e, y));
            }
            if let (Some(lo), Some(hi)) = (
                f64_at(&curves, &format!("{prefix}_lo"), i),
                f64_at(&curves, &format!("{prefix}_hi"), i),
            ) {
                line.band.push((e, lo, hi));
            }
        }
    }
    const MAX_CURVES: usize = 12;
    if configs.len() > MAX_CURVES {
        let _ = write!(
            s.text,
            " Curves are drawn for the first {MAX_CURVES} of {} configurations; the table covers all.",
            configs.len()
        );
    }
    for (i, (name, (train, test))) in configs.into_iter().take(MAX_CURVES).enumerate() {
        s.plots.push((
            format!("curves_{i}"),
            LineChart {
                title: if name.is_empty() { "all trials".into() } else { name },
                x_label: "epoch".into(),
                y_label: "accuracy (%)".into(),
                x_log2: false,
                lines: vec![train, test],
            }
            .svg(),
        ));
    }
    let g = grouping(&[], varying);
    let mut summary = aggregate(
        &frames.trials,
        Aggregation {
            factors: &g,
            metric: "gap_acc",
            scale: 100.0,
            min_seeds,
        },
    )?;
    summary.rename("mean", "gap_acc_mean".into())?;
    summary.rename("std", "gap_acc_std".into())?;
    let extra = frames
        .trials
        .clone()
        .lazy()
        .filter(col("state").eq(lit("succeeded")))
        .group_by(g.iter().map(|c| col(*c)).collect::<Vec<_>>())
        .agg([
            col("gap_loss").mean().alias("gap_loss_mean"),
            (col("final_minus_best") * lit(100.0))
                .mean()
                .alias("final_minus_best_mean"),
            col("best_epoch")
                .cast(DataType::Float64)
                .mean()
                .alias("best_epoch_mean"),
        ]);
    let keys: Vec<Expr> = g.iter().map(|c| col(*c)).collect();
    let mut args = JoinArgs::new(JoinType::Left);
    args.nulls_equal = true;
    let summary = if g.is_empty() {
        // One group on each side: put the columns side by side.
        summary.hstack(extra.collect()?.columns())?
    } else {
        summary.lazy().join(extra, keys.clone(), keys, args).collect()?
    };
    s.tables.push(("overfitting".into(), summary.drop_many(["ci95"])));
    Ok(s)
}
