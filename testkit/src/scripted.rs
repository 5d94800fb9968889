//! A worker scripted in-process: the test registers it, leases, reports and completes through
//! a [`Coordinator`]'s own methods (no gRPC), and decides every step.

use convsweep_coordinator::Coordinator;
use convsweep_proto::{PROTOCOL_VERSION, pb};

/// Registers a scripted worker with `slots`; returns its id.
pub fn scripted_worker(c: &Coordinator, slots: u32) -> String {
    c.register(pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        slots,
        name: "scripted".into(),
        ..Default::default()
    })
    .expect("a scripted worker registers")
    .worker_id
}

/// Leases up to `n` trials to `worker`, without waiting.
pub async fn lease_now(c: &Coordinator, worker: &str, n: u32) -> Vec<pb::TrialLease> {
    c.lease(pb::LeaseRequest {
        worker_id: worker.to_owned(),
        max_trials: n,
        wait_ms: 0,
    })
    .await
    .expect("a lease call succeeds")
    .leases
}

/// An epoch's metrics: test and train accuracy `acc`.
pub fn epoch(n: u32, acc: f64) -> pb::EpochMetrics {
    pb::EpochMetrics {
        epoch: n,
        lr: 0.01,
        train_loss: 1.0,
        train_acc: acc,
        test_loss: 1.0,
        test_acc: acc,
        seconds: 0.1,
        val_loss: None,
        val_acc: None,
    }
}

/// An epoch's metrics with a validation split: validation accuracy `val_acc`, test and train
/// accuracy `acc`.
pub fn epoch_with_val(n: u32, acc: f64, val_acc: f64) -> pb::EpochMetrics {
    pb::EpochMetrics {
        val_loss: Some(1.0 - val_acc),
        val_acc: Some(val_acc),
        ..epoch(n, acc)
    }
}

/// A result with final and best test accuracy `acc`.
pub fn result(acc: f64) -> pb::TrialResult {
    pb::TrialResult {
        final_test_acc: acc,
        final_train_acc: acc,
        best_test_acc: acc,
        best_epoch: 2,
        device: "cpu".into(),
        ..Default::default()
    }
}
