//! The convsweep coordinator: sweeps in, leases out, results kept.
//!
//! - [`sweep`]: sweep specs (TOML) and their expansion into trials.
//! - [`store`]: the state behind one contract a backend implements ([`store::Backend`], its
//!   writer and readers); [`store::lease`], the lease state machine and the typed worker
//!   writes; [`store::sqlite`], the embedded SQLite backend; [`store::postgres`], PostgreSQL
//!   (and `store copy`, a SQLite state moved into it).
//! - [`coordinator`]: [`Coordinator`]: long-poll leasing, expiry, events and status over the
//!   store, and the liveness rule.
//! - `commit`: group commit of the worker RPCs' writes, off the async threads.
//! - [`config`]: how a coordinator is served: [`ServerConfig`] and its validation, which
//!   names the [`Setting`] it refuses.
//! - [`server`]: [`server::run`] (both ports), the main port ([`server::grpc`]: the gRPC
//!   services behind token auth and TLS, with its limits) and the ops port
//!   ([`server::ops_port`]: health, readiness, metrics, the status page).
//! - [`metrics`]: the Prometheus registry and the RPC metrics layer.
//! - [`error`]: [`Error`] and its mapping onto gRPC statuses.
//! - [`clock`]: wall-clock milliseconds moved by tokio's clock, which tests pause.
//!
//! # One coordinator, or several on one store
//!
//! A coordinator is a stateless service over its store; everything it acknowledges is a
//! committed transaction of that store. Its in-memory parts are a cache of what the store holds
//! (the live-worker map), the long-poll of parked `Lease` calls and the `Watch` events.
//!
//! - **SQLite** (`--state-dir`, the default): one coordinator per state folder. Its single
//!   writer batches the worker RPCs' writes into one transaction (group commit, one fsync).
//!   A restart loses nothing; while it is down, workers retry.
//! - **PostgreSQL** (`--store URL`): any number of coordinators (replicas) on one database, each
//!   answering any RPC, each with its own group commit. A trial is leased to one worker at a time
//!   across replicas (the lease takes its rows `FOR UPDATE SKIP LOCKED` in the transaction that
//!   writes its token); every report is fenced by its lease token under a row lock, as on SQLite;
//!   every replica runs lease expiry, and `SKIP LOCKED` plus the state check keep a lease from
//!   expiring twice; deadlines are set and checked by the database's clock (each replica anchors
//!   its clock to it at start). What the database does not carry, the replicas tell each other
//!   over PostgreSQL's `LISTEN`/`NOTIFY` (`coordinator::replicas`): new work wakes `Lease` calls
//!   parked on other replicas, trial and epoch events reach `Watch` streams on every replica,
//!   and one replica (the holder of a session advisory lock) reports the state's gauges so that
//!   metrics sum over replicas. Workers and clients given several addresses move on to the next
//!   when a call finds one unreachable (`convsweep_proto::client::Failover`): a replica can die
//!   mid-sweep without losing a lease. A lost database connection is reconnected; a transaction
//!   it interrupted rolled back, and its RPCs were answered `UNAVAILABLE` (retried, never
//!   half-applied).

pub mod clock;
mod commit;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod metrics;
pub mod search;
pub mod server;
pub mod stopping;
pub mod store;
pub mod sweep;

pub use config::{Limits, ServeConfig, ServerConfig, TlsFiles};
pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{ConfigError, Error, Result, Setting, TlsFile};
pub use server::{bind, serve, serve_ops, serve_with};
