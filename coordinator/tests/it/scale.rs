//! What the store built for scale must keep: no delayed-ACK stall on a reply, caps before
//! expansion, a lease on an empty queue that writes nothing, one waiter woken per trial, and
//! progress counts that agree with the trials.

use std::time::Duration;

use convsweep_coordinator::Coordinator;
use convsweep_coordinator::store::StoreReader;
use convsweep_proto::pb;
use tonic::Code;

use crate::common::{SPEC, Server, config, counts, lease_now, result, scripted_worker};

/// Without `TCP_NODELAY` every unary reply waits for the client's delayed ACK (about 40 ms on
/// Linux): every connection the main port accepts has it set. (What a call then costs is
/// `convsweep-bench rpc`'s to measure.)
#[tokio::test]
async fn every_accepted_connection_has_nodelay() {
    use tokio_stream::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut accepted = Box::pin(convsweep_coordinator::server::no_delay(listener));
    for _ in 0..3 {
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let served = accepted.next().await.unwrap().unwrap();
        assert!(served.nodelay().unwrap(), "the server's side of the connection");
        drop(client);
    }
}

#[tokio::test]
async fn a_ten_billion_seed_spec_is_refused_by_size_and_the_coordinator_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path())).await;
    let mut admin = server.admin().await;
    let huge = SPEC.replace("name = \"small\"", "name = \"huge\"\nseeds = 10000000000");
    let err = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: huge })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for part in [
        "seeds",
        "10000000000",
        "4 point(s)",
        "40000000000 trials",
        "limit of 1000000",
    ] {
        assert!(
            err.message().contains(part),
            "{part:?} missing from {:?}",
            err.message()
        );
    }
    // Absurd epoch counts and dataset sizes are refused by name too.
    for (edit, field) in [
        (("epochs = 2", "epochs = 1000000000"), "train.epochs"),
        (("train_size = 64", "train_size = 4000000000"), "dataset.train_size"),
    ] {
        let err = admin
            .submit_sweep(pb::SubmitSweepRequest {
                spec_toml: SPEC.replace(edit.0, edit.1),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains(field) && err.message().contains("limit"),
            "{}",
            err.message()
        );
    }
    // Still serving, and a sweep of a sensible size goes in.
    let ok = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.trials, 4);
    let status = admin
        .get_status(pb::GetStatusRequest {
            sweep_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.sweeps.len(), 1, "nothing of the refused sweeps was stored");
    server.stop().await;
}

#[tokio::test]
async fn the_cap_is_the_coordinators_setting() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::open(convsweep_coordinator::CoordinatorConfig {
        max_trials_per_sweep: 3,
        ..config(dir.path())
    })
    .unwrap();
    let err = c.submit(SPEC).unwrap_err().to_string();
    assert!(err.contains("4 points, over the limit of 3"), "{err}");
}

fn last_seen(dir: &std::path::Path, worker: &str) -> i64 {
    rusqlite::Connection::open(dir.join("state.db"))
        .unwrap()
        .query_row("SELECT last_seen_ms FROM workers WHERE id = ?1", [worker], |r| r.get(0))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_lease_with_nothing_to_lease_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::open(config(dir.path())).unwrap();
    let w = scripted_worker(&c, 1);
    let seen = last_seen(dir.path(), &w);
    let wal = || std::fs::metadata(dir.path().join("state.db-wal")).unwrap().len();
    let before = wal();
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(lease_now(&c, &w, 1).await.is_empty());
    assert_eq!(last_seen(dir.path(), &w), seen, "an empty lease touched the worker");
    assert_eq!(wal(), before, "an empty lease wrote to the log");
    // An unknown worker is still told to register, without a write either.
    let err = c
        .lease(pb::LeaseRequest {
            worker_id: "w-nobody".into(),
            max_trials: 1,
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, convsweep_coordinator::Error::NotFound(_)), "{err}");
    // A lease that finds work does write: the worker is seen now.
    c.submit(SPEC).unwrap();
    assert_eq!(lease_now(&c, &w, 1).await.len(), 1);
    assert!(last_seen(dir.path(), &w) > seen);
}

fn lease_writes(c: &Coordinator) -> u64 {
    let text = c.scrape().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("convsweep_store_batch_writes_sum "))
        .map_or(0.0, |v| v.trim().parse::<f64>().unwrap()) as u64
}

#[tokio::test(start_paused = true)]
async fn a_new_trial_wakes_one_waiting_worker_not_all() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::open(config(dir.path())).unwrap();
    let workers: Vec<String> = (0..6).map(|_| scripted_worker(&c, 1)).collect();
    let waiting: Vec<_> = workers
        .iter()
        .map(|w| {
            let c = c.clone();
            let w = w.clone();
            tokio::spawn(async move {
                c.lease(pb::LeaseRequest {
                    worker_id: w,
                    max_trials: 1,
                    wait_ms: 4_000,
                })
                .await
                .unwrap()
                .leases
            })
        })
        .collect();
    // Every call has looked once and waits (the paused clock moves only once all are idle).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = lease_writes(&c);
    assert_eq!(before, 6, "each call looked once");
    c.submit(&SPEC.replace(
        "kernel_size = [3, 5]\ntrain_mode = [\"learned\", \"frozen\"]",
        "kernel_size = [3]\ntrain_mode = [\"learned\"]",
    ))
    .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // One woken for the trial, and at most one more it passed the wake-up to (it leased all it
    // asked for, so there might have been more): never all six.
    let woken = lease_writes(&c) - before;
    assert!(
        (1..=2).contains(&woken),
        "{woken} waiting calls looked for one new trial"
    );
    let mut leased = 0;
    for task in waiting {
        leased += task.await.unwrap().len();
    }
    assert_eq!(leased, 1);
}

/// Trials per state of a sweep, counted from the trials themselves.
fn recount(dir: &std::path::Path, sweep: &str) -> Vec<(String, u32)> {
    let conn = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT t.state, COUNT(*) FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
             WHERE s.sweep_id = ?1 GROUP BY t.state ORDER BY t.state",
        )
        .unwrap();
    stmt.query_map([sweep], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn as_list(c: pb::StateCounts) -> Vec<(String, u32)> {
    let all = [
        ("cancelled", c.cancelled),
        ("failed", c.failed),
        ("leased", c.leased),
        ("pending", c.pending),
        ("preempted", c.preempted),
        ("running", c.running),
        ("succeeded", c.succeeded),
    ];
    all.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.to_owned(), n))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn progress_counts_agree_with_the_trials_through_every_transition() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::open(config(dir.path())).unwrap();
    let w = scripted_worker(&c, 4);
    c.submit(SPEC).unwrap();
    // A second sweep sharing two of the first one's trials (kernel size 3).
    let other = SPEC
        .replace("name = \"small\"", "name = \"other\"")
        .replace("kernel_size = [3, 5]", "kernel_size = [3, 7]");
    c.submit(&other).unwrap();
    let check = |when: &str| {
        for sweep in ["small", "other"] {
            let status = c.status(sweep).unwrap();
            assert_eq!(
                as_list(counts(&status)),
                recount(dir.path(), sweep),
                "{sweep} after {when}"
            );
            assert_eq!(status.sweeps[0].total, 4);
        }
    };
    check("submit");
    let leases = lease_now(&c, &w, 3).await;
    check("lease");
    let done = async |lease: &pb::TrialLease, outcome| {
        c.complete(pb::CompleteRequest {
            worker_id: w.clone(),
            trial_id: lease.trial_id.clone(),
            lease_token: lease.lease_token.clone(),
            outcome: Some(outcome),
        })
        .await
        .unwrap()
    };
    c.report_epochs(pb::ReportEpochsRequest {
        worker_id: w.clone(),
        trial_id: leases[0].trial_id.clone(),
        lease_token: leases[0].lease_token.clone(),
        epochs: vec![crate::common::epoch(1, 0.2)],
    })
    .await
    .unwrap();
    check("an epoch report");
    done(
        &leases[0],
        pb::complete_request::Outcome::Succeeded(pb::Succeeded {
            result: Some(result(0.4)),
        }),
    )
    .await;
    done(
        &leases[1],
        pb::complete_request::Outcome::Failed(pb::Failed {
            reason: "boom".into(),
            retryable: false,
        }),
    )
    .await;
    done(
        &leases[2],
        pb::complete_request::Outcome::Preempted(pb::Preempted {
            reason: "SIGTERM".into(),
        }),
    )
    .await;
    check("completions");
    // The rest expire.
    let more = lease_now(&c, &w, 4).await;
    assert!(!more.is_empty());
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(c.expire_once().unwrap() > 0);
    check("expiry");
    c.cancel("other", &[]).unwrap();
    check("cancel");
    c.resume("small").unwrap();
    check("resume");
    c.extend(&SPEC.replace("kernel_size = [3, 5]", "kernel_size = [3, 5, 9]"))
        .unwrap();
    let status = c.status("small").unwrap();
    assert_eq!(status.sweeps[0].total, 6);
    assert_eq!(as_list(counts(&status)), recount(dir.path(), "small"), "after extend");
    assert!(status.sweeps[0].trials_per_hour > 0.0, "the sweep's start time is kept");
}

#[test]
fn a_refused_write_in_a_batch_leaves_the_others_committed() {
    use convsweep_coordinator::store::{LeasePolicy, SqliteStore, StoreWriter};
    let dir = tempfile::tempdir().unwrap();
    let spec = convsweep_coordinator::sweep::SweepSpec::from_toml(SPEC).unwrap();
    let mut store = SqliteStore::open(dir.path(), LeasePolicy::default()).unwrap();
    store
        .submit(&spec.id, SPEC, &spec.expand_canonical().unwrap(), 1)
        .unwrap();
    let w = store.register_worker("w", "h", &[], 2, 1, "").unwrap();
    let leases = crate::common::store_lease(&mut store, &w, 2, 2);
    let epochs = [crate::common::epoch(1, 0.3)];
    // One batch as group commit runs it: every write applied in turn, a refusal kept as that
    // write's answer.
    let mut out = Vec::new();
    store
        .batch(3, &mut |ops| {
            out = vec![
                ops.report_epochs(&w, &leases[0].trial_id, &leases[0].lease_token, &epochs)
                    .map(|()| "reported"),
                ops.report_epochs(&w, &leases[1].trial_id, "l-not-the-token", &epochs)
                    .map(|()| "reported"),
                ops.complete(
                    &w,
                    &leases[0].trial_id,
                    &leases[0].lease_token,
                    &convsweep_proto::Outcome::Succeeded(result(0.3)),
                )
                .map(|_| "completed"),
                ops.lease("w-unknown", 1).map(|_| "leased"),
            ];
            Ok(())
        })
        .unwrap();
    assert!(matches!(out[0], Ok("reported")));
    assert!(
        matches!(out[1], Err(convsweep_coordinator::Error::StaleLease(_))),
        "{:?}",
        out[1]
    );
    assert!(matches!(out[2], Ok("completed")));
    assert!(matches!(out[3], Err(convsweep_coordinator::Error::NotFound(_))));
    drop(store);
    let results = convsweep_coordinator::store::SqliteReader::open(dir.path())
        .unwrap()
        .results(None)
        .unwrap();
    assert_eq!(
        results.epochs.len(),
        1,
        "the good report is stored, the stale one is not"
    );
    assert_eq!(results.epochs[0].trial_id, leases[0].trial_id);
    let done: Vec<_> = results
        .trials
        .iter()
        .filter(|t| t.state == convsweep_proto::TrialState::Succeeded)
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].trial_id, leases[0].trial_id);
}
