//! Stopping rules end to end through the coordinator: decisions made at rungs from recorded
//! validation curves, stored, carried to workers as STOP, queued trials of stopped
//! configurations ended at once, exempt cells run to the end; the same decisions whatever the
//! workers, the arrival order or a coordinator restart; and a brute-force oracle on the recorded
//! curves agreeing with every stored decision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use convsweep_coordinator::Coordinator;
use convsweep_proto::{TrialSpec, TrialState, pb};
use convsweep_testkit::scripted::{epoch_with_val, lease_now, result, scripted_worker};

use crate::common::{State, Store, UNDO_V9};
use crate::on_both_stores;

/// Two groups (kernel size), four learning rates each (0.1 exempt), three seeds of which the
/// lowest two are pooled; 6 epochs, rungs at 2 and 4, half kept.
const SPEC: &str = r#"
name = "budget"
seeds = 3
[dataset]
name = "synthetic"
train_size = 64
test_size = 32
val_fraction = 0.25
[model]
arch = "resnet"
depth = 8
width = 4
init = "kaiming-uniform"
train_mode = "frozen"
[train]
epochs = 6
[grid]
kernel_size = [3, 5]
"train.lr" = [0.01, 0.02, 0.05, 0.1]
[stopping]
rule = "successive-halving"
rungs = [2, 4]
keep = 0.5
within = ["kernel_size"]
exempt = { "train.lr" = 0.1 }
min_seeds = 2
"#;

/// The validation accuracy a trial reports at `epoch`: a function of its configuration, seed and
/// epoch only, with rankings that change between the rungs (lr 0.05 starts best and fades).
fn val_acc(spec: &TrialSpec, epoch: u32) -> f64 {
    let lr = spec.train.lr;
    let e = f64::from(epoch);
    let base = if lr == 0.01 {
        0.30 + 0.05 * e
    } else if lr == 0.02 {
        0.34 + 0.04 * e
    } else if lr == 0.05 {
        0.50 + 0.01 * e - 0.03 * (e - 2.0).max(0.0)
    } else {
        0.20
    };
    base + 0.003 * spec.seed as f64 + if spec.model.kernel_size == 5 { 0.01 } else { 0.0 }
}

/// A decision without its time: what must be equal across runs.
type Key = (String, String, u32, bool, u32, u32, String);

fn keys(decisions: &[pb::ExportDecision]) -> BTreeSet<Key> {
    decisions
        .iter()
        .map(|d| {
            (
                d.group.clone(),
                d.config.clone(),
                d.rung,
                d.kept,
                d.rank,
                d.ranked,
                format!("{:.6}", d.value),
            )
        })
        .collect()
}

/// How the scripted workers go through the trials.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// One worker; every held trial reports epoch 1, then epoch 2, and so on.
    Lockstep,
    /// Three workers; each trial runs alone to its end (or its STOP), last trial first.
    OneByOneReversed,
}

/// Runs the sweep with scripted workers in `order`, reopening the coordinator once after
/// `restart_after` reports when given, on a fresh state of `store`, and returns the state and
/// its stored results.
async fn run_sweep(
    store: Store,
    order: Order,
    restart_after: Option<usize>,
) -> (State, convsweep_proto::results::Results) {
    let state = State::new(store);
    let mut c: Arc<Coordinator> = Coordinator::open(state.config()).unwrap();
    c.submit(SPEC).unwrap();
    let workers: Vec<String> = (0..match order {
        Order::Lockstep => 1,
        Order::OneByOneReversed => 3,
    })
        .map(|_| scripted_worker(&c, 16))
        .collect();
    // Seeds 0 and 1 (16 trials) are leased; seed 2 stays queued.
    let mut held = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let n = if workers.len() == 1 { 16 } else { [6, 5, 5][i] };
        for l in lease_now(&c, w, n).await {
            held.push((w.clone(), l));
        }
    }
    assert_eq!(held.len(), 16);
    if let Order::OneByOneReversed = order {
        held.reverse();
    }
    let mut reports = 0;
    let mut next_epoch: BTreeMap<String, u32> = held.iter().map(|(_, l)| (l.trial_id.clone(), 1)).collect();
    let mut ended: BTreeSet<String> = BTreeSet::new();
    let step = |c: &Arc<Coordinator>, w: &str, l: &pb::TrialLease, e: u32| {
        let spec = TrialSpec::from_json(&l.spec_json).unwrap();
        let c = c.clone();
        let (w, l) = (w.to_owned(), l.clone());
        async move {
            c.report_epochs(pb::ReportEpochsRequest {
                worker_id: w.clone(),
                trial_id: l.trial_id.clone(),
                lease_token: l.lease_token.clone(),
                epochs: vec![epoch_with_val(e, 0.5, val_acc(&spec, e))],
            })
            .await
            .unwrap();
        }
    };
    loop {
        let mut progressed = false;
        let mut batch: Vec<(String, pb::TrialLease)> = Vec::new();
        match order {
            Order::Lockstep => batch.extend(held.iter().filter(|(_, l)| !ended.contains(&l.trial_id)).cloned()),
            Order::OneByOneReversed => batch.extend(held.iter().find(|(_, l)| !ended.contains(&l.trial_id)).cloned()),
        }
        for (w, l) in batch {
            let e = next_epoch[&l.trial_id];
            step(&c, &w, &l, e).await;
            reports += 1;
            progressed = true;
            if restart_after == Some(reports) {
                drop(c);
                c = Coordinator::open(state.config()).unwrap();
            }
            c.decide_once().unwrap();
            let answer = c
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: w.clone(),
                    leases: vec![pb::LeaseRef {
                        trial_id: l.trial_id.clone(),
                        lease_token: l.lease_token.clone(),
                    }],
                })
                .await
                .unwrap();
            let directive = pb::LeaseDirective::try_from(answer.leases[0].directive).unwrap();
            let outcome = if directive == pb::LeaseDirective::Stop {
                Some(pb::complete_request::Outcome::Stopped(pb::Stopped { epochs: e }))
            } else if e == 6 {
                Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                    result: Some(result(0.5)),
                }))
            } else {
                assert_eq!(directive, pb::LeaseDirective::Continue);
                None
            };
            match outcome {
                Some(o) => {
                    c.complete(pb::CompleteRequest {
                        worker_id: w.clone(),
                        trial_id: l.trial_id.clone(),
                        lease_token: l.lease_token.clone(),
                        outcome: Some(o),
                    })
                    .await
                    .unwrap();
                    ended.insert(l.trial_id.clone());
                }
                None => *next_epoch.get_mut(&l.trial_id).unwrap() = e + 1,
            }
        }
        if !progressed {
            break;
        }
    }
    c.decide_once().unwrap();
    let results = c.export("budget").await.unwrap();
    (state, results)
}

/// Successive halving decided independently of the store: per group and rung, the alive
/// configurations' means over seeds 0 and 1 of the recorded validation accuracy, best first
/// (ties by the smaller trial id), the best ceil(keep * n) kept.
fn oracle(results: &convsweep_proto::results::Results) -> BTreeSet<Key> {
    let mut curve: BTreeMap<(&str, u32), f64> = BTreeMap::new();
    for e in &results.epochs {
        curve.insert((e.trial_id.as_str(), e.metrics.epoch), e.metrics.val_acc.unwrap());
    }
    // group -> config -> trial ids of seeds 0 and 1
    let mut design: BTreeMap<String, BTreeMap<String, Vec<&str>>> = BTreeMap::new();
    for t in &results.trials {
        if t.spec.train.lr == 0.1 || t.spec.seed > 1 {
            continue;
        }
        design
            .entry(format!("kernel_size={}", t.spec.model.kernel_size))
            .or_default()
            .entry(format!("train.lr={}", t.spec.train.lr))
            .or_default()
            .push(&t.trial_id);
    }
    let mut out = BTreeSet::new();
    for (group, configs) in &design {
        let mut alive: Vec<&String> = configs.keys().collect();
        for rung in [2, 4] {
            let mut ranked: Vec<(f64, &str, &String)> = alive
                .iter()
                .map(|c| {
                    let ids = &configs[*c];
                    let mean = ids.iter().map(|id| curve[&(*id, rung)]).sum::<f64>() / ids.len() as f64;
                    (mean, *ids.iter().min().unwrap(), *c)
                })
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            let keep = (0.5 * ranked.len() as f64).ceil() as usize;
            for (i, (mean, _, c)) in ranked.iter().enumerate() {
                out.insert((
                    group.clone(),
                    (*c).clone(),
                    rung,
                    i < keep,
                    i as u32 + 1,
                    ranked.len() as u32,
                    format!("{mean:.6}"),
                ));
            }
            alive = ranked.iter().take(keep).map(|r| r.2).collect();
        }
    }
    out
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_halving_decides_the_same_whatever_the_workers_order_or_restarts(store: Store) {
    let (_a, lockstep) = run_sweep(store, Order::Lockstep, None).await;
    let (_b, reversed) = run_sweep(store, Order::OneByOneReversed, None).await;
    let (_c, restarted) = run_sweep(store, Order::Lockstep, Some(40)).await;

    // 2 groups x (3 configurations at rung 2 + 2 at rung 4) decisions.
    assert_eq!(lockstep.decisions.len(), 10, "{:#?}", lockstep.decisions);
    assert_eq!(
        keys(&lockstep.decisions),
        oracle(&lockstep),
        "the oracle on the recorded curves"
    );
    assert_eq!(
        keys(&reversed.decisions),
        keys(&lockstep.decisions),
        "3 workers, reversed, one by one"
    );
    assert_eq!(
        keys(&restarted.decisions),
        keys(&lockstep.decisions),
        "a coordinator restart mid-sweep"
    );
    assert_eq!(keys(&reversed.decisions), oracle(&reversed));

    // Rung 2 stops lr 0.01 (the slowest start); rung 4 stops lr 0.05 (it fades); lr 0.02 and
    // the exempt 0.1 run to the end.
    let stopped_at = |r: &convsweep_proto::results::Results, lr: f64| -> BTreeSet<(TrialState, u64)> {
        r.trials
            .iter()
            .filter(|t| t.spec.train.lr == lr)
            .map(|t| (t.state, t.spec.seed))
            .collect()
    };
    for lr in [0.02, 0.1] {
        assert!(
            stopped_at(&lockstep, lr).iter().all(|(s, seed)| *s
                == if *seed < 2 {
                    TrialState::Succeeded
                } else {
                    TrialState::Pending
                }),
            "lr {lr}: {:?}",
            stopped_at(&lockstep, lr)
        );
    }
    for lr in [0.01, 0.05] {
        assert!(
            stopped_at(&lockstep, lr).iter().all(|(s, _)| *s == TrialState::Stopped),
            "lr {lr}: {:?}",
            stopped_at(&lockstep, lr)
        );
    }
    let last_epoch = |r: &convsweep_proto::results::Results, id: &str| {
        r.epochs
            .iter()
            .filter(|e| e.trial_id == id)
            .map(|e| e.metrics.epoch)
            .max()
    };
    for t in &lockstep.trials {
        let reached = last_epoch(&lockstep, &t.trial_id);
        match (t.spec.train.lr, t.spec.seed) {
            // Never leased: ended `stopped` with no epoch when its configuration was stopped.
            (lr, 2) if lr == 0.01 || lr == 0.05 => {
                assert_eq!(reached, None, "{}", t.trial_id);
                assert!(
                    t.reason.as_deref().unwrap().contains("stopped before it ran"),
                    "{:?}",
                    t.reason
                );
            }
            // Told STOP at its first heartbeat after its group decided: the group's last report
            // of the rung decides it, so trials that heartbeat before it train one more epoch.
            (0.01, _) => assert!(matches!(reached, Some(2..=3)), "{}: {reached:?}", t.trial_id),
            (0.05, _) => assert!(matches!(reached, Some(4..=5)), "{}: {reached:?}", t.trial_id),
            _ => {}
        }
    }
    // The unleased seed-2 trials of the kept configurations are still queued.
    let queued = lockstep
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Pending)
        .count();
    assert_eq!(queued, 4, "seed 2 of lr 0.02 and 0.1 in both groups");
    // In the one-by-one run, trials that finished before their group decided keep their
    // results; their configuration's decision is the same.
    assert!(
        reversed
            .trials
            .iter()
            .any(|t| t.state == TrialState::Succeeded && t.spec.train.lr == 0.01)
    );
}
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_outcome_nobody_asked_for_is_refused_and_stopped_trials_resume_to_the_end(store: Store) {
    let state = State::new(store);
    let c = Coordinator::open(state.config()).unwrap();
    c.submit(SPEC).unwrap();
    let w = scripted_worker(&c, 1);
    let l = lease_now(&c, &w, 1).await.remove(0);
    let err = c
        .complete(pb::CompleteRequest {
            worker_id: w.clone(),
            trial_id: l.trial_id.clone(),
            lease_token: l.lease_token.clone(),
            outcome: Some(pb::complete_request::Outcome::Stopped(pb::Stopped { epochs: 1 })),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outcome.stopped") && err.contains("no stopping rule stopped"),
        "{err}"
    );

    // Resuming stopped trials: none yet; a trial outside the sweep is named.
    assert_eq!(c.resume_stopped("budget", &[], &[]).unwrap(), 0);
    let err = c
        .resume_stopped("budget", &["0123456789abcdef".into()], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("0123456789abcdef"), "{err}");

    // Every held trial reports rungs 1 and 2; the group decides lr 0.01 out.
    let w16 = scripted_worker(&c, 16);
    let held = lease_now(&c, &w16, 15).await;
    let all: Vec<pb::TrialLease> = std::iter::once(l.clone()).chain(held).collect();
    for e in [1, 2] {
        for l in &all {
            let spec = TrialSpec::from_json(&l.spec_json).unwrap();
            let worker = if l.trial_id == all[0].trial_id { &w } else { &w16 };
            c.report_epochs(pb::ReportEpochsRequest {
                worker_id: worker.clone(),
                trial_id: l.trial_id.clone(),
                lease_token: l.lease_token.clone(),
                epochs: vec![epoch_with_val(e, 0.5, val_acc(&spec, e))],
            })
            .await
            .unwrap();
        }
    }
    assert_eq!(c.decide_once().unwrap(), 6, "3 configurations in each of 2 groups");
    let status = |c: &Coordinator| c.status("budget").unwrap().sweeps[0].counts.unwrap();
    assert_eq!(status(&c).stopped, 2, "seed 2 of lr 0.01, never leased, in both groups");
    let mut stopped = 0;
    for l in &all {
        let worker = if l.trial_id == all[0].trial_id { &w } else { &w16 };
        let beat = c
            .heartbeat(pb::HeartbeatRequest {
                worker_id: worker.clone(),
                leases: vec![pb::LeaseRef {
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                }],
            })
            .await
            .unwrap();
        if beat.leases[0].directive == pb::LeaseDirective::Stop as i32 {
            let done = c
                .complete(pb::CompleteRequest {
                    worker_id: worker.clone(),
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                    outcome: Some(pb::complete_request::Outcome::Stopped(pb::Stopped { epochs: 2 })),
                })
                .await
                .unwrap();
            assert!(!done.done, "a stopped trial may be resumed: its worker keeps the checkpoint");
            stopped += 1;
        }
    }
    assert_eq!(stopped, 4, "seeds 0 and 1 of lr 0.01 in both groups");
    assert_eq!(status(&c).stopped, 6);

    // Resumed to the full budget: queued again, and no rule stops them a second time.
    let err = c.resume_stopped("budget", &[], &["kernel_size=4".into()]).unwrap_err().to_string();
    assert!(err.contains("kernel_size=4") && err.contains("\"kernel_size=3\", \"kernel_size=5\""), "{err}");
    assert_eq!(c.resume_stopped("budget", &[], &["kernel_size=3".into()]).unwrap(), 3, "one group's");
    assert_eq!(c.resume_stopped("budget", &[], &[]).unwrap(), 3, "the rest");
    assert_eq!(status(&c).stopped, 0);
    c.decide_once().unwrap();
    assert_eq!(status(&c).stopped, 0, "resumed past the decision");
    let again = lease_now(&c, &w16, 16).await;
    assert!(again.len() >= 4, "{}", again.len());
    for l in again.iter().filter(|l| TrialSpec::from_json(&l.spec_json).unwrap().train.lr == 0.01) {
        let beat = c
            .heartbeat(pb::HeartbeatRequest {
                worker_id: w16.clone(),
                leases: vec![pb::LeaseRef {
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                }],
            })
            .await
            .unwrap();
        assert_eq!(beat.leases[0].directive, pb::LeaseDirective::Continue as i32);
    }
}
}

#[test]
fn a_stopping_section_is_checked_field_by_field() {
    use convsweep_coordinator::sweep::SweepSpec;
    let with = |from: &str, to: &str| {
        assert!(SPEC.contains(from), "{from}");
        SweepSpec::from_toml(&SPEC.replace(from, to))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (
            "rungs = [2, 4]",
            "rungs = [2, 6]",
            "stopping.rungs",
            "rung 6 is not before the end of training",
        ),
        ("rungs = [2, 4]", "rungs = [4, 2]", "stopping.rungs[1]", "ascending"),
        (
            "within = [\"kernel_size\"]",
            "within = [\"init\"]",
            "stopping.within[0]",
            "does not vary",
        ),
        (
            "within = [\"kernel_size\"]",
            "within = [\"dataset\"]",
            "stopping.within[0]",
            "its axes: kernel_size, train.lr",
        ),
        (
            "rule = \"successive-halving\"",
            "rule = \"hyperband\"",
            "stopping.rule",
            "successive-halving",
        ),
        ("min_seeds = 2", "min_seeds = 4", "stopping.min_seeds", "3 seed"),
        (
            "exempt = { \"train.lr\" = 0.1 }",
            "exempt = { \"train.lr\" = 0.3 }",
            "stopping.exempt.train.lr",
            "not a value of axis",
        ),
        ("keep = 0.5", "keep = 1.5", "stopping.keep", "(0, 1)"),
        (
            "rule = \"successive-halving\"",
            "rule = \"successive-halving\"\nmetric = \"test_acc\"",
            "stopping.metric",
            "never on the test set",
        ),
        ("val_fraction = 0.25", "", "stopping.metric", "dataset.val_fraction"),
        ("keep = 0.5", "keep = 0.5\npatience = 3", "stopping", "unknown field"),
    ];
    for (from, to, field, says) in cases {
        let err = with(from, to);
        assert!(err.contains(field) && err.contains(says), "{to}: {err}");
    }
    // min_epochs with eta: rungs 1 and 3 below 6 epochs.
    let spec = SweepSpec::from_toml(&SPEC.replace("rungs = [2, 4]", "min_epochs = 1\neta = 3")).unwrap();
    assert_eq!(spec.stopping.unwrap().rungs, vec![1, 3]);
    // rule = "none" is no rule.
    let spec = SweepSpec::from_toml(&SPEC.replace("rule = \"successive-halving\"", "rule = \"none\"")).unwrap();
    assert!(spec.stopping.is_none());
}

/// A version 8 PostgreSQL state (before stopping rules) migrates in place when a coordinator
/// opens it: validation columns, the stop rung and the decisions table, version 9.
#[test]
fn a_version_8_postgres_state_migrates_to_9() {
    let state = State::new(Store::Postgres);
    let c = Coordinator::open(state.config()).unwrap();
    c.submit(SPEC).unwrap();
    drop(c);
    state.sql(&format!(
        "{UNDO_V9} UPDATE meta SET value = '8' WHERE key = 'schema_version';"
    ));
    let c = Coordinator::open(state.config()).unwrap();
    assert_eq!(state.query("SELECT value FROM meta WHERE key = 'schema_version'"), "9");
    assert_eq!(
        state.query(
            "SELECT count(*)::text FROM information_schema.columns WHERE table_name IN ('epochs', 'trials') \
             AND column_name IN ('val_loss', 'val_acc', 'stop_rung')"
        ),
        "3"
    );
    assert_eq!(c.decide_once().unwrap(), 0, "the decisions table is there again");
}
