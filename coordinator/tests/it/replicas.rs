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
