//! Results as typed Polars frames: built from the result rows a state holds
//! ([`convsweep_proto::results`]), written to and read from Parquet (one file per table).

use std::fs::File;
use std::path::Path;

use convsweep_proto::results::{EpochRow, FilterRow, Results, RobustnessRow, TrialRow};
use convsweep_proto::{TrialState, pb};
use polars::prelude::*;

use crate::error::{Error, Result};

/// File names of the exported tables.
pub const TRIALS_FILE: &str = "trials.parquet";
/// Per-epoch metrics.
pub const EPOCHS_FILE: &str = "epochs.parquet";
/// Robust accuracies (attacks and corruptions).
pub const ROBUSTNESS_FILE: &str = "robustness.parquet";
/// Filter statistics at initialisation and at the end.
pub const FILTERS_FILE: &str = "filters.parquet";
/// File name of the `decisions` table (stopping rules) in an export.
pub const DECISIONS_FILE: &str = "decisions.parquet";

/// The tables of a sweep's results.
#[derive(Debug, Clone)]
pub struct Frames {
    /// One row per (sweep, trial): factors, hyper-parameters, cost, final metrics, the
    /// overfitting summary (`gap_acc`, `gap_loss`, `final_minus_best`) and
    /// `mean_corruption_acc`.
    pub trials: DataFrame,
    /// One row per trial and epoch, with the generalisation gap (`gap_acc`, `gap_loss`).
    pub epochs: DataFrame,
    /// One row per trial and robustness measurement (kind fgsm | pgd | corruption).
    pub robustness: DataFrame,
    /// One row per trial, stage (init | final) and spatial layer.
    pub filters: DataFrame,
    /// One row per stopping decision: a configuration kept or stopped at a rung of its group.
    pub decisions: DataFrame,
}

fn opt<T: Copy>(rows: &[TrialRow], f: impl Fn(&pb::TrialResult) -> T) -> Vec<Option<T>> {
    rows.iter().map(|r| r.result.as_ref().map(&f)).collect()
}

/// A field of each result's time split (none where the result, or its split, is missing).
fn times<T: Copy>(rows: &[TrialRow], f: impl Fn(&pb::TrialTimes) -> T) -> Vec<Option<T>> {
    rows.iter()
        .map(|r| r.result.as_ref().and_then(|x| x.times.as_ref()).map(&f))
        .collect()
}

/// How many classes of an image folder a trial keeps (`None`: all of them).
fn class_subset(d: &convsweep_proto::spec::DatasetSpec) -> Option<u32> {
    use convsweep_proto::spec::ClassSubset;
    match &d.classes {
        None => None,
        Some(ClassSubset::First(n)) => Some(*n),
        Some(ClassSubset::Names(names)) => Some(names.len() as u32),
    }
}

/// The `trials` table.
pub fn trials_frame(rows: &[TrialRow]) -> Result<DataFrame> {
    let s = |f: &dyn Fn(&TrialRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let u = |f: &dyn Fn(&TrialRow) -> u32| rows.iter().map(f).collect::<Vec<u32>>();
    let f64s = |f: &dyn Fn(&TrialRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let df = df!(
        "sweep" => s(&|r| r.sweep_id.clone()),
        "trial_id" => s(&|r| r.trial_id.clone()),
        "state" => s(&|r| r.state.to_string()),
        "attempts" => u(&|r| r.attempts),
        "reason" => rows.iter().map(|r| r.reason.clone()).collect::<Vec<Option<String>>>(),
        // Failed because the training loss turned non-finite (never retried).
        "diverged" => rows
            .iter()
            .map(|r| r.state == TrialState::Failed && r.reason.as_deref().is_some_and(|w| w.contains("non-finite")))
            .collect::<Vec<bool>>(),
        "dataset" => s(&|r| json_name(&r.spec.dataset.name)),
        "train_size" => rows.iter().map(|r| r.spec.dataset.train_size).collect::<Vec<Option<u32>>>(),
        "test_size" => rows.iter().map(|r| r.spec.dataset.test_size).collect::<Vec<Option<u32>>>(),
        "val_fraction" => rows.iter().map(|r| r.spec.dataset.val_fraction).collect::<Vec<Option<f64>>>(),
        "image_size" => rows.iter().map(|r| r.spec.dataset.image_size).collect::<Vec<Option<u32>>>(),
        "class_subset" => rows.iter().map(|r| class_subset(&r.spec.dataset)).collect::<Vec<Option<u32>>>(),
        "arch" => s(&|r| json_name(&r.spec.model.arch)),
        "depth" => rows.iter().map(|r| r.spec.model.depth).collect::<Vec<Option<u32>>>(),
        "width" => rows.iter().map(|r| r.spec.model.width).collect::<Vec<Option<u32>>>(),
        "kernel_size" => u(&|r| r.spec.model.kernel_size),
        "expansion" => rows.iter().map(|r| r.spec.model.expansion).collect::<Vec<Option<u32>>>(),
        "inter_op" => s(&|r| json_name(&r.spec.model.inter_op)),
        "train_mode" => s(&|r| json_name(&r.spec.model.train_mode)),
        "init" => s(&|r| json_name(&r.spec.model.init)),
        "seed" => rows.iter().map(|r| r.spec.seed).collect::<Vec<u64>>(),
        "epochs" => u(&|r| r.spec.train.epochs),
        "batch_size" => u(&|r| r.spec.train.batch_size),
        "lr" => f64s(&|r| r.spec.train.lr),
        "momentum" => f64s(&|r| r.spec.train.momentum),
        "nesterov" => rows.iter().map(|r| r.spec.train.nesterov).collect::<Vec<bool>>(),
        "weight_decay" => f64s(&|r| r.spec.train.weight_decay),
        "label_smoothing" => f64s(&|r| r.spec.train.label_smoothing),
        "warmup_epochs" => u(&|r| r.spec.train.warmup_epochs),
        "optimizer" => s(&|r| json_name(&r.spec.train.optimizer)),
        "loss" => s(&|r| json_name(&r.spec.train.loss)),
        "mixup" => f64s(&|r| r.spec.train.mixup),
        "cutmix" => f64s(&|r| r.spec.train.cutmix),
        "precision" => s(&|r| json_name(&r.spec.train.precision)),
        "schedule" => s(&|r| json_name(&r.spec.train.schedule)),
        "augment" => s(&|r| json_name(&r.spec.train.augment)),
        "params_total" => opt(rows, |r| r.params_total),
        "params_learnable" => opt(rows, |r| r.params_learnable),
        "flops_per_image" => opt(rows, |r| r.flops_per_image),
        "final_train_loss" => opt(rows, |r| r.final_train_loss),
        "final_train_acc" => opt(rows, |r| r.final_train_acc),
        "final_test_loss" => opt(rows, |r| r.final_test_loss),
        "final_test_acc" => opt(rows, |r| r.final_test_acc),
        "best_test_acc" => opt(rows, |r| r.best_test_acc),
        "best_epoch" => opt(rows, |r| r.best_epoch),
        "wall_seconds" => opt(rows, |r| r.wall_seconds),
        "peak_memory_bytes" => opt(rows, |r| r.peak_memory_bytes),
        "device" => rows.iter().map(|r| r.result.as_ref().map(|x| x.device.clone())).collect::<Vec<Option<String>>>(),
        "worker" => rows.iter().map(|r| r.worker_id.clone()).collect::<Vec<Option<String>>>(),
        "eval_error" => rows.iter().map(|r| r.result.as_ref().map(|x| x.eval_error.clone())).collect::<Vec<Option<String>>>(),
        "eval_seconds" => opt(rows, |r| r.eval_seconds),
        "startup_seconds" => times(rows, |t| t.startup_seconds),
        "train_seconds" => times(rows, |t| t.train_seconds),
        "epoch_eval_seconds" => times(rows, |t| t.epoch_eval_seconds),
        "checkpoint_seconds" => times(rows, |t| t.checkpoint_seconds),
        "report_seconds" => times(rows, |t| t.report_seconds),
        "train_images" => times(rows, |t| t.train_images),
        // Training images per second of training time (none where no time was recorded).
        "train_images_per_second" => rows
            .iter()
            .map(|r| r.result.as_ref().and_then(|x| x.times).filter(|t| t.train_seconds > 0.0))
            .map(|t| t.map(|t| t.train_images as f64 / t.train_seconds))
            .collect::<Vec<Option<f64>>>(),
        "conv_algorithm" => rows.iter().map(|r| r.result.as_ref().map(|x| x.conv_algorithm.clone())).collect::<Vec<Option<String>>>(),
        // Where the sweep's stopping rule places the trial (null without one).
        "stop_group" => rows.iter().map(|r| r.cell.as_ref().map(|c| c.group.clone())).collect::<Vec<Option<String>>>(),
        "stop_config" => rows.iter().map(|r| r.cell.as_ref().map(|c| c.config.clone())).collect::<Vec<Option<String>>>(),
        "stop_exempt" => rows.iter().map(|r| r.cell.as_ref().map(|c| c.exempt)).collect::<Vec<Option<bool>>>(),
    )?;
    // Overfitting at the end: train minus test accuracy, test minus train loss, and how far the
    // last epoch falls below the best.
    let df = df
        .lazy()
        .with_columns([
            (col("final_train_acc") - col("final_test_acc")).alias("gap_acc"),
            (col("final_test_loss") - col("final_train_loss")).alias("gap_loss"),
            (col("final_test_acc") - col("best_test_acc")).alias("final_minus_best"),
        ])
        .collect()?;
    Ok(df)
}

/// The `robustness` table.
pub fn robustness_frame(rows: &[RobustnessRow]) -> Result<DataFrame> {
    Ok(df!(
        "trial_id" => rows.iter().map(|r| r.trial_id.clone()).collect::<Vec<String>>(),
        "kind" => rows.iter().map(|r| r.result.kind.clone()).collect::<Vec<String>>(),
        "name" => rows.iter().map(|r| r.result.name.clone()).collect::<Vec<String>>(),
        "eps" => rows.iter().map(|r| r.result.eps).collect::<Vec<f64>>(),
        "severity" => rows.iter().map(|r| r.result.severity).collect::<Vec<u32>>(),
        "accuracy" => rows.iter().map(|r| r.result.accuracy).collect::<Vec<f64>>(),
        "images" => rows.iter().map(|r| r.result.images).collect::<Vec<u32>>(),
    )?)
}

/// The `filters` table (`heatmap` is a list of k*k variances, row-major).
pub fn filters_frame(rows: &[FilterRow]) -> Result<DataFrame> {
    let heatmaps: Vec<Series> = rows.iter().map(|f| Series::new("".into(), &f.stats.heatmap)).collect();
    let mut df = df!(
        "trial_id" => rows.iter().map(|f| f.trial_id.clone()).collect::<Vec<String>>(),
        "stage" => rows.iter().map(|f| f.stats.stage.clone()).collect::<Vec<String>>(),
        "layer" => rows.iter().map(|f| f.stats.layer.clone()).collect::<Vec<String>>(),
        "kernel_size" => rows.iter().map(|f| f.stats.kernel_size).collect::<Vec<u32>>(),
        "n" => rows.iter().map(|f| f.stats.filters).collect::<Vec<u64>>(),
        "fve" => rows.iter().map(|f| f.stats.fve).collect::<Vec<f64>>(),
        "fve_norm" => rows.iter().map(|f| f.stats.fve_norm).collect::<Vec<Option<f64>>>(),
        "sparsity" => rows.iter().map(|f| f.stats.sparsity).collect::<Vec<f64>>(),
        "orthogonality" => rows.iter().map(|f| f.stats.orthogonality).collect::<Vec<f64>>(),
        "folded" => rows.iter().map(|f| f.stats.folded).collect::<Vec<bool>>(),
    )?;
    let heatmap = if heatmaps.is_empty() {
        Series::new_empty("heatmap".into(), &DataType::List(Box::new(DataType::Float64)))
    } else {
        Series::new("heatmap".into(), heatmaps)
    };
    df.with_column(heatmap.into_column())?;
    Ok(df)
}

/// The spec spelling of an enum value (`"kaiming-uniform"`, `"frozen"`, ...).
fn json_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The `decisions` table: each stopping decision with what it was decided on.
pub fn decisions_frame(rows: &[pb::ExportDecision]) -> Result<DataFrame> {
    let s = |f: fn(&pb::ExportDecision) -> &str| rows.iter().map(|d| f(d).to_owned()).collect::<Vec<String>>();
    let u = |f: fn(&pb::ExportDecision) -> u32| rows.iter().map(f).collect::<Vec<u32>>();
    Ok(df!(
        "sweep" => s(|d| &d.sweep_id),
        "rule" => s(|d| &d.rule),
        "group" => s(|d| &d.group),
        "config" => s(|d| &d.config),
        "rung" => u(|d| d.rung),
        "kept" => rows.iter().map(|d| d.kept).collect::<Vec<bool>>(),
        "metric" => s(|d| &d.metric),
        "value" => rows.iter().map(|d| d.value).collect::<Vec<f64>>(),
        "seeds" => u(|d| d.seeds),
        "rank" => u(|d| d.rank),
        "ranked" => u(|d| d.ranked),
        "trials" => s(|d| &d.trials),
        "inputs" => s(|d| &d.inputs),
        "decided_ms" => rows.iter().map(|d| d.decided_ms).collect::<Vec<i64>>(),
    )?)
}

/// The `epochs` table.
pub fn epochs_frame(rows: &[EpochRow]) -> Result<DataFrame> {
    let m = |f: fn(&pb::EpochMetrics) -> f64| rows.iter().map(|r| f(&r.metrics)).collect::<Vec<f64>>();
    Ok(df!(
        "trial_id" => rows.iter().map(|r| r.trial_id.clone()).collect::<Vec<String>>(),
        "attempt" => rows.iter().map(|r| r.attempt).collect::<Vec<u32>>(),
        "epoch" => rows.iter().map(|r| r.metrics.epoch).collect::<Vec<u32>>(),
        "lr" => m(|e| e.lr),
        "train_loss" => m(|e| e.train_loss),
        "train_acc" => m(|e| e.train_acc),
        "test_loss" => m(|e| e.test_loss),
        "test_acc" => m(|e| e.test_acc),
        "seconds" => m(|e| e.seconds),
        "val_loss" => rows.iter().map(|r| r.metrics.val_loss).collect::<Vec<Option<f64>>>(),
        "val_acc" => rows.iter().map(|r| r.metrics.val_acc).collect::<Vec<Option<f64>>>(),
    )?
    .lazy()
    .with_columns([
        (col("train_acc") - col("test_acc")).alias("gap_acc"),
        (col("test_loss") - col("train_loss")).alias("gap_loss"),
    ])
    .collect()?)
}

impl Frames {
    /// The tables of a state's result rows.
    pub fn from_results(results: &Results) -> Result<Frames> {
        let robustness = robustness_frame(&results.robustness)?;
        // Each trial's mean accuracy over every corruption and severity it was measured on.
        let mean_corruption = robustness
            .clone()
            .lazy()
            .filter(col("kind").eq(lit("corruption")))
            .group_by([col("trial_id")])
            .agg([col("accuracy").mean().alias("mean_corruption_acc")]);
        let epochs = epochs_frame(&results.epochs)?;
        // How far each trial got, and its test accuracy there: a stopped trial's censored
        // observation ("at least this, at that epoch").
        let reached = epochs.clone().lazy().group_by([col("trial_id")]).agg([
            col("epoch").max().alias("epochs_reached"),
            col("test_acc")
                .sort_by([col("epoch")], SortMultipleOptions::default())
                .last()
                .alias("last_test_acc"),
        ]);
        let trials = trials_frame(&results.trials)?
            .lazy()
            .join(
                mean_corruption,
                [col("trial_id")],
                [col("trial_id")],
                JoinArgs::new(JoinType::Left),
            )
            .join(
                reached,
                [col("trial_id")],
                [col("trial_id")],
                JoinArgs::new(JoinType::Left),
            )
            .collect()?;
        Ok(Frames {
            trials,
            epochs,
            robustness,
            filters: filters_frame(&results.filters)?,
            decisions: decisions_frame(&results.decisions)?,
        })
    }

    /// Whether `dir` holds an export (its `trials.parquet`).
    pub fn is_export(dir: &Path) -> bool {
        dir.join(TRIALS_FILE).exists()
    }

    /// Reads the tables of an export (the Parquet files [`Frames::write_parquet`] wrote).
    pub fn read_parquet(dir: &Path) -> Result<Frames> {
        let read = |name: &str| -> Result<DataFrame> {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            Ok(ParquetReader::new(file).finish()?)
        };
        Ok(Frames {
            trials: read(TRIALS_FILE)?,
            epochs: read(EPOCHS_FILE)?,
            robustness: read(ROBUSTNESS_FILE)?,
            filters: read(FILTERS_FILE)?,
            // Exports written before stopping rules have no decisions.
            decisions: if dir.join(DECISIONS_FILE).exists() {
                read(DECISIONS_FILE)?
            } else {
                decisions_frame(&[])?
            },
        })
    }

    /// Keeps one sweep's rows.
    pub fn for_sweep(&self, sweep: &str) -> Result<Frames> {
        let trials = self
            .trials
            .clone()
            .lazy()
            .filter(col("sweep").eq(lit(sweep)))
            .collect()?;
        let ids = trials
            .clone()
            .lazy()
            .select([col("trial_id")])
            .unique(None, UniqueKeepStrategy::First);
        let only = |df: &DataFrame| -> Result<DataFrame> {
            Ok(df
                .clone()
                .lazy()
                .join(
                    ids.clone(),
                    [col("trial_id")],
                    [col("trial_id")],
                    JoinArgs::new(JoinType::Inner),
                )
                .collect()?)
        };
        Ok(Frames {
            epochs: only(&self.epochs)?,
            robustness: only(&self.robustness)?,
            filters: only(&self.filters)?,
            decisions: self
                .decisions
                .clone()
                .lazy()
                .filter(col("sweep").eq(lit(sweep)))
                .collect()?,
            trials,
        })
    }

    /// Writes every table as Parquet into `out` (created when missing); returns the paths.
    pub fn write_parquet(&self, out: &Path) -> Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let mut written = Vec::new();
        for (name, df) in [
            (TRIALS_FILE, &self.trials),
            (EPOCHS_FILE, &self.epochs),
            (ROBUSTNESS_FILE, &self.robustness),
            (FILTERS_FILE, &self.filters),
            (DECISIONS_FILE, &self.decisions),
        ] {
            let path = out.join(name);
            let tmp = out.join(format!(".{name}.partial"));
            let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            ParquetWriter::new(file).finish(&mut df.clone())?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
            written.push(path);
        }
        Ok(written)
    }
}
