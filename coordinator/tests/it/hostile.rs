//! Broken and hostile workers over loopback gRPC: a bad write is refused alone, naming its
//! field, and a worker cannot take more trials than it has slots nor fail a trial it never
//! confirmed.

use std::time::{Duration, Instant};

use convsweep_proto::{PROTOCOL_VERSION, pb};
use tonic::Code;

use crate::common::{FakeWorker, SPEC, Server, State, config, counts, epoch, result, serve};
use crate::on_both_stores;

/// A worker registered with `slots`.
async fn worker(server: &Server, slots: u32) -> FakeWorker {
    server.worker_named(&format!("{slots}-slot worker"), slots).await
}

/// Asserts `INVALID_ARGUMENT` naming `field`.
fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = r.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(field), "{field}: {}", status.message());
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_write_is_refused_alone_naming_its_field(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut w = worker(&server, 4).await;
    let leases = w.lease(4, 0).await;
    assert_eq!(leases.len(), 4);
    let (bad, good) = (&leases[0], &leases[1]);

    // A NaN loss and a sibling's good report, sent at once, many times: the NaN is refused
    // naming its field, and the sibling's reports are never refused with it.
    for n in 1..=2 {
        let nan = pb::EpochMetrics {
            train_loss: f64::NAN,
            ..epoch(n, 0.5)
        };
        let (mut a, mut b) = (w.client.clone(), w.client.clone());
        let request = |lease: &pb::TrialLease, epochs| pb::ReportEpochsRequest {
            worker_id: w.id.clone(),
            trial_id: lease.trial_id.clone(),
            lease_token: lease.lease_token.clone(),
            epochs,
        };
        let (rb, rg) = tokio::join!(
            a.report_epochs(request(bad, vec![nan])),
            b.report_epochs(request(good, vec![epoch(n, 0.5)]))
        );
        refused(rb, "epochs[0].train_loss");
        rg.unwrap();
    }

    // Every other field a worker sends is checked too, each refusal naming its field.
    let cases: Vec<(pb::EpochMetrics, &str)> = vec![
        (
            pb::EpochMetrics {
                test_loss: f64::INFINITY,
                ..epoch(1, 0.5)
            },
            "epochs[0].test_loss",
        ),
        (
            pb::EpochMetrics {
                lr: -1.0,
                ..epoch(1, 0.5)
            },
            "epochs[0].lr",
        ),
        (
            pb::EpochMetrics {
                seconds: f64::NAN,
                ..epoch(1, 0.5)
            },
            "epochs[0].seconds",
        ),
        (epoch(1, 1.5), "epochs[0].train_acc"),
        // SPEC trains 2 epochs.
        (epoch(3, 0.5), "epochs[0].epoch"),
        (epoch(0, 0.5), "epochs[0].epoch"),
    ];
    for (e, field) in cases {
        refused(w.report(bad, vec![e]).await, field);
    }
    let results: Vec<(pb::TrialResult, &str)> = vec![
        (
            pb::TrialResult {
                best_epoch: 3,
                ..result(0.5)
            },
            "result.best_epoch",
        ),
        (
            pb::TrialResult {
                wall_seconds: -1.0,
                ..result(0.5)
            },
            "result.wall_seconds",
        ),
        (
            pb::TrialResult {
                device: "x".repeat(10_000),
                ..result(0.5)
            },
            "result.device",
        ),
        (
            pb::TrialResult {
                robustness: vec![pb::RobustnessResult {
                    kind: "fgsm".into(),
                    name: "fgsm".into(),
                    eps: 8.0,
                    accuracy: 0.1,
                    ..Default::default()
                }],
                ..result(0.5)
            },
            "result.robustness[0].eps",
        ),
        (
            pb::TrialResult {
                robustness: vec![Default::default(); 5_000],
                ..result(0.5)
            },
            "result.robustness",
        ),
        (
            pb::TrialResult {
                filters: vec![pb::FilterStats {
                    stage: "init".into(),
                    kernel_size: 3,
                    heatmap: vec![0.0; 1_000],
                    ..Default::default()
                }],
                ..result(0.5)
            },
            "result.filters[0].heatmap",
        ),
    ];
    for (r, field) in results {
        let outcome = pb::complete_request::Outcome::Succeeded(pb::Succeeded { result: Some(r) });
        refused(w.complete(bad, outcome).await, field);
    }

    // None of it touched the trial: it is still leased and takes a good report and result.
    w.report(bad, vec![epoch(1, 0.4), epoch(2, 0.6)]).await.unwrap();
    assert!(!w.succeed(bad, 0.6).await.unwrap().duplicate);
    assert!(!w.succeed(good, 0.5).await.unwrap().duplicate);
    let results = server.coordinator.export("small").await.unwrap();
    let stored = |trial: &str| results.epochs.iter().filter(|e| e.trial_id.as_str() == trial).count();
    assert_eq!(stored(&bad.trial_id), 2);
    assert_eq!(stored(&good.trial_id), 2);
    assert_eq!(counts(&server.coordinator.status("small").unwrap()).succeeded, 2);

    // A failure reason is cut to 1 KiB and loses its control characters, wherever it is shown.
    let noisy = format!("\x1b[31mboom\x1b[0m\n{}", "y".repeat(100_000));
    w.complete(
        &leases[2],
        pb::complete_request::Outcome::Failed(pb::Failed {
            retryable: false,
            reason: noisy,
        }),
    )
    .await
    .unwrap();
    let status = server.coordinator.status("small").unwrap();
    let reason = &status.sweeps[0].failures[0].reason;
    assert!(reason.len() <= 1200, "{}", reason.len());
    assert!(
        reason.contains("boom") && !reason.chars().any(char::is_control),
        "{reason:?}"
    );
    server.stop().await;
}
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_no_more_than_its_slots_and_cannot_fail_a_trial_it_never_confirmed(store: Store) {
    let state = State::new(store);
    let mut c = state.config();
    c.lease_timeout = Duration::from_millis(600);
    c.expiry_interval = Duration::from_millis(50);
    let server = Server::start(c).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut greedy = worker(&server, 1).await;

    // max_attempts is 2: three unconfirmed leases of the same trial, each left to expire.
    let mut first = None;
    for round in 1..=3 {
        let answer = greedy
            .client
            .lease(pb::LeaseRequest {
                worker_id: greedy.id.clone(),
                max_trials: 100_000,
                wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.leases.len(), 1, "round {round}: capped at its 1 slot");
        assert_eq!(answer.free_slots, 1, "the answer says why");
        let lease = &answer.leases[0];
        let trial = first.get_or_insert_with(|| lease.trial_id.clone());
        assert_eq!(&lease.trial_id, trial, "the oldest trial again");
        assert_eq!(lease.attempt, round);

        // Its slot is taken: another call is granted nothing and says so.
        let again = greedy
            .client
            .lease(pb::LeaseRequest {
                worker_id: greedy.id.clone(),
                max_trials: 5,
                wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(again.leases.is_empty());
        assert_eq!(again.free_slots, 0);

        // The lease expires unheard: the trial is queued again, not failed.
        let start = Instant::now();
        loop {
            let n = counts(&server.coordinator.status("small").unwrap());
            assert_eq!(n.failed, 0, "round {round}: an unconfirmed lease failed a trial");
            if n.leased == 0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the lease never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let n = counts(&server.coordinator.status("small").unwrap());
    assert_eq!((n.pending, n.failed), (4, 0));

    // A confirmed lease still counts when it expires.
    let lease = greedy.lease(1, 0).await.remove(0);
    assert_eq!(greedy.heartbeat(&lease).await, pb::LeaseDirective::Continue);
    let results = loop {
        let r = server.coordinator.export("small").await.unwrap();
        if counts(&server.coordinator.status("small").unwrap()).leased == 0 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = results
        .trials
        .iter()
        .find(|t| t.trial_id.as_str() == lease.trial_id)
        .unwrap();
    assert_eq!(row.attempts, 4);
    server.stop().await;
}
}

#[tokio::test]
async fn register_bounds_what_a_worker_says_of_itself() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await;
    let mut w = server.worker().await;
    let register = |name: String, devices: Vec<String>| pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        host: "h".into(),
        slots: 1,
        name,
        devices,
        instance: String::new(),
    };
    refused(w.client.register(register("n".repeat(300), vec![])).await, "name");
    refused(w.client.register(register("a\nb".into(), vec![])).await, "name");
    refused(
        w.client.register(register("ok".into(), vec!["cpu".into(); 65])).await,
        "devices",
    );
    w.client
        .register(register("ok".into(), vec!["cpu".into()]))
        .await
        .unwrap();
    server.stop().await;
}

on_both_stores! {
#[tokio::test]
async fn repeated_extends_cannot_pass_the_trial_cap(store: Store) {
    let state = State::new(store);
    let mut c = state.config();
    c.max_trials_per_sweep = 6;
    let server = Server::start(c).await;
    let mut admin = server.admin().await;
    admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
        .await
        .unwrap();
    let extend = |kernels: &str| pb::ExtendSweepRequest {
        spec_toml: SPEC.replace("kernel_size = [3, 5]", &format!("kernel_size = {kernels}")),
    };
    assert_eq!(
        admin
            .extend_sweep(extend("[3, 5, 7]"))
            .await
            .unwrap()
            .into_inner()
            .trials,
        6
    );
    // Each spec alone is within the cap (6 trials); the sweep would hold 8.
    let status = admin.extend_sweep(extend("[3, 5, 9]")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("grid") && status.message().contains("limit of 6"),
        "{}",
        status.message()
    );
    let n = counts(&server.coordinator.status("small").unwrap());
    assert_eq!(n.pending, 6, "nothing was added");
    server.stop().await;
}
}

#[tokio::test]
async fn a_sweep_too_large_in_bytes_is_refused_before_it_is_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_sweep_bytes = 1_000;
    let server = Server::start(c).await;
    let mut admin = server.admin().await;
    // 2 MB of class names, 3,000 seeds: about 6 GB once expanded.
    let classes: Vec<String> = (0..200_000).map(|i| format!("\"n{i:08}\"")).collect();
    let huge = format!(
        "name = \"huge\"\nseeds = 3000\n[dataset]\nname = \"imagefolder\"\nroot = \"/data\"\nclasses = [{}]\n\
         [model]\narch = \"resnet\"\ndepth = 8\nkernel_size = 3\ninit = \"kaiming-uniform\"\ntrain_mode = \"learned\"\n",
        classes[..90_000].join(",")
    );
    let status = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: huge })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("dataset.classes") && status.message().contains("limit of 1048576 bytes per trial"),
        "{}",
        status.message()
    );
    // SPEC's 4 trials are well under 1 MiB each, and over 1,000 bytes together.
    let status = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("invalid sweep spec: grid:") && status.message().contains("limit of 1000"),
        "{}",
        status.message()
    );
    assert!(server.coordinator.status("").unwrap().sweeps.is_empty());
    server.stop().await;
}

/// A client that opens connections without end cannot take the port: past the cap each new
/// connection is closed as it is accepted, and the calls of the connections within it go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_the_others_served() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let serve_config = convsweep_coordinator::ServeConfig {
        limits: convsweep_coordinator::Limits {
            max_connections: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let (_coordinator, conn, stop) = serve(dir.path(), serve_config).await;
    let url = conn.url;
    let addr = url.trim_start_matches("http://").to_owned();
    // Two clients hold the two slots (an HTTP/2 connection each).
    let mut first = convsweep_proto::pb::admin_service_client::AdminServiceClient::connect(url.clone())
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A third connection: closed by the server, nothing to read but the end.
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("the server closes it rather than keep it waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The first client's calls go on.
    first.get_status(pb::GetStatusRequest::default()).await.unwrap();
    // A slot freed is taken again.
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut idle).await;
    drop(idle);
    let start = Instant::now();
    loop {
        if let Ok(mut c) = convsweep_proto::pb::admin_service_client::AdminServiceClient::connect(url.clone()).await
            && c.get_status(pb::GetStatusRequest::default()).await.is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the freed slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}

/// `Watch` and `Export` streams count against a limit of their own for as long as they stream
/// (the call limit lets go of a stream once it answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_have_a_limit_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let serve_config = convsweep_coordinator::ServeConfig {
        limits: convsweep_coordinator::Limits {
            max_open_streams: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let (coordinator, conn, stop) = serve(dir.path(), serve_config).await;
    coordinator.submit(SPEC).unwrap();
    let url = conn.url;
    let mut admin = convsweep_proto::pb::admin_service_client::AdminServiceClient::connect(url)
        .await
        .unwrap();
    let watch = || pb::WatchRequest {
        sweep_id: String::new(),
    };
    let mut first = admin.watch(watch()).await.unwrap().into_inner();
    first.message().await.unwrap().unwrap();
    let mut second = admin.watch(watch()).await.unwrap().into_inner();
    second.message().await.unwrap().unwrap();
    let refused = admin.watch(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("Watch and Export streams"), "{refused:?}");
    let refused = admin
        .export(pb::ExportRequest {
            sweep_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Unary calls are not held up by the open streams.
    admin.get_status(pb::GetStatusRequest::default()).await.unwrap();
    // A stream that ends gives its place back.
    drop(first);
    let start = Instant::now();
    loop {
        match admin.watch(watch()).await {
            Ok(s) => {
                let mut s = s.into_inner();
                s.message().await.unwrap().unwrap();
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
    stop.cancel();
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Registering again with the same instance (a retried call, a worker that registers anew) is
/// the same worker, one row; workers gone longer than the retention, holding no lease, are
/// pruned.
async fn register_is_idempotent_and_old_workers_are_pruned(store: Store) {
    let state = State::new(store);
    let mut c = state.config();
    c.worker_retention = Duration::from_secs(1);
    // The holder's lease must outlive the wait for the others to be pruned (it sends no
    // heartbeat): with the tests' 2 s it could expire first, and the holder be pruned too.
    c.lease_timeout = Duration::from_secs(120);
    let server = Server::start(c).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut w = server.worker().await;
    let register = |instance: &str| pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        host: "h".into(),
        slots: 1,
        name: "again".into(),
        instance: instance.into(),
        ..Default::default()
    };
    let first = w.client.register(register("i-1")).await.unwrap().into_inner().worker_id;
    for _ in 0..5 {
        let again = w.client.register(register("i-1")).await.unwrap().into_inner().worker_id;
        assert_eq!(again, first);
    }
    let reader = state.backend().open_reader().unwrap();
    let named = |name: &str| reader.workers().unwrap().iter().filter(|x| x.name == name).count();
    assert_eq!(named("again"), 1, "one row for one instance");
    // A worker holding a lease stays however long it is silent; the others go.
    let holder = worker(&server, 1).await;
    let mut holder = holder;
    let lease = holder.lease(1, 0).await;
    assert_eq!(lease.len(), 1);
    let start = Instant::now();
    while named("again") + named("fake") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never pruned: {:?}",
            reader.workers().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(named("1-slot worker"), 1, "the lease holder was kept");
    server.stop().await;
}
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A cancel of many trials runs in transactions of `CANCEL_CHUNK` and lets go of the writer
/// between them (heartbeats and reports are stored meanwhile); a named cancel is checked whole
/// first: one id not in the sweep, even past the first chunk, refuses it and cancels nothing.
async fn a_large_cancel_runs_in_chunks_and_a_named_one_is_refused_whole(store: Store) {
    use convsweep_coordinator::coordinator::CANCEL_CHUNK;
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    let spec = SPEC.replace("name = \"small\"", "name = \"big\"\nseeds = 1200");
    let (_, submitted) = server.coordinator.submit(&spec).unwrap();
    let total = submitted.trials as usize;
    assert!(total > 2 * CANCEL_CHUNK, "{total} trials");
    let ids: Vec<String> = convsweep_coordinator::sweep::SweepSpec::from_toml(&spec)
        .unwrap()
        .expand_canonical()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    let mut w = worker(&server, 1).await;
    let held = w.lease(1, 0).await.pop().unwrap();
    let cancelled = |server: &Server| counts(&server.coordinator.status("big").unwrap()).cancelled as usize;

    let mut named: Vec<String> = ids[..CANCEL_CHUNK + 10].to_vec();
    named.push("t-not-in-this-sweep".into());
    let refused = server.coordinator.cancel("big", &named).unwrap_err().to_string();
    assert!(refused.contains("t-not-in-this-sweep"), "{refused}");
    assert_eq!(cancelled(&server), 0, "a refused cancel cancels nothing");

    named.pop();
    let distinct = named.len();
    // A trial named twice (here in one chunk) is cancelled and counted once.
    named.push(named[CANCEL_CHUNK + 1].clone());
    assert_eq!(server.coordinator.cancel("big", &named).unwrap() as usize, distinct);
    assert_eq!(
        server.coordinator.cancel("big", &[]).unwrap() as usize,
        total - distinct
    );
    assert_eq!(cancelled(&server), total);
    // Named: two transactions (a chunk and 11); the rest: a full chunk, then the empty end.
    let metrics = server.coordinator.metrics().encode();
    let transactions = metrics
        .lines()
        .find(|l| l.starts_with("convsweep_store_transaction_seconds_count{") && l.contains("\"cancel\""))
        .unwrap_or_else(|| panic!("no cancel transactions in {metrics}"));
    let rest = total - distinct;
    let expected = 2 + rest.div_ceil(CANCEL_CHUNK) + usize::from(rest % CANCEL_CHUNK == 0);
    assert!(
        transactions.ends_with(&format!(" {expected}")),
        "{transactions}, expected {expected}"
    );
    // The worker holding a lease is told its trial was cancelled.
    assert_eq!(w.heartbeat(&held).await, pb::LeaseDirective::Cancel);
    server.stop().await;
}
}
