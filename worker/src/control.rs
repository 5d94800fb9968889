//! The contract between the async agent and a trainer: what the agent asks of a running trial
//! ([`Signal`]), what the trainer sends back ([`TrialEvent`]), how a run ends ([`TrainEnd`],
//! [`TrainError`]), the [`Trainer`] trait and the panic guard around it. No libtorch here: the
//! agent side knows messages only.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use convsweep_proto::{Lease, Outcome, pb};
use tokio::sync::mpsc;

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
    /// A stopping rule stopped the trial: finish the epoch under way, checkpoint, and report
    /// the trial stopped with its epochs so far (a censored result, resumable later).
    Halt = 3,
}

impl Signal {
    /// The signal stored or sent as `n` (its discriminant); anything unknown asks for a
    /// preemption, the stop that keeps the most.
    pub fn from_number(n: u32) -> Signal {
        match n {
            0 => Signal::Run,
            1 => Signal::Stop,
            3 => Signal::Halt,
            _ => Signal::Preempt,
        }
    }
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
    /// How often the trainer looked at the signal: it does so between batches and between
    /// evaluation passes, so a count that stops growing means a trainer that is stuck.
    progress: Arc<AtomicU64>,
    /// When the control was made (the agent makes it as the lease arrives; a trial process's
    /// is dated back to its supervisor's) ...
    started: Instant,
    /// ... the same on the wall clock, which a trial process shares with its supervisor ...
    started_at: SystemTime,
    /// ... and how long after that the trainer first looked at the signal, before its first
    /// batch: the trial's start-up (a process, a dataset, a model).
    first_step: Arc<OnceLock<Duration>>,
}

impl TrialControl {
    /// A control and the agent's ends: the signal to set and the events to read.
    pub fn new() -> (TrialControl, Arc<AtomicU8>, mpsc::UnboundedReceiver<TrialEvent>) {
        TrialControl::since(SystemTime::now())
    }

    /// [`TrialControl::new`], its start-up counted from `started_at` (a supervisor's lease,
    /// before this process existed) when that is in the past.
    pub fn since(started_at: SystemTime) -> (TrialControl, Arc<AtomicU8>, mpsc::UnboundedReceiver<TrialEvent>) {
        let age = SystemTime::now().duration_since(started_at).unwrap_or_default();
        let now = Instant::now();
        let started = now.checked_sub(age).unwrap_or(now);
        let signal = Arc::new(AtomicU8::new(Signal::Run as u8));
        let (tx, rx) = mpsc::unbounded_channel();
        (
            TrialControl {
                signal: signal.clone(),
                events: tx,
                progress: Arc::new(AtomicU64::new(0)),
                started,
                started_at,
                first_step: Arc::new(OnceLock::new()),
            },
            signal,
            rx,
        )
    }

    /// The agent's current request. Trainers call it between batches: each call counts as
    /// progress (see [`TrialControl::progress`]).
    pub fn signal(&self) -> Signal {
        if self.progress.fetch_add(1, Ordering::Relaxed) == 0 {
            self.stepped();
        }
        self.peek_signal()
    }

    /// Records that the trainer has reached its first step, when that is not seen through
    /// [`TrialControl::signal`] (a supervisor told so by its child). Only the first call counts.
    pub fn stepped(&self) {
        let _ = self.first_step.set(self.started.elapsed());
    }

    /// Where the time from this control's making to the trainer's first step will be (unset
    /// until it steps): the agent keeps it to log beside the outcome.
    pub fn first_step(&self) -> Arc<OnceLock<Duration>> {
        self.first_step.clone()
    }

    /// When the control was made, on the wall clock (what a trial process dates its own from).
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// The agent's current request, without counting it as progress (for supervisors).
    pub fn peek_signal(&self) -> Signal {
        Signal::from_number(u32::from(self.signal.load(Ordering::Relaxed)))
    }

    /// How many times the trainer has checked the signal so far: the watchdog's sign of life.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Sends one epoch's metrics (dropped silently when the agent is gone).
    pub fn epoch(&self, metrics: pb::EpochMetrics) {
        let _ = self.events.send(TrialEvent::Epoch(metrics));
    }
}

/// How a trainer run ended.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per trial run: its size does not matter
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
    /// The trial of `lease` is done for good (it succeeded, failed for good or was
    /// cancelled): what was kept for another attempt of it (checkpoints) can go. Blocking file
    /// I/O: called off the async runtime.
    fn ended(&self, lease: &Lease) {
        let _ = lease;
    }
}

/// The text a panic carried (`panic!` with a message or a format), or "unknown panic".
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

/// A panic caught by [`catch_panic`], with the text it carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Runs `f`, turning a panic into `Err` with its message, so that a failing trial or
/// measurement never takes the worker down.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| Panicked(panic_message(p.as_ref()).to_owned()))
}

/// Runs `trainer` on `lease`, turning a panic into a failed trial rather than a dead worker.
pub fn run_guarded(trainer: &dyn Trainer, lease: &Lease, ctl: &TrialControl) -> TrainEnd {
    catch_panic(|| trainer.run(lease, ctl))
        .unwrap_or_else(|p| TrainEnd::Finished(TrainError::from_panic_message(&p.0).into_outcome()))
}

/// Why training stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite: the same spec would diverge again.
    #[error("non-finite training loss ({loss}) in epoch {epoch}")]
    NonFinite {
        /// Epoch (1-based).
        epoch: u32,
        /// The loss.
        loss: f64,
    },
    /// The device ran out of memory: the same spec needs a bigger device.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The dataset could not be loaded.
    #[error("dataset: {0}")]
    Data(String),
    /// This worker's device cannot run the spec (e.g. fp16 on a CPU); another worker's may.
    #[error("{0}")]
    Device(String),
    /// Stopped on the agent's request (cancel or lost lease).
    #[error("stopped")]
    Stopped,
    /// Stopped by the worker's shutdown.
    #[error("preempted by worker shutdown after epoch {0}")]
    Preempted(u32),
    /// Stopped by a stopping rule (the coordinator's STOP) after this many epochs.
    #[error("stopped by the sweep's stopping rule after epoch {0}")]
    Halted(u32),
    /// libtorch or the trainer failed otherwise.
    #[error("{0}")]
    Internal(String),
}

/// Longest reason kept from a panic message.
const REASON_CHARS: usize = 600;

/// The first line of a panic message, without the `unwrap` wrapper around a libtorch error:
/// tch's `Torch("...")` carries the C++ backtrace with escaped newlines, which would otherwise
/// make the whole backtrace one "line".
fn concise(msg: &str) -> String {
    let mut m = msg.trim();
    if let Some(rest) = m.strip_prefix("called `Result::unwrap()` on an `Err` value: ") {
        m = rest;
    }
    if let Some(rest) = m.strip_prefix("Torch(\"") {
        m = rest;
    }
    let line = m.split("\\n").next().unwrap_or(m);
    let line = line.lines().next().unwrap_or(line);
    let line = line.strip_suffix("\")").unwrap_or(line).trim_end();
    if line.chars().count() > REASON_CHARS {
        format!("{}...", line.chars().take(REASON_CHARS).collect::<String>())
    } else {
        line.to_owned()
    }
}

impl TrainError {
    /// Classifies a panic message from libtorch or the trainer.
    pub fn from_panic_message(msg: &str) -> TrainError {
        let first_line = concise(msg);
        if msg.contains("out of memory") || msg.contains("CUDA_ERROR_OUT_OF_MEMORY") {
            TrainError::OutOfMemory(first_line)
        } else {
            TrainError::Internal(format!("trainer panicked: {first_line}"))
        }
    }

    /// Whether another attempt of the same spec could succeed.
    pub fn retryable(&self) -> bool {
        match self {
            TrainError::NonFinite { .. } | TrainError::OutOfMemory(_) | TrainError::Halted(_) => false,
            TrainError::Data(_)
            | TrainError::Device(_)
            | TrainError::Internal(_)
            | TrainError::Stopped
            | TrainError::Preempted(_) => true,
        }
    }

    /// The outcome to report.
    pub fn into_outcome(self) -> Outcome {
        match self {
            TrainError::Preempted(_) => Outcome::Preempted {
                reason: self.to_string(),
            },
            TrainError::Halted(epochs) => Outcome::Stopped { epochs },
            other => Outcome::Failed {
                retryable: other.retryable(),
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_step_is_timed_once_from_the_making_of_the_control() {
        let (ctl, _signal, _events) = TrialControl::new();
        let first = ctl.first_step();
        assert!(first.get().is_none(), "no step yet");
        std::thread::sleep(Duration::from_millis(20));
        ctl.signal();
        let took = *first.get().expect("timed at the first signal");
        assert!(took >= Duration::from_millis(20), "{took:?}");
        ctl.signal();
        ctl.stepped();
        assert_eq!(*first.get().unwrap(), took, "only the first step counts");
    }
}
