//! A process per trial: faults injected into one trial's process (segfault, abort, SIGKILL, a
//! hang, runaway memory) end that attempt only; the worker and its other slot carry on.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use convsweep_coordinator::sweep::SweepSpec;
use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use tokio_util::sync::CancellationToken;

use crate::common::*;

pub(crate) fn spec(name: &str, kernels: &str, epochs: u32) -> String {
    format!(
        r#"
name = "{name}"
[dataset]
name = "synthetic"
train_size = 256
test_size = 64
[model]
arch = "resnet"
depth = 8
width = 4
train_mode = "learned"
init = "kaiming-uniform"
[train]
epochs = {epochs}
batch_size = 32
lr = 0.05
[eval]
fgsm = []
corruptions = []
[grid]
kernel_size = {kernels}
"#
    )
}

/// Kernel size of each trial of `toml`, by trial id.
fn kernels(toml: &str) -> HashMap<String, u32> {
    SweepSpec::from_toml(toml)
        .unwrap()
        .expand()
        .unwrap()
        .into_iter()
        .map(|t| (t.id().to_string(), t.model.kernel_size))
        .collect()
}

pub(crate) struct Served {
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) url: String,
    pub(crate) stop: CancellationToken,
    _dir: tempfile::TempDir,
}

pub(crate) async fn serve(max_attempts: u32) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: dir.path().to_owned(),
        heartbeat_interval: Duration::from_millis(300),
        lease_timeout: Duration::from_secs(10),
        max_attempts,
        ..Default::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(convsweep_coordinator::serve(listener, coordinator.clone(), {
        let s = stop.clone();
        async move { s.cancelled().await }
    }));
    Served {
        coordinator,
        url,
        stop,
        _dir: dir,
    }
}

/// A worker process, killed when dropped (a failed assertion leaves none behind).
pub(crate) struct Worker(pub(crate) Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(url: &str, extra: &[&str], faults: &str) -> Worker {
    Worker(
        Command::new(BIN)
            .args(["worker", "--coordinator", url, "--threads", "1", "--device", "cpu"])
            .args(["--name", "isolated"])
            .args(extra)
            .env("CONVSWEEP_TEST_FAULT", faults)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_hanging_or_bloated_trial_process_fails_alone() {
    let s = serve(2).await;
    let toml = spec("faults", "[3, 5, 7, 9, 11, 13]", 3);
    let by_id = kernels(&toml);
    s.coordinator.submit(&toml).unwrap();
    let mut w = worker(
        &s.url,
        &["--slots", "2", "--stall-timeout", "3", "--max-trial-rss", "1500"],
        "segfault:5,abort:7,kill:9,hang:11,memory:13",
    );
    wait_done(&s.coordinator, "faults", Duration::from_secs(240)).await;
    let status = s.coordinator.status("faults").unwrap().sweeps.remove(0);
    assert_eq!(status.counts.unwrap().succeeded, 1, "{status:?}");
    let reasons: HashMap<u32, String> = status
        .failures
        .iter()
        .map(|f| (by_id[&f.trial_id], f.reason.clone()))
        .collect();
    let expect = [
        (5, "died of SIGSEGV", true),
        (7, "died of SIGABRT", true),
        (9, "killed by SIGKILL", true),
        (11, "no progress for", true),
        (13, "its limit of 1500 MiB", false),
    ];
    for (k, text, retried) in expect {
        let reason = reasons
            .get(&k)
            .unwrap_or_else(|| panic!("no failure for k = {k}: {reasons:?}"));
        assert!(reason.contains(text), "k = {k}: {reason}");
        // Retryable failures were tried again (2 attempts); the memory limit is final.
        assert_eq!(reason.contains("2 failed attempts"), retried, "k = {k}: {reason}");
    }
    assert!(w.0.try_wait().unwrap().is_none(), "the worker is still up");

    // The same worker leases and trains what comes next.
    s.coordinator.submit(&spec("after", "[3]", 1)).unwrap();
    wait_done(&s.coordinator, "after", Duration::from_secs(120)).await;
    let after = s.coordinator.status("after").unwrap().sweeps.remove(0);
    assert_eq!(after.counts.unwrap().succeeded, 1);
    assert!(w.0.try_wait().unwrap().is_none(), "the worker is still up");
    drop(w);
    s.stop.cancel();
}

/// Every process's id, from /proc.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// The trial processes of `worker` (children running `trial-process`).
fn trial_processes(worker: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(worker) && String::from_utf8_lossy(&cmdline).contains("trial-process") {
            out.push(pid);
        }
    }
    out
}

async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_preempted_trial_processes_go_and_sigkill_of_the_worker_takes_them_along() {
    let s = serve(3).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    // Long trials: they are stopped long before they end.
    let toml = spec("long", "[3, 5]", 500);
    s.coordinator.submit(&toml).unwrap();
    let mut w = worker(
        &s.url,
        &["--slots", "2", "--checkpoint-dir", checkpoints.to_str().unwrap()],
        "",
    );
    let pid = w.0.id();
    until("two trial processes", Duration::from_secs(60), || {
        trial_processes(pid).len() == 2
    })
    .await;
    // Cancelled: the processes are gone within seconds.
    let cancelled = Instant::now();
    s.coordinator.cancel("long", &[]).unwrap();
    until("trial processes gone after cancel", Duration::from_secs(10), || {
        trial_processes(pid).is_empty()
    })
    .await;
    eprintln!(
        "cancelled trial processes gone in {:.1} s",
        cancelled.elapsed().as_secs_f64()
    );

    // Preempted: SIGTERM makes every child checkpoint and the worker report them preempted.
    s.coordinator.resume("long").unwrap();
    until("two trial processes again", Duration::from_secs(60), || {
        trial_processes(pid).len() == 2
    })
    .await;
    // A checkpoint of each (one per epoch) before the signal, so that there is progress to keep.
    let states = || {
        std::fs::read_dir(&checkpoints)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".state"))
                    .count()
            })
            .unwrap_or(0)
    };
    until("a checkpoint of each trial", Duration::from_secs(60), || states() == 2).await;
    assert!(terminate(&mut w.0, Duration::from_secs(40)).success());
    let status = s.coordinator.status("long").unwrap().sweeps.remove(0);
    let counts = status.counts.unwrap();
    assert_eq!(
        (counts.running, counts.preempted),
        (0, 2),
        "both handed back: {counts:?}"
    );
    assert_eq!(states(), 2, "a checkpoint of each preempted trial");
    let reasons: Vec<String> = s
        .coordinator
        .status("long")
        .unwrap()
        .sweeps
        .remove(0)
        .failures
        .into_iter()
        .map(|f| f.reason)
        .collect();
    assert!(reasons.is_empty(), "preempted, not failed: {reasons:?}");

    // SIGKILL of the worker: its trial processes die with it.
    let w = worker(&s.url, &["--slots", "2"], "");
    let pid = w.0.id();
    until("two trial processes", Duration::from_secs(60), || {
        trial_processes(pid).len() == 2
    })
    .await;
    let children = trial_processes(pid);
    drop(w);
    until("orphaned trial processes gone", Duration::from_secs(10), || {
        all_gone(&children)
    })
    .await;
    s.stop.cancel();
}

/// Whether every one of `pids` is gone (or a zombie waiting to be reaped).
fn all_gone(pids: &[u32]) -> bool {
    pids.iter().all(|c| {
        std::fs::read_to_string(format!("/proc/{c}/stat"))
            .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
            .unwrap_or(true)
    })
}

/// A trial process that ignores a preempt is killed once the worker's grace is over, so the
/// worker exits on SIGTERM; one that closes its output and hangs is killed and its attempt
/// fails (retryable), not waited for without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_that_ignores_a_preempt_or_closes_its_output_is_killed() {
    let s = serve(2).await;
    let toml = spec("deaf", "[3, 5]", 500);
    let by_id = kernels(&toml);
    s.coordinator.submit(&toml).unwrap();
    let mut w = worker(&s.url, &["--slots", "2", "--grace-secs", "5"], "hang:3,close-output:5");
    let pid = w.0.id();
    // The child that closed its output: killed, the attempt failed, retried, failed for good.
    let start = Instant::now();
    let reason = loop {
        let status = s.coordinator.status("deaf").unwrap().sweeps.remove(0);
        if let Some(f) = status.failures.iter().find(|f| by_id[&f.trial_id] == 5) {
            break f.reason.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "k = 5 never failed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains("closed its output but did not exit") && reason.contains("2 failed attempts"),
        "{reason}"
    );
    // The hanging one never stops when asked: SIGTERM, and the worker still exits, its child
    // killed after the grace.
    until("the hanging trial process", Duration::from_secs(60), || {
        trial_processes(pid).len() == 1
    })
    .await;
    let children = trial_processes(pid);
    let exited = Instant::now();
    assert!(terminate(&mut w.0, Duration::from_secs(30)).success());
    eprintln!(
        "the worker exited {:.1} s after SIGTERM",
        exited.elapsed().as_secs_f64()
    );
    until("the hanging trial process gone", Duration::from_secs(10), || {
        all_gone(&children)
    })
    .await;
    s.stop.cancel();
}

/// Live processes (not zombies) whose environment holds `mark`, and whether each is a trial
/// process.
fn marked(mark: &str) -> Vec<(u32, bool)> {
    let needle = format!("CONVSWEEP_TEST_MARK={mark}");
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) || all_gone(&[pid]) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        out.push((pid, String::from_utf8_lossy(&cmdline).contains("trial-process")));
    }
    out
}

/// `convsweep run` killed with SIGKILL takes its workers and their trial processes along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_run_leaves_no_worker_or_trial_process() {
    let dir = tempfile::tempdir().unwrap();
    let spec_file = dir.path().join("long.toml");
    std::fs::write(&spec_file, spec("orphans", "[3, 5]", 500)).unwrap();
    let mark = format!("{}-{}", std::process::id(), dir.path().display());
    let mut run = Command::new(BIN)
        .args([
            "run",
            spec_file.to_str().unwrap(),
            "--workers",
            "2",
            "--threads",
            "1",
            "--device",
            "cpu",
        ])
        .arg("--runs-dir")
        .arg(dir.path().join("runs"))
        .env("CONVSWEEP_TEST_MARK", &mark)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let run_pid = run.id();
    until("two workers and two trial processes", Duration::from_secs(120), || {
        let procs = marked(&mark);
        procs.iter().filter(|(_, trial)| *trial).count() == 2 && procs.len() >= 5
    })
    .await;
    let before = marked(&mark);
    run.kill().unwrap();
    run.wait().unwrap();
    until("no worker or trial process left", Duration::from_secs(30), || {
        marked(&mark).iter().all(|(pid, _)| *pid == run_pid)
    })
    .await;
    eprintln!("{} processes of the run were gone after its SIGKILL", before.len() - 1);
}

/// `--in-process` has no trial process to watch: it refuses the watchdog's flags by name
/// instead of ignoring them.
#[test]
fn in_process_refuses_the_flags_of_the_trial_process_watchdog() {
    for flag in [["--stall-timeout", "5"], ["--max-trial-rss", "100"]] {
        let out = Command::new(BIN)
            .args([
                "worker",
                "--in-process",
                "--device",
                "cpu",
                "--coordinator",
                "http://127.0.0.1:1",
            ])
            .args(flag)
            .env_remove("CONVSWEEP_STALL_TIMEOUT")
            .env_remove("CONVSWEEP_MAX_TRIAL_RSS")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--in-process cannot honour --stall-timeout or --max-trial-rss"),
            "{flag:?}: {err}"
        );
    }
}
