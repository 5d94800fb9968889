//! Training a leased trial with libtorch. A trainer runs on a thread of its own and owns every
//! tensor of the trial; it talks to the async agent only through a
//! [`TrialControl`](crate::control::TrialControl): epoch metrics go out, stop signals come in.

pub mod checkpoint;
pub mod draws;
pub mod loss_scale;
pub mod mix;
pub mod optim;
pub mod schedule;
mod train;

use convsweep_proto::{Lease, Outcome};
use tch::Device;

use crate::control::{TrainEnd, TrainError, Trainer, TrialControl};
use crate::data::DataCache;
use crate::model::Compute;

pub use checkpoint::{Checkpoint, CheckpointStore};
pub use train::{TrialRun, evaluate, optimizer, train_step, train_trial};

/// The libtorch trainer: CUDA when present (or as configured), else the CPU.
#[derive(Debug)]
pub struct TchTrainer {
    compute: Compute,
    data: DataCache,
    checkpoints: Option<checkpoint::CheckpointStore>,
}

impl TchTrainer {
    /// A trainer on `compute` (a [`Device`] or a [`Compute`]), checkpointing into `checkpoints`
    /// when given.
    pub fn new(compute: impl Into<Compute>, checkpoints: Option<checkpoint::CheckpointStore>) -> TchTrainer {
        TchTrainer {
            compute: compute.into(),
            data: DataCache::default(),
            checkpoints,
        }
    }

    /// The same trainer with image folders decoded on `threads` threads (`None`: every core).
    pub fn with_decode_threads(mut self, threads: Option<usize>) -> TchTrainer {
        self.data = DataCache::new(threads);
        self
    }

    /// The device it trains on.
    pub fn device(&self) -> Device {
        self.compute.device
    }
}

impl Trainer for TchTrainer {
    fn devices(&self) -> Vec<String> {
        vec![crate::device::describe_device(self.device())]
    }

    fn run(&self, lease: &Lease, ctl: &TrialControl) -> TrainEnd {
        let data = match self.data.get(&lease.spec.dataset, self.device()) {
            Ok(d) => d,
            Err(e) => return TrainEnd::Finished(TrainError::Data(e.to_string()).into_outcome()),
        };
        let span = tracing::info_span!("trial", trial = %lease.trial_id, attempt = lease.attempt);
        let _entered = span.enter();
        tracing::info!(spec = %lease.spec.label(), device = %crate::device::describe_device(self.device()), "training");
        let checkpoints = self.checkpoints.as_ref().map(|c| (c, lease.trial_id.as_str()));
        let end = match train_trial(&lease.spec, self.compute, &data, ctl, checkpoints) {
            Ok(result) => TrainEnd::Finished(Outcome::Succeeded(result)),
            Err(TrainError::Stopped) => TrainEnd::Stopped,
            Err(e) => TrainEnd::Finished(e.into_outcome()),
        };
        crate::device::release_free_memory();
        end
    }

    fn ended(&self, lease: &Lease) {
        remove_checkpoints(self.checkpoints.as_ref(), lease);
    }
}

/// Deletes the checkpoints of a trial that is done for good.
pub fn remove_checkpoints(checkpoints: Option<&CheckpointStore>, lease: &Lease) {
    if let Some(store) = checkpoints {
        store.remove(lease.trial_id.as_str());
    }
}
