//! The convsweep coordinator.
//!
//! - [`sweep`]: sweep specs (TOML) and their expansion into trials.
//! - [`store`]: the SQLite state and the lease state machine.
//! - [`coordinator`]: long-poll leasing, expiry and status over the store.
//! - [`service`]: the gRPC services (`WorkerService`, `AdminService`, health) and [`serve`].
//! - [`error`]: [`Error`] and its mapping onto gRPC statuses.

pub mod clock;
pub mod coordinator;
pub mod error;
pub mod service;
pub mod store;
pub mod sweep;

pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{Error, Result};
pub use service::{bind, serve};
