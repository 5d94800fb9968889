//! `report` and `export` on the state folder of a live coordinator that keeps writing: they
//! read a snapshot, write nothing, and never stop the coordinator.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::pb;

use crate::common::*;

/// A scripted worker that leases one trial and reports epochs until told to stop, counting the
/// reports the coordinator acknowledged.
async fn keep_writing(c: Arc<Coordinator>, stop: Arc<AtomicBool>, writes: Arc<AtomicU32>) {
    let worker = c
        .register(pb::RegisterRequest {
            name: "writer".into(),
            host: "test".into(),
            devices: vec![],
            slots: 1,
            protocol_version: convsweep_proto::PROTOCOL_VERSION,
        })
        .unwrap()
        .worker_id;
    let lease = c
        .lease(pb::LeaseRequest {
            worker_id: worker.clone(),
            max_trials: 1,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .leases
        .remove(0);
    let mut epoch = 0;
    while !stop.load(Ordering::Relaxed) {
        epoch += 1;
        c.report_epochs(pb::ReportEpochsRequest {
            worker_id: worker.clone(),
            trial_id: lease.trial_id.clone(),
            lease_token: lease.lease_token.clone(),
            epochs: vec![pb::EpochMetrics {
                epoch,
                lr: 0.01,
                train_loss: 1.0,
                train_acc: 0.5,
                test_loss: 1.0,
                test_acc: 0.5,
                seconds: 0.1,
            }],
        })
        .expect("the coordinator keeps accepting writes while a report reads");
        writes.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_export_read_a_live_coordinators_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: state.clone(),
        ..Default::default()
    })
    .unwrap();
    coordinator.submit(&tiny_spec("live")).unwrap();
    let (stop, writes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let writer = tokio::spawn(keep_writing(coordinator.clone(), stop.clone(), writes.clone()));
    while writes.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let report_dir = dir.path().join("report");
    let export_dir = dir.path().join("export");
    let (report, export) = tokio::task::spawn_blocking({
        let (state, report_dir, export_dir) = (state.clone(), report_dir.clone(), export_dir.clone());
        move || {
            let report = Command::new(BIN)
                .arg("report")
                .arg(&state)
                .arg("--out")
                .arg(&report_dir)
                .output()
                .unwrap();
            let export = Command::new(BIN)
                .args(["export", "--state-dir"])
                .arg(&state)
                .arg("--out")
                .arg(&export_dir)
                .output()
                .unwrap();
            (report, export)
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer never failed");
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("# Sweep report: live") && md.contains("8 trials"), "{md}");
    let frames = convsweep_analysis::Frames::read_parquet(&export_dir).unwrap();
    assert_eq!(frames.trials.height(), 8);
    assert!(
        frames.epochs.height() >= 1,
        "the snapshot holds the reports committed before it"
    );
    // The coordinator is still the state's only writer: it goes on after the readers left.
    let after = coordinator.status("live").unwrap().sweeps[0].counts.unwrap();
    assert_eq!(after.running, 1);
}
