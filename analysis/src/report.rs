//! The sweep report: every view of the paper's questions as a table (and a plot where one
//! reads better), written as one self-contained HTML file (SVG inline), a Markdown version
//! (plots as files beside it) and every table as CSV and Parquet.
//!
//! Each view groups by the factors it is about *and* by every other factor that varies in the
//! sweep, so that nothing is silently averaged over; aggregates carry a flag when a group has
//! fewer seeds than the sweep or failed or unfinished trials.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::{Error, Result};
use crate::frames::Frames;
use crate::paper;
use crate::plot::{Heatmap, HeatmapGrid, Line, LineChart, escape};
use crate::tables::to_markdown;

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
    "schedule",
    "augment",
    "train_size",
    "test_size",
];

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

fn cell(df: &DataFrame, column: &str, i: usize) -> String {
    match df.column(column).ok().and_then(|c| c.get(i).ok()) {
        None | Some(AnyValue::Null) => "-".into(),
        Some(AnyValue::String(s)) => s.to_owned(),
        Some(AnyValue::StringOwned(s)) => s.to_string(),
        Some(AnyValue::Float64(x)) => format!("{x}"),
        Some(v) => v.to_string(),
    }
}

fn f64_at(df: &DataFrame, column: &str, i: usize) -> Option<f64> {
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
fn grouping(view: &[&'static str], varying: &[&'static str]) -> Vec<&'static str> {
    let mut g: Vec<&'static str> = view.to_vec();
    g.extend(varying.iter().filter(|f| !view.contains(f)));
    g
}

/// `name=value` labels of the given columns of row `i`.
fn label(df: &DataFrame, columns: &[&str], i: usize) -> String {
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

fn seeds(trials: &DataFrame) -> Result<u32> {
    Ok(trials.column("seed")?.as_materialized_series().n_unique()? as u32)
}

/// Mean ± std (n) as text, or `-`.
fn pm(mean: Option<f64>, std: Option<f64>, n: u32) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{m:.2} ± {s:.2} ({n})"),
        (Some(m), None) => format!("{m:.2} ({n})"),
        _ => "-".into(),
    }
}

/// Lines of `agg` against `x`, one per combination of the other `series` columns, with the
/// CI band.
fn lines_by(agg: &DataFrame, x: &str, series: &[&str], y: &str, band: Option<&str>) -> Vec<Line> {
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
fn x_axis(varying: &[&'static str]) -> Option<(&'static str, &'static str, bool)> {
    if varying.contains(&"kernel_size") {
        Some(("kernel_size", "kernel size", false))
    } else if varying.contains(&"expansion") {
        Some(("expansion", "LC expansion E", true))
    } else {
        None
    }
}

fn section(id: &str, title: &str, text: &str) -> Section {
    Section {
        id: id.into(),
        title: title.into(),
        text: text.into(),
        tables: Vec::new(),
        plots: Vec::new(),
    }
}

fn accuracy_view(trials: &DataFrame, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
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
    let mut s = section(
        "accuracy",
        "Test accuracy by kernel size x train mode x init",
        "Final-epoch test accuracy (%) over seeds: mean, sample std, 95% confidence half-width (t). \
         Flags mark groups with fewer seeds than the sweep or with failed or unfinished trials.",
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
    s.tables.push(("accuracy".into(), agg));
    Ok(s)
}

/// Mean, std and n of final test accuracy (%) of the trials `filter` selects, by `by`.
fn stats_by(trials: &DataFrame, by: &[&str], filter: Expr) -> Result<DataFrame> {
    let acc = col("final_test_acc") * lit(100.0);
    Ok(trials
        .clone()
        .lazy()
        .filter(filter.and(col("state").eq(lit("succeeded"))))
        .group_by(by.iter().map(|c| col(*c)).collect::<Vec<_>>())
        .agg([
            acc.clone().mean().alias("mean"),
            acc.std(1).alias("std"),
            col("seed").count().cast(DataType::UInt32).alias("n"),
        ])
        .collect()?)
}

fn lookup(df: &DataFrame, keys: &[(&str, &str)]) -> (Option<f64>, Option<f64>, u32) {
    for i in 0..df.height() {
        if keys.iter().all(|(c, v)| cell(df, c, i) == *v) {
            let n = f64_at(df, "n", i).unwrap_or(0.0) as u32;
            return (f64_at(df, "mean", i), f64_at(df, "std", i), n);
        }
    }
    (None, None, 0)
}

/// Row keys of a paper-layout table: `first` and every other varying factor except `skip`.
fn row_keys(first: &'static str, varying: &[&'static str], skip: &[&str]) -> Vec<&'static str> {
    let mut keys = vec![first];
    keys.extend(varying.iter().copied().filter(|f| *f != first && !skip.contains(f)));
    keys
}

/// A paper-layout table: one row per distinct value of `keys` among `rows_of`, one column per
/// `(heading, extra key-value pairs)`, each cell the mean ± std (n) of `stats`.
fn layout(
    rows_of: &DataFrame,
    keys: &[&str],
    stats: &DataFrame,
    columns: &[(String, Vec<(&str, String)>)],
) -> Result<DataFrame> {
    let mut seen: Vec<Vec<String>> = Vec::new();
    for i in 0..rows_of.height() {
        let k: Vec<String> = keys.iter().map(|c| cell(rows_of, c, i)).collect();
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    seen.sort();
    let mut out: Vec<Column> = keys
        .iter()
        .enumerate()
        .map(|(j, name)| Column::new((*name).into(), seen.iter().map(|k| k[j].clone()).collect::<Vec<_>>()))
        .collect();
    for (heading, extra) in columns {
        let values: Vec<String> = seen
            .iter()
            .map(|k| {
                let mut cond: Vec<(&str, &str)> = keys.iter().copied().zip(k.iter().map(String::as_str)).collect();
                cond.extend(extra.iter().map(|(c, v)| (*c, v.as_str())));
                let (m, s, n) = lookup(stats, &cond);
                pm(m, s, n)
            })
            .collect();
        out.push(Column::new(heading.as_str().into(), values));
    }
    Ok(DataFrame::new_infer_height(out)?)
}

fn table1_view(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
    let keys = row_keys("dataset", varying, &["expansion", "train_mode", "inter_op"]);
    let lc = col("expansion").is_not_null();
    let mut by: Vec<&str> = keys.clone();
    by.push("train_mode");
    let base = stats_by(trials, &by, lc.clone().not())?;
    by.push("expansion");
    let lc_stats = stats_by(trials, &by, lc)?;
    let e_max = (0..lc_stats.height())
        .filter_map(|i| f64_at(&lc_stats, "expansion", i).map(|e| e as i64))
        .max();
    let mode = |m: &str| vec![("train_mode", m.to_owned())];
    let mut columns = vec![
        ("baseline learned".to_owned(), mode("learned")),
        ("baseline frozen".to_owned(), mode("frozen")),
    ];
    let mut df = layout(trials, &keys, &base, &columns)?;
    if let Some(e) = e_max {
        columns = ["learned", "frozen"]
            .iter()
            .map(|m| {
                (
                    format!("LC {m} (E={e})"),
                    vec![("train_mode", (*m).to_owned()), ("expansion", e.to_string())],
                )
            })
            .collect();
        let lc_df = layout(trials, &keys, &lc_stats, &columns)?;
        for c in &columns {
            df.with_column(lc_df.column(c.0.as_str())?.clone())?;
        }
    }
    let mut s = section(
        "table1",
        "Paper Table 1 layout: baseline vs LC-blocks per dataset",
        "Test accuracy (%), mean ± std (seeds), one row per dataset and every other factor that varies. The paper's Table 1 uses ResNet-20-16 with E = 128; here the LC columns use the largest expansion present. Without LC-block trials only the baseline columns are filled.",
    );
    s.tables.push(("table1".into(), df));
    Ok(s)
}

fn table3_view(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
    let keys = row_keys("inter_op", varying, &["train_mode", "inter_op"]);
    let lc_trials = trials.clone().lazy().filter(col("expansion").is_not_null()).collect()?;
    let mut by = keys.clone();
    by.push("train_mode");
    let stats = stats_by(trials, &by, col("expansion").is_not_null())?;
    let columns: Vec<(String, Vec<(&str, String)>)> = ["frozen", "learned"]
        .iter()
        .map(|m| ((*m).to_owned(), vec![("train_mode", (*m).to_owned())]))
        .collect();
    let df = layout(&lc_trials, &keys, &stats, &columns)?;
    let mut s = section(
        "table3",
        "Paper Table 3 layout: the operation inside LC-blocks",
        "Test accuracy (%) of LC-block trials by the operation between the spatial and the 1x1 conv \
         (the paper: ResNet-LC-20-16x64 on CIFAR-10), one row per operation and every other factor \
         that varies. Empty when the sweep has no LC-block trials.",
    );
    s.tables.push(("table3".into(), df));
    Ok(s)
}

fn gain_view(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
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
    let mut s = section(
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

/// `robustness` (or any per-trial frame) with the trials' factors and state joined on.
fn with_factors(frame: &DataFrame, trials: &DataFrame, varying: &[&'static str]) -> Result<DataFrame> {
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

fn robustness_view(frames: &Frames, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
    let mut s = section(
        "robustness",
        "Robustness: accuracy under attack and under common corruptions",
        "Adversarial accuracy (%) against the L-inf radius (FGSM; PGD where the sweep asked for it), \
         on [0, 1] inputs, and mean accuracy over the CIFAR-10-C corruptions and severities, by \
         every factor that varies. Radius 0 and severity 0 are the clean accuracy on the same \
         evaluated images.",
    );
    let rob = with_factors(&frames.robustness, &frames.trials, varying)?;
    // Radii in units of 1/255, as papers quote them.
    let attacks = attack_curves(&rob)?
        .with_column(
            (col("eps") * lit(255.0))
                .round(4, RoundMode::default())
                .alias("eps_x255"),
        )
        .collect()?;
    let g = grouping(&["kind", "eps_x255"], varying);
    let agg = aggregate(
        &attacks,
        Aggregation {
            factors: &g,
            metric: "accuracy",
            scale: 100.0,
            min_seeds,
        },
    )?;
    let series: Vec<&str> = g.iter().copied().filter(|f| *f != "eps_x255").collect();
    let mut lines = lines_by(&agg, "eps_x255", &series, "mean", Some("ci95"));
    for l in &mut lines {
        l.dashed = l.name.starts_with("pgd");
    }
    s.plots.push((
        "robustness_eps".into(),
        LineChart {
            title: "Adversarial accuracy vs radius".into(),
            x_label: "eps (x 1/255)".into(),
            y_label: "accuracy (%)".into(),
            x_log2: false,
            lines,
        }
        .svg(),
    ));
    s.tables.push(("robustness_attacks".into(), agg));
    let corruption = aggregate(
        &frames.trials,
        Aggregation {
            factors: &grouping(&["kernel_size", "expansion", "train_mode"], varying),
            metric: "mean_corruption_acc",
            scale: 100.0,
            min_seeds,
        },
    )?;
    if let Some((x, x_label, x_log2)) = x_axis(varying) {
        let series: Vec<&str> = grouping(&["kernel_size", "expansion", "train_mode"], varying)
            .into_iter()
            .filter(|f| *f != x && (varying.contains(f) || *f == "train_mode"))
            .collect();
        s.plots.push((
            "robustness_corruptions".into(),
            LineChart {
                title: format!("Mean corruption accuracy vs {x_label}"),
                x_label: x_label.into(),
                y_label: "accuracy (%)".into(),
                x_log2,
                lines: lines_by(&corruption, x, &series, "mean", Some("ci95")),
            }
            .svg(),
        ));
    }
    s.tables.push(("robustness_corruptions".into(), corruption));
    let per = rob
        .lazy()
        .filter(
            col("kind")
                .eq(lit("corruption"))
                .or(col("kind").eq(lit("clean")))
                .and(col("state").eq(lit("succeeded"))),
        )
        .group_by(
            grouping(&["name", "severity"], varying)
                .iter()
                .map(|c| col(*c))
                .collect::<Vec<_>>(),
        )
        .agg([(col("accuracy") * lit(100.0)).mean().alias("mean")])
        .sort(
            grouping(&["name", "severity"], varying)
                .iter()
                .map(|c| (*c).to_owned())
                .collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    let sev_series: Vec<&str> = varying.to_vec();
    let mut by_severity: BTreeMap<String, Line> = BTreeMap::new();
    for i in 0..per.height() {
        let name = label(&per, &sev_series, i);
        let (Some(x), Some(y)) = (f64_at(&per, "severity", i), f64_at(&per, "mean", i)) else {
            continue;
        };
        by_severity
            .entry(name.clone())
            .or_insert_with(|| Line {
                name,
                ..Default::default()
            })
            .points
            .push((x, y));
    }
    // Average the corruptions at each severity.
    let lines: Vec<Line> = by_severity
        .into_values()
        .map(|mut l| {
            let mut acc: BTreeMap<i64, (f64, u32)> = BTreeMap::new();
            for (x, y) in &l.points {
                let e = acc.entry(*x as i64).or_default();
                e.0 += y;
                e.1 += 1;
            }
            l.points = acc
                .into_iter()
                .map(|(x, (sum, n))| (x as f64, sum / f64::from(n)))
                .collect();
            l
        })
        .collect();
    s.plots.push((
        "robustness_severity".into(),
        LineChart {
            title: "Mean corruption accuracy vs severity".into(),
            x_label: "severity (0: clean)".into(),
            y_label: "accuracy (%)".into(),
            x_log2: false,
            lines,
        }
        .svg(),
    ));
    s.tables.push(("robustness_by_corruption".into(), per));
    Ok(s)
}

/// The attack rows (FGSM, PGD), each attack's curve starting at eps = 0 from the clean accuracy
/// on the same images where trials measured it (an explicit eps = 0 attack row then gives way).
fn attack_curves(rob: &DataFrame) -> Result<LazyFrame> {
    let is_attack = col("kind").eq(lit("fgsm")).or(col("kind").eq(lit("pgd")));
    let clean = rob.clone().lazy().filter(col("kind").eq(lit("clean"))).collect()?;
    if clean.height() == 0 {
        return Ok(rob.clone().lazy().filter(is_attack));
    }
    let kinds = rob
        .clone()
        .lazy()
        .filter(is_attack.clone())
        .select([col("kind").unique().sort(SortOptions::default())])
        .collect()?;
    let mut parts = vec![rob.clone().lazy().filter(is_attack.and(col("eps").gt(lit(0.0))))];
    for i in 0..kinds.height() {
        let kind = cell(&kinds, "kind", i);
        parts.push(
            clean
                .clone()
                .lazy()
                .with_columns([lit(kind.clone()).alias("kind"), lit(kind).alias("name")]),
        );
    }
    Ok(concat(parts, UnionArgs::default())?)
}

fn overfitting_view(frames: &Frames, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
    let mut s = section(
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

fn filters_view(frames: &Frames, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
    let mut s = section(
        "filters",
        "Filters: variance entropy of the first and last layer, spatial-variance heatmaps",
        "Filter variance entropy (FVE, log10; LC-blocks measured on their folded filters) of each \
         trial's first and last spatial layer at initialisation and at the end, mean over seeds; \
         and the k x k variance of the std-scaled final kernels at each position, averaged over \
         layers and trials.",
    );
    let per_trial = frames
        .filters
        .clone()
        .lazy()
        .group_by_stable([col("trial_id"), col("stage")])
        .agg([
            col("fve").first().alias("fve_first"),
            col("fve").last().alias("fve_last"),
        ])
        .collect()?;
    let joined = with_factors(&per_trial, &frames.trials, varying)?;
    let g = grouping(&["stage"], varying);
    let mut tables = Vec::new();
    for which in ["fve_first", "fve_last"] {
        let mut agg = aggregate(
            &joined,
            Aggregation {
                factors: &g,
                metric: which,
                scale: 1.0,
                min_seeds,
            },
        )?;
        agg.rename("mean", format!("{which}_mean").as_str().into())?;
        agg.rename("std", format!("{which}_std").as_str().into())?;
        tables.push(agg);
    }
    let mut fve = tables.remove(0);
    let last = tables.remove(0);
    fve.with_column(last.column("fve_last_mean")?.clone())?;
    fve.with_column(last.column("fve_last_std")?.clone())?;
    let fve = fve.drop_many(["ci95"]);
    if let Some((x, x_label, x_log2)) = x_axis(varying) {
        let series: Vec<&str> = varying.iter().copied().filter(|f| *f != x).collect();
        let finals = fve.clone().lazy().filter(col("stage").eq(lit("final"))).collect()?;
        let mut lines = lines_by(&finals, x, &series, "fve_first_mean", None);
        for l in &mut lines {
            l.name = format!("first layer {}", l.name);
        }
        let mut last_lines = lines_by(&finals, x, &series, "fve_last_mean", None);
        for l in &mut last_lines {
            l.name = format!("last layer {}", l.name);
            l.dashed = true;
        }
        lines.extend(last_lines);
        s.plots.push((
            "fve".into(),
            LineChart {
                title: format!("Final filter variance entropy vs {x_label}"),
                x_label: x_label.into(),
                y_label: "FVE (log10)".into(),
                x_log2,
                lines,
            }
            .svg(),
        ));
    }
    s.tables.push(("fve".into(), fve));

    // Heatmaps: mean over final layers and trials per (kernel size, train mode).
    let rows = with_factors(&frames.filters, &frames.trials, &["kernel_size", "train_mode"])?
        .lazy()
        .filter(col("stage").eq(lit("final")).and(col("state").eq(lit("succeeded"))))
        .collect()?;
    let mut sums: BTreeMap<(i64, String), (Vec<f64>, u32)> = BTreeMap::new();
    let heat = rows.column("heatmap")?.list()?.clone();
    for i in 0..rows.height() {
        let (Some(k), Some(values)) = (f64_at(&rows, "kernel_size", i), heat.get_as_series(i)) else {
            continue;
        };
        let Ok(values) = values.f64().map(|v| v.into_no_null_iter().collect::<Vec<f64>>()) else {
            continue;
        };
        // Layers with another kernel size (a 7x7 ImageNet stem) are left out of the k maps.
        if values.len() != (k as usize) * (k as usize) {
            continue;
        }
        let e = sums
            .entry((k as i64, cell(&rows, "train_mode", i)))
            .or_insert_with(|| (vec![0.0; values.len()], 0));
        for (a, v) in e.0.iter_mut().zip(&values) {
            *a += v;
        }
        e.1 += 1;
    }
    let mut heat_table: Vec<(String, Vec<f64>)> = Vec::new();
    let maps: Vec<Heatmap> = sums
        .into_iter()
        .map(|((k, mode), (sum, n))| {
            let values: Vec<f64> = sum.iter().map(|v| v / f64::from(n)).collect();
            let name = format!("k={k} {mode}");
            heat_table.push((name.clone(), values.clone()));
            Heatmap {
                name,
                k: k as usize,
                values,
            }
        })
        .collect();
    if !maps.is_empty() {
        s.plots.push((
            "heatmaps".into(),
            HeatmapGrid {
                title: "Spatial variance of final filters".into(),
                maps,
            }
            .svg(),
        ));
        let centre: Vec<f64> = heat_table.iter().map(|(_, v)| v[v.len() / 2]).collect();
        let corner: Vec<f64> = heat_table.iter().map(|(_, v)| v[0]).collect();
        let names: Vec<String> = heat_table.into_iter().map(|(n, _)| n).collect();
        s.tables.push((
            "heatmap_centre_corner".into(),
            df!("filters" => names, "centre variance" => centre, "corner variance" => corner)?,
        ));
    }
    Ok(s)
}

fn cost_view(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
    let g = grouping(&[], varying);
    let df = trials
        .clone()
        .lazy()
        .filter(col("state").eq(lit("succeeded")))
        .group_by(g.iter().map(|c| col(*c)).collect::<Vec<_>>())
        .agg([
            (col("final_test_acc") * lit(100.0)).mean().alias("test_acc"),
            col("params_total").first().alias("params_total"),
            col("params_learnable").first().alias("params_learnable"),
            (col("flops_per_image").cast(DataType::Float64) / lit(1e6))
                .first()
                .alias("mmacs_per_image"),
            col("wall_seconds").mean().alias("wall_seconds"),
            (col("peak_memory_bytes").cast(DataType::Float64) / lit(1048576.0))
                .max()
                .alias("peak_memory_mib"),
        ])
        .sort(
            g.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    let mut s = section(
        "cost",
        "Cost next to accuracy",
        "Parameters (total and learnable), multiply-accumulates per image (forward), mean wall time \
         per trial (training and evaluations) and peak memory (CUDA peak allocation on a GPU, \
         process peak RSS on the CPU), next to mean test accuracy (%).",
    );
    s.tables.push(("cost".into(), df));
    Ok(s)
}

impl Report {
    /// Builds every view from `frames`.
    pub fn build(frames: &Frames, title: &str) -> Result<Report> {
        let trials = &frames.trials;
        let varying = varying_factors(trials)?;
        let min_seeds = seeds(trials)?;
        let count = |state: &str| -> Result<usize> {
            Ok(trials
                .clone()
                .lazy()
                .filter(col("state").eq(lit(state)))
                .collect()?
                .height())
        };
        let (succeeded, failed) = (count("succeeded")?, count("failed")?);
        let summary = format!(
            "{} trials: {succeeded} succeeded, {failed} failed, {} unfinished; {min_seeds} seed(s); factors that vary: {}.",
            trials.height(),
            trials.height() - succeeded - failed,
            if varying.is_empty() {
                "none".to_owned()
            } else {
                varying.join(", ")
            }
        );
        let sections = vec![
            accuracy_view(trials, &varying, min_seeds)?,
            table1_view(trials, &varying)?,
            table3_view(trials, &varying)?,
            gain_view(trials, &varying)?,
            robustness_view(frames, &varying, min_seeds)?,
            overfitting_view(frames, &varying, min_seeds)?,
            filters_view(frames, &varying, min_seeds)?,
            cost_view(trials, &varying)?,
            paper::check(trials)?,
        ];
        Ok(Report {
            title: title.into(),
            summary,
            sections,
        })
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
            let v = c.get(i).map(crate::tables::format_cell).unwrap_or_default();
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
