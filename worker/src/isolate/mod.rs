//! A process per trial attempt: the worker's [`ProcessTrainer`] starts each leased trial in a
//! child process (the same binary, a hidden subcommand that calls [`serve_trial`]) and talks to
//! it over its standard input and output; the child owns every tensor. A segfault, an abort, the
//! OOM killer or a CUDA context gone bad ends that child only, and the attempt is reported
//! failed with the reason; the worker and its other slots carry on.
//!
//! ```text
//! agent ── Trainer::run (a thread per trial) ── ProcessTrainer ─ stdin: lease, then signals ─> child
//!                                                      <─ stdout: progress, epochs, the end ──┘
//! ```
//!
//! The supervising thread is also the watchdog: a child that makes no progress (it checks the
//! agent's signal between batches) for the stall timeout, or grows past the RSS limit, is
//! killed. Frames are length-delimited protobuf messages.
//!
//! - [`protocol`]: the frames parent and child exchange over the pipes.
//! - [`parent`]: [`ProcessTrainer`], which starts a child per trial attempt and is its
//!   watchdog.
//! - [`child`]: [`serve_trial`], the child's side, and [`take_stdout`].
//! - `fault` (the `fault-injection` feature, for tests only): faults a test asks a trial
//!   process to suffer.

pub mod child;
#[cfg(feature = "fault-injection")]
mod fault;
pub mod parent;
pub mod protocol;

pub use child::{serve_trial, take_stdout};
#[cfg(feature = "fault-injection")]
pub use fault::FAULT_ENV;
pub use parent::{ChildCommand, Limits, ProcessTrainer, rss_bytes};
