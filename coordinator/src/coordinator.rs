//! The coordinator: long-poll leasing, lease expiry and status over the store.
//!
//! - The worker RPCs' writes (lease, heartbeat, epochs, completion) go through group commit
//!   ([`crate::commit`]): off the async threads, many RPCs per transaction and fsync, each
//!   answered once its transaction is durable. The same methods without `_batched` write at
//!   once in a transaction of their own (tests drive the state machine with them).
//! - Status, snapshots and metrics read through a second, read-only connection: they never
//!   wait for the writer, nor it for them (WAL).
//! - A waiting `Lease` is woken only when there may be work for it, one waiter per new trial.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use convsweep_proto::{FieldError, Outcome, PROTOCOL_VERSION, SweepId, TrialState, pb};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::commit::{GroupCommit, lock};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Completed, LeasePolicy, Store, Submitted, Write, Written};
use crate::sweep::{DEFAULT_MAX_TRIALS_PER_SWEEP, SweepSpec};

/// Runtime settings of a coordinator. Tests build it directly.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Folder of the SQLite state (created when missing).
    pub state_dir: PathBuf,
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// A lease not renewed for this long expires (several heartbeat intervals).
    pub lease_timeout: Duration,
    /// Attempts that expire or fail retryably before a trial fails for good.
    pub max_attempts: u32,
    /// Longest a `Lease` call waits for work.
    pub max_lease_wait: Duration,
    /// How often expired leases are looked for.
    pub expiry_interval: Duration,
    /// How often a `Watch` stream gets a fresh snapshot.
    pub watch_interval: Duration,
    /// Trials a sweep may expand to (grid times seeds); a larger spec is refused before it is
    /// expanded.
    pub max_trials_per_sweep: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            state_dir: PathBuf::from("runs/coordinator"),
            heartbeat_interval: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(60),
            max_attempts: 3,
            max_lease_wait: Duration::from_secs(20),
            expiry_interval: Duration::from_secs(1),
            watch_interval: Duration::from_secs(1),
            max_trials_per_sweep: DEFAULT_MAX_TRIALS_PER_SWEEP,
        }
    }
}

/// Counts a waiting `Lease` call for as long as it lives (a cancelled call included).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The coordinator's shared state; the gRPC services are thin wrappers around it.
#[derive(Debug)]
pub struct Coordinator {
    store: Arc<Mutex<Store>>,
    reader: Mutex<Store>,
    commits: Arc<GroupCommit>,
    config: CoordinatorConfig,
    clock: Clock,
    work_available: Notify,
    /// `Lease` calls waiting for work now.
    waiting: AtomicUsize,
    drain: AtomicBool,
    metrics: Arc<Metrics>,
    expiry_running: AtomicBool,
    events: tokio::sync::broadcast::Sender<pb::WatchEvent>,
    /// Workers heard from lately, by id (for "worker lost" events).
    alive: Mutex<std::collections::BTreeMap<String, String>>,
}

impl Coordinator {
    /// Opens the state folder (recovering whatever it holds) and returns a coordinator.
    pub fn open(config: CoordinatorConfig) -> Result<Arc<Coordinator>> {
        let policy = LeasePolicy {
            lease_timeout_ms: config.lease_timeout.as_millis() as i64,
            max_attempts: config.max_attempts.max(1),
        };
        let mut store = Store::open(&config.state_dir, policy)?;
        let clock = Clock::default();
        let held = store.grant_restart_grace(clock.now_ms())?;
        let reader = Store::open_reader(&config.state_dir, policy)?;
        info!(state_dir = %config.state_dir.display(), active_leases = held, "coordinator state opened");
        let store = Arc::new(Mutex::new(store));
        let metrics = Arc::new(Metrics::new());
        Ok(Arc::new(Coordinator {
            commits: GroupCommit::new(store.clone(), clock.clone(), metrics.clone()),
            store,
            reader: Mutex::new(reader),
            config,
            clock,
            work_available: Notify::new(),
            waiting: AtomicUsize::new(0),
            drain: AtomicBool::new(false),
            metrics,
            expiry_running: AtomicBool::new(false),
            events: tokio::sync::broadcast::channel(4096).0,
            alive: Mutex::new(Default::default()),
        }))
    }

    /// Live events (trial state changes, epochs, workers); a subscriber that falls behind
    /// skips ahead (the next snapshot catches it up).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<pb::WatchEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: pb::watch_event::Event) {
        // No subscriber is not an error.
        let _ = self.events.send(pb::WatchEvent {
            time_ms: self.clock.now_ms(),
            event: Some(event),
        });
    }

    fn trial_changed(
        &self,
        sweep_id: String,
        trial_id: &str,
        state: TrialState,
        attempt: u32,
        worker: &str,
        reason: &str,
    ) {
        self.emit(pb::watch_event::Event::Trial(pb::TrialChanged {
            sweep_id,
            trial_id: trial_id.to_owned(),
            state: state.to_string(),
            attempt,
            worker_id: worker.to_owned(),
            reason: reason.to_owned(),
        }));
    }

    /// [`Coordinator::trial_changed`] for a trial whose sweep the caller does not know: it is
    /// looked up only while someone watches, and a failed look-up never fails the call that
    /// committed the change (the event then names no sweep).
    fn trial_changed_in_its_sweep(&self, trial_id: &str, state: TrialState, worker: &str, reason: &str) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let sweep = self
            .read("sweep_of", |s| s.sweep_of(trial_id))
            .ok()
            .flatten()
            .unwrap_or_default();
        self.trial_changed(sweep, trial_id, state, 0, worker, reason);
    }

    /// What a `Watch` stream shows: status, active trials and accuracy so far, of one sweep
    /// (every sweep when `sweep_id` is empty).
    pub fn snapshot(&self, sweep_id: &str) -> Result<pb::WatchSnapshot> {
        let status = self.status(sweep_id)?;
        let (active, accuracy) = self.read("snapshot", |s| {
            Ok((s.active_trials(sweep_id)?, s.accuracy_so_far(sweep_id)?))
        })?;
        Ok(pb::WatchSnapshot {
            status: Some(status),
            active,
            accuracy,
        })
    }

    /// Every result row of one sweep (every sweep when `sweep_id` is empty), read through a
    /// read-only connection of its own, off the async threads: the store is not locked while
    /// a large export reads.
    pub async fn export(&self, sweep_id: &str) -> Result<convsweep_proto::results::Results> {
        let dir = self.config.state_dir.clone();
        let sweep = sweep_id.to_owned();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut all = crate::store::StateReader::open(&dir)?.results()?;
            if sweep.is_empty() {
                return Ok(all);
            }
            all.trials.retain(|t| t.sweep_id == sweep);
            if all.trials.is_empty() {
                return Err(Error::NotFound(format!("no sweep named {sweep:?}")));
            }
            let ids: std::collections::HashSet<String> = all.trials.iter().map(|t| t.trial_id.clone()).collect();
            all.epochs.retain(|e| ids.contains(&e.trial_id));
            all.robustness.retain(|r| ids.contains(&r.trial_id));
            all.filters.retain(|f| ids.contains(&f.trial_id));
            Ok(all)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(format!("export task: {e}"))))?
    }

    /// Emits "worker lost" for workers not heard from within three heartbeat intervals, and
    /// "joined" for ones heard from again.
    fn watch_workers(&self) -> Result<()> {
        let now = self.clock.now_ms();
        let alive_since = now - 3 * self.config.heartbeat_interval.as_millis() as i64;
        let workers = self.read("workers", |s| s.workers())?;
        let mut alive = lock(&self.alive);
        for (id, name, seen) in workers {
            let was = alive.contains_key(&id);
            let is = seen >= alive_since;
            if was != is {
                if is {
                    alive.insert(id.clone(), name.clone());
                } else {
                    alive.remove(&id);
                }
                self.emit(pb::watch_event::Event::Worker(pb::WorkerChanged {
                    worker_id: id,
                    name,
                    joined: is,
                }));
            }
        }
        Ok(())
    }

    /// The metrics it keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Ready to serve: the store is open (it is, once the coordinator exists) and the expiry
    /// loop runs.
    pub fn ready(&self) -> bool {
        self.expiry_running.load(Ordering::SeqCst)
    }

    /// Runs one store operation under the writer's lock, timing the transaction itself.
    fn timed<T>(&self, op: &str, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let mut store = self.store();
        let started = std::time::Instant::now();
        let out = f(&mut store);
        self.metrics.store(op, started.elapsed());
        out
    }

    /// Runs one read on the read-only connection, timed.
    fn read<T>(&self, op: &str, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let reader = lock(&self.reader);
        let started = std::time::Instant::now();
        let out = f(&reader);
        self.metrics.store(op, started.elapsed());
        out
    }

    /// One worker write in a transaction of its own, now.
    fn write_now(&self, op: &str, write: &Write) -> Result<Written> {
        let now = self.clock.now_ms();
        self.timed(op, |s| s.write(write, now))
    }

    /// Wakes up to `n` waiting `Lease` calls (one more than wait now, in case one is about to).
    fn wake(&self, n: usize) {
        for _ in 0..n.min(self.waiting.load(Ordering::SeqCst) + 1) {
            self.work_available.notify_one();
        }
    }

    /// The metrics in the OpenMetrics text format, with the gauges read from the store now.
    pub fn scrape(&self) -> Result<String> {
        let now = self.clock.now_ms();
        let (counts, last_seen) = self.read("scrape", |s| Ok((s.state_counts()?, s.worker_last_seen()?)))?;
        let m = &self.metrics;
        m.trials.clear();
        let (mut queued, mut active) = (0i64, 0i64);
        for (sweep, state, n) in counts {
            match state.as_str() {
                "pending" | "preempted" => queued += i64::from(n),
                "leased" | "running" => active += i64::from(n),
                _ => {}
            }
            m.trials
                .get_or_create(&crate::metrics::SweepState { sweep, state })
                .set(i64::from(n));
        }
        m.queue_depth.set(queued);
        m.active_leases.set(active);
        let alive_since = now - 3 * self.config.heartbeat_interval.as_millis() as i64;
        m.workers.clear();
        m.oldest_heartbeat.clear();
        for (state, alive) in [("alive", true), ("lost", false)] {
            let seen: Vec<i64> = last_seen
                .iter()
                .copied()
                .filter(|t| (*t >= alive_since) == alive)
                .collect();
            let labels = crate::metrics::WorkerState { state: state.into() };
            m.workers.get_or_create(&labels).set(seen.len() as i64);
            if let Some(oldest) = seen.iter().min() {
                m.oldest_heartbeat
                    .get_or_create(&labels)
                    .set((now - oldest).max(0) as f64 / 1000.0);
            }
        }
        Ok(m.encode())
    }

    /// The settings in force.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Asks every worker to finish what it holds and exit (used when a local run is done).
    pub fn set_drain(&self, drain: bool) {
        self.drain.store(drain, Ordering::SeqCst);
        self.work_available.notify_waiters();
    }

    /// Parses, expands and stores a sweep.
    pub fn submit(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        let started = std::time::Instant::now();
        let spec = SweepSpec::from_toml_capped(spec_toml, self.config.max_trials_per_sweep)?;
        let trials = spec.expand_canonical()?;
        let expanded = started.elapsed();
        let now = self.clock.now_ms();
        let submitted = self.timed("submit_sweep", |s| {
            s.submit_canonical(&spec.id, spec_toml, &trials, now)
        })?;
        info!(
            sweep = %spec.id,
            trials = submitted.trials,
            new = submitted.new_trials,
            expand_s = expanded.as_secs_f64(),
            store_s = (started.elapsed() - expanded).as_secs_f64(),
            "sweep submitted"
        );
        self.wake(submitted.new_trials as usize);
        Ok((spec.id, submitted))
    }

    /// Adds the trials of a grown spec (more seeds or grid values) to its existing sweep.
    pub fn extend(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        let spec = SweepSpec::from_toml_capped(spec_toml, self.config.max_trials_per_sweep)?;
        let trials = spec.expand_canonical()?;
        let now = self.clock.now_ms();
        let submitted = self.timed("extend_sweep", |s| {
            s.extend_canonical(&spec.id, spec_toml, &trials, now)
        })?;
        info!(sweep = %spec.id, trials = submitted.trials, new = submitted.new_trials, "sweep extended");
        self.wake(submitted.new_trials as usize);
        Ok((spec.id, submitted))
    }

    /// Submits a sweep, or extends it when it exists with fewer trials (`convsweep run` of an
    /// edited spec).
    pub fn submit_or_extend(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        match self.submit(spec_toml) {
            Err(Error::AlreadyExists(_)) => self.extend(spec_toml),
            other => other,
        }
    }

    /// Cancels unfinished trials of a sweep (all, or `trial_ids`).
    pub fn cancel(&self, sweep: &str, trial_ids: &[String]) -> Result<u32> {
        let now = self.clock.now_ms();
        let n = self.timed("cancel", |s| s.cancel(sweep, trial_ids, now))?;
        info!(sweep, cancelled = n, "trials cancelled");
        Ok(n)
    }

    /// Re-queues the failed and cancelled trials of a sweep.
    pub fn resume(&self, sweep: &str) -> Result<u32> {
        let n = self.timed("resume", |s| s.resume(sweep))?;
        self.metrics.requeued("resumed", u64::from(n));
        info!(sweep, requeued = n, "sweep resumed");
        self.wake(n as usize);
        Ok(n)
    }

    /// Registers a worker after checking its protocol version.
    pub fn register(&self, req: pb::RegisterRequest) -> Result<pb::RegisterResponse> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(Error::ProtocolMismatch {
                worker: req.protocol_version,
                coordinator: PROTOCOL_VERSION,
            });
        }
        if req.slots == 0 {
            return Err(Error::InvalidArgument(FieldError::new("slots", "must be at least 1")));
        }
        let now = self.clock.now_ms();
        let worker_id = self.timed("register", |s| {
            s.register_worker(&req.name, &req.host, &req.devices, req.slots, now)
        })?;
        info!(worker = %worker_id, host = %req.host, name = %req.name, devices = ?req.devices, slots = req.slots, "worker registered");
        lock(&self.alive).insert(worker_id.clone(), req.name.clone());
        self.emit(pb::watch_event::Event::Worker(pb::WorkerChanged {
            worker_id: worker_id.clone(),
            name: req.name.clone(),
            joined: true,
        }));
        Ok(pb::RegisterResponse {
            worker_id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            lease_timeout_ms: self.config.lease_timeout.as_millis() as u32,
        })
    }

    /// Leases trials, waiting up to `wait_ms` (capped) for some to become available.
    pub async fn lease(&self, req: pb::LeaseRequest) -> Result<pb::LeaseResponse> {
        if req.max_trials == 0 {
            return Err(Error::InvalidArgument(FieldError::new(
                "max_trials",
                "must be at least 1",
            )));
        }
        let wait = Duration::from_millis(u64::from(req.wait_ms)).min(self.config.max_lease_wait);
        let deadline = Instant::now() + wait;
        let started = std::time::Instant::now();
        let write = Write::Lease {
            worker_id: req.worker_id.clone(),
            max: req.max_trials,
        };
        loop {
            let notified = self.work_available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.drain.load(Ordering::SeqCst) {
                self.metrics.lease_wait.observe(started.elapsed().as_secs_f64());
                return Ok(pb::LeaseResponse {
                    leases: vec![],
                    drain: true,
                });
            }
            let Written::Leased(leases) = self.commits.write(write.clone()).await? else {
                unreachable!("a lease write answers with leases");
            };
            if !leases.is_empty() || Instant::now() >= deadline {
                self.metrics.lease_wait.observe(started.elapsed().as_secs_f64());
                if leases.len() == req.max_trials as usize {
                    // There may be more: pass the wake-up on to the next waiter.
                    self.wake(1);
                }
                for l in &leases {
                    info!(trial = %l.trial_id, sweep = %l.sweep_id, attempt = l.attempt, worker = %req.worker_id, "trial leased");
                    self.trial_changed(
                        l.sweep_id.clone(),
                        &l.trial_id,
                        TrialState::Leased,
                        l.attempt,
                        &req.worker_id,
                        "",
                    );
                }
                return Ok(pb::LeaseResponse { leases, drain: false });
            }
            let _waiting = Waiting::new(&self.waiting);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn heartbeat_write(req: pb::HeartbeatRequest) -> Write {
        Write::Heartbeat {
            worker_id: req.worker_id,
            leases: req.leases,
        }
    }

    fn renewed(&self, written: Written) -> pb::HeartbeatResponse {
        let Written::Renewed(leases) = written else {
            unreachable!("a heartbeat write answers with lease statuses");
        };
        pb::HeartbeatResponse {
            leases,
            drain: self.drain.load(Ordering::SeqCst),
        }
    }

    /// Renews leases, in a transaction of its own.
    pub fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        Ok(self.renewed(self.write_now("heartbeat", &Self::heartbeat_write(req))?))
    }

    /// Renews leases, committed with other RPCs' writes.
    pub async fn heartbeat_batched(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        Ok(self.renewed(self.commits.write(Self::heartbeat_write(req)).await?))
    }

    fn epochs_write(req: pb::ReportEpochsRequest) -> Result<Write> {
        convsweep_proto::convert::validate_epochs(&req.epochs).map_err(Error::InvalidArgument)?;
        Ok(Write::ReportEpochs {
            worker_id: req.worker_id,
            trial_id: req.trial_id,
            token: req.lease_token,
            epochs: req.epochs,
        })
    }

    fn reported(&self, write: &Write) {
        let Write::ReportEpochs { trial_id, epochs, .. } = write else {
            return;
        };
        self.metrics.epoch_rows.inc_by(epochs.len() as u64);
        for e in epochs {
            debug!(trial = %trial_id, epoch = e.epoch, test_acc = e.test_acc, "epoch reported");
            self.emit(pb::watch_event::Event::Epoch(pb::EpochReported {
                trial_id: trial_id.clone(),
                attempt: 0,
                metrics: Some(*e),
            }));
        }
    }

    /// Stores epoch metrics, in a transaction of its own.
    pub fn report_epochs(&self, req: pb::ReportEpochsRequest) -> Result<()> {
        let write = Self::epochs_write(req)?;
        self.write_now("report_epochs", &write)?;
        self.reported(&write);
        Ok(())
    }

    /// Stores epoch metrics, committed with other RPCs' writes.
    pub async fn report_epochs_batched(&self, req: pb::ReportEpochsRequest) -> Result<()> {
        let write = Self::epochs_write(req)?;
        // The events need the epochs after the write took them.
        self.commits.write(write.clone()).await?;
        self.reported(&write);
        Ok(())
    }

    fn complete_write(req: pb::CompleteRequest) -> Result<Write> {
        let outcome = Outcome::try_from(req.outcome).map_err(Error::InvalidArgument)?;
        Ok(Write::Complete {
            worker_id: req.worker_id,
            trial_id: req.trial_id,
            token: req.lease_token,
            outcome,
        })
    }

    /// Records a trial's outcome, in a transaction of its own.
    pub fn complete(&self, req: pb::CompleteRequest) -> Result<pb::CompleteResponse> {
        let write = Self::complete_write(req)?;
        let written = self.write_now("complete", &write)?;
        Ok(self.completed(&write, written))
    }

    /// Records a trial's outcome, committed with other RPCs' writes.
    pub async fn complete_batched(&self, req: pb::CompleteRequest) -> Result<pb::CompleteResponse> {
        let write = Self::complete_write(req)?;
        let written = self.commits.write(write.clone()).await?;
        Ok(self.completed(&write, written))
    }

    /// Events, metrics, logs and wake-ups of a committed completion.
    fn completed(&self, write: &Write, written: Written) -> pb::CompleteResponse {
        let (
            Write::Complete {
                worker_id,
                trial_id,
                outcome,
                ..
            },
            Written::Completed(done),
        ) = (write, written)
        else {
            unreachable!("a completion write answers with its completion");
        };
        let Completed { duplicate, state } = done;
        if !duplicate {
            let reason = match outcome {
                Outcome::Failed { reason, .. } | Outcome::Preempted { reason } => reason.as_str(),
                Outcome::Succeeded(_) => "",
            };
            self.trial_changed_in_its_sweep(trial_id, state, worker_id, reason);
            match (outcome, state) {
                (Outcome::Failed { retryable: true, .. }, TrialState::Pending) => {
                    self.metrics.requeued("retryable_failure", 1)
                }
                (Outcome::Preempted { .. }, _) => self.metrics.requeued("preempted", 1),
                _ => {}
            }
        }
        match (outcome, duplicate) {
            (_, true) => info!(trial = %trial_id, "duplicate completion acknowledged"),
            (Outcome::Succeeded(r), false) => {
                info!(trial = %trial_id, test_acc = r.final_test_acc, seconds = r.wall_seconds, "trial succeeded")
            }
            (Outcome::Failed { reason, retryable }, false) => {
                warn!(trial = %trial_id, retryable, state = %state, reason = %reason, "trial attempt failed")
            }
            (Outcome::Preempted { reason }, false) => {
                info!(trial = %trial_id, reason = %reason, "trial preempted")
            }
        }
        // A retried or preempted trial is leasable again: one waiting worker should look.
        if !duplicate && matches!(state, TrialState::Pending | TrialState::Preempted) {
            self.wake(1);
        }
        pb::CompleteResponse { duplicate }
    }

    /// Status of one sweep (or of all when `sweep_id` is empty).
    pub fn status(&self, sweep_id: &str) -> Result<pb::GetStatusResponse> {
        let now = self.clock.now_ms();
        let store = lock(&self.reader);
        let ids = if sweep_id.is_empty() {
            store.sweep_ids()?
        } else {
            vec![sweep_id.to_owned()]
        };
        let sweeps = ids
            .iter()
            .map(|id| store.sweep_status(id, now))
            .collect::<Result<Vec<_>>>()?;
        let alive_since = now - 3 * self.config.heartbeat_interval.as_millis() as i64;
        Ok(pb::GetStatusResponse {
            sweeps,
            workers_alive: store.workers_seen_since(alive_since)?,
        })
    }

    /// Expires overdue leases once; returns how many trials it touched.
    pub fn expire_once(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let touched = self.timed("expire_leases", |s| s.expire_leases(now))?;
        self.metrics.lease_expirations.inc_by(touched.len() as u64);
        let requeued = touched
            .iter()
            .filter(|(_, state)| *state == TrialState::Pending)
            .count();
        self.metrics.requeued("expired", requeued as u64);
        for (trial, state) in &touched {
            warn!(trial = %trial, now = %state, "lease expired");
            self.trial_changed_in_its_sweep(trial.as_str(), *state, "", "lease expired");
        }
        self.wake(requeued);
        Ok(touched.len())
    }

    /// Expires overdue leases every `expiry_interval` until cancelled.
    pub async fn run_expiry(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.expiry_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.expiry_running.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    self.expiry_running.store(false, Ordering::SeqCst);
                    return;
                }
                _ = tick.tick() => {
                    if let Err(e) = self.expire_once() {
                        warn!(error = %e, "lease expiry failed; will retry");
                    }
                    if let Err(e) = self.watch_workers() {
                        warn!(error = %e, "worker liveness check failed; will retry");
                    }
                }
            }
        }
    }
}
