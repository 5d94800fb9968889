//! The coordinator's error type and its mapping onto gRPC statuses.

use std::net::SocketAddr;

use convsweep_proto::FieldError;

/// Everything that can go wrong in the coordinator, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sweep spec that cannot be run, with the field and what is allowed.
    #[error("invalid sweep spec: {0}")]
    InvalidSpec(FieldError),
    /// A request whose fields do not make sense.
    #[error("invalid request: {0}")]
    InvalidArgument(FieldError),
    /// A sweep, trial or worker that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A sweep of that name exists with other trials.
    #[error("{0}")]
    AlreadyExists(String),
    /// A report carried a lease token that is not the trial's current one (fencing).
    #[error("stale lease: {0}")]
    StaleLease(String),
    /// The worker speaks another protocol version.
    #[error(
        "protocol version mismatch: worker speaks v{worker}, coordinator v{coordinator}; run the same convsweep version on both"
    )]
    ProtocolMismatch {
        /// The worker's version.
        worker: u32,
        /// Ours.
        coordinator: u32,
    },
    /// Stored data that cannot be what this convsweep wrote (an unknown state, a spec that does
    /// not parse): nothing is acknowledged on top of it.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// The state folder was written by a convsweep of another schema version.
    #[error(
        "{path} has schema version {found}; this convsweep reads version {expected} (run this version's coordinator on it once to migrate an older state, or use the convsweep that wrote it)"
    )]
    SchemaMismatch {
        /// The database file.
        path: String,
        /// Its version.
        found: String,
        /// Ours.
        expected: i64,
    },
    /// SQLite failed; nothing was acknowledged.
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// PostgreSQL failed (or could not be reached); nothing was acknowledged.
    #[error("database: {context}: {}", pg_message(source))]
    Database {
        /// What the store was doing.
        context: String,
        /// The driver's error, with the server's message.
        source: postgres::Error,
    },
    /// The state folder could not be used.
    #[error("state folder: {0}")]
    Io(#[from] std::io::Error),
    /// Serving settings that cannot work; nothing was opened.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A TLS file could not be read.
    #[error("{file} {}: {source}", path.display())]
    TlsFile {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server could not start or stopped abnormally.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    /// A refusal of what was asked (by its content or the state it met), as opposed to a
    /// failure of the coordinator itself (storage, I/O, transport).
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::InvalidSpec(_)
            | Error::InvalidArgument(_)
            | Error::NotFound(_)
            | Error::AlreadyExists(_)
            | Error::StaleLease(_)
            | Error::ProtocolMismatch { .. }
            | Error::Corrupt(_) => true,
            Error::SchemaMismatch { .. }
            | Error::Storage(_)
            | Error::Database { .. }
            | Error::Io(_)
            | Error::Config(_)
            | Error::TlsFile { .. }
            | Error::Transport(_) => false,
        }
    }

    /// A PostgreSQL error of `sql` (its first words name it in the message).
    pub(crate) fn database(source: postgres::Error, sql: &str) -> Error {
        let words: Vec<&str> = sql.split_whitespace().take(6).collect();
        Error::Database {
            context: words.join(" "),
            source,
        }
    }

    /// A transaction the database aborted to break a conflict between concurrent ones (a
    /// deadlock, a serialization failure): the whole transaction, run again, may succeed.
    pub fn is_conflict(&self) -> bool {
        use postgres::error::SqlState;
        matches!(self, Error::Database { source, .. }
            if source.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                || source.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED))
    }

    /// A database that could not be reached or dropped the connection, or a transaction the
    /// database aborted to break a conflict (a deadlock, a serialization failure): the same
    /// request may succeed when tried again.
    pub fn is_transient(&self) -> bool {
        let source = match self {
            Error::Database { source, .. } => source,
            // A batch that failed so (the group commit keeps the kind).
            Error::Io(e) => return e.kind() == std::io::ErrorKind::ConnectionAborted,
            _ => return false,
        };
        if source.is_closed() {
            return true;
        }
        match source.code() {
            // No server code: the connection itself failed.
            None => true,
            Some(code) => {
                let c = code.code();
                c.starts_with("08") // connection exception
                    || c.starts_with("57P") // operator intervention: shutdown, crash, cannot connect now
                    || c == "40001" // serialization failure
                    || c == "40P01" // deadlock detected
                    || c == "53300" // too many connections
            }
        }
    }

    /// A write the state folder had no room for: a full disk, a quota, or a file-size limit
    /// (`ulimit -f`, under which SQLite sees short writes and then `EFBIG`). Nothing of the
    /// request was stored; the same request succeeds once there is room.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::Database { source, .. } => source.code() == Some(&postgres::error::SqlState::DISK_FULL),
            Error::Storage(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DiskFull || f.extended_code == rusqlite::ffi::SQLITE_IOERR_WRITE
            }
            Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

/// One of the coordinator's TLS files, for errors: the CLI says which flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// [`TlsFiles::cert`](crate::config::TlsFiles::cert).
    Cert,
    /// [`TlsFiles::key`](crate::config::TlsFiles::key).
    Key,
    /// [`TlsFiles::client_ca`](crate::config::TlsFiles::client_ca).
    ClientCa,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFile::Cert => "TLS certificate",
            TlsFile::Key => "TLS key",
            TlsFile::ClientCa => "client CA (mTLS)",
        })
    }
}

/// A setting of [`ServerConfig`](crate::config::ServerConfig), for errors: the CLI says which flag
/// sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// [`CoordinatorConfig::heartbeat_interval`](crate::CoordinatorConfig::heartbeat_interval).
    HeartbeatInterval,
    /// [`CoordinatorConfig::lease_timeout`](crate::CoordinatorConfig::lease_timeout).
    LeaseTimeout,
    /// [`CoordinatorConfig::max_attempts`](crate::CoordinatorConfig::max_attempts).
    MaxAttempts,
    /// [`CoordinatorConfig::max_trials_per_sweep`](crate::CoordinatorConfig::max_trials_per_sweep).
    MaxTrialsPerSweep,
    /// [`CoordinatorConfig::max_spec_bytes`](crate::CoordinatorConfig::max_spec_bytes).
    MaxSpecBytes,
    /// [`CoordinatorConfig::max_sweep_bytes`](crate::CoordinatorConfig::max_sweep_bytes).
    MaxSweepBytes,
    /// [`Limits::max_message_bytes`](crate::config::Limits::max_message_bytes).
    MaxMessageBytes,
    /// [`Limits::request_timeout`](crate::config::Limits::request_timeout).
    RequestTimeout,
    /// [`Limits::max_concurrent_requests`](crate::config::Limits::max_concurrent_requests).
    MaxConcurrentRequests,
    /// [`Limits::max_connections`](crate::config::Limits::max_connections).
    MaxConnections,
    /// [`Limits::max_ops_connections`](crate::config::Limits::max_ops_connections).
    MaxOpsConnections,
    /// [`Limits::max_streams_per_connection`](crate::config::Limits::max_streams_per_connection).
    MaxStreamsPerConnection,
    /// [`Limits::handshake_timeout`](crate::config::Limits::handshake_timeout).
    HandshakeTimeout,
    /// [`Limits::max_open_streams`](crate::config::Limits::max_open_streams).
    MaxOpenStreams,
}

impl Setting {
    /// What the setting is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Setting::HeartbeatInterval => "the heartbeat interval",
            Setting::LeaseTimeout => "the lease timeout",
            Setting::MaxAttempts => "the most attempts per trial",
            Setting::MaxTrialsPerSweep => "the most trials per sweep",
            Setting::MaxSpecBytes => "the largest trial spec",
            Setting::MaxSweepBytes => "the largest sweep",
            Setting::MaxMessageBytes => "the largest message",
            Setting::RequestTimeout => "the request timeout",
            Setting::MaxConcurrentRequests => "the most calls served at once",
            Setting::MaxConnections => "the most connections to the main port",
            Setting::MaxOpsConnections => "the most connections to the ops port",
            Setting::MaxStreamsPerConnection => "the most calls one connection may have open",
            Setting::HandshakeTimeout => "the TLS handshake timeout",
            Setting::MaxOpenStreams => "the most Watch and Export streams open at once",
        }
    }
}

/// A [`ServerConfig`](crate::config::ServerConfig) that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A setting out of range.
    #[error("{}: {problem}", setting.describe())]
    Invalid {
        /// Which setting.
        setting: Setting,
        /// What is wrong and what is allowed.
        problem: String,
    },
    /// No token on an address others can reach, and no `insecure`.
    #[error(
        "refusing to serve on {addr} without a token: anyone who reaches it could submit, cancel and report; \
         give it a token, listen on a loopback address, or serve insecure on purpose"
    )]
    TokenRequired {
        /// The address.
        addr: SocketAddr,
    },
}

/// A PostgreSQL error in full: the server's message and code, or the driver's error and what
/// caused it (a refused connection, a closed socket).
fn pg_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
        return format!(
            "{}: {}{detail} [SQLSTATE {}]",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// Results of the coordinator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidSpec(_) | Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::StaleLease(_) => tonic::Status::aborted(msg),
            Error::ProtocolMismatch { .. } => tonic::Status::failed_precondition(msg),
            Error::Corrupt(_) => tonic::Status::data_loss(msg),
            _ if e.is_out_of_space() => tonic::Status::resource_exhausted(format!(
                "the coordinator's state folder is out of space ({msg}): nothing of this request was stored; \
                 retry once its disk has room (or its file-size limit is raised)"
            )),
            _ if e.is_transient() => tonic::Status::unavailable(format!(
                "the coordinator's database is unreachable or busy ({msg}): nothing of this request was stored; retry"
            )),
            Error::SchemaMismatch { .. }
            | Error::Storage(_)
            | Error::Database { .. }
            | Error::Io(_)
            | Error::Config(_)
            | Error::TlsFile { .. }
            | Error::Transport(_) => tonic::Status::internal(msg),
        }
    }
}
