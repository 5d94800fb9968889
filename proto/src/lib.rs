//! The convsweep protocol and the domain types every other crate shares.
//!
//! - [`pb`]: code generated from `proto/convsweep/v1/convsweep.proto`: the messages, and with
//!   the `grpc` feature the services `WorkerService` and `AdminService`.
//! - [`spec`]: [`TrialSpec`], its canonical form and the ids derived from it.
//! - [`state`]: the trial lifecycle ([`TrialState`], its counts, [`OutcomeKind`]).
//! - [`status`]: sweep status as JSON, one shape for the CLI and the ops port.
//! - [`results`]: the result rows the coordinator's store hands to the analysis.
//! - [`convert`]: validated conversions between wire messages and domain types.
//! - [`text`]: untrusted text bounded and cleaned before it is stored, logged or shown.
//! - `client` (with `grpc`): reaching a coordinator: URL, TLS, client certificate, token.

#[cfg(feature = "grpc")]
pub mod client;
pub mod convert;
pub mod files;
pub mod numbers;
pub mod rank;
pub mod results;
pub mod spec;
pub mod state;
pub mod status;
pub mod text;

#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb;

pub use convert::{Lease, Outcome};
pub use spec::{FieldError, SweepId, TrialId, TrialSpec};
pub use state::{OutcomeKind, TrialState};

/// The encoded descriptor set of `convsweep.v1`, for gRPC reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/convsweep_descriptor.bin"));

/// Version of the worker protocol. A worker whose version differs is refused at `Register`.
/// Version 2 carries a trial's state as the enum `pb::TrialState` instead of text.
pub const PROTOCOL_VERSION: u32 = 2;
