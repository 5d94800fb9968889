//! The lease state machine every backend keeps, and the typed worker writes that group commit
//! batches into one transaction.
//!
//! The transitions:
//!
//! ```text
//! from                               event                                 to
//! (none)                             submit, extend                        pending
//! pending, preempted                 lease                                 leased (attempt + 1)
//! leased                             epoch report                          running
//! leased, running                    complete: succeeded                   succeeded
//! leased, running                    complete: failed, not retryable       failed
//! leased, running                    complete: failed retryably; expiry    pending, or failed once
//!                                                                          out of attempts
//! leased, running                    complete: preempted                   preempted
//! pending, leased, running, preempted cancel                               cancelled
//! failed, cancelled                  resume                                pending (fresh attempts)
//! ```
//!
//! Fencing: every report names its lease token; only the trial's current token of an active
//! lease is accepted ([`Error::StaleLease`](crate::Error::StaleLease) otherwise). A completion
//! whose token already completed is acknowledged as a duplicate.
//!
//! Batching: a batch runs its writes in one transaction. The refusals of this state machine
//! (`InvalidArgument`, `NotFound`, `StaleLease`) are decided before a write changes anything
//! but its worker's last-seen time, so a refused write is answered alone and its batch goes
//! on. Any other error of one write rolls the batch back, and it runs again with each write
//! between [`LeaseOps::begin_write`] and [`LeaseOps::end_write`] (a savepoint): the failing
//! write is undone alone, the others commit. Only a failure of the transaction itself (its
//! savepoint or its commit) fails the whole batch, and then none of it is acknowledged.
//!
//! Slots: a worker is leased at most its registered slots less the leases it holds; a lease
//! that expires before its worker ever confirmed it (no heartbeat naming it, no report) ends
//! as `unheard` and does not count against the trial's attempts, so a worker that asks for
//! more than it runs, or never hears its answers, cannot fail a queued trial.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use convsweep_proto::{Outcome, TrialId, TrialSpec, TrialState, pb};

use crate::error::{Error, Result};

/// A random token with a prefix (`w-` worker ids, `l-` lease tokens).
pub(crate) fn new_token(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    let a = h.finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u64(a ^ n.rotate_left(17));
    format!("{prefix}{a:016x}{:08x}", h.finish() as u32)
}

/// A stored state name; anything else is corrupt data.
pub(crate) fn state_of(s: String) -> Result<TrialState> {
    s.parse()
        .map_err(|e: convsweep_proto::state::UnknownState| Error::Corrupt(format!("stored trial state: {e}")))
}

/// A stored spec; one that does not parse is corrupt data.
pub(crate) fn spec_of(trial_id: &str, json: &str) -> Result<TrialSpec> {
    TrialSpec::from_json(json).map_err(|e| Error::Corrupt(format!("stored spec of trial {trial_id}: {e}")))
}

/// What a heartbeat tells the holder of an active lease: go on, or stop at the epoch's end
/// when a stopping rule stopped its configuration (`stop_rung` set and not resumed past, -1).
pub(crate) fn active_directive(stop_rung: Option<i64>) -> pb::LeaseDirective {
    match stop_rung {
        Some(rung) if rung >= 0 => pb::LeaseDirective::Stop,
        _ => pb::LeaseDirective::Continue,
    }
}

/// The reason a `stopped` completion records (none for other outcomes); a `stopped` that no
/// stopping rule asked for is refused, naming the field.
pub(crate) fn stopped_reason(trial_id: &str, stop_rung: Option<i64>, outcome: &Outcome) -> Result<Option<String>> {
    let Outcome::Stopped { epochs } = outcome else {
        return Ok(None);
    };
    match stop_rung {
        Some(rung) if rung >= 0 => Ok(Some(format!(
            "stopped after epoch {epochs} by the sweep's stopping rule (its configuration was stopped at rung {rung})"
        ))),
        _ => Err(Error::InvalidArgument(convsweep_proto::FieldError::new(
            "outcome.stopped",
            format!("no stopping rule stopped trial {trial_id}; only a trial told STOP in a heartbeat ends stopped"),
        ))),
    }
}

/// Lease rules the store enforces.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A lease not renewed for this long expires.
    pub lease_timeout_ms: i64,
    /// A trial fails for good once this many attempts expired or failed retryably.
    pub max_attempts: u32,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            lease_timeout_ms: 60_000,
            max_attempts: 3,
        }
    }
}

/// A completion's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The same completion had already been recorded.
    pub duplicate: bool,
    /// The state the trial is in now.
    pub state: TrialState,
    /// The first sweep the trial belongs to (for events).
    pub sweep_id: String,
}

/// A lease that expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The trial.
    pub trial_id: TrialId,
    /// Its state now: pending again, or failed once out of attempts.
    pub state: TrialState,
    /// The first sweep it belongs to (for events).
    pub sweep_id: String,
}

/// What a lease call was granted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Granted {
    /// The trials leased.
    pub leases: Vec<pb::TrialLease>,
    /// The worker's free slots before the call (its registered slots less the leases it
    /// held): the most it could be granted.
    pub free_slots: u32,
}

/// The worker writes, each inside the transaction that
/// [`StoreWriter::batch`](super::StoreWriter::batch) opened, with the clock and policy of that
/// batch. A write refused with `InvalidArgument`, `NotFound` or `StaleLease` has changed
/// nothing but its worker's last-seen time (see the module's "Batching").
pub trait LeaseOps {
    /// Marks where one write begins: [`LeaseOps::end_write`] keeps or undoes what follows.
    fn begin_write(&mut self) -> Result<()>;

    /// Ends the write begun last: keeps its changes, or undoes them (and only them). `Err`
    /// when the transaction can no longer be used.
    fn end_write(&mut self, keep: bool) -> Result<()>;

    /// Leases up to `max` leasable trials (pending or preempted, oldest first) to a worker,
    /// and never more than its free slots. With nothing to lease it writes nothing (the
    /// worker's heartbeats keep it seen).
    fn lease(&mut self, worker_id: &str, max: u32) -> Result<Granted>;

    /// Renews each lease the worker still holds; says what to do about each.
    fn heartbeat(&mut self, worker_id: &str, leases: &[pb::LeaseRef]) -> Result<Vec<pb::LeaseStatus>>;

    /// Stores the epoch metrics of an active lease (an upsert per epoch) and marks the trial
    /// running.
    fn report_epochs(
        &mut self,
        worker_id: &str,
        trial_id: &str,
        token: &str,
        epochs: &[pb::EpochMetrics],
    ) -> Result<()>;

    /// Records how an attempt ended. The same token completing again is a duplicate, not an
    /// error.
    fn complete(&mut self, worker_id: &str, trial_id: &str, token: &str, outcome: &Outcome) -> Result<Completed>;
}

/// One RPC's write, committed with others, answered with its own output type.
pub trait WorkerWrite: Send + 'static {
    /// What the write answers once its transaction committed.
    type Output: Send + 'static;

    /// Applies the write inside an open transaction.
    fn apply(&self, ops: &mut dyn LeaseOps) -> Result<Self::Output>;
}

/// `Lease`: up to `max` trials.
#[derive(Debug, Clone)]
pub struct LeaseWrite {
    /// The worker.
    pub worker_id: String,
    /// Most trials to lease.
    pub max: u32,
}

impl WorkerWrite for LeaseWrite {
    type Output = Granted;

    fn apply(&self, ops: &mut dyn LeaseOps) -> Result<Self::Output> {
        ops.lease(&self.worker_id, self.max)
    }
}

/// `Heartbeat`: renew these leases.
#[derive(Debug, Clone)]
pub struct HeartbeatWrite {
    /// The worker.
    pub worker_id: String,
    /// The leases it holds.
    pub leases: Vec<pb::LeaseRef>,
}

impl WorkerWrite for HeartbeatWrite {
    type Output = Vec<pb::LeaseStatus>;

    fn apply(&self, ops: &mut dyn LeaseOps) -> Result<Self::Output> {
        ops.heartbeat(&self.worker_id, &self.leases)
    }
}

/// `ReportEpochs`.
#[derive(Debug, Clone)]
pub struct EpochsWrite {
    /// The worker.
    pub worker_id: String,
    /// The trial.
    pub trial_id: String,
    /// Its lease token.
    pub token: String,
    /// The epochs (validated at the edge; their numbers against the trial's epochs by the
    /// store).
    pub epochs: Vec<pb::EpochMetrics>,
}

impl WorkerWrite for EpochsWrite {
    type Output = ();

    fn apply(&self, ops: &mut dyn LeaseOps) -> Result<()> {
        ops.report_epochs(&self.worker_id, &self.trial_id, &self.token, &self.epochs)
    }
}

/// `Complete`.
#[derive(Debug, Clone)]
pub struct CompleteWrite {
    /// The worker.
    pub worker_id: String,
    /// The trial.
    pub trial_id: String,
    /// Its lease token.
    pub token: String,
    /// How the attempt ended (validated at the edge).
    pub outcome: Outcome,
}

impl WorkerWrite for CompleteWrite {
    type Output = Completed;

    fn apply(&self, ops: &mut dyn LeaseOps) -> Result<Completed> {
        ops.complete(&self.worker_id, &self.trial_id, &self.token, &self.outcome)
    }
}
