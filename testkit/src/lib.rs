//! Helpers shared by convsweep's test suites (the coordinator's, the worker's, the CLI's) and
//! its benchmarks; a dev-dependency only, never part of a binary users install.
//!
//! - [`browser`]: headless Chromium for the tests that look at a page, and a guard that
//!   stops a child process when a test ends.
//! - [`listen`]: loopback listeners that a child process inherits (`--listen-fd`), so that a
//!   port is bound once and held for as long as a test needs it, restarts of the child
//!   included: no bind, release and bind again that another process could race.
//! - [`postgres`]: a real PostgreSQL server in a temporary folder, stopped with the test
//!   process, for the store's tests on its PostgreSQL backend.
//! - [`scripted`]: a worker scripted in-process against a [`Coordinator`]
//!   (register, lease, report, complete), and the epochs and results it reports.
//!
//! [`Coordinator`]: convsweep_coordinator::Coordinator

pub mod browser;
pub mod listen;
pub mod postgres;
pub mod scripted;
