//! The convsweep worker: the only crate that links libtorch.
//!
//! - [`agent`]: the async loop that registers, leases, heartbeats and reports over gRPC.
//! - [`trainer`]: the [`Trainer`](trainer::Trainer) trait and the libtorch trainer, run on a
//!   thread per trial that owns all of its tensors.
//! - [`model`]: the paper's models built from a spec (init schemes, LC-blocks, freezing).
//! - [`data`]: datasets, the per-worker cache and the on-device batch pipeline.
//! - [`eval`]: robustness (FGSM, PGD, corruptions) and filter statistics after training.
//! - [`device`]: peak memory (CUDA allocator or process RSS).
//! - [`rng`]: the fixed PRNG behind data order and augmentation.
//! - [`bench`]: training-throughput benchmark of the reference configurations.

pub mod agent;
pub mod bench;
pub mod data;
pub mod device;
pub mod eval;
pub mod model;
pub mod rng;
pub mod trainer;

pub use agent::{WorkerConfig, run};
pub use trainer::{TchTrainer, Trainer};

/// Picks the training device: `auto` is CUDA device 0 when libtorch sees one, else the CPU.
pub fn pick_device(choice: &str) -> Result<tch::Device, String> {
    match choice {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        cuda if cuda.starts_with("cuda") => {
            let index = match cuda.strip_prefix("cuda:") {
                None if cuda == "cuda" => 0,
                Some(i) => i
                    .parse::<usize>()
                    .map_err(|_| format!("bad CUDA device {cuda:?}: use cuda or cuda:N"))?,
                None => return Err(format!("bad device {cuda:?}: use auto, cpu, cuda or cuda:N")),
            };
            let count = tch::Cuda::device_count();
            if (index as i64) < count {
                Ok(tch::Device::Cuda(index))
            } else {
                Err(format!("{cuda} asked for, but libtorch sees {count} CUDA device(s)"))
            }
        }
        other => Err(format!("unknown device {other:?}: use auto, cpu, cuda or cuda:N")),
    }
}
