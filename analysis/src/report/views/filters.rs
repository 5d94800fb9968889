//! Filters: variance entropy of the first and last spatial layer, spatial-variance heatmaps.

use std::collections::BTreeMap;

use polars::prelude::*;

use crate::aggregate::{Aggregation, aggregate};
use crate::error::Result;
use crate::frames::Frames;
use crate::plot::{Heatmap, HeatmapGrid, LineChart};
use crate::report::grouping::*;
use crate::report::section::Section;

/// The filters view: FVE of the first and last spatial layer, and the heatmaps of spatial
/// variance of the final filters.
pub fn view(frames: &Frames, varying: &[&'static str], min_seeds: u32) -> Result<Section> {
    let mut s = Section::new(
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
