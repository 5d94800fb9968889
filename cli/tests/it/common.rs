//! Helpers: the binary, a tiny sweep, waiting for a sweep to finish.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use convsweep_coordinator::Coordinator;

pub const BIN: &str = env!("CARGO_BIN_EXE_convsweep");

/// 2 kernel sizes x 2 train modes x 2 inits on a few synthetic images, one epoch.
pub fn tiny_spec(name: &str) -> String {
    format!(
        r#"
name = "{name}"
seeds = 1
[dataset]
name = "synthetic"
train_size = 96
test_size = 64
[model]
arch = "resnet"
depth = 8
width = 4
[train]
epochs = 1
batch_size = 32
lr = 0.05
[grid]
kernel_size = [3, 5]
train_mode = ["learned", "frozen"]
init = ["kaiming-uniform", "kaiming-normal"]
"#
    )
}

pub fn write_spec(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, tiny_spec(name)).unwrap();
    path
}

/// `convsweep worker` against `url`, one libtorch thread, quiet.
pub fn spawn_worker(url: &str, name: &str) -> Child {
    Command::new(BIN)
        .args([
            "worker",
            "--coordinator",
            url,
            "--threads",
            "1",
            "--device",
            "cpu",
            "--name",
            name,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start a worker process")
}

/// The standard output of a finished command, after asserting that it succeeded (both streams
/// are shown when it did not).
pub fn stdout_of_success(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until every trial of `sweep` is finished, or panics after `limit`.
pub async fn wait_done(c: &Coordinator, sweep: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let s = &c.status(sweep).unwrap().sweeps[0];
        let k = s.counts.unwrap();
        if k.succeeded + k.failed + k.cancelled == s.total {
            return;
        }
        assert!(start.elapsed() < limit, "sweep {sweep} not done after {limit:?}: {k:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a child to exit within `limit`; kills it and panics otherwise.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scripted worker registered in-process with `slots`; returns its id.
pub fn scripted_worker(c: &Coordinator, slots: u32) -> String {
    c.register(convsweep_proto::pb::RegisterRequest {
        protocol_version: convsweep_proto::PROTOCOL_VERSION,
        slots,
        name: "scripted".into(),
        ..Default::default()
    })
    .unwrap()
    .worker_id
}

/// Leases up to `n` trials to `worker` in-process, without waiting.
pub async fn lease_now(c: &Coordinator, worker: &str, n: u32) -> Vec<convsweep_proto::pb::TrialLease> {
    c.lease(convsweep_proto::pb::LeaseRequest {
        worker_id: worker.to_owned(),
        max_trials: n,
        wait_ms: 0,
    })
    .await
    .unwrap()
    .leases
}
