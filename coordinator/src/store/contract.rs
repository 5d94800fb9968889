//! The store's contract: what the coordinator asks of a backend, as plain blocking calls. A
//! [`Backend`] opens one [`StoreWriter`] (each method one durable transaction; the worker
//! writes batched through [`StoreWriter::batch`]) and any number of [`StoreReader`]s.

use convsweep_proto::results::Results;
use convsweep_proto::{SweepId, TrialId, TrialState, pb};

use crate::error::Result;
use crate::store::lease::{Expired, LeaseOps, LeasePolicy};

/// What a submission or an extension did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Trials in the sweep.
    pub trials: u32,
    /// Trials this submission created (an extension: trials it added to the sweep).
    pub new_trials: u32,
}

/// One transaction of a cancel ([`StoreWriter::cancel`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelChunk {
    /// Trials it cancelled.
    pub cancelled: u32,
    /// Where the next chunk starts (`after`), when there may be more.
    pub next: Option<String>,
}

/// Failed trials a sweep's status lists (the counts cover all of them).
pub const MAX_LISTED_FAILURES: u32 = 1_000;

/// A sweep's rate (trials per hour) and its time to go (s; -1 while unknown), from its
/// counts, its `total` trials and when its first attempt started. Cancelled trials are done
/// but were not run: the rate counts what workers finished.
pub(crate) fn rate(counts: &pb::StateCounts, total: u32, first_start: Option<i64>, now: i64) -> (f64, f64) {
    let finished = counts.succeeded + counts.failed;
    let remaining = total - counts.done();
    match first_start {
        Some(start) if finished > 0 && now > start => {
            let rate = f64::from(finished) / ((now - start) as f64 / 3_600_000.0);
            (rate, f64::from(remaining) / rate * 3600.0)
        }
        _ if remaining == 0 => (0.0, 0.0),
        _ => (0.0, -1.0),
    }
}

/// A registered worker and when it was last heard from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSeen {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Last heard from, in ms since the Unix epoch.
    pub last_seen_ms: i64,
}

/// The writes of a coordinator's state. One coordinator holds one writer; each method is one
/// transaction, durable when it returns `Ok`.
pub trait StoreWriter: Send + std::fmt::Debug {
    /// Runs `f` over the lease state machine in one transaction and commits it when `f`
    /// returns `Ok`; any `Err` (from `f` or the commit) means nothing of it was stored.
    fn batch(&mut self, now: i64, f: &mut (dyn FnMut(&mut dyn LeaseOps) -> Result<()> + Send)) -> Result<()>;

    /// Creates a sweep and its trials (given as id and canonical JSON). Submitting the same
    /// trial set again changes nothing; another trial set under the same name is refused.
    fn submit(&mut self, sweep: &SweepId, spec_toml: &str, trials: &[(TrialId, String)], now: i64)
    -> Result<Submitted>;

    /// Adds the trials of a grown spec to an existing sweep; its trials are untouched. Refuses
    /// (adding nothing) when the sweep would then hold more than `max_trials`.
    fn extend(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[(TrialId, String)],
        now: i64,
        max_trials: u64,
    ) -> Result<Submitted>;

    /// Cancels, in one transaction, the unfinished trials among `trial_ids` of `sweep`
    /// (refusing them all, cancelling none, when one is not in the sweep); or, when
    /// `trial_ids` is empty, the unfinished trials of `sweep` that come after `after` in trial
    /// id order, at most `limit` of them. Returns how many it cancelled and, when it stopped at
    /// `limit`, the id to pass as `after` for the rest.
    fn cancel(&mut self, sweep: &str, trial_ids: &[String], after: &str, limit: usize, now: i64)
    -> Result<CancelChunk>;

    /// Re-queues the failed and cancelled trials of `sweep` with a fresh set of attempts.
    fn resume(&mut self, sweep: &str) -> Result<u32>;

    /// Re-queues the trials of `sweep` a stopping rule stopped (every one, or those of
    /// `trial_ids`), to train to their full budget from their checkpoints: no rule stops them
    /// again.
    fn resume_stopped(&mut self, sweep: &str, trial_ids: &[String]) -> Result<u32>;

    /// Stores a stopping rule's decisions (a decision stored before is kept as it was) and marks
    /// each trial of `stops` with the rung its configuration was stopped at, unless it was
    /// marked before or resumed past a decision: a queued trial ends `stopped` at once, a held
    /// one is told STOP by its next heartbeat. Returns the trials that ended `stopped` here.
    fn record_decisions(
        &mut self,
        decisions: &[pb::ExportDecision],
        stops: &[(String, u32)],
        now: i64,
    ) -> Result<Vec<String>>;

    /// Records a worker and returns its id: a new one, or, for an `instance` registered
    /// before, that worker's (its row updated).
    fn register_worker(
        &mut self,
        name: &str,
        host: &str,
        devices: &[String],
        slots: u32,
        now: i64,
        instance: &str,
    ) -> Result<String>;

    /// Forgets workers last heard from before `seen_before` that hold no lease. Returns how
    /// many.
    fn prune_workers(&mut self, seen_before: i64) -> Result<usize>;

    /// Returns every lease whose deadline passed to the queue (or fails its trial after too
    /// many attempts).
    fn expire_leases(&mut self, now: i64) -> Result<Vec<Expired>>;

    /// After a restart: every active lease gets at least the lease timeout from `now`, so that
    /// the time the coordinator was away does not count against its workers. Returns how many.
    fn grant_restart_grace(&mut self, now: i64) -> Result<usize>;

    /// After a stall: every active lease's deadline moves `by_ms` later. Returns how many.
    fn extend_leases(&mut self, by_ms: i64) -> Result<usize>;

    /// The database's clock (ms since the Unix epoch) where coordinators share a state, so
    /// that they all set and check lease deadlines by one clock; `None` for a state of one
    /// coordinator (its own clock is the one).
    fn database_clock_ms(&mut self) -> Result<Option<i64>> {
        Ok(None)
    }
}

/// Read-only views of a coordinator's state: consistent snapshots that never wait for the
/// writer nor hold it up.
pub trait StoreReader: Send + std::fmt::Debug {
    /// The ids of every sweep, oldest first.
    fn sweep_ids(&self) -> Result<Vec<String>>;

    /// The first of `trial_ids` that is not part of `sweep` (`NotFound` when there is no
    /// sweep of that name).
    fn not_in_sweep(&self, sweep: &str, trial_ids: &[String]) -> Result<Option<String>>;

    /// Progress of one sweep (`NotFound` when there is none of that name).
    fn sweep_status(&self, sweep: &str, now: i64) -> Result<pb::SweepStatus>;

    /// Trials per sweep and state.
    fn state_counts(&self) -> Result<Vec<(String, TrialState, u32)>>;

    /// Every registered worker.
    fn workers(&self) -> Result<Vec<WorkerSeen>>;

    /// Workers heard from since `since_ms`.
    fn workers_seen_since(&self, since_ms: i64) -> Result<u32>;

    /// The trials workers hold, with their last epoch, in sweep order (every sweep's when
    /// `sweep` is empty).
    fn active_trials(&self, sweep: &str) -> Result<Vec<pb::ActiveTrial>>;

    /// Mean final test accuracy so far by sweep, kernel size and train mode (every sweep's
    /// when `sweep` is empty).
    fn accuracy_so_far(&self, sweep: &str) -> Result<Vec<pb::AccuracyCell>>;

    /// Each configuration's learning curve over its seeds (at most
    /// [`curves::MAX_CURVES`](super::curves::MAX_CURVES), in sweep and label order) and how
    /// many were left out (every sweep's when `sweep` is empty).
    fn config_curves(&self, sweep: &str) -> Result<(Vec<pb::ConfigCurve>, u32)>;

    /// Every result row of one sweep (`NotFound` when there is none of that name), or of
    /// every sweep, from one consistent snapshot.
    fn results(&self, sweep: Option<&str>) -> Result<Results>;

    /// The spec a sweep was submitted (or last extended) with (`NotFound` when there is no
    /// sweep of that name).
    fn sweep_spec(&self, sweep: &str) -> Result<String>;
}

/// Largest message a [`Bus`] carries, in bytes.
pub const MAX_BUS_MESSAGE: usize = 7_000;

/// Messages between the coordinators that share one state: new work, events for `Watch`, and
/// which of them reports the state's gauges. Each coordinator holds two (one that publishes,
/// one that receives); every message reaches every coordinator listening, its sender included.
pub trait Bus: Send {
    /// Sends each message (text of at most [`MAX_BUS_MESSAGE`] bytes).
    fn publish(&mut self, messages: &[String]) -> Result<()>;

    /// Waits up to `timeout` for messages and returns the ones that came (none after the
    /// timeout). Messages sent while the connection was down are lost: they are hints (wake-ups
    /// and events) that the state itself makes good.
    fn receive(&mut self, timeout: std::time::Duration) -> Result<Vec<String>>;

    /// Becomes, or stays, the one coordinator that reports the shared state's gauges (so that
    /// they sum correctly over coordinators); `true` while it is. The role passes on when its
    /// holder's connection ends.
    fn lead(&mut self) -> Result<bool>;
}

/// Where a coordinator's state lives: opens its writer and its readers.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The writer, creating or migrating the state when needed.
    fn open_writer(&self, policy: LeasePolicy) -> Result<Box<dyn StoreWriter>>;

    /// A reader of the state the writer opened (or of one a stopped coordinator left).
    fn open_reader(&self) -> Result<Box<dyn StoreReader>>;

    /// Where the state is, for logs.
    fn describe(&self) -> String;

    /// A connection to the other coordinators of a state several may share; `None` where the
    /// state is one coordinator's alone (SQLite).
    fn bus(&self) -> Result<Option<Box<dyn Bus>>> {
        Ok(None)
    }
}
