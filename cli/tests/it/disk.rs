//! A full disk: a coordinator whose state folder has no room refuses writes with a clear error,
//! loses nothing it acknowledged and carries on once there is room; a worker whose checkpoint
//! folder is full trains on and says so.
//!
//! "No room" is a file-size limit (RLIMIT_FSIZE, set and lifted on the running process with
//! `prlimit`): it needs no root and no loop device, and SQLite meets it as it meets a full disk,
//! with short writes and then `EFBIG`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convsweep_proto::pb;
use convsweep_proto::pb::admin_service_client::AdminServiceClient;
use convsweep_proto::pb::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

use crate::common::*;
use crate::isolation::{serve, spec};

/// A child whose stderr is collected (not written to a file: the limit would apply to it).
struct Logged {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Logged {
    fn spawn(command: &mut Command) -> Logged {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            }
        });
        Logged { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the soft file-size limit of a running process (`None`: unlimited).
fn file_size_limit(pid: u32, bytes: Option<u64>) {
    let soft = bytes.map_or_else(|| "unlimited".to_owned(), |b| b.to_string());
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={soft}:unlimited")])
        .output()
        .expect("prlimit (util-linux) runs");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn coordinator(state: &std::path::Path, main: &std::net::TcpListener) -> Logged {
    let mut cmd = Command::new(BIN);
    // This test's clients carry no token (the default token is security.rs's to test).
    cmd.args(["coordinator", "--insecure"]);
    listen_on(&mut cmd, main);
    Logged::spawn(
        cmd.args(["--ops-listen", "127.0.0.1:0", "--lease-timeout-secs", "600"])
            .arg("--state-dir")
            .arg(state),
    )
}

async fn connect(url: &str) -> (AdminServiceClient<Channel>, WorkerServiceClient<Channel>) {
    let start = Instant::now();
    loop {
        if let (Ok(a), Ok(w)) = (
            AdminServiceClient::connect(url.to_owned()).await,
            WorkerServiceClient::connect(url.to_owned()).await,
        ) {
            return (a, w);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the coordinator answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per sweep: its trials and how many succeeded.
async fn summary(admin: &mut AdminServiceClient<Channel>) -> Vec<(String, u32, u32)> {
    let status = admin
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut out: Vec<_> = status
        .sweeps
        .iter()
        .map(|s| (s.sweep_id.clone(), s.total, s.counts.unwrap().succeeded))
        .collect();
    out.sort();
    out
}

/// Sweep `name` of 8 trials of its own (seed `seed`), so that no two sweeps share trials.
fn sweep(name: &str, seed: u64) -> String {
    let spec = tiny_spec(name).replace("seeds = 1", &format!("seeds = [{seed}]"));
    assert!(spec.contains(&format!("seeds = [{seed}]")));
    spec
}

fn largest_file(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_out_of_space_refuses_writes_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let main = loopback().unwrap();
    let url = url(&main);
    let mut c = coordinator(&state, &main);
    let (mut admin, mut rpc) = connect(&url).await;

    // Acknowledged before the disk fills: a sweep, a worker, a finished trial, a running one.
    admin
        .submit_sweep(pb::SubmitSweepRequest {
            spec_toml: sweep("before", 0),
        })
        .await
        .unwrap();
    let worker_id = rpc
        .register(pb::RegisterRequest {
            protocol_version: convsweep_proto::PROTOCOL_VERSION,
            slots: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let leases = rpc
        .lease(pb::LeaseRequest {
            worker_id: worker_id.clone(),
            max_trials: 2,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 2);
    let complete = |lease: &pb::TrialLease| pb::CompleteRequest {
        worker_id: worker_id.clone(),
        trial_id: lease.trial_id.clone(),
        lease_token: lease.lease_token.clone(),
        outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
            result: Some(pb::TrialResult {
                final_test_acc: 0.5,
                best_test_acc: 0.5,
                device: "cpu".into(),
                ..Default::default()
            }),
        })),
    };
    rpc.complete(complete(&leases[0])).await.unwrap();

    // The disk fills: files may grow 64 KiB past the largest there.
    let room = largest_file(&state) + (64 << 10);
    file_size_limit(c.child.id(), Some(room));
    let mut acknowledged = vec!["before".to_owned()];
    let mut refusal = None;
    for i in 0..200 {
        let name = format!("fill-{i}");
        match admin
            .submit_sweep(pb::SubmitSweepRequest {
                spec_toml: sweep(&name, i + 1),
            })
            .await
        {
            Ok(_) => acknowledged.push(name),
            Err(status) => {
                refusal = Some((name, i + 1, status));
                break;
            }
        }
    }
    let (refused, seed, status) = refusal.expect("a write is refused once the state folder is full");
    eprintln!(
        "full after {} sweeps ({room} bytes per file): {status:?}",
        acknowledged.len()
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("out of space") && status.message().contains("nothing of this request was stored"),
        "{}",
        status.message()
    );
    assert!(c.child.try_wait().unwrap().is_none(), "the coordinator is still up");
    // Reads still work and show nothing of the refused sweep; the running trial's completion
    // is refused the same way or stored, and either way the answer says which.
    let during = summary(&mut admin).await;
    assert!(during.iter().all(|(s, _, _)| s != &refused), "{during:?}");
    let second = rpc.complete(complete(&leases[1])).await;
    if let Err(s) = &second {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    }

    // Room again: the same requests succeed.
    file_size_limit(c.child.id(), None);
    admin
        .submit_sweep(pb::SubmitSweepRequest {
            spec_toml: sweep(&refused, seed),
        })
        .await
        .expect("the refused sweep is stored once there is room");
    acknowledged.push(refused);
    rpc.complete(complete(&leases[1]))
        .await
        .expect("the completion is stored");

    // Nothing acknowledged was lost, across a restart too (SIGKILL: no clean shutdown).
    let check = |summary: Vec<(String, u32, u32)>| {
        let mut want = acknowledged.clone();
        want.sort();
        assert_eq!(summary.iter().map(|s| s.0.clone()).collect::<Vec<_>>(), want);
        for (sweep, total, succeeded) in &summary {
            assert_eq!(*total, 8, "{sweep}");
            assert_eq!(*succeeded, if sweep == "before" { 2 } else { 0 }, "{sweep}");
        }
    };
    check(summary(&mut admin).await);
    let log = c.log();
    assert!(
        log.contains("database or disk is full") || log.contains("disk I/O error"),
        "{log}"
    );
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let _c = coordinator(&state, &main);
    let (mut admin, _) = connect(&url).await;
    check(summary(&mut admin).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_checkpoint_folder_is_full_trains_on_and_says_so() {
    let s = serve(1).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    s.coordinator.submit(&spec("nospace", "[3, 5]", 2)).unwrap();
    let mut w = Logged::spawn(
        Command::new("prlimit")
            // 4 KiB per file: a checkpoint's tensors never fit.
            .args(["--fsize=4096:unlimited", "--", BIN])
            .args(["worker", "--coordinator", &s.url, "--threads", "1", "--device", "cpu"])
            .args(["--slots", "2", "--checkpoint-every", "1", "--checkpoint-dir"])
            .arg(&checkpoints),
    );
    wait_done(&s.coordinator, "nospace", Duration::from_secs(120)).await;
    let status = s.coordinator.status("nospace").unwrap().sweeps.remove(0);
    assert_eq!(status.counts.unwrap().succeeded, 2, "{status:?}");
    assert!(w.child.try_wait().unwrap().is_none(), "the worker is still up");
    let log = w.log();
    let warnings = log.matches("checkpoint not written").count();
    // Two trials, two epochs each, a checkpoint after every epoch.
    assert_eq!(warnings, 4, "{log}");
    assert!(
        log.contains("File too large") && log.contains("training goes on"),
        "{log}"
    );
    let left: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "no partial checkpoint is left behind: {left:?}");
    s.stop.cancel();
}
