//! Chaos: a sweep run by real worker processes while workers are SIGKILLed and restarted at
//! random moments and the coordinator is SIGKILLed and restarted at least twice. Every trial
//! must succeed exactly once, with results equal to an undisturbed run of the same sweep.
//!
//! The kill schedule comes from a seeded generator: a fixed seed by default, `CHAOS_SEED=<n>`
//! for another (the seed is printed). Two coordinator kills and one worker kill are scheduled
//! at progress marks drawn from it, and the run does not end before they have happened, so
//! "killed at least twice" holds whatever the machine's speed; more kills come at random.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use convsweep_proto::pb;
use convsweep_proto::pb::admin_service_client::AdminServiceClient;

use crate::common::*;

const SPEC: &str = r#"
name = "chaos"
seeds = 2
[dataset]
name = "synthetic"
train_size = 384
test_size = 64
[model]
arch = "resnet"
depth = 8
width = 4
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
init = ["kaiming-uniform", "kaiming-normal", "xavier-uniform"]
"#;

const TRIALS: u32 = 24;

/// The kill schedule's seed unless `CHAOS_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5EED_C4A0_5151_0001;

struct Cluster {
    dir: PathBuf,
    /// The coordinator's port, held here across its restarts.
    main: std::net::TcpListener,
    coordinator: Option<Child>,
    workers: Vec<Child>,
    spawned: u32,
}

impl Cluster {
    fn new(dir: &Path) -> Cluster {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        Cluster {
            dir: dir.to_owned(),
            main: loopback().unwrap(),
            coordinator: None,
            workers: Vec::new(),
            spawned: 0,
        }
    }

    fn url(&self) -> String {
        url(&self.main)
    }

    fn log(&self, name: &str) -> std::fs::File {
        append_log(&self.dir, name)
    }

    fn start_coordinator(&mut self) {
        let log = self.log("coordinator.log");
        let mut cmd = Command::new(BIN);
        // This test's clients carry no token (the default token is security.rs's to test).
        cmd.args(["coordinator", "--insecure"]);
        let child = listen_on(&mut cmd, &self.main)
            .args(["--ops-listen", "127.0.0.1:0"])
            .args([
                "--heartbeat-secs",
                "1",
                "--lease-timeout-secs",
                "4",
                "--max-attempts",
                "50",
            ])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.coordinator = Some(child);
    }

    fn start_worker(&mut self) {
        self.spawned += 1;
        let log = self.log(&format!("worker-{}.log", self.spawned));
        let child = Command::new(BIN)
            .args([
                "worker",
                "--coordinator",
                &self.url(),
                "--threads",
                "1",
                "--device",
                "cpu",
            ])
            .args(["--name", &format!("chaos-{}", self.spawned)])
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

    fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn kill_worker(&mut self, i: usize) {
        let mut w = self.workers.remove(i);
        let _ = w.kill(); // SIGKILL
        let _ = w.wait();
    }

    fn stop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.workers.clear();
        self.kill_coordinator();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn status(url: &str) -> Option<pb::StateCounts> {
    let mut client = AdminServiceClient::connect(url.to_owned()).await.ok()?;
    let resp = client
        .get_status(pb::GetStatusRequest {
            sweep_id: "chaos".into(),
        })
        .await
        .ok()?;
    resp.into_inner().sweeps.first().and_then(|s| s.counts)
}

async fn submit(url: &str) {
    let start = Instant::now();
    loop {
        if let Ok(mut client) = AdminServiceClient::connect(url.to_owned()).await
            && client
                .submit_sweep(pb::SubmitSweepRequest { spec_toml: SPEC.into() })
                .await
                .is_ok()
        {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "coordinator never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What must be equal between runs: everything but timings, devices and workers.
type Results = BTreeMap<String, (Vec<String>, Vec<String>, Vec<String>)>;

/// Each row of `sql` as (its first column, the other columns' values joined by spaces).
fn lines_by_trial(conn: &rusqlite::Connection, sql: &str) -> Vec<(String, String)> {
    let mut stmt = conn.prepare(sql).unwrap();
    let columns = stmt.column_count();
    stmt.query_map([], |r| {
        let line: Vec<String> = (1..columns)
            .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
            .collect::<Result<_, _>>()?;
        Ok((r.get(0)?, line.join(" ")))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn results(state: &Path) -> (Results, HashMap<String, u32>) {
    let conn = rusqlite::Connection::open(state.join("state.db")).unwrap();
    let mut out: Results = BTreeMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT t.id, t.state, r.final_train_loss, r.final_train_acc, r.final_test_loss, r.final_test_acc, \
             r.best_test_acc, r.best_epoch, r.params_total, r.flops_per_image, r.eval_error \
             FROM trials t LEFT JOIN results r ON r.trial_id = t.id",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let id: String = r.get(0)?;
            let mut fields = vec![r.get::<_, String>(1)?];
            for i in 2..=10 {
                fields.push(format!("{:?}", r.get::<_, rusqlite::types::Value>(i)?));
            }
            Ok((id, fields))
        })
        .unwrap();
    for row in rows {
        let (id, fields) = row.unwrap();
        out.entry(id).or_default().0 = fields;
    }
    for (id, line) in lines_by_trial(
        &conn,
        "SELECT trial_id, epoch, lr, train_loss, train_acc, test_loss, test_acc FROM epochs ORDER BY trial_id, epoch",
    ) {
        out.entry(id).or_default().1.push(line);
    }
    for (id, line) in lines_by_trial(
        &conn,
        "SELECT trial_id, kind, name, eps, severity, accuracy FROM robustness ORDER BY trial_id, kind, name, eps, severity",
    ) {
        out.entry(id).or_default().2.push(line);
    }
    let mut successes = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT trial_id, COUNT(*) FROM attempts WHERE outcome = 'succeeded' GROUP BY trial_id")
        .unwrap();
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .unwrap()
    {
        let (id, n) = row.unwrap();
        successes.insert(id, n);
    }
    (out, successes)
}

async fn wait_all_succeeded(cluster: &Cluster, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Some(c) = status(&cluster.url()).await
            && c.succeeded == TRIALS
        {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "sweep not finished in {limit:?}; logs in {}",
            cluster.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_trial_succeeds_once_with_undisturbed_results() {
    let (mut dice, _) = Dice::from_env(DEFAULT_SEED);
    // Scheduled kills: the coordinator at two progress marks, a worker at a third (trials
    // succeeded so far).
    let first = 1 + dice.below(u64::from(TRIALS) / 3) as u32;
    let second = first + 2 + dice.below(u64::from(TRIALS) / 3) as u32;
    let worker_mark = 1 + dice.below(u64::from(TRIALS) / 2) as u32;
    eprintln!("chaos schedule: coordinator kills at {first} and {second} succeeded, a worker kill at {worker_mark}");
    let dir = tempfile::tempdir().unwrap();

    // The undisturbed run.
    let mut calm = Cluster::new(&dir.path().join("calm"));
    calm.start_coordinator();
    submit(&calm.url()).await;
    calm.start_worker();
    calm.start_worker();
    wait_all_succeeded(&calm, Duration::from_secs(300)).await;
    calm.stop();
    let (expected, _) = results(&calm.dir.join("state"));
    assert_eq!(expected.len(), TRIALS as usize);

    // The same sweep under chaos.
    let mut chaos = Cluster::new(&dir.path().join("chaos"));
    chaos.start_coordinator();
    submit(&chaos.url()).await;
    chaos.start_worker();
    chaos.start_worker();
    let start = Instant::now();
    let (mut coordinator_kills, mut worker_kills) = (0, 0);
    let mut last_succeeded = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300 + dice.below(1200))).await;
        let scheduled_done = coordinator_kills >= 2 && worker_kills >= 1;
        if let Some(c) = status(&chaos.url()).await {
            last_succeeded = c.succeeded;
            if c.succeeded == TRIALS && scheduled_done {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "chaos run not finished ({last_succeeded}/{TRIALS}); logs in {}",
            chaos.dir.display()
        );
        // The scheduled kills once their marks are passed, then more at random.
        let coordinator_due =
            (coordinator_kills == 0 && last_succeeded >= first) || (coordinator_kills == 1 && last_succeeded >= second);
        let worker_due = worker_kills == 0 && last_succeeded >= worker_mark && !chaos.workers.is_empty();
        if coordinator_due || dice.below(12) == 0 {
            chaos.kill_coordinator();
            coordinator_kills += 1;
            tokio::time::sleep(Duration::from_millis(dice.below(3000))).await;
            chaos.start_coordinator();
        } else if worker_due || (dice.below(3) == 0 && !chaos.workers.is_empty()) {
            let i = dice.below(chaos.workers.len() as u64) as usize;
            chaos.kill_worker(i);
            worker_kills += 1;
            if dice.below(4) > 0 {
                chaos.start_worker();
            }
        }
        while chaos.workers.len() < 2 {
            chaos.start_worker();
        }
    }
    chaos.stop();
    eprintln!(
        "chaos: {coordinator_kills} coordinator kills, {worker_kills} worker kills, {:.0} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        coordinator_kills >= 2,
        "the coordinator was killed {coordinator_kills} times"
    );
    assert!(worker_kills >= 1);

    let (got, successes) = results(&chaos.dir.join("state"));
    assert_eq!(got.len(), TRIALS as usize);
    for (id, n) in &successes {
        assert_eq!(*n, 1, "trial {id} succeeded {n} times");
    }
    assert_eq!(successes.len(), TRIALS as usize, "every trial succeeded");
    for (id, want) in &expected {
        let have = &got[id];
        assert_eq!(have.0, want.0, "final results of {id}");
        assert_eq!(have.1, want.1, "epochs of {id}");
        assert_eq!(have.2, want.2, "robustness of {id}");
    }
}
