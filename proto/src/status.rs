//! Sweep status as JSON: the one shape that `convsweep status --json` prints and the ops
//! port's `/status.json` serves (the latter with the running trials and the accuracy so far).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pb;
use crate::state::TrialState;

/// Every sweep's progress, and what runs now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusJson {
    /// Workers heard from lately.
    pub workers_alive: u32,
    /// One entry per sweep, oldest first.
    pub sweeps: Vec<SweepJson>,
    /// The trials workers hold now (a snapshot's only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<Vec<ActiveJson>>,
    /// Mean final test accuracy so far by kernel size and train mode (a snapshot's only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Vec<AccuracyJson>>,
    /// Each configuration's test accuracy per epoch over its seeds (a snapshot's only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curves: Option<Vec<CurveJson>>,
    /// Configurations whose curves were left out (a snapshot's only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curves_left_out: Option<u32>,
}

/// One sweep's progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepJson {
    /// Its id.
    pub sweep: String,
    /// Its trials.
    pub total: u32,
    /// Trials done (succeeded, failed, cancelled or stopped).
    pub done: u32,
    /// Trials workers hold (leased or running).
    pub active: u32,
    /// Trials waiting for a worker (pending or preempted).
    pub queued: u32,
    /// Trials per state, by the state's name.
    pub counts: BTreeMap<&'static str, u32>,
    /// Trials finished per hour since the first started.
    pub trials_per_hour: f64,
    /// Seconds until done at that rate; `null` while unknown.
    pub eta_seconds: Option<f64>,
    /// Trials that failed for good (the first ones, in sweep order).
    pub failures: Vec<FailureJson>,
}

/// A trial that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureJson {
    /// Its id.
    pub trial: String,
    /// Its last attempt.
    pub attempt: u32,
    /// Why.
    pub reason: String,
}

/// A trial a worker holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveJson {
    /// Its sweep.
    pub sweep: String,
    /// Its id.
    pub trial: String,
    /// What it trains.
    pub label: String,
    /// Leased or running (`unknown` for a number this version does not know).
    pub state: &'static str,
    /// Its attempt.
    pub attempt: u32,
    /// Epochs reported so far, of `epochs`.
    pub epoch: u32,
    /// Its epochs.
    pub epochs: u32,
    /// Test accuracy of the last reported epoch.
    pub test_acc: f64,
    /// Every reported epoch as `[epoch, test accuracy, train accuracy]`.
    pub curve: Vec<(u32, f64, f64)>,
}

/// One configuration's learning curve over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurveJson {
    /// The sweep.
    pub sweep: String,
    /// The factors that tell it from the sweep's other configurations.
    pub label: String,
    /// Trials (seeds) that reported.
    pub trials: u32,
    /// `[epoch, mean, lowest, highest, seeds]` of test accuracy, by epoch.
    pub points: Vec<(u32, f64, f64, f64, u32)>,
}

/// Mean final test accuracy of one cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyJson {
    /// The sweep.
    pub sweep: String,
    /// Kernel size.
    pub kernel_size: u32,
    /// Train mode.
    pub train_mode: String,
    /// Mean over the succeeded trials so far.
    pub mean_test_acc: f64,
    /// How many.
    pub trials: u32,
}

impl From<&pb::SweepStatus> for SweepJson {
    fn from(s: &pb::SweepStatus) -> Self {
        let c = s.counts.unwrap_or_default();
        SweepJson {
            sweep: s.sweep_id.clone(),
            total: s.total,
            done: c.done(),
            active: c.active(),
            queued: c.queued(),
            counts: TrialState::ALL.into_iter().map(|st| (st.as_str(), c.get(st))).collect(),
            trials_per_hour: s.trials_per_hour,
            eta_seconds: (s.eta_seconds >= 0.0 && s.eta_seconds.is_finite()).then_some(s.eta_seconds),
            failures: s
                .failures
                .iter()
                .map(|f| FailureJson {
                    trial: f.trial_id.clone(),
                    attempt: f.attempt,
                    reason: f.reason.clone(),
                })
                .collect(),
        }
    }
}

impl From<&pb::GetStatusResponse> for StatusJson {
    fn from(r: &pb::GetStatusResponse) -> Self {
        StatusJson {
            workers_alive: r.workers_alive,
            sweeps: r.sweeps.iter().map(SweepJson::from).collect(),
            active: None,
            accuracy: None,
            curves: None,
            curves_left_out: None,
        }
    }
}

impl From<&pb::WatchSnapshot> for StatusJson {
    fn from(s: &pb::WatchSnapshot) -> Self {
        let mut out = StatusJson::from(&s.status.clone().unwrap_or_default());
        out.active = Some(
            s.active
                .iter()
                .map(|a| ActiveJson {
                    sweep: a.sweep_id.clone(),
                    trial: a.trial_id.clone(),
                    label: a.label.clone(),
                    state: TrialState::from_wire(a.state, "state").map_or("unknown", TrialState::as_str),
                    attempt: a.attempt,
                    epoch: a.epoch,
                    epochs: a.epochs,
                    test_acc: a.test_acc,
                    curve: a.curve.iter().map(|p| (p.epoch, p.test_acc, p.train_acc)).collect(),
                })
                .collect(),
        );
        out.accuracy = Some(
            s.accuracy
                .iter()
                .map(|c| AccuracyJson {
                    sweep: c.sweep_id.clone(),
                    kernel_size: c.kernel_size,
                    train_mode: c.train_mode.clone(),
                    mean_test_acc: c.mean_test_acc,
                    trials: c.trials,
                })
                .collect(),
        );
        out.curves = Some(
            s.curves
                .iter()
                .map(|c| CurveJson {
                    sweep: c.sweep_id.clone(),
                    label: c.label.clone(),
                    trials: c.trials,
                    points: c
                        .points
                        .iter()
                        .map(|p| (p.epoch, p.mean, p.lo, p.hi, p.seeds))
                        .collect(),
                })
                .collect(),
        );
        out.curves_left_out = Some(s.curves_left_out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> pb::GetStatusResponse {
        pb::GetStatusResponse {
            workers_alive: 2,
            sweeps: vec![pb::SweepStatus {
                sweep_id: "s".into(),
                total: 10,
                counts: Some(pb::StateCounts {
                    pending: 1,
                    leased: 1,
                    running: 2,
                    succeeded: 3,
                    failed: 1,
                    preempted: 1,
                    cancelled: 1,
                    stopped: 0,
                }),
                trials_per_hour: 6.0,
                eta_seconds: -1.0,
                failures: vec![pb::TrialFailure {
                    trial_id: "t".into(),
                    attempt: 3,
                    reason: "why".into(),
                }],
            }],
        }
    }

    #[test]
    fn status_and_snapshot_share_one_shape() {
        let plain = serde_json::to_value(StatusJson::from(&status())).unwrap();
        let sweep = &plain["sweeps"][0];
        assert_eq!(sweep["done"], 5);
        assert_eq!(sweep["active"], 3);
        assert_eq!(sweep["queued"], 2);
        assert_eq!(sweep["counts"]["preempted"], 1);
        assert!(sweep["eta_seconds"].is_null(), "an unknown ETA is null: {sweep}");
        assert_eq!(sweep["failures"][0]["reason"], "why");
        assert!(plain.get("active").is_none());

        let snapshot = pb::WatchSnapshot {
            status: Some(status()),
            active: vec![pb::ActiveTrial {
                trial_id: "t2".into(),
                state: TrialState::Running.to_wire(),
                ..Default::default()
            }],
            accuracy: vec![],
            curves: vec![pb::ConfigCurve {
                sweep_id: "s".into(),
                label: "k=3".into(),
                trials: 2,
                points: vec![pb::BandPoint {
                    epoch: 1,
                    mean: 0.5,
                    lo: 0.4,
                    hi: 0.6,
                    seeds: 2,
                    train_mean: 0.55,
                }],
            }],
            curves_left_out: 0,
        };
        let full = serde_json::to_value(StatusJson::from(&snapshot)).unwrap();
        assert_eq!(full["sweeps"], plain["sweeps"]);
        assert_eq!(full["active"][0]["state"], "running");
        assert_eq!(full["accuracy"], serde_json::json!([]));
        assert_eq!(full["curves"][0]["points"], serde_json::json!([[1, 0.5, 0.4, 0.6, 2]]));
    }
}
