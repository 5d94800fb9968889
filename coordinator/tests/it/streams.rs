//! The server-streaming RPCs: `Export` in chunks, `Watch` with its snapshots and events.

use std::time::Duration;

use convsweep_coordinator::{Limits, ServeConfig};
use convsweep_proto::pb::watch_event::Event;
use convsweep_proto::{TrialState, pb};

use crate::common::{SPEC, Server, State, epoch, lease_now, scripted_worker, serve_on};
use crate::on_both_stores;

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_every_row_in_chunks_under_the_message_limit(store: Store) {
    let state = State::new(store);
    let limits = Limits {
        max_message_bytes: 64 << 10,
        ..Default::default()
    };
    let (coordinator, conn, stop) = serve_on(
        state.config(),
        ServeConfig {
            limits,
            ..Default::default()
        },
    )
    .await;
    coordinator
        .submit(&SPEC.replace("epochs = 2", "epochs = 1000"))
        .unwrap();
    let mut worker = conn.worker().unwrap();
    let id = crate::common::register(&mut worker, 4).await;
    let leases = worker
        .lease(pb::LeaseRequest {
            worker_id: id.clone(),
            max_trials: 4,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    // 4 trials x 1,000 epochs: several chunks of at most 32 KiB.
    for l in &leases {
        for start in (1..=1000).step_by(250) {
            worker
                .report_epochs(pb::ReportEpochsRequest {
                    worker_id: id.clone(),
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                    epochs: (start..start + 250).map(|e| epoch(e, 0.5)).collect(),
                })
                .await
                .unwrap();
        }
    }
    let mut stream = conn
        .admin()
        .await
        .unwrap()
        .export(pb::ExportRequest {
            sweep_id: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut results = convsweep_proto::results::Results::default();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(
            prost::Message::encoded_len(&chunk) <= 32 << 10,
            "chunk under half the limit"
        );
        convsweep_proto::convert::add_export_chunk(&mut results, chunk).unwrap();
        chunks += 1;
    }
    assert!(chunks >= 4, "{chunks} chunks");
    assert_eq!(results.trials.len(), 4);
    assert_eq!(results.epochs.len(), 4000);
    let direct = state.backend().open_reader()
        .unwrap()
        .results(None)
        .unwrap();
    assert_eq!(results.epochs, direct.epochs, "the same rows as the state folder gives");
    let err = conn
        .admin()
        .await
        .unwrap()
        .export(pb::ExportRequest {
            sweep_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nope"));
    stop.cancel();
}
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_snapshots_and_the_events_between_them(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut admin = server.admin().await;
    let mut stream = admin
        .watch(pb::WatchRequest {
            sweep_id: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(Event::Snapshot(s)) = first.event else {
        panic!("a snapshot first, got {first:?}")
    };
    assert_eq!(s.status.unwrap().sweeps[0].total, 4);

    let mut worker = server.worker().await;
    let lease = worker.lease(1, 0).await.remove(0);
    worker.report(&lease, vec![epoch(1, 0.42)]).await.unwrap();
    let running = server.coordinator.snapshot("small").unwrap();
    let a = running
        .active
        .iter()
        .find(|a| a.trial_id == lease.trial_id)
        .expect("an active trial");
    assert_eq!(
        (a.epoch, a.epochs, a.attempt, a.state),
        (1, 2, 1, TrialState::Running.to_wire())
    );
    assert!(a.label.contains("seed=0") && (a.test_acc - 0.42).abs() < 1e-12, "{a:?}");
    worker.succeed(&lease, 0.9).await.unwrap();

    let (mut joined, mut leased, mut epoch_seen, mut succeeded, mut accuracy_seen) =
        (false, false, false, false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(joined && leased && epoch_seen && succeeded && accuracy_seen) {
        let e = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("every event within the time limit")
            .unwrap()
            .unwrap();
        match e.event.unwrap() {
            Event::Worker(w) => joined |= w.joined && w.worker_id == worker.id,
            Event::Trial(t) if t.trial_id == lease.trial_id => {
                leased |= t.state == TrialState::Leased.to_wire();
                succeeded |= t.state == TrialState::Succeeded.to_wire() && t.sweep_id == "small";
            }
            Event::Epoch(ep) => epoch_seen |= ep.trial_id == lease.trial_id && ep.metrics.unwrap().test_acc == 0.42,
            Event::Snapshot(s) => {
                accuracy_seen |= s
                    .accuracy
                    .iter()
                    .any(|c| c.kernel_size > 0 && c.trials == 1 && (c.mean_test_acc - 0.9).abs() < 1e-12);
            }
            Event::Trial(_) => {}
        }
    }
    // The worker now goes silent: three heartbeat intervals later it is reported lost.
    loop {
        let e = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the loss within the time limit")
            .unwrap()
            .unwrap();
        if let Some(Event::Worker(w)) = e.event
            && w.worker_id == worker.id
            && !w.joined
        {
            break;
        }
    }
    let err = admin
        .watch(pb::WatchRequest {
            sweep_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    drop((stream, admin));
    server.stop().await;
}
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_carry_each_running_trials_curve_and_each_configurations_band(store: Store) {
    let state = State::new(store);
    let c = convsweep_coordinator::Coordinator::open(convsweep_coordinator::CoordinatorConfig {
        lease_timeout: Duration::from_secs(600),
        ..state.config()
    })
    .unwrap();
    // 2 kernel sizes x 2 train modes x 3 seeds.
    c.submit(&format!("seeds = 3\n{SPEC}")).unwrap();
    let worker = scripted_worker(&c, 12);
    let leases = lease_now(&c, &worker, 12).await;
    assert_eq!(leases.len(), 12);
    let place = |l: &pb::TrialLease| {
        let s = convsweep_proto::TrialSpec::from_json(&l.spec_json).unwrap();
        (s.model.kernel_size, s.model.train_mode.as_str().to_owned(), s.seed)
    };
    // k=3 learned: its 3 seeds report epoch 1 at 0.2, 0.3 and 0.4 (seed 2 also epoch 2 at
    // 0.6) and stay running; k=5 frozen seed 0 reports epoch 1 at 0.5 and succeeds.
    for l in &leases {
        let (k, mode, seed) = place(l);
        let epochs = match (k, mode.as_str()) {
            (3, "learned") if seed == 2 => vec![epoch(1, 0.4), epoch(2, 0.6)],
            (3, "learned") => vec![epoch(1, 0.2 + 0.1 * seed as f64)],
            (5, "frozen") if seed == 0 => vec![epoch(1, 0.5)],
            _ => continue,
        };
        c.report_epochs(pb::ReportEpochsRequest {
            worker_id: worker.clone(),
            trial_id: l.trial_id.clone(),
            lease_token: l.lease_token.clone(),
            epochs,
        })
        .await
        .unwrap();
        if k == 5 {
            c.complete(pb::CompleteRequest {
                worker_id: worker.clone(),
                trial_id: l.trial_id.clone(),
                lease_token: l.lease_token.clone(),
                outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                    result: Some(convsweep_testkit::scripted::result(0.5)),
                })),
            })
            .await
            .unwrap();
        }
    }
    let s = c.snapshot("small").unwrap();
    let seed2 = leases.iter().find(|l| place(l) == (3, "learned".into(), 2)).unwrap();
    let a = s.active.iter().find(|a| a.trial_id == seed2.trial_id).unwrap();
    let curve: Vec<(u32, f64)> = a.curve.iter().map(|p| (p.epoch, p.test_acc)).collect();
    assert_eq!(curve, [(1, 0.4), (2, 0.6)], "the running trial's curve, in epoch order");
    assert!(s.active.iter().filter(|a| a.curve.is_empty()).count() == 8, "the others have none yet");
    let labels: Vec<&str> = s.curves.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["k=3 learned", "k=5 frozen"], "the factors that differ");
    let k3 = &s.curves[0];
    assert_eq!(k3.trials, 3);
    let points: Vec<(u32, u32)> = k3.points.iter().map(|p| (p.epoch, p.seeds)).collect();
    assert_eq!(points, [(1, 3), (2, 1)]);
    let first = &k3.points[0];
    assert!(
        (first.mean - 0.3).abs() < 1e-12 && (first.lo - 0.2).abs() < 1e-12 && (first.hi - 0.4).abs() < 1e-12,
        "mean and band over the seeds: {first:?}"
    );
    assert_eq!(s.curves[1].points.len(), 1, "a finished trial's curve counts too");
    assert_eq!(s.curves_left_out, 0);
}
}
