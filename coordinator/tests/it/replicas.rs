//! Two coordinators on one PostgreSQL database serving the same sweep at once: any replica
//! answers any call, a trial is leased to one worker at a time across them, a submit on one
//! wakes `Lease` calls parked on the other, `Watch` on either sees both replicas' events,
//! lease expiry runs on both without expiring a lease twice, and the metrics sum.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use convsweep_proto::pb;
use convsweep_proto::pb::watch_event::Event;
use prometheus_parse::Value;

use crate::common::{SPEC, Server, State, Store, counts, epoch};

/// 4 kernel sizes x 2 train modes x 5 seeds.
fn forty() -> String {
    SPEC.replace("kernel_size = [3, 5]", "kernel_size = [3, 5, 7, 9]")
        .replace("name = \"small\"", "name = \"small\"\nseeds = 5")
}

/// The value of every sample of `name` whose labels include `labels`, summed.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_sweep_as_one_coordinator() {
    let state = State::new(Store::Postgres);
    // Lease calls may wait their whole 20 s here (the tests' default caps them at 5 s).
    let config = convsweep_coordinator::CoordinatorConfig {
        max_lease_wait: Duration::from_secs(30),
        ..state.config()
    };
    let (a, b) = (Server::start(config.clone()).await, Server::start(config).await);

    // A worker parks a long Lease call on replica A before there is any work.
    let mut parked = a.worker_named("parked", 1).await;
    let wait = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let leases = parked.lease(1, 20_000).await;
        (parked, leases, started.elapsed())
    });
    let mut b_admin = b.admin().await;
    // Watch on B from the start: it must see what A does.
    // (The sweep does not exist yet: it watches every sweep.)
    let mut watch = b_admin
        .watch(pb::WatchRequest {
            sweep_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    while a.coordinator.waiting_leases() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The submit goes to replica B; A's parked call wakes long before its 20 s wait is over.
    b_admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: forty() })
        .await
        .unwrap();
    let (mut parked, first, waited) = wait.await.unwrap();
    assert_eq!(first.len(), 1, "the parked call got a trial");
    assert!(
        waited < Duration::from_secs(10),
        "woken by the other replica's submit, not its deadline: {waited:?}"
    );

    // Eight workers, four on each replica, take every trial at once: none is leased twice.
    let mut workers = Vec::new();
    for i in 0..8 {
        let server = if i % 2 == 0 { &a } else { &b };
        workers.push(server.worker_named(&format!("w{i}"), 2).await);
    }
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let leases = w.lease(2, 0).await;
                    if leases.is_empty() {
                        break;
                    }
                    // Done at once, so that the worker's slots free up for the next call.
                    for l in leases {
                        w.report(&l, vec![epoch(1, 0.5)]).await.unwrap();
                        w.succeed(&l, 0.5).await.unwrap();
                        got.push(l.trial_id);
                    }
                }
                got
            })
        })
        .collect();
    let mut leased: Vec<String> = vec![first[0].trial_id.clone()];
    for t in tasks {
        leased.extend(t.await.unwrap());
    }
    let distinct: HashSet<&String> = leased.iter().collect();
    assert_eq!(distinct.len(), leased.len(), "a trial leased twice across replicas");
    assert_eq!(leased.len(), 40, "every trial leased");

    // Either replica answers for the whole sweep.
    let (sa, sb) = (
        a.coordinator.status("small").unwrap(),
        b.coordinator.status("small").unwrap(),
    );
    assert_eq!(counts(&sa).succeeded, 39);
    assert_eq!(counts(&sa), counts(&sb));

    // B's Watch saw A's events: trials leased by A's workers and their epochs.
    let on_a: HashSet<String> = leased.iter().cloned().collect();
    let (mut trials_seen, mut epochs_seen) = (HashSet::new(), HashSet::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while trials_seen.len() < 40 || epochs_seen.len() < 39 {
        let e = tokio::time::timeout_at(deadline, watch.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "B's Watch saw {} trials and {} epochs",
                    trials_seen.len(),
                    epochs_seen.len()
                )
            })
            .unwrap()
            .unwrap();
        match e.event.unwrap() {
            Event::Trial(t) if on_a.contains(&t.trial_id) => {
                trials_seen.insert(t.trial_id);
            }
            Event::Epoch(ep) => {
                epochs_seen.insert(ep.trial_id);
            }
            _ => {}
        }
    }

    // The parked worker goes silent with its lease: both replicas run expiry passes, and the
    // lease expires once.
    let _ = &mut parked;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counts(&a.coordinator.status("small").unwrap()).pending != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the silent lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expired: String = state.query(&format!(
        "SELECT COUNT(*)::text FROM attempts WHERE trial_id = '{}' AND outcome IN ('expired', 'unheard')",
        first[0].trial_id
    ));
    assert_eq!(expired, "1", "expired once, not once per replica");

    // Metrics: one replica reports the state's gauges; the counters add up over both.
    let (ma, mb) = (a.coordinator.scrape().unwrap(), b.coordinator.scrape().unwrap());
    let reporters = metric(&ma, "convsweep_state_reporter", &[]) + metric(&mb, "convsweep_state_reporter", &[]);
    assert_eq!(reporters, 1.0, "one replica reports the gauges");
    let trials = |state: &str| {
        metric(&ma, "convsweep_trials", &[("state", state)]) + metric(&mb, "convsweep_trials", &[("state", state)])
    };
    assert_eq!(
        (trials("succeeded"), trials("pending")),
        (39.0, 1.0),
        "the gauges sum to the state"
    );
    let expirations =
        metric(&ma, "convsweep_lease_expirations_total", &[]) + metric(&mb, "convsweep_lease_expirations_total", &[]);
    assert_eq!(expirations, 1.0);
    let rows = metric(&ma, "convsweep_epoch_rows_ingested_total", &[])
        + metric(&mb, "convsweep_epoch_rows_ingested_total", &[]);
    assert_eq!(rows, 39.0, "each epoch row counted by the replica that took it");
    let completes: BTreeMap<&str, f64> = [("a", &ma), ("b", &mb)]
        .into_iter()
        .map(|(n, m)| {
            (
                n,
                metric(m, "convsweep_rpcs_total", &[("method", "Complete"), ("code", "Ok")]),
            )
        })
        .collect();
    assert_eq!(completes.values().sum::<f64>(), 39.0, "{completes:?}");
    assert!(
        completes.values().all(|n| *n > 0.0),
        "both replicas served: {completes:?}"
    );
    drop(watch);
    a.stop().await;
    b.stop().await;
}

/// PostgreSQL is killed (SIGKILL, the postmaster and every backend) while eight workers report
/// epochs as fast as they can, and started again: every report that was acknowledged is in the
/// database afterwards, the calls made while it was down are answered UNAVAILABLE (nothing
/// half-applied: a retry is taken), and the coordinator goes on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_report_survives_postgres_being_killed() {
    let mut pg = convsweep_testkit::postgres::PgServer::start();
    let db = pg.fresh_database();
    let config = convsweep_coordinator::CoordinatorConfig {
        store_url: Some(pg.url(&db)),
        // Leases outlive the outage: this test is about writes, not expiry.
        lease_timeout: Duration::from_secs(120),
        ..crate::common::config(std::path::Path::new("/nonexistent"))
    };
    let server = Server::start(config).await;
    server
        .coordinator
        .submit(
            &SPEC
                .replace("epochs = 2", "epochs = 100000")
                .replace("name = \"small\"", "name = \"small\"\nseeds = 2"),
        )
        .unwrap();
    const EPOCHS: u32 = 120;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut w = server.worker_named(&format!("w{i}"), 1).await;
        let lease = w.lease(1, 0).await.remove(0);
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let (mut refusals, mut got) = (BTreeMap::<String, u32>::new(), Vec::new());
            for n in 1..=EPOCHS {
                let start = tokio::time::Instant::now();
                loop {
                    match w.report(&lease, vec![epoch(n, f64::from(n) / 1000.0)]).await {
                        Ok(()) => break,
                        Err(status) => {
                            *refusals.entry(format!("{:?}", status.code())).or_default() += 1;
                            assert!(start.elapsed() < Duration::from_secs(60), "never taken: {status:?}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                got.push(n);
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (lease.trial_id, got, refusals)
        }));
    }
    // Kill it a third of the way in, mid-stream.
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 8 * EPOCHS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = acked.load(std::sync::atomic::Ordering::SeqCst);
    tokio::task::block_in_place(|| pg.kill());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let during = acked.load(std::sync::atomic::Ordering::SeqCst);
    tokio::task::block_in_place(|| pg.start_again());
    let mut refused = BTreeMap::new();
    let mut reports = Vec::new();
    for t in tasks {
        let (trial, got, refusals) = t.await.unwrap();
        for (code, n) in refusals {
            *refused.entry(code).or_insert(0) += n;
        }
        reports.push((trial, got));
    }
    eprintln!(
        "killed after {killed_at} acknowledged reports ({during} by the time it was down); refusals: {refused:?}"
    );
    assert!(
        during - killed_at <= 8,
        "reports acknowledged while PostgreSQL was down: {}",
        during - killed_at
    );
    assert!(
        refused.contains_key("Unavailable"),
        "calls made while it was down: {refused:?}"
    );
    assert!(
        refused.keys().all(|c| c == "Unavailable"),
        "only UNAVAILABLE, never a half-done write refused otherwise: {refused:?}"
    );
    // Every acknowledged report is stored, read through a fresh reader.
    let results = convsweep_coordinator::store::PostgresBackend::new(pg.url(&db));
    let results = {
        use convsweep_coordinator::store::Backend;
        tokio::task::block_in_place(|| results.open_reader().unwrap().results(None).unwrap())
    };
    for (trial, got) in &reports {
        let stored: Vec<u32> = results
            .epochs
            .iter()
            .filter(|e| &e.trial_id == trial)
            .map(|e| e.metrics.epoch)
            .collect();
        assert_eq!(&stored, got, "trial {trial}: acknowledged epochs missing");
    }
    server.stop().await;
}
