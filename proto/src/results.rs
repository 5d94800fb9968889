//! The result rows that cross from the coordinator's store to the analysis: one type per
//! exported table. The coordinator reads them out of SQLite, the CLI hands them to the analysis
//! crate, which turns them into Polars frames without knowing where they came from.

use crate::pb;
use crate::spec::TrialSpec;
use crate::state::TrialState;

/// One trial of one sweep (a trial shared by two sweeps is a row in each).
#[derive(Debug, Clone)]
pub struct TrialRow {
    /// Sweep it belongs to.
    pub sweep_id: String,
    /// Trial id.
    pub trial_id: String,
    /// Its spec.
    pub spec: TrialSpec,
    /// Current state.
    pub state: TrialState,
    /// Attempts started.
    pub attempts: u32,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// Worker that produced the result.
    pub worker_id: Option<String>,
    /// Final metrics, once succeeded (its `robustness` and `filters` are empty: those are rows
    /// of their own).
    pub result: Option<pb::TrialResult>,
    /// Where the sweep's stopping rule places it (none without a stopping rule).
    pub cell: Option<StopCell>,
}

/// A trial's place in a stopping rule's design (labels as in the decisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCell {
    /// The comparison group, e.g. `kernel_size=3`.
    pub group: String,
    /// The configuration, e.g. `expansion=4 train_mode=frozen`.
    pub config: String,
    /// Whether it always runs to the end.
    pub exempt: bool,
}

/// One epoch of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRow {
    /// Trial id.
    pub trial_id: String,
    /// Attempt that reported it.
    pub attempt: u32,
    /// Metrics.
    pub metrics: pb::EpochMetrics,
}

/// One robustness measurement (clean, an attack or a corruption) of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct RobustnessRow {
    /// Trial id.
    pub trial_id: String,
    /// The measurement.
    pub result: pb::RobustnessResult,
}

/// One layer's filter statistics of one trial, at initialisation or at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRow {
    /// Trial id.
    pub trial_id: String,
    /// The statistics.
    pub stats: pb::FilterStats,
}

/// Every result of a state, read in one consistent snapshot.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Trials, sweeps oldest first, in sweep order.
    pub trials: Vec<TrialRow>,
    /// Epochs by trial and epoch.
    pub epochs: Vec<EpochRow>,
    /// Robustness by trial, kind, name, radius and severity.
    pub robustness: Vec<RobustnessRow>,
    /// Filter statistics by trial, stage and layer.
    pub filters: Vec<FilterRow>,
    /// Stopping rules' decisions by sweep, rung, group and configuration.
    pub decisions: Vec<pb::ExportDecision>,
}
