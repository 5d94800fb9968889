//! Cost next to accuracy: parameters, compute, time (and where it went) and memory.

use polars::prelude::*;

use crate::error::Result;
use crate::report::grouping::*;
use crate::report::section::Section;

/// The split of a trial's time, as (column of the trials table, column of the view): results
/// exported before the split was recorded lack these columns, and the view leaves them out.
const SPLIT: &[(&str, &str)] = &[
    ("startup_seconds", "startup_s"),
    ("train_seconds", "train_s"),
    ("epoch_eval_seconds", "epoch_eval_s"),
    ("eval_seconds", "final_eval_s"),
    ("checkpoint_seconds", "checkpoint_s"),
    ("report_seconds", "report_s"),
];

/// The cost view: parameters, MACs, wall time, its split, training images per second and peak
/// memory beside mean accuracy.
pub fn view(trials: &DataFrame, varying: &[&'static str]) -> Result<Section> {
    let g = grouping(&[], varying);
    let has = |c: &str| trials.column(c).is_ok();
    let mut agg = vec![
        (col("final_test_acc") * lit(100.0)).mean().alias("test_acc"),
        col("params_total").first().alias("params_total"),
        col("params_learnable").first().alias("params_learnable"),
        (col("flops_per_image").cast(DataType::Float64) / lit(1e6))
            .first()
            .alias("mmacs_per_image"),
        col("wall_seconds").mean().alias("wall_seconds"),
    ];
    let recorded = has("train_seconds") && has("train_images_per_second");
    if recorded {
        agg.extend(
            SPLIT
                .iter()
                .filter(|(c, _)| has(c))
                .map(|(c, name)| col(*c).mean().alias(*name)),
        );
        // Training images per second of training: the whole loop (data, augmentation, step),
        // the figure to hold against `convsweep-bench`'s step rate.
        agg.push(col("train_images_per_second").mean().alias("train_images_per_s"));
    }
    agg.push(
        (col("peak_memory_bytes").cast(DataType::Float64) / lit(1048576.0))
            .max()
            .alias("peak_memory_mib"),
    );
    let df = trials
        .clone()
        .lazy()
        .filter(col("state").eq(lit("succeeded")))
        .group_by(g.iter().map(|c| col(*c)).collect::<Vec<_>>())
        .agg(agg)
        .sort(
            g.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    let split = if recorded {
        " Where the wall time went (means, seconds): start-up (lease to first batch: the trial \
         process, the dataset, the model), training batches, the test pass after each epoch, the \
         final evaluations (attacks, corruptions, filter statistics), checkpoints and reporting; \
         and training images per second of training time."
    } else {
        " (These results predate the record of where the time went.)"
    };
    let mut s = Section::new(
        "cost",
        "Cost next to accuracy",
        &format!(
            "Parameters (total and learnable), multiply-accumulates per image (forward), mean wall \
             time per trial (training and evaluations) and peak memory (CUDA peak allocation on a \
             GPU, process peak RSS on the CPU), next to mean test accuracy (%).{split}"
        ),
    );
    s.tables.push(("cost".into(), df));
    Ok(s)
}
