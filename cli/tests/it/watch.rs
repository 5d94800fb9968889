//! `convsweep watch` as a process: it follows a sweep to its end and exits.

use std::process::{Command, Stdio};
use std::time::Duration;

use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::pb;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_sweep_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: dir.path().join("state"),
        watch_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap();
    coordinator.submit(&tiny_spec("watched")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        async move { convsweep_coordinator::serve(listener, c, async move { s.cancelled().await }).await }
    });
    let mut watch = Command::new(BIN)
        .args(["watch", "--coordinator", &url, "--sweep", "watched"])
        .env_remove("CONVSWEEP_TOKEN")
        .env_remove("CONVSWEEP_TOKEN_FILE")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let worker = scripted_worker(&coordinator, 1);
    for i in 0..8 {
        let lease = lease_now(&coordinator, &worker, 1).await.remove(0);
        let outcome = if i == 7 {
            pb::complete_request::Outcome::Failed(pb::Failed {
                retryable: false,
                reason: "non-finite training loss (NaN) in epoch 1".into(),
            })
        } else {
            pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                result: Some(pb::TrialResult {
                    final_test_acc: 0.5,
                    ..Default::default()
                }),
            })
        };
        coordinator
            .complete(pb::CompleteRequest {
                worker_id: worker.clone(),
                trial_id: lease.trial_id,
                lease_token: lease.lease_token,
                outcome: Some(outcome),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut watch, Duration::from_secs(30));
        let mut out = String::new();
        std::io::Read::read_to_string(&mut watch.stdout.take().unwrap(), &mut out).unwrap();
        (s, out)
    })
    .await
    .unwrap();
    let (status, out) = status;
    assert!(status.success(), "{out}");
    assert!(out.contains("watched [") && out.contains("8/8 done"), "{out}");
    assert!(
        out.contains("non-finite training loss (NaN) in epoch 1"),
        "the failure and its reason: {out}"
    );
    assert!(out.trim_end().ends_with("done (1 failed)"), "{out}");
    stop.cancel();
    server.await.unwrap().unwrap();
}
