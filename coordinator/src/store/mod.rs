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
//! - [`sqlite`]: the embedded backend (SQLite in WAL mode in a state folder).
//!
//! A write is acknowledged only once its transaction is durable; a reader sees committed
//! transactions only, and never blocks the writer.

pub mod contract;
pub mod lease;
pub mod sqlite;

pub use contract::{Backend, CancelChunk, MAX_LISTED_FAILURES, StoreReader, StoreWriter, Submitted, WorkerSeen};
pub use lease::{
    CompleteWrite, Completed, EpochsWrite, Expired, Granted, HeartbeatWrite, LeaseOps, LeasePolicy, LeaseWrite,
    WorkerWrite,
};
pub use sqlite::{DB_FILE, SCHEMA_VERSION, SqliteBackend, SqliteReader, SqliteStore};
