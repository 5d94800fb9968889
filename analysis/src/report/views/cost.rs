//! Cost next to accuracy: parameters, compute, time and memory.

use polars::prelude::*;

use crate::error::Result;
use crate::report::grouping::*;
use crate::report::section::Section;

/// The cost view: parameters, MACs, wall time and peak memory beside mean accuracy.
pub fn view(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
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
    let mut s = Section::new(
        "cost",
        "Cost next to accuracy",
        "Parameters (total and learnable), multiply-accumulates per image (forward), mean wall time \
         per trial (training and evaluations) and peak memory (CUDA peak allocation on a GPU, \
         process peak RSS on the CPU), next to mean test accuracy (%).",
    );
    s.tables.push(("cost".into(), df));
    Ok(s)
}
