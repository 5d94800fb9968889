//! A sweep on this machine, as a cluster would run it but on loopback: a coordinator in this
//! process behind a fresh random token, worker processes of a `convsweep` binary given that
//! token in their environment (never on their command line), and the sweep followed through
//! the coordinator's `Watch` stream until it is done, the user interrupts, or every worker
//! exited. `convsweep run` and the trial benchmark (`convsweep-bench trial`) both run on it.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use convsweep_coordinator::{Coordinator, CoordinatorConfig, ServeConfig};
use convsweep_proto::client::{Connection, Secret};
use convsweep_proto::pb;
use convsweep_proto::pb::watch_event::Event;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::commands::worker::WorkerArgs;
use crate::{Access, Cli, Globals};

/// How long workers get to finish and exit once the sweep is over (or interrupted) before
/// they are killed.
const WORKER_EXIT: Duration = Duration::from_secs(20);

/// The coordinator of a sweep on this machine, its state in `state_dir`: heartbeats every 2 s
/// and leases of 30 s, since its workers are processes beside it.
pub fn config(state_dir: &Path) -> CoordinatorConfig {
    CoordinatorConfig {
        state_dir: state_dir.to_owned(),
        heartbeat_interval: Duration::from_secs(2),
        lease_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// How following a sweep ended.
#[derive(Debug)]
pub enum Followed {
    /// Every trial is done; the last snapshot.
    Done(Box<pb::WatchSnapshot>),
    /// The user interrupted.
    Interrupted,
}

/// A coordinator served in this process on a loopback port, and the workers started for it.
#[derive(Debug)]
pub struct Local {
    coordinator: Arc<Coordinator>,
    url: String,
    token: Secret,
    stop: CancellationToken,
    server: JoinHandle<convsweep_coordinator::Result<()>>,
    workers: Vec<Child>,
}

impl Local {
    /// Opens the coordinator of `config` (see [`config`]) and serves it on `127.0.0.1` (a port
    /// the system picks) behind a fresh token.
    pub async fn start(config: CoordinatorConfig) -> Result<Local> {
        let coordinator = Coordinator::open(config)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on a loopback port")?;
        let url = format!("http://{}", listener.local_addr()?);
        // Nothing else on this machine can drive a coordinator whose token only its own
        // workers know.
        let token = Secret::random().context("cannot draw a token from /dev/urandom")?;
        let serve = ServeConfig {
            token: Some(token.clone()),
            ..Default::default()
        };
        let stop = CancellationToken::new();
        let server = {
            let (stop, coordinator) = (stop.clone(), coordinator.clone());
            tokio::spawn(async move {
                convsweep_coordinator::serve_with(listener, coordinator, &serve, async move { stop.cancelled().await })
                    .await
            })
        };
        Ok(Local {
            coordinator,
            url,
            token,
            stop,
            server,
            workers: Vec::new(),
        })
    }

    /// The coordinator.
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// How to reach it, token included.
    pub fn connection(&self) -> Connection {
        Connection {
            token: Some(self.token.clone()),
            ..Connection::plain(&self.url)
        }
    }

    /// Starts `program` (a `convsweep` binary) as `convsweep worker` with `globals` and `worker`
    /// (its coordinator set to this one), stdout and stderr into `log`.
    pub fn spawn_worker(&mut self, program: &Path, globals: &Globals, worker: WorkerArgs, log: &Path) -> Result<()> {
        let cli = Cli {
            // The coordinator is plaintext on loopback with this token: credentials meant for
            // another coordinator must not reach these workers.
            globals: Globals {
                access: Access::default(),
                ..globals.clone()
            },
            command: crate::Command::Worker(WorkerArgs {
                coordinator: self.url.clone(),
                ..worker
            }),
        };
        let file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(program);
        die_with_this_process(&mut command);
        let child = command
            .args(crate::argv::of(&cli)?)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env(crate::access::TOKEN_ENV, self.token.expose())
            .env_remove("CONVSWEEP_TOKEN_FILE")
            .env_remove("CONVSWEEP_TLS_CA")
            .env_remove("CONVSWEEP_TLS_CERT")
            .env_remove("CONVSWEEP_TLS_KEY")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start a worker process ({})", program.display()))?;
        self.workers.push(child);
        Ok(())
    }

    /// Follows `sweep` through the coordinator's `Watch` stream, calling `on_snapshot` with each
    /// snapshot and `on_event` with the other events, until every trial is done, `interrupted`
    /// is cancelled, or every worker exited with trials left (an error naming `logs`).
    pub async fn follow(
        &mut self,
        sweep: &str,
        interrupted: &CancellationToken,
        on_snapshot: impl FnMut(&pb::WatchSnapshot),
        on_event: impl FnMut(&Event),
        logs: &Path,
    ) -> Result<Followed> {
        let conn = self.connection();
        let follow = crate::commands::watch::follow(&conn, Some(sweep), on_snapshot, on_event);
        tokio::select! {
            last = follow => Ok(Followed::Done(Box::new(last?))),
            () = interrupted.cancelled() => Ok(Followed::Interrupted),
            () = all_exited(&mut self.workers) => bail!(
                "every worker process exited with trials left; see the logs in {}",
                logs.display()
            ),
        }
    }

    /// Asks the workers to finish what they hold and exit (with SIGTERM too when
    /// `interrupted`), kills those still running after a grace, and stops the server.
    pub async fn stop(mut self, interrupted: bool) -> Result<()> {
        self.coordinator.set_drain(true);
        for w in &mut self.workers {
            if interrupted && let Some(pid) = w.id() {
                terminate(pid);
            }
            if tokio::time::timeout(WORKER_EXIT, w.wait()).await.is_err() {
                let _ = w.kill().await;
            }
        }
        self.stop.cancel();
        self.server.await.context("the local coordinator's task failed")??;
        Ok(())
    }
}

/// Makes the child of `command` die (SIGKILL) when this process dies, however it dies: its
/// coordinator lives in this process, so nothing the child does after would count. (The death
/// signal follows the spawning thread; this process spawns from threads that live as long as
/// it does: the runtime's.) A parent that died before the child set it up is caught too.
#[allow(unsafe_code)]
pub fn die_with_this_process(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Returns once every worker process has exited (never, without workers).
async fn all_exited(workers: &mut [Child]) {
    if workers.is_empty() {
        return std::future::pending().await;
    }
    for w in workers.iter_mut() {
        let _ = w.wait().await;
    }
}
