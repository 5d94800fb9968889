//! The lease state machine driven directly, under tokio's paused clock, on each store.

use std::time::Duration;

use convsweep_coordinator::Coordinator;
use convsweep_proto::{PROTOCOL_VERSION, pb};

use crate::common::{SPEC, State, counts, result};
use crate::on_both_stores;

fn register(c: &Coordinator) -> String {
    c.register(pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        host: "h".into(),
        devices: vec![],
        slots: 1,
        name: "w".into(),
        instance: String::new(),
    })
    .unwrap()
    .worker_id
}

async fn lease_one(c: &Coordinator, worker: &str) -> pb::TrialLease {
    c.lease(pb::LeaseRequest {
        worker_id: worker.into(),
        max_trials: 1,
        wait_ms: 0,
    })
    .await
    .unwrap()
    .leases
    .remove(0)
}

async fn heartbeat(c: &Coordinator, worker: &str, lease: &pb::TrialLease) -> pb::LeaseDirective {
    let resp = c
        .heartbeat(pb::HeartbeatRequest {
            worker_id: worker.into(),
            leases: vec![pb::LeaseRef {
                trial_id: lease.trial_id.clone(),
                lease_token: lease.lease_token.clone(),
            }],
        })
        .await
        .unwrap();
    pb::LeaseDirective::try_from(resp.leases[0].directive).unwrap()
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_lease_and_silence_expires_it(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap();
    c.submit(SPEC).unwrap();
    let w = register(&c);
    let lease = lease_one(&c, &w).await;

    // 2 s timeout; heartbeats every second keep it alive well past that.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.expire_once().unwrap(), 0);
        assert_eq!(heartbeat(&c, &w, &lease).await, pb::LeaseDirective::Continue);
    }
    // Silence: the lease expires and the trial is leased again as attempt 2.
    tokio::time::advance(Duration::from_millis(2_100)).await;
    assert_eq!(c.expire_once().unwrap(), 1);
    assert_eq!(heartbeat(&c, &w, &lease).await, pb::LeaseDirective::Lost);
    let again = lease_one(&c, &w).await;
    assert_eq!(again.trial_id, lease.trial_id);
    assert_eq!(again.attempt, 2);
    assert_ne!(again.lease_token, lease.lease_token);

    // The presumed-dead worker's late completion is refused; the new attempt's is taken.
    let late = c
        .complete(pb::CompleteRequest {
            worker_id: w.clone(),
            trial_id: lease.trial_id.clone(),
            lease_token: lease.lease_token.clone(),
            outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                result: Some(result(0.1)),
            })),
        })
        .await;
    assert!(
        matches!(late, Err(convsweep_coordinator::Error::StaleLease(_))),
        "{late:?}"
    );
    c.complete(pb::CompleteRequest {
        worker_id: w.clone(),
        trial_id: again.trial_id.clone(),
        lease_token: again.lease_token.clone(),
        outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
            result: Some(result(0.7)),
        })),
    })
    .await
    .unwrap();
    assert_eq!(counts(&c.status("small").unwrap()).succeeded, 1);
}
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn too_many_expired_attempts_fail_the_trial_with_every_reason(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap(); // max_attempts = 2
    c.submit(SPEC).unwrap();
    let w = register(&c);
    let first = lease_one(&c, &w).await;
    // Confirmed by a heartbeat, then silent: an attempt that counts.
    heartbeat(&c, &w, &first).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    c.expire_once().unwrap();
    let second = lease_one(&c, &w).await;
    assert_eq!((second.trial_id.as_str(), second.attempt), (first.trial_id.as_str(), 2));
    heartbeat(&c, &w, &second).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    c.expire_once().unwrap();
    let status = c.status("small").unwrap();
    assert_eq!(counts(&status).failed, 1);
    let failure = &status.sweeps[0].failures[0];
    assert_eq!(failure.trial_id, first.trial_id);
    assert!(
        failure.reason.contains("gave up after 2 failed attempts"),
        "{}",
        failure.reason
    );
    assert!(failure.reason.contains("attempt 1 expired") && failure.reason.contains("attempt 2 expired"));
    // The next lease is another trial.
    assert_ne!(lease_one(&c, &w).await.trial_id, first.trial_id);
}
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn retryable_failures_retry_and_fatal_ones_do_not(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap();
    c.submit(SPEC).unwrap();
    let w = register(&c);
    let fail = async |lease: &pb::TrialLease, retryable: bool| {
        c.complete(pb::CompleteRequest {
            worker_id: w.clone(),
            trial_id: lease.trial_id.clone(),
            lease_token: lease.lease_token.clone(),
            outcome: Some(pb::complete_request::Outcome::Failed(pb::Failed {
                retryable,
                reason: "boom".into(),
            })),
        })
        .await
        .unwrap()
    };
    let a = lease_one(&c, &w).await;
    fail(&a, true).await;
    let a2 = lease_one(&c, &w).await;
    assert_eq!((a2.trial_id.as_str(), a2.attempt), (a.trial_id.as_str(), 2));
    fail(&a2, false).await;
    let status = c.status("small").unwrap();
    assert_eq!(counts(&status).failed, 1);
    assert!(status.sweeps[0].failures[0].reason.contains("not retryable"));
}
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn preempted_trials_are_leased_again(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap();
    c.submit(SPEC).unwrap();
    let w = register(&c);
    let a = lease_one(&c, &w).await;
    c.complete(pb::CompleteRequest {
        worker_id: w.clone(),
        trial_id: a.trial_id.clone(),
        lease_token: a.lease_token.clone(),
        outcome: Some(pb::complete_request::Outcome::Preempted(pb::Preempted {
            reason: "SIGTERM".into(),
        })),
    })
    .await
    .unwrap();
    assert_eq!(counts(&c.status("small").unwrap()).preempted, 1);
    let again = lease_one(&c, &w).await;
    assert_eq!((again.trial_id.as_str(), again.attempt), (a.trial_id.as_str(), 2));
}
}

on_both_stores! {
#[tokio::test]
async fn extending_a_sweep_creates_only_the_new_trials(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap();
    let (_, first) = c.submit(SPEC).unwrap();
    assert_eq!((first.trials, first.new_trials), (4, 4));
    let grown = SPEC.replace("kernel_size = [3, 5]", "kernel_size = [3, 5, 7]");
    let err = c.submit(&grown).unwrap_err().to_string();
    assert!(err.contains("convsweep extend"), "{err}");
    let (_, extended) = c.extend(&grown).unwrap();
    assert_eq!((extended.trials, extended.new_trials), (6, 2));
    let (_, again) = c.extend(&grown).unwrap();
    assert_eq!((again.trials, again.new_trials), (6, 0));
    // More seeds.
    let seeds = grown.replace("name = \"small\"", "name = \"small\"\nseeds = 2");
    assert_eq!(c.extend(&seeds).unwrap().1.new_trials, 6);
    let other = SPEC.replace("name = \"small\"", "name = \"other\"");
    assert!(matches!(
        c.extend(&other),
        Err(convsweep_coordinator::Error::NotFound(_))
    ));
    assert_eq!(counts(&c.status("small").unwrap()).pending, 12);
}
}

on_both_stores! {
#[tokio::test]
async fn leases_survive_the_time_a_coordinator_was_down(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap();
    c.submit(SPEC).unwrap();
    let w = register(&c);
    let lease = lease_one(&c, &w).await;
    drop(c);
    // The coordinator was down longer than the lease timeout (2 s): the deadline has passed.
    state.sql("UPDATE trials SET lease_deadline_ms = lease_deadline_ms - 60000 WHERE state = 'leased'");
    let c = Coordinator::open(state.config()).unwrap();
    assert_eq!(
        c.expire_once().unwrap(),
        0,
        "the restart grants the lease a fresh timeout"
    );
    assert_eq!(heartbeat(&c, &w, &lease).await, pb::LeaseDirective::Continue);
}
}

/// Lets the expiry loop run through `total` of paused time in steps of 100 ms.
async fn pass_time(total: Duration) {
    let mut left = total;
    while !left.is_zero() {
        let step = left.min(Duration::from_millis(100));
        tokio::time::advance(step).await;
        left -= step;
        // The pass runs on the blocking pool: give it time to finish.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn a_stall_longer_than_the_lease_timeout_gives_the_leases_the_stall_back(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap(); // lease 2 s, expiry every 100 ms
    c.submit(SPEC).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let expiry = tokio::spawn(c.clone().run_expiry(stop.clone()));
    let w = register(&c);
    let lease = lease_one(&c, &w).await;
    heartbeat(&c, &w, &lease).await;
    pass_time(Duration::from_millis(500)).await;
    // The coordinator stalls for 10 s (no pass runs, no heartbeat gets through)...
    tokio::time::advance(Duration::from_secs(10)).await;
    // ...and then runs on: the lease is not expired at once, it got the 10 s back (it had
    // 1.5 s left before the stall).
    pass_time(Duration::from_millis(1_000)).await;
    let n = counts(&c.status("small").unwrap());
    assert_eq!((n.leased, n.pending), (1, 3), "expired at once after a stall: {n:?}");
    // Its worker still silent, it expires a lease timeout later, as usual.
    pass_time(Duration::from_secs(3)).await;
    let n = counts(&c.status("small").unwrap());
    assert_eq!((n.leased, n.pending), (0, 4), "{n:?}");
    stop.cancel();
    expiry.await.unwrap();
}
}
