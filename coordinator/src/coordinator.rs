//! The coordinator: the store behind a mutex, long-poll leasing and lease expiry.
//!
//! SQLite calls run inline on the async threads: each is one short transaction (a few ms with
//! its fsync), taken under one mutex, so a health check or any other RPC can wait behind a
//! flush. Moving them off the runtime would not break the paused-clock tests: in the pinned
//! tokio (1.54) a running `spawn_blocking` task inhibits the paused clock's auto-advance
//! (`runtime/blocking/schedule.rs`), so time does not jump while a transaction runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use convsweep_proto::{FieldError, Outcome, PROTOCOL_VERSION, SweepId, TrialState, pb};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{LeasePolicy, Store, Submitted};
use crate::sweep::SweepSpec;

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
        }
    }
}

/// The coordinator's shared state; the gRPC services are thin wrappers around it.
#[derive(Debug)]
pub struct Coordinator {
    store: Mutex<Store>,
    config: CoordinatorConfig,
    clock: Clock,
    work_available: Notify,
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
        info!(state_dir = %config.state_dir.display(), active_leases = held, "coordinator state opened");
        Ok(Arc::new(Coordinator {
            store: Mutex::new(store),
            config,
            clock,
            work_available: Notify::new(),
            drain: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new()),
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
            .timed("sweep_of", |s| s.sweep_of(trial_id))
            .ok()
            .flatten()
            .unwrap_or_default();
        self.trial_changed(sweep, trial_id, state, 0, worker, reason);
    }

    /// What a `Watch` stream shows: status, active trials and accuracy so far, of one sweep
    /// (every sweep when `sweep_id` is empty).
    pub fn snapshot(&self, sweep_id: &str) -> Result<pb::WatchSnapshot> {
        let status = self.status(sweep_id)?;
        let (active, accuracy) = self.timed("snapshot", |s| {
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
        let workers = self.timed("workers", |s| s.workers())?;
        let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Runs one store operation under the lock, timing the transaction itself.
    fn timed<T>(&self, op: &str, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let mut store = self.store();
        let started = std::time::Instant::now();
        let out = f(&mut store);
        self.metrics.store(op, started.elapsed());
        out
    }

    /// The metrics in the OpenMetrics text format, with the gauges read from the store now.
    pub fn scrape(&self) -> Result<String> {
        let now = self.clock.now_ms();
        let (counts, last_seen) = self.timed("scrape", |s| Ok((s.state_counts()?, s.worker_last_seen()?)))?;
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
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so the store stays usable.
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks every worker to finish what it holds and exit (used when a local run is done).
    pub fn set_drain(&self, drain: bool) {
        self.drain.store(drain, Ordering::SeqCst);
        self.work_available.notify_waiters();
    }

    /// Parses, expands and stores a sweep.
    pub fn submit(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        let spec = SweepSpec::from_toml(spec_toml)?;
        let trials = spec.expand()?;
        let now = self.clock.now_ms();
        let submitted = self.timed("submit_sweep", |s| s.submit_sweep(&spec.id, spec_toml, &trials, now))?;
        info!(sweep = %spec.id, trials = submitted.trials, new = submitted.new_trials, "sweep submitted");
        if submitted.new_trials > 0 {
            self.work_available.notify_waiters();
        }
        Ok((spec.id, submitted))
    }

    /// Adds the trials of a grown spec (more seeds or grid values) to its existing sweep.
    pub fn extend(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        let spec = SweepSpec::from_toml(spec_toml)?;
        let trials = spec.expand()?;
        let now = self.clock.now_ms();
        let submitted = self.timed("extend_sweep", |s| s.extend_sweep(&spec.id, spec_toml, &trials, now))?;
        info!(sweep = %spec.id, trials = submitted.trials, new = submitted.new_trials, "sweep extended");
        if submitted.new_trials > 0 {
            self.work_available.notify_waiters();
        }
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
        self.work_available.notify_waiters();
        Ok(n)
    }

    /// Re-queues the failed and cancelled trials of a sweep.
    pub fn resume(&self, sweep: &str) -> Result<u32> {
        let n = self.timed("resume", |s| s.resume(sweep))?;
        self.metrics.requeued("resumed", u64::from(n));
        info!(sweep, requeued = n, "sweep resumed");
        if n > 0 {
            self.work_available.notify_waiters();
        }
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
        self.alive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(worker_id.clone(), req.name.clone());
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
            let now = self.clock.now_ms();
            let leases = self.timed("lease", |s| s.lease(&req.worker_id, req.max_trials, now))?;
            if !leases.is_empty() || Instant::now() >= deadline {
                self.metrics.lease_wait.observe(started.elapsed().as_secs_f64());
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
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Renews leases.
    pub fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        let now = self.clock.now_ms();
        let leases = self.timed("heartbeat", |s| s.heartbeat(&req.worker_id, &req.leases, now))?;
        Ok(pb::HeartbeatResponse {
            leases,
            drain: self.drain.load(Ordering::SeqCst),
        })
    }

    /// Stores epoch metrics.
    pub fn report_epochs(&self, req: pb::ReportEpochsRequest) -> Result<()> {
        convsweep_proto::convert::validate_epochs(&req.epochs).map_err(Error::InvalidArgument)?;
        let now = self.clock.now_ms();
        self.timed("report_epochs", |s| {
            s.report_epochs(&req.worker_id, &req.trial_id, &req.lease_token, &req.epochs, now)
        })?;
        self.metrics.epoch_rows.inc_by(req.epochs.len() as u64);
        for e in &req.epochs {
            debug!(trial = %req.trial_id, epoch = e.epoch, test_acc = e.test_acc, "epoch reported");
            self.emit(pb::watch_event::Event::Epoch(pb::EpochReported {
                trial_id: req.trial_id.clone(),
                attempt: 0,
                metrics: Some(*e),
            }));
        }
        Ok(())
    }

    /// Records a trial's outcome.
    pub fn complete(&self, req: pb::CompleteRequest) -> Result<pb::CompleteResponse> {
        let outcome = Outcome::try_from(req.outcome).map_err(Error::InvalidArgument)?;
        let now = self.clock.now_ms();
        let done = self.timed("complete", |s| {
            s.complete(&req.worker_id, &req.trial_id, &req.lease_token, &outcome, now)
        })?;
        if !done.duplicate {
            let reason = match &outcome {
                Outcome::Failed { reason, .. } | Outcome::Preempted { reason } => reason.as_str(),
                Outcome::Succeeded(_) => "",
            };
            self.trial_changed_in_its_sweep(&req.trial_id, done.state, &req.worker_id, reason);
            match (&outcome, done.state) {
                (Outcome::Failed { retryable: true, .. }, TrialState::Pending) => {
                    self.metrics.requeued("retryable_failure", 1)
                }
                (Outcome::Preempted { .. }, _) => self.metrics.requeued("preempted", 1),
                _ => {}
            }
        }
        match (&outcome, done.duplicate) {
            (_, true) => info!(trial = %req.trial_id, "duplicate completion acknowledged"),
            (Outcome::Succeeded(r), false) => {
                info!(trial = %req.trial_id, test_acc = r.final_test_acc, seconds = r.wall_seconds, "trial succeeded")
            }
            (Outcome::Failed { reason, retryable }, false) => {
                warn!(trial = %req.trial_id, retryable, state = %done.state, reason = %reason, "trial attempt failed")
            }
            (Outcome::Preempted { reason }, false) => {
                info!(trial = %req.trial_id, reason = %reason, "trial preempted")
            }
        }
        // A retried or preempted trial is leasable again, and a finished one may let a
        // draining run end: either way waiting workers should look again.
        self.work_available.notify_waiters();
        Ok(pb::CompleteResponse {
            duplicate: done.duplicate,
        })
    }

    /// Status of one sweep (or of all when `sweep_id` is empty).
    pub fn status(&self, sweep_id: &str) -> Result<pb::GetStatusResponse> {
        let now = self.clock.now_ms();
        let store = self.store();
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
        if !touched.is_empty() {
            self.work_available.notify_waiters();
        }
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
