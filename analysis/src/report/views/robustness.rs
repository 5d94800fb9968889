//! Robustness: accuracy under attack (FGSM, PGD) and under common corruptions.

use std::collections::BTreeMap;

use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::Result;
use crate::frames::Frames;
use crate::plot::{Line, LineChart};
use crate::report::grouping::*;
use crate::report::section::Section;

/// The robustness view: attack curves against the radius, and corruption accuracy against k
/// (or E) and against the severity.
pub fn view(frames: &Frames, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
    let mut s = Section::new(
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
