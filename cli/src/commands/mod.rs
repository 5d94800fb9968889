//! One module per subcommand: its `#[derive(clap::Args)]` struct and the function that runs
//! it, taking the struct as parsed.
//!
//! - [`run`]: `run`, a sweep on this machine (over [`crate::local`]).
//! - [`coordinator`]: `coordinator`, the service.
//! - [`worker`]: `worker` and the hidden `trial-process`.
//! - [`admin`]: `submit`, `extend`, `cancel`, `resume`, `status`.
//! - [`results`]: `export` and `report`.
//! - [`watch`]: `watch`, the live view (its stream also drives `run`'s progress bar).
//! - [`slurm`]: `slurm`, the array job of workers.
//! - [`store`]: `store copy`, a state moved from SQLite into PostgreSQL.
//! - [`certs`]: `certs`, a private CA and TLS certificates.
//! - [`info`]: `model-info`, the size and cost of models.

pub mod admin;
pub mod certs;
pub mod coordinator;
pub mod info;
pub mod results;
pub mod run;
pub mod slurm;
pub mod store;
pub mod watch;
pub mod worker;

/// The error of a command that needs libtorch in a build without it.
#[cfg(not(feature = "worker"))]
pub(crate) fn without_worker(command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "this convsweep was built without the `worker` feature (a coordinator-only build): it serves, submits, \
         exports and reports; `{command}` needs a build with libtorch"
    )
}

/// The error of a command that needs Polars in a build without it.
#[cfg(not(feature = "analysis"))]
pub(crate) fn without_analysis(command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "this convsweep was built without the `analysis` feature (a worker-only build); `{command}` needs a full \
         build"
    )
}
