//! The convsweep coordinator: sweeps in, leases out, results kept.
//!
//! - [`sweep`]: sweep specs (TOML) and their expansion into trials.
//! - [`store`]: the state behind one contract a backend implements ([`store::Backend`], its
//!   writer and readers); [`store::lease`], the lease state machine and the typed worker
//!   writes; [`store::sqlite`], the embedded SQLite backend.
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

pub mod clock;
mod commit;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod metrics;
pub mod server;
pub mod store;
pub mod sweep;

pub use config::{Limits, ServeConfig, ServerConfig, TlsFiles};
pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{ConfigError, Error, Result, Setting, TlsFile};
pub use server::{bind, serve, serve_ops, serve_with};
