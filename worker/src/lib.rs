//! The convsweep worker: the only crate that links libtorch.
//!
//! - [`agent`]: the async loop that registers, leases, heartbeats and reports over gRPC.
//! - [`control`]: the agent/trainer contract: signals, events, how a run ends, the
//!   [`Trainer`](control::Trainer) trait and the panic guard (no libtorch).
//! - [`trainer`]: the libtorch trainer, run on a thread per trial that owns all of its tensors,
//!   its training loop, optimiser, schedule and checkpoints.
//! - [`model`]: the paper's models built from a spec (init schemes, LC-blocks, freezing).
//! - [`data`]: datasets, the per-worker cache and the on-device batch pipeline.
//! - [`isolate`]: a process per trial attempt: the pipe protocol, the parent with its
//!   watchdog (stall timeout, memory limit), the child's side, and (feature `fault-injection`,
//!   test builds only) faults a test asks a trial process to suffer.
//! - [`eval`]: robustness (FGSM, PGD, corruptions) and filter statistics after training.
//! - [`device`]: choosing the device, the CPU allocator policy, peak memory (CUDA allocator or
//!   process RSS).
//! - [`rng`]: the fixed PRNG behind data order and augmentation.
//! - [`readback`]: the host's reads of device values, counted.
//!
//! Benchmarks of the training step and of the decoding pipeline live in the `convsweep-bench`
//! crate, over this crate's public API.

pub mod agent;
pub mod control;
pub mod data;
pub mod device;
pub mod eval;
pub mod isolate;
pub mod model;
pub mod readback;
pub mod rng;
pub mod trainer;

pub use agent::{WorkerConfig, run};
pub use control::Trainer;
pub use device::{DeviceError, pick_device};
pub use trainer::TchTrainer;
