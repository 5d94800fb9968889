//! A real PostgreSQL server for tests: Debian's `postgresql` binaries, run as the `postgres`
//! user the package creates (the server refuses to run as root), in a temporary folder, on a
//! loopback port of its own, trusting loopback connections.
//!
//! Each server runs under a small watchdog shell that stops it (a fast shutdown) and removes
//! its folder once the test process is gone, however that process ends: a failed or killed
//! test leaves no server behind. [`shared`] is one server per test process, where every test
//! takes a fresh database ([`PgServer::fresh_database`]); a test that stops or kills the server
//! itself starts one of its own ([`PgServer::start`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A PostgreSQL server of this test process.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    /// The server's folder (data, socket, log).
    dir: PathBuf,
    port: u16,
    /// The uid and gid the server runs as (None: this process's own, when not root).
    user: Option<(u32, u32)>,
    /// The watchdog shell's pid (the server is its child).
    watchdog: Option<u32>,
    /// Whether it syncs to disk (`fsync`, `full_page_writes`): off for tests, where a killed
    /// server (not a crashed machine) loses nothing either way; on for benchmarks.
    durable: bool,
}

/// The server every test of this process shares (started on first use).
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// The folder of the newest installed PostgreSQL's server binaries: `CONVSWEEP_PG_BIN`, else
/// the highest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONVSWEEP_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server found under /usr/lib/postgresql (install Debian's postgresql package: \
             scripts/postgres-deps.sh does), or set CONVSWEEP_PG_BIN to the folder of its postgres binary"
        ),
    }
}

/// The `postgres` user's uid and gid, when this process runs as root.
fn server_user() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok());
    if uid != Some(0) {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .unwrap_or_else(|| panic!("PostgreSQL refuses to run as root and there is no postgres user in /etc/passwd"));
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_as(user: Option<(u32, u32)>, program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C");
    c
}

impl PgServer {
    /// Creates a cluster in a new temporary folder and starts it without syncing to disk;
    /// panics, with the server's log, when it does not come up.
    pub fn start() -> PgServer {
        PgServer::create(false)
    }

    /// [`PgServer::start`] with PostgreSQL's default durability (`fsync` and
    /// `full_page_writes` on), for measurements beside SQLite's `synchronous = FULL`.
    pub fn start_durable() -> PgServer {
        PgServer::create(true)
    }

    fn create(durable: bool) -> PgServer {
        let bin = bin_dir();
        let user = server_user();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "convsweep-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let out = run_as(user, &bin.join("initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .arg("-D")
            .arg(dir.join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            user,
            watchdog: None,
            durable,
        };
        server.start_again();
        server
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database of its own for one test and returns its name.
    pub fn fresh_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Runs SQL on `database` through `psql`; panics with its output on failure.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts the server (stopped or killed before) on a free port, the first time, and on
    /// the same port after.
    pub fn start_again(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            if self.watchdog.is_none() && self.port == 0 {
                self.port = free_port();
            }
            let port = self.port;
            let sync = if self.durable {
                ""
            } else {
                "-c fsync=off -c full_page_writes=off"
            };
            // The watchdog: the server in the background; once this test process is gone, a
            // fast shutdown and the folder removed. It exits by itself when the server does.
            let script = format!(
                r#""$1/postgres" -D "$2/data" -p {port} -k "$2" -c listen_addresses=127.0.0.1 {sync} \
                   -c max_connections=200 -c shared_buffers=32MB >>"$2/log" 2>&1 &
                pg=$!
                while [ -d /proc/{parent} ]; do
                    kill -0 $pg 2>/dev/null || exit 0
                    sleep 0.2
                done
                kill -INT $pg; wait $pg; rm -rf "$2""#,
                parent = std::process::id()
            );
            let child = run_as(self.user, Path::new("/bin/sh"))
                .arg("-c")
                .arg(script)
                .arg("sh")
                .arg(&self.bin)
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.watchdog = Some(child.id());
            // The shell is reaped by whoever waits for it; a zombie is harmless here.
            std::mem::forget(child);
            if self.wait_ready(Duration::from_secs(30)) {
                return;
            }
            last = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            if last.contains("could not bind") || last.contains("Address already in use") {
                self.port = free_port();
                continue;
            }
            break;
        }
        panic!("the test PostgreSQL server did not start; its log:\n{last}");
    }

    fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return true;
            }
            if !self.watchdog_alive() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The postmaster's pid, from its pid file.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the watchdog shell still runs (it exits, a zombie until this process ends,
    /// once the server did).
    fn watchdog_alive(&self) -> bool {
        let Some(pid) = self.watchdog else { return false };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                // The state follows the command name in parentheses.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Kills the server at once (SIGKILL to the postmaster and, as PostgreSQL would be left
    /// after a crash of its host, every backend), and waits until it is gone. Its data stays;
    /// [`PgServer::start_again`] recovers it.
    pub fn kill(&mut self) {
        let Some(pid) = self.pid() else { return };
        // The backends are the postmaster's children.
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        for c in children.split_whitespace() {
            let _ = Command::new("kill").arg("-KILL").arg(c).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.watchdog = None;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A server of a test's own stops with it (a fast shutdown), and its folder goes.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-INT").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
