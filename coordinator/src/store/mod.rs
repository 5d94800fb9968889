//! The coordinator's durable state behind one contract that a backend implements, so that the
//! coordinator never talks to a database driver itself.
//!
//! - [`contract`]: the seam. A [`Backend`] opens the one [`StoreWriter`] a coordinator writes
//!   through and any number of [`StoreReader`]s (status, snapshots, metrics, export), each a
//!   plain blocking API that the coordinator calls from its store thread or tokio's blocking
//!   pool, never from an async thread.
//! - [`lease`]: the lease state machine: its transitions, the rules a backend keeps
//!   ([`LeasePolicy`]), the worker writes inside a transaction ([`LeaseOps`]) and the typed
//!   writes that group commit batches ([`WorkerWrite`]).
//! - [`sqlite`]: the embedded backend (SQLite in WAL mode in a state folder), for one machine.
//! - [`postgres`]: PostgreSQL, for clusters: no volume pins the coordinator to a node, and
//!   several coordinators can share one state.
//!
//! A write is acknowledged only once its transaction is durable; a reader sees committed
//! transactions only, and never blocks the writer.

mod cells;
pub mod contract;
pub mod curves;
pub mod lease;
pub mod postgres;
pub mod sqlite;

pub use contract::{
    Backend, Bus, CancelChunk, MAX_BUS_MESSAGE, MAX_LISTED_FAILURES, StoreReader, StoreWriter, Submitted, WorkerSeen,
};
pub use lease::{
    CompleteWrite, Completed, EpochsWrite, Expired, Granted, HeartbeatWrite, LeaseOps, LeasePolicy, LeaseWrite,
    WorkerWrite,
};
pub use postgres::{PgReader, PgStore, PostgresBackend, TableCopy, copy_sqlite_to_postgres, is_postgres_url};
pub use sqlite::{DB_FILE, SCHEMA_VERSION, SqliteBackend, SqliteReader, SqliteStore};

/// The backend a store location names: a `postgres://` URL, or else a SQLite state folder.
pub fn backend_at(location: &str) -> std::sync::Arc<dyn Backend> {
    if is_postgres_url(location) {
        std::sync::Arc::new(PostgresBackend::new(location))
    } else {
        std::sync::Arc::new(SqliteBackend::new(location))
    }
}
