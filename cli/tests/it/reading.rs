//! `report` and `export` on the state folder of a live coordinator that keeps writing: they
//! read a snapshot, write nothing, and never stop the coordinator.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::pb;

use crate::common::*;

/// A scripted worker that leases one trial and reports its one epoch again and again (each an
/// upsert, a write) until told to stop, counting the reports the coordinator acknowledged.
async fn keep_writing(c: Arc<Coordinator>, stop: Arc<AtomicBool>, writes: Arc<AtomicU32>) {
    let worker = scripted_worker(&c, 1);
    let lease = lease_now(&c, &worker, 1).await.remove(0);
    while !stop.load(Ordering::Relaxed) {
        c.report_epochs(pb::ReportEpochsRequest {
            worker_id: worker.clone(),
            trial_id: lease.trial_id.clone(),
            lease_token: lease.lease_token.clone(),
            epochs: vec![pb::EpochMetrics {
                epoch: 1,
                lr: 0.01,
                train_loss: 1.0,
                train_acc: 0.5,
                test_loss: 1.0,
                test_acc: 0.5,
                seconds: 0.1,
                val_loss: None,
                val_acc: None,
            }],
        })
        .await
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

/// A result with every kind of row: attacks, a corruption, filter statistics.
fn rich_result(acc: f64) -> pb::TrialResult {
    pb::TrialResult {
        final_train_loss: 0.5,
        final_train_acc: acc + 0.05,
        final_test_loss: 0.6,
        final_test_acc: acc,
        best_test_acc: acc + 0.01,
        best_epoch: 1,
        params_total: 1000,
        params_learnable: 900,
        flops_per_image: 12345,
        wall_seconds: 3.0,
        peak_memory_bytes: 1 << 20,
        device: "cpu (1 threads)".into(),
        robustness: vec![
            pb::RobustnessResult {
                kind: "clean".into(),
                name: "clean".into(),
                eps: 0.0,
                severity: 0,
                accuracy: acc,
                images: 64,
            },
            pb::RobustnessResult {
                kind: "fgsm".into(),
                name: "fgsm".into(),
                eps: 1.0 / 255.0,
                severity: 0,
                accuracy: acc - 0.1,
                images: 64,
            },
            pb::RobustnessResult {
                kind: "corruption".into(),
                name: "contrast".into(),
                eps: 0.0,
                severity: 2,
                accuracy: acc - 0.2,
                images: 64,
            },
        ],
        filters: vec![pb::FilterStats {
            stage: "final".into(),
            layer: "conv1".into(),
            kernel_size: 3,
            filters: 12,
            fve: 0.7,
            fve_norm: Some(0.8),
            sparsity: 0.0,
            orthogonality: 0.6,
            heatmap: vec![0.5; 9],
            folded: false,
        }],
        eval_error: String::new(),
        eval_seconds: 1.0,
        conv_algorithm: "direct".into(),
        times: Some(pb::TrialTimes {
            startup_seconds: 0.25,
            train_seconds: 1.5,
            epoch_eval_seconds: 0.125,
            checkpoint_seconds: 0.0625,
            report_seconds: 0.03125,
            train_images: 600,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_export_and_report_match_the_state_folder() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: state.clone(),
        ..Default::default()
    })
    .unwrap();
    coordinator.submit(&tiny_spec("remote")).unwrap();
    let worker = scripted_worker(&coordinator, 8);
    let leases = lease_now(&coordinator, &worker, 8).await;
    for (i, l) in leases.iter().enumerate() {
        let acc = 0.3 + 0.05 * i as f64;
        coordinator
            .report_epochs(pb::ReportEpochsRequest {
                worker_id: worker.clone(),
                trial_id: l.trial_id.clone(),
                lease_token: l.lease_token.clone(),
                epochs: vec![pb::EpochMetrics {
                    epoch: 1,
                    lr: 0.05,
                    train_loss: 1.0,
                    train_acc: acc,
                    test_loss: 1.1,
                    test_acc: acc,
                    seconds: 2.0,
                    val_loss: None,
                    val_acc: None,
                }],
            })
            .await
            .unwrap();
        if i < 6 {
            coordinator
                .complete(pb::CompleteRequest {
                    worker_id: worker.clone(),
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                    outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                        result: Some(rich_result(acc)),
                    })),
                })
                .await
                .unwrap();
        }
    }
    let token = convsweep_proto::client::Secret::new("remote-test-token", "test").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        let serve = convsweep_coordinator::ServeConfig {
            token: Some(token),
            ..Default::default()
        };
        async move { convsweep_coordinator::serve_with(listener, c, &serve, async move { s.cancelled().await }).await }
    });

    let run = move |args: Vec<std::ffi::OsString>| {
        let out = Command::new(BIN)
            .args(args)
            .env("CONVSWEEP_TOKEN", "remote-test-token")
            .env_remove("CONVSWEEP_TOKEN_FILE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let p = |p: &std::path::Path| p.as_os_str().to_owned();
    let (remote, local) = (dir.path().join("remote"), dir.path().join("local"));
    let (remote_report, local_report) = (dir.path().join("remote-report"), dir.path().join("local-report"));
    let args: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "export".into(),
            "--coordinator".into(),
            url.clone().into(),
            "--out".into(),
            p(&remote),
        ],
        vec![
            "export".into(),
            "--state-dir".into(),
            p(&state),
            "--out".into(),
            p(&local),
        ],
        vec![
            "report".into(),
            "--coordinator".into(),
            url.clone().into(),
            "--out".into(),
            p(&remote_report),
        ],
        vec!["report".into(), p(&state), "--out".into(), p(&local_report)],
    ];
    tokio::task::spawn_blocking(move || {
        for a in args {
            run(a);
        }
    })
    .await
    .unwrap();
    stop.cancel();
    server.await.unwrap().unwrap();

    let (a, b) = (
        convsweep_analysis::Frames::read_parquet(&remote).unwrap(),
        convsweep_analysis::Frames::read_parquet(&local).unwrap(),
    );
    assert_eq!(a.trials.height(), 8);
    assert_eq!(a.robustness.height(), 6 * 3);
    // The time split made it through the store and both exports: 600 images in 1.5 s.
    let column = |name: &str| -> Vec<Option<f64>> {
        let c = a.trials.column(name).unwrap().f64().unwrap().clone();
        (0..c.len()).map(|i| c.get(i)).collect()
    };
    let speeds = column("train_images_per_second");
    assert_eq!(speeds.iter().flatten().count(), 6, "the 6 finished trials: {speeds:?}");
    assert!(speeds.iter().flatten().all(|v| (v - 400.0).abs() < 1e-9), "{speeds:?}");
    let startup = column("startup_seconds");
    assert_eq!(startup.into_iter().flatten().collect::<Vec<_>>(), vec![0.25; 6]);
    for (name, x, y) in [
        ("trials", &a.trials, &b.trials),
        ("epochs", &a.epochs, &b.epochs),
        ("robustness", &a.robustness, &b.robustness),
        ("filters", &a.filters, &b.filters),
    ] {
        assert!(x.equals_missing(y), "{name} differ:\n{x}\n{y}");
    }
    let md = |d: &std::path::Path| std::fs::read_to_string(d.join("report.md")).unwrap();
    assert_eq!(md(&remote_report), md(&local_report), "the same report either way");
}
