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

/// Sends SIGTERM to `child` and waits for it to exit within `limit` (kills it and panics
/// otherwise).
pub fn terminate(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    #[allow(unsafe_code)]
    // SAFETY: a signal to a child this test spawned.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    wait_exit(child, limit)
}

/// Hands `main` (bound by the test and held for as long as it needs the port) to the
/// `convsweep coordinator` of `cmd` as its main port.
pub fn listen_on<'a>(cmd: &'a mut Command, main: &std::net::TcpListener) -> &'a mut Command {
    convsweep_testkit::listen::hand_over(cmd, "--listen-fd", main)
}

pub use convsweep_testkit::listen::{loopback, url};
pub use convsweep_testkit::scripted::{lease_now, scripted_worker};

/// A small xorshift generator for a chaos test's schedule.
pub struct Dice(u64);

impl Dice {
    /// The generator of `CHAOS_SEED`, or of `default` without it; the seed is printed.
    pub fn from_env(default: u64) -> (Dice, u64) {
        let seed: u64 = match std::env::var("CHAOS_SEED") {
            Ok(s) => s.parse().unwrap_or_else(|_| panic!("CHAOS_SEED={s} is not a number")),
            Err(_) => default,
        };
        eprintln!("chaos seed {seed} (CHAOS_SEED={seed} replays the schedule)");
        (Dice(seed | 1), seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A log file in `dir`/logs, appended to across restarts of its process.
pub fn append_log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs").join(name))
        .unwrap()
}
