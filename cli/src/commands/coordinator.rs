//! `convsweep coordinator`: the flags of a coordinator as a service, mapped onto the
//! coordinator crate's [`ServerConfig`] (whose `validate` says what is wrong; [`crate::flags`]
//! says which flag) and served by [`convsweep_coordinator::server::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use convsweep_coordinator::{CoordinatorConfig, Limits, ServeConfig, ServerConfig, TlsFiles};
use serde::Serialize;

use convsweep_proto::client::Secret;

use crate::Access;

/// Flags of `convsweep coordinator`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct CoordinatorArgs {
    /// Folder of the SQLite state (created when missing; reopened after a restart). Not
    /// needed with --store, where it only holds the token the coordinator makes for itself.
    #[arg(long, env = "CONVSWEEP_STATE_DIR", required_unless_present_any = ["store", "store_url_file"])]
    pub state_dir: Option<PathBuf>,
    /// Keep the state in PostgreSQL instead of SQLite: a `postgres://user:password@host:port/db`
    /// URL (its schema is created on the first start). Several coordinators on one database
    /// serve the same sweeps. A URL with a password is better given by --store-url-file or the
    /// environment than on a command line others can read.
    #[arg(long, env = "CONVSWEEP_STORE_URL", conflicts_with = "store_url_file")]
    pub store: Option<String>,
    /// A file that holds the --store URL (a mounted Secret), read at start.
    #[arg(long, env = "CONVSWEEP_STORE_URL_FILE")]
    pub store_url_file: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:50051", env = "CONVSWEEP_LISTEN")]
    pub listen: SocketAddr,
    /// Serve the main port on this inherited, already listening socket instead of binding
    /// --listen (socket activation: systemd, a supervisor or a test harness that holds the
    /// port across restarts).
    #[arg(long, env = "CONVSWEEP_LISTEN_FD")]
    pub listen_fd: Option<i32>,
    /// Seconds between worker heartbeats.
    #[arg(long, default_value_t = 5, env = "CONVSWEEP_HEARTBEAT_SECS")]
    pub heartbeat_secs: u64,
    /// Seconds without a heartbeat before a lease expires (longer than --heartbeat-secs).
    #[arg(long, default_value_t = 60, env = "CONVSWEEP_LEASE_TIMEOUT_SECS")]
    pub lease_timeout_secs: u64,
    /// Failed or expired attempts before a trial fails for good.
    #[arg(long, default_value_t = 3, env = "CONVSWEEP_MAX_ATTEMPTS")]
    pub max_attempts: u32,
    /// Address of the ops port (plaintext, no token): gRPC health, /healthz, /readyz,
    /// /metrics. Loopback by default; a pod sets 0.0.0.0:9090 for its kubelet.
    #[arg(long, default_value = "127.0.0.1:9090", env = "CONVSWEEP_OPS_LISTEN")]
    pub ops_listen: SocketAddr,
    /// Serve the ops port on this inherited, already listening socket instead of binding
    /// --ops-listen.
    #[arg(long, env = "CONVSWEEP_OPS_LISTEN_FD")]
    pub ops_listen_fd: Option<i32>,
    /// PEM CA whose certificates clients must present (mTLS; needs --tls-cert/--tls-key).
    #[arg(long, env = "CONVSWEEP_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve without a token (anyone who reaches the port can submit, cancel, report and read
    /// results; anyone who reaches the ops port can read the status). Off by default: without
    /// --token-file the coordinator makes a token and writes it to STATE_DIR/token (0600).
    #[arg(long, env = "CONVSWEEP_INSECURE")]
    pub insecure: bool,
    /// Largest gRPC message, in MiB.
    #[arg(long, default_value_t = 16, env = "CONVSWEEP_MAX_MESSAGE_MIB")]
    pub max_message_mib: usize,
    /// Longest a request may take, in seconds (a long-polling Lease waits less).
    #[arg(long, default_value_t = 120, env = "CONVSWEEP_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: u64,
    /// Calls served at once over all connections (a waiting Lease counts); one more is
    /// refused with ResourceExhausted.
    #[arg(long, default_value_t = 10_000, env = "CONVSWEEP_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: usize,
    /// Connections open at once on the main port; one more is closed as it is accepted.
    #[arg(long, default_value_t = 10_000, env = "CONVSWEEP_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Connections open at once on the ops port.
    #[arg(long, default_value_t = 256, env = "CONVSWEEP_MAX_OPS_CONNECTIONS")]
    pub max_ops_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[arg(long, default_value_t = 1_000, env = "CONVSWEEP_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: u32,
    /// Longest a TLS handshake may take, in seconds.
    #[arg(long, default_value_t = 10, env = "CONVSWEEP_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: u64,
    /// Watch and Export streams open at once (they count apart from --max-concurrent-requests,
    /// which a stream leaves once it streams); one more is refused.
    #[arg(long, default_value_t = 1_000, env = "CONVSWEEP_MAX_OPEN_STREAMS")]
    pub max_open_streams: usize,
    /// Most trials one sweep may expand to (grid times seeds); a larger spec is refused,
    /// naming its size, before it is expanded.
    #[arg(long, default_value_t = convsweep_coordinator::sweep::DEFAULT_MAX_TRIALS_PER_SWEEP,
          env = "CONVSWEEP_MAX_TRIALS_PER_SWEEP")]
    pub max_trials_per_sweep: u64,
    /// Largest canonical spec of one trial, in bytes; a sweep whose trials could be larger is
    /// refused, naming the field, before it is expanded.
    #[arg(long, default_value_t = convsweep_coordinator::sweep::DEFAULT_MAX_SPEC_BYTES,
          env = "CONVSWEEP_MAX_SPEC_BYTES")]
    pub max_spec_bytes: u64,
    /// Largest sum of a sweep's canonical trial specs, in bytes; refused before expansion.
    #[arg(long, default_value_t = convsweep_coordinator::sweep::DEFAULT_MAX_SWEEP_BYTES,
          env = "CONVSWEEP_MAX_SWEEP_BYTES")]
    pub max_sweep_bytes: u64,
}

impl CoordinatorArgs {
    /// The PostgreSQL URL of --store or --store-url-file, checked to be one; `None` for SQLite.
    pub fn store_url(&self) -> Result<Option<String>> {
        let (url, flag) = match (&self.store, &self.store_url_file) {
            (Some(url), _) => (url.trim().to_owned(), "--store".to_owned()),
            (None, Some(file)) => (
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read --store-url-file {}", file.display()))?
                    .trim()
                    .to_owned(),
                format!("the URL in --store-url-file {}", file.display()),
            ),
            (None, None) => return Ok(None),
        };
        if !convsweep_coordinator::store::is_postgres_url(&url) {
            bail!(
                "{flag} must be a postgres:// (or postgresql://) URL, got one starting {:?}; the SQLite state is \
                 --state-dir",
                url.chars().take_while(|c| *c != ':').take(20).collect::<String>()
            );
        }
        Ok(Some(url))
    }

    /// The server these flags describe (not yet validated against the address it listens on).
    pub fn server_config(&self, access: &Access) -> Result<ServerConfig> {
        let tls = match (&access.tls_cert, &access.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            (None, None) if self.tls_client_ca.is_some() => {
                bail!("--tls-client-ca (mTLS) needs the coordinator's own --tls-cert and --tls-key")
            }
            (None, None) => None,
            _ => bail!("TLS needs both --tls-cert and --tls-key"),
        };
        Ok(ServerConfig {
            coordinator: CoordinatorConfig {
                state_dir: self.state_dir.clone().unwrap_or_default(),
                store_url: self.store_url()?,
                heartbeat_interval: Duration::from_secs(self.heartbeat_secs),
                lease_timeout: Duration::from_secs(self.lease_timeout_secs),
                max_attempts: self.max_attempts,
                max_trials_per_sweep: self.max_trials_per_sweep,
                max_spec_bytes: self.max_spec_bytes,
                max_sweep_bytes: self.max_sweep_bytes,
                ..Default::default()
            },
            serve: ServeConfig {
                token: access.token()?,
                tls,
                limits: Limits {
                    max_message_bytes: self.max_message_mib.checked_mul(1 << 20).with_context(|| {
                        format!("--max-message-mib {} does not fit in memory", self.max_message_mib)
                    })?,
                    request_timeout: Duration::from_secs(self.request_timeout_secs),
                    max_concurrent_requests: self.max_concurrent_requests,
                    max_connections: self.max_connections,
                    max_ops_connections: self.max_ops_connections,
                    max_streams_per_connection: self.max_streams_per_connection,
                    handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
                    max_open_streams: self.max_open_streams,
                },
            },
            insecure: self.insecure,
        })
    }
}

/// A listening socket this process inherited as file descriptor `fd`. A descriptor that is not
/// one is refused and left open (stderr given by mistake must still carry the error).
#[allow(unsafe_code)]
fn inherited(fd: i32, flag: &str) -> Result<std::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; it fails on a closed one.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("{flag} {fd}: no such open file descriptor in this process");
    }
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_ACCEPTCONN) writes one int into `listening`, whose size `len` gives;
    // it fails on a descriptor that is no socket.
    let accepts = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0
        && listening != 0;
    // SAFETY: `fd` is open (checked above) and, by the contract of the flag, handed to this
    // process to own; nothing else here uses it. On a refusal it is given back unclosed.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    if !accepts || listener.local_addr().is_err() {
        let _ = listener.into_raw_fd();
        bail!("{flag} {fd} is not a listening TCP socket");
    }
    Ok(listener)
}

fn listener(fd: Option<i32>, addr: SocketAddr, fd_flag: &str, addr_flag: &str) -> Result<std::net::TcpListener> {
    match fd {
        Some(fd) => inherited(fd, fd_flag),
        None => Ok(convsweep_coordinator::bind(addr)
            .and_then(|l| l.into_std())
            .with_context(|| format!("cannot listen on {addr} ({addr_flag})"))?),
    }
}

/// The file in the state folder that holds the token a coordinator made for itself.
pub const STATE_TOKEN_FILE: &str = "token";

/// The coordinator's own token in `state_dir`: read when an earlier start wrote it, else made
/// (32 random bytes) and written 0600 into the folder (0700 when it creates it), never
/// readable by others for a moment. Returns the token, its path and whether it is new.
pub fn state_token(state_dir: &std::path::Path) -> Result<(Secret, PathBuf, bool)> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("cannot create the state folder {}", state_dir.display()))?;
    let path = state_dir.join(STATE_TOKEN_FILE);
    let token = Secret::random().context("cannot draw a random token")?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(format!("{}\n", token.expose()).as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write the token to {}", path.display()))?;
            Ok((token, path, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by others (mode {mode:o}): the token in it may have leaked; remove it (a new one \
                     is made at the next start) or chmod 600 it",
                    path.display()
                );
            }
            Ok((Secret::from_file(&path)?, path, false))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// `convsweep coordinator`.
pub async fn serve(args: &CoordinatorArgs, access: &Access) -> Result<ExitCode> {
    let mut config = args.server_config(access)?;
    // Without a token (and without --insecure) the coordinator makes its own, once everything
    // else checked out: a refused start leaves no state folder behind.
    let make_token = config.serve.token.is_none() && !args.insecure;
    if make_token {
        if args.state_dir.is_none() {
            bail!(
                "no --token-file and no --state-dir to keep a token of its own in: coordinators on a shared --store \
                 need the same token, so give each the same --token-file (or serve --insecure on purpose)"
            );
        }
        config.serve.token = Some(Secret::new("made-after-validation", "placeholder")?);
    }
    // The address it is told to listen on decides the token rule before anything is bound.
    if args.listen_fd.is_none() {
        config.validate(args.listen)?;
    }
    let main = listener(args.listen_fd, args.listen, "--listen-fd", "--listen")?;
    let ops = listener(args.ops_listen_fd, args.ops_listen, "--ops-listen-fd", "--ops-listen")?;
    if let (true, Some(state_dir)) = (make_token, &args.state_dir) {
        let (token, path, new) = state_token(state_dir)?;
        tracing::info!(
            path = %path.display(),
            new,
            "no --token-file given: every call needs the token in this file; point clients on this machine at it \
             with --token-file or CONVSWEEP_TOKEN_FILE"
        );
        config.serve.token = Some(token);
    } else if config.serve.token.is_none() {
        tracing::warn!(
            listen = %args.listen,
            "serving WITHOUT A TOKEN (--insecure): anyone who reaches the port can submit, cancel and read results, \
             and anyone who reaches the ops port can read the status"
        );
    }
    convsweep_coordinator::server::run(config, main, ops, crate::shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}
