//! The convsweep coordinator.
//!
//! - [`sweep`]: sweep specs (TOML) and their expansion into trials.
//! - [`store`]: the SQLite state, the lease state machine and the read-only view of a state.
//! - [`coordinator`]: long-poll leasing, expiry and status over the store.
//! - `commit`: group commit of the worker RPCs' writes, off the async threads.
//! - [`service`]: the gRPC services (`WorkerService`, `AdminService`, health) and [`serve`].
//! - [`auth`]: the bearer-token check on the main port.
//! - [`limits`]: the time and concurrency limits of the main port.
//! - [`metrics`]: the Prometheus registry and the RPC metrics layer.
//! - [`ops`]: the ops port: gRPC health, `/healthz`, `/readyz`, `/metrics`.
//! - [`error`]: [`Error`] and its mapping onto gRPC statuses.
//! - [`clock`]: wall-clock milliseconds moved by tokio's clock, which tests pause.

pub mod auth;
pub mod clock;
mod commit;
pub mod coordinator;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod service;
pub mod store;
pub mod sweep;

pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{Error, Result};
pub use ops::serve_ops;
pub use service::{Limits, ServeConfig, TlsFiles, bind, serve, serve_with};
