//! The services over loopback gRPC.

use convsweep_coordinator::store::StoreReader;
use convsweep_proto::{PROTOCOL_VERSION, TrialSpec, pb};
use tonic::Code;

use crate::common::{SPEC, Server, State, UNDO_V9, config, counts, epoch, store_lease};
use crate::on_both_stores;

on_both_stores! {
#[tokio::test]
async fn a_fake_worker_runs_a_sweep_to_the_end(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    let mut admin = server.admin().await;
    let submitted = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (submitted.sweep_id.as_str(), submitted.trials, submitted.new_trials),
        ("small", 4, 4)
    );

    let mut worker = server.worker().await;
    let mut seen = Vec::new();
    loop {
        let leases = worker.lease(3, 0).await;
        if leases.is_empty() {
            break;
        }
        for lease in leases {
            // The spec travels intact: its hash is the trial id.
            let spec = TrialSpec::from_json(&lease.spec_json).unwrap();
            assert_eq!(spec.id().as_str(), lease.trial_id);
            assert_eq!(lease.attempt, 1);
            worker.report(&lease, vec![epoch(1, 0.3)]).await.unwrap();
            worker.report(&lease, vec![epoch(2, 0.5)]).await.unwrap();
            assert!(!worker.succeed(&lease, 0.5).await.unwrap().duplicate);
            seen.push(lease.trial_id);
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4);

    let status = admin
        .get_status(pb::GetStatusRequest {
            sweep_id: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let c = counts(&status);
    assert_eq!((c.succeeded, c.pending, c.failed), (4, 0, 0));
    assert_eq!(status.sweeps[0].eta_seconds, 0.0);
    assert_eq!(status.workers_alive, 1);
    server.stop().await;
}
}

on_both_stores! {
#[tokio::test]
async fn submitting_the_same_spec_twice_creates_nothing_new(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    let mut admin = server.admin().await;
    for expected_new in [4, 0] {
        let r = admin
            .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.trials, r.new_trials), (4, expected_new));
    }
    // Same trials written differently (comments, key order, an explicit default).
    let rewritten = format!("# again\n{}", SPEC.replace("width = 4", "width = 4\nkernel_size = 3"));
    let r = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: rewritten })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.new_trials, 0);
    // Another trial set under the same name is refused.
    let other = SPEC.replace("kernel_size = [3, 5]", "kernel_size = [3, 7]");
    let err = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: other })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // A second sweep sharing trials with the first reuses them.
    let overlap = SPEC
        .replace("name = \"small\"", "name = \"overlap\"")
        .replace("kernel_size = [3, 5]", "kernel_size = [5, 7]");
    let r = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: overlap })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.trials, r.new_trials), (4, 2));
    server.stop().await;
}
}

#[tokio::test]
async fn bad_specs_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await;
    let mut admin = server.admin().await;
    let err = admin
        .submit_sweep(pb::SubmitSweepRequest {
            spec_toml: SPEC.replace("kernel_size = [3, 5]", "kernel_size = [3, 6]"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("model.kernel_size"), "{}", err.message());
    assert!(err.message().contains("odd"), "{}", err.message());
    server.stop().await;
}

#[tokio::test]
async fn a_worker_of_another_protocol_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await;
    let mut client = convsweep_proto::pb::worker_service_client::WorkerServiceClient::connect(server.url.clone())
        .await
        .unwrap();
    let err = client
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION + 1,
            host: "h".into(),
            devices: vec![],
            slots: 1,
            name: String::new(),
            instance: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("protocol version"), "{}", err.message());
    server.stop().await;
}

/// Version 2 carries trial states as an enum: a worker of version 1 (states as text) is refused
/// at `Register`, told both versions.
#[tokio::test]
async fn a_version_1_worker_is_told_both_versions() {
    assert_eq!(PROTOCOL_VERSION, 2);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await;
    let mut client = convsweep_proto::pb::worker_service_client::WorkerServiceClient::connect(server.url.clone())
        .await
        .unwrap();
    let err = client
        .register(pb::RegisterRequest {
            protocol_version: 1,
            slots: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("worker speaks v1") && err.message().contains("coordinator v2"),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "convsweep.v1.WorkerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}

on_both_stores! {
#[tokio::test]
async fn lease_long_polls_until_work_arrives(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    let mut worker = server.worker().await;
    let waiting = tokio::spawn(async move { worker.lease(1, 5_000).await });
    // The call has looked, found nothing and parked: from here only work (or its 5 s) can end
    // it, so it has not returned.
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while server.coordinator.waiting_leases() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the lease call parks");
    assert!(!waiting.is_finished(), "lease returned before there was work");
    server.coordinator.submit(SPEC).unwrap();
    let leases = tokio::time::timeout(std::time::Duration::from_secs(3), waiting)
        .await
        .expect("lease woke up on submit")
        .unwrap();
    assert_eq!(leases.len(), 1);
    server.stop().await;
}
}

on_both_stores! {
#[tokio::test]
async fn stale_tokens_are_fenced_and_duplicates_acknowledged_once(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut worker = server.worker().await;
    let lease = worker.lease(1, 0).await.remove(0);
    let mut forged = lease.clone();
    forged.lease_token = "l-forged".into();
    let err = worker.report(&forged, vec![epoch(1, 0.1)]).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("stale lease"), "{}", err.message());
    let err = worker.succeed(&forged, 0.4).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    assert!(!worker.succeed(&lease, 0.4).await.unwrap().duplicate);
    assert!(worker.succeed(&lease, 0.4).await.unwrap().duplicate);
    // After completion the lease is no longer current for reports either.
    assert_eq!(
        worker.report(&lease, vec![epoch(3, 0.1)]).await.unwrap_err().code(),
        Code::Aborted
    );
    let status = server.coordinator.status("small").unwrap();
    assert_eq!(counts(&status).succeeded, 1);
    server.stop().await;
}
}

#[tokio::test]
async fn malformed_reports_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut worker = server.worker().await;
    let lease = worker.lease(1, 0).await.remove(0);
    let err = worker.report(&lease, vec![epoch(0, 0.1)]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("epochs[0].epoch"), "{}", err.message());
    let err = worker.succeed(&lease, 1.5).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The lease is still good after refused garbage.
    worker.succeed(&lease, 0.5).await.unwrap();
    server.stop().await;
}

on_both_stores! {
#[tokio::test]
async fn acknowledged_results_survive_a_restart(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut worker = server.worker().await;
    let lease = worker.lease(1, 0).await.remove(0);
    worker
        .report(&lease, vec![epoch(1, 0.25), epoch(2, 0.5)])
        .await
        .unwrap();
    worker.succeed(&lease, 0.5).await.unwrap();
    let held = worker.lease(1, 0).await.remove(0);
    worker.report(&held, vec![epoch(1, 0.2)]).await.unwrap();
    server.stop().await;

    let server = Server::start(state.config()).await;
    let status = server.coordinator.status("small").unwrap();
    let c = counts(&status);
    assert_eq!((c.succeeded, c.running, c.pending), (1, 1, 2));
    // The held lease is still the worker's: its report is accepted after the restart.
    let mut client = convsweep_proto::pb::worker_service_client::WorkerServiceClient::connect(server.url.clone())
        .await
        .unwrap();
    client
        .complete(pb::CompleteRequest {
            worker_id: worker.id.clone(),
            trial_id: held.trial_id.clone(),
            lease_token: held.lease_token.clone(),
            outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                result: Some(crate::common::result(0.4)),
            })),
        })
        .await
        .unwrap();
    assert_eq!(counts(&server.coordinator.status("small").unwrap()).succeeded, 2);
    server.stop().await;
}
}

on_both_stores! {
#[tokio::test]
async fn evaluations_are_stored_with_the_result(store: Store) {
    let state = State::new(store);
    let server = Server::start(state.config()).await;
    server.coordinator.submit(SPEC).unwrap();
    let mut worker = server.worker().await;
    let lease = worker.lease(1, 0).await.remove(0);
    let mut result = crate::common::result(0.5);
    result.eval_error = "pgd eps=0.03: out of memory".into();
    result.eval_seconds = 2.5;
    result.robustness = vec![
        pb::RobustnessResult {
            kind: "fgsm".into(),
            name: "fgsm".into(),
            eps: 1.0 / 255.0,
            severity: 0,
            accuracy: 0.4,
            images: 32,
        },
        pb::RobustnessResult {
            kind: "corruption".into(),
            name: "contrast".into(),
            eps: 0.0,
            severity: 3,
            accuracy: 0.3,
            images: 32,
        },
    ];
    result.filters = vec![pb::FilterStats {
        stage: "final".into(),
        layer: "conv1".into(),
        kernel_size: 3,
        filters: 48,
        fve: 0.8,
        fve_norm: Some(0.9),
        sparsity: 0.0,
        orthogonality: 0.7,
        heatmap: vec![0.1; 9],
        folded: false,
    }];
    worker
        .complete(
            &lease,
            pb::complete_request::Outcome::Succeeded(pb::Succeeded { result: Some(result) }),
        )
        .await
        .unwrap();
    server.stop().await;
    let results = state.backend().open_reader()
        .unwrap()
        .results(None)
        .unwrap();
    let rows = results.trials;
    let done = rows.iter().find(|r| r.trial_id == lease.trial_id).unwrap();
    let r = done.result.as_ref().unwrap();
    assert_eq!(
        (r.eval_error.as_str(), r.eval_seconds),
        ("pgd eps=0.03: out of memory", 2.5)
    );
    let rob = results.robustness;
    assert_eq!(rob.len(), 2);
    assert!(
        rob.iter()
            .any(|x| x.trial_id == lease.trial_id && x.result.name == "contrast" && x.result.severity == 3)
    );
    let fil = results.filters;
    assert_eq!(fil.len(), 1);
    assert_eq!(fil[0].stats.heatmap, vec![0.1; 9]);
    assert_eq!(fil[0].stats.fve_norm, Some(0.9));
}
}

/// A state holds every spec, result and failure reason: its folder is made 0700, and the
/// database and its WAL and shared-memory files 0600, whatever the umask.
#[test]
fn a_new_state_is_readable_by_its_owner_only() {
    use convsweep_coordinator::store::StoreWriter;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut store = convsweep_coordinator::store::SqliteStore::open(&state, Default::default()).unwrap();
    store.register_worker("w", "h", &[], 1, 0, "").unwrap();
    let mode = |name: &str| std::fs::metadata(state.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700);
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
}

#[test]
fn a_version_1_state_folder_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    drop(convsweep_coordinator::store::SqliteStore::open(dir.path(), Default::default()).unwrap());
    // Turn it into what version 1 wrote.
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(&format!(
        "DROP TABLE robustness; DROP TABLE filters;
         ALTER TABLE results DROP COLUMN eval_error; ALTER TABLE results DROP COLUMN eval_seconds;
         ALTER TABLE results DROP COLUMN conv_algorithm;
         ALTER TABLE results DROP COLUMN startup_seconds; ALTER TABLE results DROP COLUMN train_seconds;
         ALTER TABLE results DROP COLUMN epoch_eval_seconds; ALTER TABLE results DROP COLUMN checkpoint_seconds;
         ALTER TABLE results DROP COLUMN report_seconds; ALTER TABLE results DROP COLUMN train_images;
         ALTER TABLE trials DROP COLUMN resume_floor; ALTER TABLE trials DROP COLUMN lease_heard;
         ALTER TABLE trials DROP COLUMN planned_epochs;
         DROP INDEX workers_by_instance; ALTER TABLE workers DROP COLUMN instance;
         UPDATE meta SET value = '1' WHERE key = 'schema_version'; {UNDO_V9}"
    ))
    .unwrap();
    drop(conn);
    let store = convsweep_coordinator::store::SqliteStore::open(dir.path(), Default::default()).unwrap();
    let reader = convsweep_coordinator::store::SqliteReader::open(dir.path()).unwrap();
    assert!(reader.results(None).unwrap().robustness.is_empty());
    drop(reader);
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let version: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, convsweep_coordinator::store::SCHEMA_VERSION.to_string());
    conn.prepare("SELECT eval_error, eval_seconds, conv_algorithm, startup_seconds, train_images FROM results")
        .unwrap();
    conn.prepare("SELECT resume_floor, lease_heard, planned_epochs FROM trials")
        .unwrap();
    conn.prepare("SELECT instance FROM workers").unwrap();
}

/// A SQLite state with one 4-epoch trial leased: its folder, store, worker and lease.
fn leased_state() -> (
    tempfile::TempDir,
    convsweep_coordinator::store::SqliteStore,
    String,
    pb::TrialLease,
) {
    use convsweep_coordinator::store::StoreWriter;
    use convsweep_coordinator::sweep::SweepSpec;
    let dir = tempfile::tempdir().unwrap();
    let mut store = convsweep_coordinator::store::SqliteStore::open(dir.path(), Default::default()).unwrap();
    let spec = SweepSpec::from_toml(
        "name = \"s\"\n[dataset]\nname = \"synthetic\"\n[model]\narch = \"resnet\"\ndepth = 8\n\
         init = \"kaiming-uniform\"\ntrain_mode = \"learned\"\nkernel_size = 3\n[train]\nepochs = 4\n",
    )
    .unwrap();
    store
        .submit(&spec.id, "", &spec.expand_canonical().unwrap(), 0)
        .unwrap();
    let worker = store.register_worker("w", "h", &[], 1, 0, "").unwrap();
    let lease = store_lease(&mut store, &worker, 1, 0).remove(0);
    (dir, store, worker, lease)
}

/// A lease granted by a version 7 coordinator has no copy of its trial's epochs: after the
/// migration its reports are still checked against them, read from the trial's spec.
#[test]
fn a_lease_from_a_version_7_state_is_checked_against_its_spec_epochs() {
    use convsweep_coordinator::store::StoreWriter;
    let (dir, store, worker, lease) = leased_state();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(
        &format!("ALTER TABLE trials DROP COLUMN planned_epochs; {UNDO_V9} UPDATE meta SET value = '7' WHERE key = 'schema_version';"),
    )
    .unwrap();
    drop(conn);
    let mut store = convsweep_coordinator::store::SqliteStore::open(dir.path(), Default::default()).unwrap();
    let report = |store: &mut convsweep_coordinator::store::SqliteStore, n: u32| {
        let mut answer = None;
        store
            .batch(1, &mut |ops| {
                answer = Some(ops.report_epochs(&worker, &lease.trial_id, &lease.lease_token, &[epoch(n, 0.5)]));
                Ok(())
            })
            .unwrap();
        answer.unwrap()
    };
    report(&mut store, 4).unwrap();
    let refused = report(&mut store, 5).unwrap_err().to_string();
    assert!(
        refused.contains("epochs[0].epoch") && refused.contains("trains 4 epochs"),
        "{refused}"
    );
}

/// A version 8 state (before stopping rules) migrates in place: its epochs keep their figures
/// with no validation split, its lease goes on, and the new columns and table take writes.
#[test]
fn a_version_8_state_gains_validation_columns_and_the_decisions_table() {
    use convsweep_coordinator::store::StoreWriter;
    let (dir, mut store, worker, lease) = leased_state();
    let report = |store: &mut convsweep_coordinator::store::SqliteStore, e: pb::EpochMetrics| {
        store
            .batch(1, &mut |ops| {
                ops.report_epochs(&worker, &lease.trial_id, &lease.lease_token, &[e])
            })
            .unwrap();
    };
    report(&mut store, epoch(1, 0.5));
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(&format!(
        "{UNDO_V9} UPDATE meta SET value = '8' WHERE key = 'schema_version';"
    ))
    .unwrap();
    drop(conn);
    let mut store = convsweep_coordinator::store::SqliteStore::open(dir.path(), Default::default()).unwrap();
    report(&mut store, convsweep_testkit::scripted::epoch_with_val(2, 0.5, 0.625));
    let reader = convsweep_coordinator::store::SqliteReader::open(dir.path()).unwrap();
    let results = reader.results(None).unwrap();
    let vals: Vec<Option<f64>> = results.epochs.iter().map(|e| e.metrics.val_acc).collect();
    assert_eq!(vals, vec![None, Some(0.625)]);
    assert!(results.decisions.is_empty());
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let version: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, "9");
}

#[test]
fn a_version_3_state_folder_gains_the_conv_algorithm_column() {
    let dir = tempfile::tempdir().unwrap();
    drop(convsweep_coordinator::store::SqliteStore::open(dir.path(), Default::default()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(&format!(
        "ALTER TABLE results DROP COLUMN conv_algorithm;
         ALTER TABLE results DROP COLUMN startup_seconds; ALTER TABLE results DROP COLUMN train_seconds;
         ALTER TABLE results DROP COLUMN epoch_eval_seconds; ALTER TABLE results DROP COLUMN checkpoint_seconds;
         ALTER TABLE results DROP COLUMN report_seconds; ALTER TABLE results DROP COLUMN train_images;
         ALTER TABLE trials DROP COLUMN lease_heard; ALTER TABLE trials DROP COLUMN planned_epochs;
         DROP INDEX workers_by_instance; ALTER TABLE workers DROP COLUMN instance;
         UPDATE meta SET value = '3' WHERE key = 'schema_version'; {UNDO_V9}"
    ))
    .unwrap();
    drop(conn);
    drop(convsweep_coordinator::store::SqliteStore::open(dir.path(), Default::default()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let version: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, convsweep_coordinator::store::SCHEMA_VERSION.to_string());
    conn.prepare("SELECT conv_algorithm, resume_floor FROM results JOIN trials ON trials.id = results.trial_id")
        .unwrap();
}
