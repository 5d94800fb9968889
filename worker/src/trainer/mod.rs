//! Training a leased trial. A trainer runs on a thread of its own and owns every tensor of
//! the trial; it talks to the async agent only through a [`TrialControl`]: epoch metrics go
//! out, stop signals come in.

pub mod checkpoint;
pub mod schedule;
pub mod sgd;
mod train;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use convsweep_proto::{Lease, Outcome, pb};
use tch::Device;
use tokio::sync::mpsc;

use crate::data::DataCache;

pub use checkpoint::{Checkpoint, CheckpointStore};
pub use train::{TrainError, TrialRun, evaluate, optimizer, train_step, train_trial};

/// What the agent asks of a running trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Signal {
    /// Keep training.
    Run = 0,
    /// Stop and report nothing (cancelled, or the lease was lost).
    Stop = 1,
    /// Stop, keep what can be kept, and report the trial preempted (worker shutdown).
    Preempt = 2,
}

/// Messages from a trainer thread to the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialEvent {
    /// One finished epoch.
    Epoch(pb::EpochMetrics),
}

/// The trainer's end of the link to the agent.
#[derive(Debug, Clone)]
pub struct TrialControl {
    signal: Arc<AtomicU8>,
    events: mpsc::UnboundedSender<TrialEvent>,
}

impl TrialControl {
    /// A control and the agent's ends: the signal to set and the events to read.
    pub fn new() -> (TrialControl, Arc<AtomicU8>, mpsc::UnboundedReceiver<TrialEvent>) {
        let signal = Arc::new(AtomicU8::new(Signal::Run as u8));
        let (tx, rx) = mpsc::unbounded_channel();
        (
            TrialControl {
                signal: signal.clone(),
                events: tx,
            },
            signal,
            rx,
        )
    }

    /// The agent's current request.
    pub fn signal(&self) -> Signal {
        match self.signal.load(Ordering::Relaxed) {
            0 => Signal::Run,
            1 => Signal::Stop,
            _ => Signal::Preempt,
        }
    }

    /// Sends one epoch's metrics (dropped silently when the agent is gone).
    pub fn epoch(&self, metrics: pb::EpochMetrics) {
        let _ = self.events.send(TrialEvent::Epoch(metrics));
    }
}

/// How a trainer run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEnd {
    /// Report this outcome.
    Finished(Outcome),
    /// Stopped on request; report nothing.
    Stopped,
}

/// Something that trains leased trials. Called on a dedicated thread per trial.
pub trait Trainer: Send + Sync + 'static {
    /// The devices trials run on, for `Register` and logs.
    fn devices(&self) -> Vec<String>;
    /// Trains one trial to its end.
    fn run(&self, lease: &Lease, ctl: &TrialControl) -> TrainEnd;
    /// The coordinator acknowledged `outcome` for `lease`: state kept for a retry (checkpoints)
    /// can go when the trial will not run again.
    fn acknowledged(&self, lease: &Lease, outcome: &Outcome) {
        let _ = (lease, outcome);
    }
}

/// Runs `trainer` on `lease`, turning a panic into a failed trial rather than a dead worker.
pub fn run_guarded(trainer: &dyn Trainer, lease: &Lease, ctl: &TrialControl) -> TrainEnd {
    match std::panic::catch_unwind(AssertUnwindSafe(|| trainer.run(lease, ctl))) {
        Ok(end) => end,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            TrainEnd::Finished(TrainError::from_panic_message(msg).into_outcome())
        }
    }
}

/// The libtorch trainer: CUDA when present (or as configured), else the CPU.
#[derive(Debug)]
pub struct TchTrainer {
    device: Device,
    data: DataCache,
    checkpoints: Option<checkpoint::CheckpointStore>,
}

impl TchTrainer {
    /// A trainer on `device`, checkpointing into `checkpoints` when given.
    pub fn new(device: Device, checkpoints: Option<checkpoint::CheckpointStore>) -> TchTrainer {
        TchTrainer {
            device,
            data: DataCache::default(),
            checkpoints,
        }
    }

    /// The device it trains on.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// Names a device for people: `cuda:0` or `cpu (4 threads)`.
pub fn describe_device(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}

impl Trainer for TchTrainer {
    fn devices(&self) -> Vec<String> {
        vec![describe_device(self.device)]
    }

    fn run(&self, lease: &Lease, ctl: &TrialControl) -> TrainEnd {
        let data = match self.data.get(&lease.spec.dataset, self.device) {
            Ok(d) => d,
            Err(e) => return TrainEnd::Finished(TrainError::Data(e.to_string()).into_outcome()),
        };
        let span = tracing::info_span!("trial", trial = %lease.trial_id, attempt = lease.attempt);
        let _entered = span.enter();
        tracing::info!(spec = %lease.spec.label(), device = %describe_device(self.device), "training");
        let checkpoints = self.checkpoints.as_ref().map(|c| (c, lease.trial_id.as_str()));
        let end = match train_trial(&lease.spec, self.device, &data, ctl, checkpoints) {
            Ok(result) => TrainEnd::Finished(Outcome::Succeeded(result)),
            Err(TrainError::Stopped) => TrainEnd::Stopped,
            Err(e) => TrainEnd::Finished(e.into_outcome()),
        };
        crate::device::release_free_memory();
        end
    }

    fn acknowledged(&self, lease: &Lease, outcome: &Outcome) {
        let done = match outcome {
            Outcome::Succeeded(_) | Outcome::Failed { retryable: false, .. } => true,
            Outcome::Failed { retryable: true, .. } | Outcome::Preempted { .. } => false,
        };
        if done && let Some(store) = &self.checkpoints {
            store.remove(lease.trial_id.as_str());
        }
    }
}
