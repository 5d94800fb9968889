//! Chaos on PostgreSQL: a 20-trial sweep run by two worker processes that know both of two
//! coordinator replicas (`--coordinator A,B`), while the replicas are SIGKILLed in turn (A, B,
//! A, B) at four scheduled progress marks and restarted, and PostgreSQL itself is killed and
//! restarted once mid-sweep. Every trial must succeed exactly once, with the results of an
//! undisturbed run of the same sweep (the same trial ids, the same accuracies on the CPU).
//!
//! The marks come from a seeded generator: a fixed seed by default, `CHAOS_SEED=<n>` for
//! another (the seed and the schedule are printed). The run does not end before every scheduled
//! kill has happened, and the marks lie before the sweep's end, so the kills land mid-sweep
//! whatever the machine's speed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use convsweep_coordinator::store::{Backend, PostgresBackend};
use convsweep_proto::pb;
use convsweep_proto::pb::admin_service_client::AdminServiceClient;
use convsweep_testkit::postgres::PgServer;

use crate::common::*;

const SPEC: &str = r#"
name = "chaos"
seeds = 5
[dataset]
name = "synthetic"
train_size = 384
test_size = 64
[model]
arch = "resnet"
depth = 8
width = 4
init = "kaiming-uniform"
[train]
epochs = 3
batch_size = 32
lr = 0.05
[eval]
corruptions = ["contrast"]
severities = [2]
[grid]
kernel_size = [3, 5]
train_mode = ["learned", "frozen"]
"#;

const TRIALS: u32 = 20;

/// The schedule's seed unless `CHAOS_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5EED_C4A0_5151_0027;

/// Coordinator replicas on one database, and workers that know them all.
struct Cluster {
    dir: PathBuf,
    store: String,
    /// Each replica's port (held here across its restarts) and process.
    replicas: Vec<(std::net::TcpListener, Option<Child>)>,
    workers: Vec<Child>,
}

impl Cluster {
    fn new(dir: &Path, store: String, replicas: usize) -> Cluster {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        Cluster {
            dir: dir.to_owned(),
            store,
            replicas: (0..replicas).map(|_| (loopback().unwrap(), None)).collect(),
            workers: Vec::new(),
        }
    }

    /// Every replica's address, comma-separated.
    fn urls(&self) -> String {
        self.replicas.iter().map(|(l, _)| url(l)).collect::<Vec<_>>().join(",")
    }

    fn log(&self, name: &str) -> std::fs::File {
        append_log(&self.dir, name)
    }

    fn start_replica(&mut self, i: usize) {
        let log = self.log(&format!("replica-{i}.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(["coordinator", "--insecure", "--store", &self.store]);
        let child = listen_on(&mut cmd, &self.replicas[i].0)
            .args(["--ops-listen", "127.0.0.1:0"])
            .args([
                "--heartbeat-secs",
                "1",
                "--lease-timeout-secs",
                "6",
                "--max-attempts",
                "50",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.replicas[i].1 = Some(child);
    }

    fn kill_replica(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].1.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn start_worker(&mut self) {
        let n = self.workers.len() + 1;
        let log = self.log(&format!("worker-{n}.log"));
        let child = Command::new(BIN)
            .args([
                "worker",
                "--coordinator",
                &self.urls(),
                "--threads",
                "1",
                "--device",
                "cpu",
            ])
            .args(["--name", &format!("chaos-{n}")])
            .arg("--checkpoint-dir")
            .arg(self.dir.join("checkpoints"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push(child);
    }

    fn stop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.workers.clear();
        for i in 0..self.replicas.len() {
            self.kill_replica(i);
        }
    }

    /// Trials succeeded so far, read from the database (`None` while it cannot be read).
    fn succeeded(&self) -> Option<u32> {
        let backend = PostgresBackend::new(self.store.clone());
        let status = backend.open_reader().ok()?.sweep_status("chaos", 0).ok()?;
        status.counts.map(|c| c.succeeded)
    }

    async fn submit(&self) {
        let first = url(&self.replicas[0].0);
        let start = Instant::now();
        loop {
            let answer = match AdminServiceClient::connect(first.clone()).await {
                Ok(mut client) => client
                    .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
                    .await
                    .map(|_| ())
                    .map_err(|s| s.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let Err(why) = answer else { return };
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no submit in 60 s ({why}); the replica's log:\n{}",
                std::fs::read_to_string(self.dir.join("logs/replica-0.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every trial succeeded; panics after `limit`.
    async fn wait_done(&self, limit: Duration) {
        let start = Instant::now();
        while self.succeeded() != Some(TRIALS) {
            assert!(
                start.elapsed() < limit,
                "sweep not finished in {limit:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What must be equal between runs, by trial: its state and final figures, its epochs and its
/// robustness rows (no timings, devices or workers).
fn comparable(store: &str) -> BTreeMap<String, Vec<String>> {
    let results = PostgresBackend::new(store.to_owned())
        .open_reader()
        .unwrap()
        .results(None)
        .unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &results.trials {
        let r = t.result.clone().unwrap_or_default();
        out.entry(t.trial_id.clone()).or_default().push(format!(
            "{} {:?} {:?} {:?} {:?} {:?} {} {} {} {:?}",
            t.state,
            r.final_train_loss,
            r.final_train_acc,
            r.final_test_loss,
            r.final_test_acc,
            r.best_test_acc,
            r.best_epoch,
            r.params_total,
            r.flops_per_image,
            r.eval_error
        ));
    }
    for e in &results.epochs {
        let m = &e.metrics;
        out.entry(e.trial_id.clone()).or_default().push(format!(
            "epoch {} {:?} {:?} {:?} {:?} {:?}",
            m.epoch, m.lr, m.train_loss, m.train_acc, m.test_loss, m.test_acc
        ));
    }
    for r in &results.robustness {
        let x = &r.result;
        out.entry(r.trial_id.clone()).or_default().push(format!(
            "robustness {} {} {:?} {} {:?}",
            x.kind, x.name, x.eps, x.severity, x.accuracy
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres_every_trial_succeeds_once_through_replica_and_database_kills() {
    let (mut dice, _) = Dice::from_env(DEFAULT_SEED);
    // Four replica kills (A, B, A, B) and one database kill at rising marks (trials succeeded),
    // all before the last trials.
    let mut marks: Vec<u32> = (0..5).map(|_| 1 + dice.below(u64::from(TRIALS) - 6) as u32).collect();
    marks.sort_unstable();
    let database_mark = marks.remove(2);
    eprintln!(
        "chaos schedule: replica kills at {marks:?} succeeded (A, B, A, B), \
         PostgreSQL killed at {database_mark}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut pg = PgServer::start();

    // The undisturbed run: one replica, the same two workers.
    let calm_store = pg.url(&pg.fresh_database());
    let mut calm = Cluster::new(&dir.path().join("calm"), calm_store.clone(), 1);
    calm.start_replica(0);
    calm.submit().await;
    calm.start_worker();
    calm.start_worker();
    calm.wait_done(Duration::from_secs(300)).await;
    calm.stop();
    let expected = comparable(&calm_store);
    assert_eq!(expected.len(), TRIALS as usize);

    // The same sweep under chaos: two replicas, both known to both workers.
    let store = pg.url(&pg.fresh_database());
    let mut chaos = Cluster::new(&dir.path().join("chaos"), store.clone(), 2);
    chaos.start_replica(0);
    chaos.start_replica(1);
    chaos.submit().await;
    chaos.start_worker();
    chaos.start_worker();
    let start = Instant::now();
    let (mut replica_kills, mut database_kills) = (Vec::new(), 0);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = tokio::task::block_in_place(|| chaos.succeeded());
        let scheduled_done = replica_kills.len() == marks.len() && database_kills == 1;
        if done == Some(TRIALS) && scheduled_done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "chaos run not finished ({done:?}/{TRIALS}); logs in {}",
            chaos.dir.display()
        );
        let Some(done) = done else { continue };
        if database_kills == 0 && done >= database_mark {
            eprintln!("chaos: PostgreSQL killed at {done} succeeded");
            tokio::task::block_in_place(|| {
                pg.kill();
                std::thread::sleep(Duration::from_millis(500 + dice.below(1500)));
                pg.start_again();
            });
            database_kills += 1;
        } else if let Some(&mark) = marks.get(replica_kills.len())
            && done >= mark
        {
            let i = replica_kills.len() % 2;
            eprintln!("chaos: replica {} killed at {done} succeeded", ["A", "B"][i]);
            chaos.kill_replica(i);
            replica_kills.push((i, done));
            tokio::time::sleep(Duration::from_millis(dice.below(2000))).await;
            chaos.start_replica(i);
        }
    }
    chaos.stop();
    eprintln!(
        "chaos: replica kills {replica_kills:?}, {database_kills} PostgreSQL kill, {:.0} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(replica_kills.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 0, 1]);
    // The workers moved between the replicas as they went down.
    let failovers: usize = (1..=2)
        .map(|n| {
            std::fs::read_to_string(chaos.dir.join(format!("logs/worker-{n}.log")))
                .unwrap_or_default()
                .matches("trying the next address")
                .count()
        })
        .sum();
    eprintln!("chaos: {failovers} moves of a worker to the other replica");
    assert!(failovers >= 2, "the workers never moved to the other replica");

    // Every trial succeeded exactly once: one succeeded attempt each.
    let db = store.rsplit('/').next().unwrap();
    let successes = pg.psql(
        db,
        "SELECT COUNT(*) || ' ' || COUNT(DISTINCT trial_id) FROM attempts WHERE outcome = 'succeeded'",
    );
    assert_eq!(successes, format!("{TRIALS} {TRIALS}"), "succeeded attempts, trials");
    let got = comparable(&store);
    assert_eq!(got.len(), TRIALS as usize);
    for (id, want) in &expected {
        assert_eq!(&got[id], want, "trial {id} differs from the undisturbed run");
    }
}
