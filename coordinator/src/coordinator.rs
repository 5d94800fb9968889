//! The coordinator: long-poll leasing, lease expiry, events and status over the store's seam
//! ([`crate::store`]); it never talks to a database driver itself.
//!
//! - The worker RPCs' writes (lease, heartbeat, epochs, completion) go through group commit
//!   ([`crate::commit`]): off the async threads, many RPCs per transaction and fsync, each
//!   answered with its own output once its transaction is durable.
//! - Admin writes (submit, extend, cancel, resume, register) and lease expiry take the writer
//!   in turn with the committer; callers run them off the async threads.
//! - Status, snapshots and metrics read through a reader of their own, export through a fresh
//!   one: reads never wait for the writer, nor it for them.
//! - A waiting `Lease` is woken only when there may be work for it, one waiter per new trial.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convsweep_proto::{FieldError, Outcome, OutcomeKind, PROTOCOL_VERSION, SweepId, TrialState, pb, text};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::commit::{GroupCommit, SharedWriter, lock};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{
    Backend, CompleteWrite, Completed, EpochsWrite, Granted, HeartbeatWrite, LeasePolicy, LeaseWrite, PostgresBackend,
    SqliteBackend, StoreReader, StoreWriter, Submitted,
};
use crate::sweep::{DEFAULT_MAX_SPEC_BYTES, DEFAULT_MAX_SWEEP_BYTES, DEFAULT_MAX_TRIALS_PER_SWEEP, SweepSpec};

mod replicas;

/// Trials one transaction of a cancel takes: the writer is let go between them.
pub const CANCEL_CHUNK: usize = 2_000;

/// Runtime settings of a coordinator. Tests build it directly.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Folder of the SQLite state (created when missing); unused with a `store_url`.
    pub state_dir: PathBuf,
    /// A PostgreSQL state (`postgres://...`) instead of the SQLite one in `state_dir`.
    pub store_url: Option<String>,
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
    /// A worker not heard from for this long and holding no lease is forgotten (its row
    /// pruned); a worker that comes back registers again.
    pub worker_retention: Duration,
    /// Largest canonical spec of one trial, in bytes; a larger spec is refused before it is
    /// expanded.
    pub max_spec_bytes: u64,
    /// Largest sum of a sweep's canonical trial specs, in bytes; refused before expansion.
    pub max_sweep_bytes: u64,
}

impl CoordinatorConfig {
    /// The liveness rule: a worker is alive while it was heard from within three heartbeat
    /// intervals. Returns the earliest time (ms since the epoch) that still counts at `now_ms`;
    /// status, metrics and worker events all use it.
    pub fn alive_since(&self, now_ms: i64) -> i64 {
        now_ms - 3 * self.heartbeat_interval.as_millis() as i64
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            state_dir: PathBuf::from("runs/coordinator"),
            store_url: None,
            heartbeat_interval: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(60),
            max_attempts: 3,
            max_lease_wait: Duration::from_secs(20),
            expiry_interval: Duration::from_secs(1),
            watch_interval: Duration::from_secs(1),
            max_trials_per_sweep: DEFAULT_MAX_TRIALS_PER_SWEEP,
            worker_retention: Duration::from_secs(3600),
            max_spec_bytes: DEFAULT_MAX_SPEC_BYTES,
            max_sweep_bytes: DEFAULT_MAX_SWEEP_BYTES,
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
pub struct Coordinator {
    backend: Arc<dyn Backend>,
    store: SharedWriter,
    reader: Mutex<Box<dyn StoreReader>>,
    commits: Arc<GroupCommit>,
    config: CoordinatorConfig,
    clock: Clock,
    work_available: Notify,
    /// `Lease` calls waiting for work now.
    waiting: AtomicUsize,
    drain: AtomicBool,
    metrics: Arc<Metrics>,
    expiry_running: AtomicBool,
    /// When the last periodic expiry pass held the writer (ms since the epoch): a pass that
    /// comes much later than its interval finds that the coordinator stalled.
    last_pass_ms: std::sync::atomic::AtomicI64,
    /// When workers were last pruned (ms since the epoch).
    last_prune_ms: std::sync::atomic::AtomicI64,
    events: tokio::sync::broadcast::Sender<pb::WatchEvent>,
    /// Workers heard from lately, by id (for "worker lost" events).
    alive: Mutex<std::collections::BTreeMap<String, String>>,
    /// Where the state is shared with other coordinators (PostgreSQL): what they must hear.
    replicas: Option<replicas::Replicas>,
    /// Epochs or outcomes arrived since the last stopping pass.
    stopping_due: AtomicBool,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("store", &self.backend)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Opens the state `config` names (PostgreSQL at `store_url`, else SQLite in `state_dir`),
    /// recovering whatever it holds, and returns a coordinator.
    pub fn open(config: CoordinatorConfig) -> Result<Arc<Coordinator>> {
        let backend: Arc<dyn Backend> = match &config.store_url {
            Some(url) => Arc::new(PostgresBackend::new(url.clone())),
            None => Arc::new(SqliteBackend::new(&config.state_dir)),
        };
        Coordinator::open_with(config, backend)
    }

    /// Opens the state `backend` holds and returns a coordinator over it.
    pub fn open_with(config: CoordinatorConfig, backend: Arc<dyn Backend>) -> Result<Arc<Coordinator>> {
        let policy = LeasePolicy {
            lease_timeout_ms: config.lease_timeout.as_millis() as i64,
            max_attempts: config.max_attempts.max(1),
        };
        let mut store = backend.open_writer(policy)?;
        // Coordinators sharing a state set and check lease deadlines by the database's clock.
        let shared_clock = store.database_clock_ms()?;
        let clock = shared_clock.map_or_else(Clock::default, Clock::at);
        let opened_ms = clock.now_ms();
        let held = store.grant_restart_grace(opened_ms)?;
        let reader = backend.open_reader()?;
        info!(state = %backend.describe(), active_leases = held, "coordinator state opened");
        let store: SharedWriter = Arc::new(Mutex::new(store));
        let metrics = Arc::new(Metrics::new());
        Ok(Arc::new(Coordinator {
            commits: GroupCommit::new(store.clone(), clock.clone(), metrics.clone()),
            backend,
            store,
            reader: Mutex::new(reader),
            config,
            clock,
            work_available: Notify::new(),
            waiting: AtomicUsize::new(0),
            drain: AtomicBool::new(false),
            metrics,
            expiry_running: AtomicBool::new(false),
            last_pass_ms: std::sync::atomic::AtomicI64::new(opened_ms),
            last_prune_ms: std::sync::atomic::AtomicI64::new(opened_ms),
            events: tokio::sync::broadcast::channel(4096).0,
            alive: Mutex::new(Default::default()),
            replicas: shared_clock.map(|_| replicas::Replicas::new()),
            stopping_due: AtomicBool::new(true),
        }))
    }

    /// Live events (trial state changes, epochs, workers); a subscriber that falls behind
    /// skips ahead (the next snapshot catches it up).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<pb::WatchEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: pb::watch_event::Event) {
        let event = pb::WatchEvent {
            time_ms: self.clock.now_ms(),
            event: Some(event),
        };
        if let Some(r) = &self.replicas {
            r.post_event(&event);
        }
        // No subscriber is not an error.
        let _ = self.events.send(event);
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
            state: state.to_wire(),
            attempt,
            worker_id: worker.to_owned(),
            reason: reason.to_owned(),
        }));
    }

    /// What a `Watch` stream shows: status, active trials and accuracy so far, of one sweep
    /// (every sweep when `sweep_id` is empty). Blocking: call it off the async threads.
    pub fn snapshot(&self, sweep_id: &str) -> Result<pb::WatchSnapshot> {
        let status = self.status(sweep_id)?;
        let (active, accuracy, (curves, curves_left_out)) = self.read("snapshot", |s| {
            Ok((
                s.active_trials(sweep_id)?,
                s.accuracy_so_far(sweep_id)?,
                s.config_curves(sweep_id)?,
            ))
        })?;
        Ok(pb::WatchSnapshot {
            status: Some(status),
            active,
            accuracy,
            curves,
            curves_left_out,
        })
    }

    /// Every result row of one sweep (every sweep when `sweep_id` is empty), read through a
    /// reader of its own on the blocking pool: nothing waits while a large export reads.
    pub async fn export(&self, sweep_id: &str) -> Result<convsweep_proto::results::Results> {
        let backend = self.backend.clone();
        let sweep = sweep_id.to_owned();
        tokio::task::spawn_blocking(move || backend.open_reader()?.results((!sweep.is_empty()).then_some(&*sweep)))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("export task: {e}"))))?
    }

    /// Emits "worker lost" for workers no longer alive ([`CoordinatorConfig::alive_since`]),
    /// and "joined" for ones heard from again. Blocking.
    fn watch_workers(&self) -> Result<()> {
        let now = self.clock.now_ms();
        // Forget long-gone workers, at most once a minute (a Register flood leaves no rows).
        let last = self.last_prune_ms.load(Ordering::SeqCst);
        if now - last >= 60_000.min(self.config.worker_retention.as_millis() as i64)
            && self
                .last_prune_ms
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            let before = now - self.config.worker_retention.as_millis() as i64;
            let pruned = self.timed("prune_workers", |s| s.prune_workers(before))?;
            if pruned > 0 {
                info!(pruned, retention = ?self.config.worker_retention, "forgot workers not heard from for longer than the retention");
            }
        }
        let alive_since = self.config.alive_since(now);
        let workers = self.read("workers", |s| s.workers())?;
        let mut alive = lock(&self.alive);
        for w in workers {
            let was = alive.contains_key(&w.id);
            let is = w.last_seen_ms >= alive_since;
            if was != is {
                if is {
                    alive.insert(w.id.clone(), w.name.clone());
                } else {
                    alive.remove(&w.id);
                }
                self.emit(pb::watch_event::Event::Worker(pb::WorkerChanged {
                    worker_id: w.id,
                    name: w.name,
                    joined: is,
                }));
            }
        }
        Ok(())
    }

    /// `Lease` calls parked now, waiting for work.
    pub fn waiting_leases(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
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
    fn timed<T>(&self, op: &str, f: impl FnOnce(&mut dyn StoreWriter) -> Result<T>) -> Result<T> {
        let mut store = lock(&self.store);
        let started = std::time::Instant::now();
        let out = f(store.as_mut());
        self.metrics.store(op, started.elapsed());
        out
    }

    /// Runs one read on the coordinator's reader, timed.
    fn read<T>(&self, op: &str, f: impl FnOnce(&dyn StoreReader) -> Result<T>) -> Result<T> {
        let reader = lock(&self.reader);
        let started = std::time::Instant::now();
        let out = f(reader.as_ref());
        self.metrics.store(op, started.elapsed());
        out
    }

    /// Wakes up to `n` waiting `Lease` calls (one more than wait now, in case one is about to).
    fn wake(&self, n: usize) {
        for _ in 0..n.min(self.waiting.load(Ordering::SeqCst) + 1) {
            self.work_available.notify_one();
        }
    }

    /// `n` trials became leasable: wakes waiting `Lease` calls here and on the coordinators
    /// that share the state.
    fn new_work(&self, n: usize) {
        self.wake(n);
        if let Some(r) = &self.replicas {
            r.post_work(n);
        }
    }

    /// The metrics in the OpenMetrics text format, with the gauges read from the store now.
    /// Blocking.
    pub fn scrape(&self) -> Result<String> {
        let now = self.clock.now_ms();
        let m = &self.metrics;
        // Of coordinators that share a state, one reports its gauges: they sum over replicas.
        let reports = self.replicas.as_ref().is_none_or(|r| r.leads());
        m.state_reporter.set(i64::from(reports));
        if !reports {
            m.trials.clear();
            m.queue_depth.set(0);
            m.active_leases.set(0);
            m.workers.clear();
            m.oldest_heartbeat.clear();
            return Ok(m.encode());
        }
        let (counts, workers) = self.read("scrape", |s| Ok((s.state_counts()?, s.workers()?)))?;
        m.trials.clear();
        let (mut queued, mut active) = (0i64, 0i64);
        for (sweep, state, n) in counts {
            if state.is_queued() {
                queued += i64::from(n);
            } else if state.is_active() {
                active += i64::from(n);
            }
            m.trials
                .get_or_create(&crate::metrics::SweepState {
                    sweep,
                    state: state.as_str().to_owned(),
                })
                .set(i64::from(n));
        }
        m.queue_depth.set(queued);
        m.active_leases.set(active);
        let alive_since = self.config.alive_since(now);
        m.workers.clear();
        m.oldest_heartbeat.clear();
        for (state, alive) in [("alive", true), ("lost", false)] {
            let seen: Vec<i64> = workers
                .iter()
                .map(|w| w.last_seen_ms)
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

    /// Asks every worker to finish what it holds and exit (used when a local run is done).
    pub fn set_drain(&self, drain: bool) {
        self.drain.store(drain, Ordering::SeqCst);
        self.work_available.notify_waiters();
    }

    /// Parses a spec and checks it against the sweep caps (trials, bytes per trial, bytes in
    /// all) before anything is expanded.
    fn parse_capped(&self, spec_toml: &str) -> Result<SweepSpec> {
        let spec = SweepSpec::from_toml_capped(spec_toml, self.config.max_trials_per_sweep)?;
        spec.check_bytes(self.config.max_spec_bytes, self.config.max_sweep_bytes)?;
        Ok(spec)
    }

    /// Parses, expands and stores a sweep. Blocking.
    pub fn submit(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        let started = std::time::Instant::now();
        let spec = self.parse_capped(spec_toml)?;
        let trials = spec.expand_canonical()?;
        let expanded = started.elapsed();
        let now = self.clock.now_ms();
        let submitted = self.timed("submit_sweep", |s| s.submit(&spec.id, spec_toml, &trials, now))?;
        info!(
            sweep = %spec.id,
            trials = submitted.trials,
            new = submitted.new_trials,
            expand_s = expanded.as_secs_f64(),
            store_s = (started.elapsed() - expanded).as_secs_f64(),
            "sweep submitted"
        );
        self.new_work(submitted.new_trials as usize);
        Ok((spec.id, submitted))
    }

    /// Adds the trials of a grown spec (more seeds or grid values) to its existing sweep.
    /// Blocking.
    pub fn extend(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        let spec = self.parse_capped(spec_toml)?;
        let trials = spec.expand_canonical()?;
        let now = self.clock.now_ms();
        let cap = self.config.max_trials_per_sweep;
        let submitted = self.timed("extend_sweep", |s| s.extend(&spec.id, spec_toml, &trials, now, cap))?;
        info!(sweep = %spec.id, trials = submitted.trials, new = submitted.new_trials, "sweep extended");
        self.new_work(submitted.new_trials as usize);
        Ok((spec.id, submitted))
    }

    /// Submits a sweep, or extends it when it exists with fewer trials (`convsweep run` of an
    /// edited spec). Blocking.
    pub fn submit_or_extend(&self, spec_toml: &str) -> Result<(SweepId, Submitted)> {
        match self.submit(spec_toml) {
            Err(Error::AlreadyExists(_)) => self.extend(spec_toml),
            other => other,
        }
    }

    /// Cancels unfinished trials of a sweep (all, or `trial_ids`: refused, cancelling none,
    /// when one is not in the sweep). Blocking. A large cancel runs in transactions of
    /// [`CANCEL_CHUNK`] trials and lets go of the writer between them, so that heartbeats and
    /// reports are stored meanwhile.
    pub fn cancel(&self, sweep: &str, trial_ids: &[String]) -> Result<u32> {
        if let Some(id) = self.read("not_in_sweep", |r| r.not_in_sweep(sweep, trial_ids))? {
            return Err(Error::NotFound(format!("trial {id} is not part of sweep {sweep}")));
        }
        let mut n = 0;
        if trial_ids.is_empty() {
            let mut after = String::new();
            loop {
                let now = self.clock.now_ms();
                let chunk = self.timed("cancel", |s| s.cancel(sweep, &[], &after, CANCEL_CHUNK, now))?;
                n += chunk.cancelled;
                match chunk.next {
                    Some(next) => after = next,
                    None => break,
                }
            }
        } else {
            for ids in trial_ids.chunks(CANCEL_CHUNK) {
                let now = self.clock.now_ms();
                n += self
                    .timed("cancel", |s| s.cancel(sweep, ids, "", CANCEL_CHUNK, now))?
                    .cancelled;
            }
        }
        info!(sweep, cancelled = n, "trials cancelled");
        Ok(n)
    }

    /// Re-queues the failed and cancelled trials of a sweep. Blocking.
    pub fn resume(&self, sweep: &str) -> Result<u32> {
        let n = self.timed("resume", |s| s.resume(sweep))?;
        self.metrics.requeued("resumed", u64::from(n));
        info!(sweep, requeued = n, "sweep resumed");
        self.new_work(n as usize);
        Ok(n)
    }

    /// Re-queues the trials of a sweep that a stopping rule stopped (all, or those of
    /// `trial_ids`, or of the comparison `groups`), to train to their full budget. Blocking.
    pub fn resume_stopped(&self, sweep: &str, trial_ids: &[String], groups: &[String]) -> Result<u32> {
        if let Some(id) = self.read("not_in_sweep", |r| r.not_in_sweep(sweep, trial_ids))? {
            return Err(Error::NotFound(format!("trial {id} is not part of sweep {sweep}")));
        }
        let mut ids = trial_ids.to_vec();
        if !groups.is_empty() {
            let results = self.read("resume_groups", |r| r.results(Some(sweep)))?;
            let known: std::collections::BTreeSet<&str> = results
                .trials
                .iter()
                .filter_map(|t| t.cell.as_ref())
                .map(|c| c.group.as_str())
                .collect();
            if let Some(g) = groups.iter().find(|g| !known.contains(g.as_str())) {
                return Err(Error::NotFound(format!(
                    "sweep {sweep} has no comparison group {g:?}; its groups: {}",
                    if known.is_empty() {
                        "none (it has no stopping rule)".to_owned()
                    } else {
                        known.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", ")
                    }
                )));
            }
            ids.extend(
                results
                    .trials
                    .iter()
                    .filter(|t| t.state == TrialState::Stopped)
                    .filter(|t| t.cell.as_ref().is_some_and(|c| groups.contains(&c.group)))
                    .map(|t| t.trial_id.clone()),
            );
            if ids.is_empty() {
                return Ok(0);
            }
        }
        let n = self.timed("resume_stopped", |s| s.resume_stopped(sweep, &ids))?;
        self.metrics.requeued("resumed", u64::from(n));
        info!(sweep, requeued = n, "stopped trials resumed to their full budget");
        self.new_work(n as usize);
        Ok(n)
    }

    /// Registers a worker after checking its protocol version. Blocking.
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
        validate_register(&req).map_err(Error::InvalidArgument)?;
        let now = self.clock.now_ms();
        let worker_id = self.timed("register", |s| {
            s.register_worker(&req.name, &req.host, &req.devices, req.slots, now, &req.instance)
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
        let mut capped = false;
        let write = LeaseWrite {
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
                    free_slots: 0,
                });
            }
            let Granted { leases, free_slots } = self.commits.write(write.clone()).await?;
            if req.max_trials > free_slots && !capped {
                capped = true;
                warn!(worker = %req.worker_id, asked = req.max_trials, free_slots, "a lease call asked for more trials than the worker has free slots; capped");
            }
            if !leases.is_empty() || Instant::now() >= deadline {
                self.metrics.lease_wait.observe(started.elapsed().as_secs_f64());
                if !leases.is_empty() && leases.len() as u32 == req.max_trials.min(free_slots) {
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
                return Ok(pb::LeaseResponse {
                    leases,
                    drain: false,
                    free_slots,
                });
            }
            let _waiting = Waiting::new(&self.waiting);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Renews leases, committed with other RPCs' writes.
    pub async fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        let leases = self
            .commits
            .write(HeartbeatWrite {
                worker_id: req.worker_id,
                leases: req.leases,
            })
            .await?;
        Ok(pb::HeartbeatResponse {
            leases,
            drain: self.drain.load(Ordering::SeqCst),
        })
    }

    /// Stores epoch metrics, committed with other RPCs' writes.
    pub async fn report_epochs(&self, req: pb::ReportEpochsRequest) -> Result<()> {
        convsweep_proto::convert::validate_epochs(&req.epochs).map_err(Error::InvalidArgument)?;
        let write = EpochsWrite {
            worker_id: req.worker_id,
            trial_id: req.trial_id,
            token: req.lease_token,
            epochs: req.epochs,
        };
        // The events need the epochs after the write took them.
        self.commits.write(write.clone()).await?;
        self.stopping_due.store(true, Ordering::SeqCst);
        self.metrics.epoch_rows.inc_by(write.epochs.len() as u64);
        for e in write.epochs {
            debug!(trial = %write.trial_id, epoch = e.epoch, test_acc = e.test_acc, "epoch reported");
            self.emit(pb::watch_event::Event::Epoch(pb::EpochReported {
                trial_id: write.trial_id.clone(),
                attempt: 0,
                metrics: Some(e),
            }));
        }
        Ok(())
    }

    /// Records a trial's outcome, committed with other RPCs' writes.
    pub async fn complete(&self, req: pb::CompleteRequest) -> Result<pb::CompleteResponse> {
        let outcome = Outcome::try_from(req.outcome).map_err(Error::InvalidArgument)?;
        let write = CompleteWrite {
            worker_id: req.worker_id,
            trial_id: req.trial_id,
            token: req.lease_token,
            outcome,
        };
        let done = self.commits.write(write.clone()).await?;
        Ok(self.completed(write, done))
    }

    /// Events, metrics, logs and wake-ups of a committed completion.
    fn completed(&self, write: CompleteWrite, done: Completed) -> pb::CompleteResponse {
        let CompleteWrite {
            worker_id,
            trial_id,
            outcome,
            ..
        } = write;
        let Completed {
            duplicate,
            state,
            sweep_id,
        } = done;
        // A stopped trial may be resumed to its full budget from its checkpoint: the worker
        // keeps it.
        let done = state.is_done() && state != TrialState::Stopped;
        if duplicate {
            info!(trial = %trial_id, "duplicate completion acknowledged");
            return pb::CompleteResponse { duplicate, done };
        }
        let reason = outcome.reason().unwrap_or_default();
        self.stopping_due.store(true, Ordering::SeqCst);
        self.trial_changed(sweep_id, &trial_id, state, 0, &worker_id, reason);
        match (outcome.kind(), state) {
            (OutcomeKind::Failed, TrialState::Pending) => self.metrics.requeued("retryable_failure", 1),
            (OutcomeKind::Preempted, _) => self.metrics.requeued("preempted", 1),
            _ => {}
        }
        match &outcome {
            Outcome::Succeeded(r) => {
                info!(trial = %trial_id, test_acc = r.final_test_acc, seconds = r.wall_seconds, "trial succeeded")
            }
            Outcome::Failed { reason, retryable } => {
                warn!(trial = %trial_id, retryable, state = %state, reason = %reason, "trial attempt failed")
            }
            Outcome::Preempted { reason } => info!(trial = %trial_id, reason = %reason, "trial preempted"),
            Outcome::Stopped { epochs } => info!(trial = %trial_id, epochs, "trial stopped by the stopping rule"),
        }
        // A retried or preempted trial is leasable again: one waiting worker should look.
        if state.is_queued() {
            self.new_work(1);
        }
        pb::CompleteResponse { duplicate, done }
    }

    /// Status of one sweep (or of all when `sweep_id` is empty). Blocking.
    pub fn status(&self, sweep_id: &str) -> Result<pb::GetStatusResponse> {
        let now = self.clock.now_ms();
        let alive_since = self.config.alive_since(now);
        self.read("status", |store| {
            let ids = if sweep_id.is_empty() {
                store.sweep_ids()?
            } else {
                vec![sweep_id.to_owned()]
            };
            let sweeps = ids
                .iter()
                .map(|id| store.sweep_status(id, now))
                .collect::<Result<Vec<_>>>()?;
            Ok(pb::GetStatusResponse {
                sweeps,
                workers_alive: store.workers_seen_since(alive_since)?,
            })
        })
    }

    /// Expires overdue leases once; returns how many trials it touched. Blocking.
    pub fn expire_once(&self) -> Result<usize> {
        self.expire_pass(false)
    }

    /// One expiry pass. A periodic pass (`periodic`) that comes later than its interval by
    /// more than a quarter of the lease timeout (the coordinator stalled: a long transaction,
    /// a paused process, a starved machine) first gives every active lease the stall back, so
    /// that workers whose heartbeats could not get through are not all expired at once.
    fn expire_pass(&self, periodic: bool) -> Result<usize> {
        let interval = self.config.expiry_interval.as_millis() as i64;
        let threshold = self.config.lease_timeout.as_millis() as i64 / 4;
        let mut stalled = None;
        let touched = self.timed("expire_leases", |s| {
            // Read the clock with the writer held: waiting for it is part of a stall.
            let now = self.clock.now_ms();
            let previous = self.last_pass_ms.swap(now, Ordering::SeqCst);
            let stall = now - previous - interval;
            if periodic && stall > threshold {
                stalled = Some((stall, s.extend_leases(stall)?));
            }
            s.expire_leases(now)
        })?;
        if let Some((stall, leases)) = stalled {
            warn!(
                stall_ms = stall,
                leases,
                "the coordinator stalled for longer than a quarter of the lease timeout; active leases got the stall back"
            );
        }
        self.metrics.lease_expirations.inc_by(touched.len() as u64);
        let requeued = touched.iter().filter(|e| e.state.is_queued()).count();
        self.metrics.requeued("expired", requeued as u64);
        for e in touched.iter() {
            warn!(trial = %e.trial_id, now = %e.state, "lease expired");
            self.trial_changed(e.sweep_id.clone(), e.trial_id.as_str(), e.state, 0, "", "lease expired");
        }
        self.new_work(requeued);
        Ok(touched.len())
    }

    /// Runs the stopping rules of every sweep that has one: decides what the recorded curves
    /// allow, stores it and stops the trials of stopped configurations. Returns how many
    /// decisions it made. Blocking.
    pub fn decide_once(&self) -> Result<usize> {
        let mut made = 0;
        for sweep in self.read("sweep_ids", |r| r.sweep_ids())? {
            let toml = self.read("sweep_spec", |r| r.sweep_spec(&sweep))?;
            // A stored spec was checked when it was submitted; one this version cannot read
            // has no rule it knows.
            let Some(stopping) = SweepSpec::from_toml(&toml).ok().and_then(|s| s.stopping) else {
                continue;
            };
            // The reader places every trial in the rule's design.
            let results = self.read("stopping_results", |r| r.results(Some(&sweep)))?;
            let now = self.clock.now_ms();
            let decided = crate::stopping::decide(&stopping, &sweep, &results, now);
            for (rung, tau) in &decided.pilot_tau {
                debug!(sweep = %sweep, rung, tau, "pilot rank fidelity (Kendall tau, rung against final)");
            }
            let state: std::collections::HashMap<&str, TrialState> =
                results.trials.iter().map(|t| (t.trial_id.as_str(), t.state)).collect();
            // Trials to mark: those not done yet (a done one has nothing left to stop).
            let stops: Vec<(String, u32)> = decided
                .stops
                .into_iter()
                .filter(|(id, _)| state.get(id.as_str()).is_some_and(|s| !s.is_done()))
                .collect();
            if decided.decisions.is_empty() && stops.is_empty() {
                continue;
            }
            for d in &decided.decisions {
                info!(
                    sweep = %sweep, rule = %d.rule, group = %d.group, config = %d.config, rung = d.rung, kept = d.kept,
                    metric = %d.metric, value = d.value, rank = d.rank, of = d.ranked, trials = %d.trials, inputs = %d.inputs,
                    "stopping decision"
                );
            }
            let ended = self.timed("record_decisions", |s| {
                s.record_decisions(&decided.decisions, &stops, now)
            })?;
            for id in &ended {
                self.trial_changed(
                    sweep.clone(),
                    id,
                    TrialState::Stopped,
                    0,
                    "",
                    "stopped by the stopping rule",
                );
            }
            made += decided.decisions.len();
        }
        Ok(made)
    }

    /// Carries new work and events between the coordinators that share this one's state
    /// (`replicas`), until cancelled; returns at once for a state of its own.
    pub async fn run_bus(self: Arc<Self>, cancel: CancellationToken) {
        let Some(replicas) = &self.replicas else { return };
        let stop = Arc::new(AtomicBool::new(false));
        let listener = std::thread::Builder::new().name("convsweep-bus".into()).spawn({
            let (me, stop) = (self.clone(), stop.clone());
            move || {
                if let Some(r) = &me.replicas {
                    r.listen(me.backend.as_ref(), &stop, &|n| me.wake(n), &me.events);
                }
            }
        });
        replicas.publish(&self.backend, &cancel).await;
        stop.store(true, Ordering::SeqCst);
        if let Ok(listener) = listener {
            let _ = tokio::task::spawn_blocking(move || listener.join()).await;
        }
    }

    /// Expires overdue leases and looks for lost workers every `expiry_interval` until
    /// cancelled, each pass on the blocking pool.
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
                    let me = self.clone();
                    let pass = tokio::task::spawn_blocking(move || {
                        // Replicas hear of each other's epochs through the state only.
                        let due = me.stopping_due.swap(false, Ordering::SeqCst) || me.replicas.is_some();
                        let decided = if due { me.decide_once() } else { Ok(0) };
                        if let Err(e) = decided {
                            warn!(error = %e, "the stopping pass failed; will retry");
                            me.stopping_due.store(true, Ordering::SeqCst);
                        }
                        (me.expire_pass(true), me.watch_workers())
                    })
                    .await;
                    match pass {
                        Ok((expired, workers)) => {
                            if let Err(e) = expired {
                                warn!(error = %e, "lease expiry failed; will retry");
                            }
                            if let Err(e) = workers {
                                warn!(error = %e, "worker liveness check failed; will retry");
                            }
                        }
                        Err(e) => warn!(error = %e, "the expiry pass panicked; will retry"),
                    }
                }
            }
        }
    }
}

/// Bounds what a worker says of itself: names, host and devices are logged and shown.
fn validate_register(req: &pb::RegisterRequest) -> Result<(), FieldError> {
    /// Most devices one worker may list.
    const MAX_DEVICES: usize = 64;
    text::name("name", &req.name)?;
    text::name("host", &req.host)?;
    text::name("instance", &req.instance)?;
    if req.devices.len() > MAX_DEVICES {
        return Err(FieldError::new(
            "devices",
            format!("at most {MAX_DEVICES} entries, got {}", req.devices.len()),
        ));
    }
    for (i, d) in req.devices.iter().enumerate() {
        text::name(format!("devices[{i}]"), d)?;
    }
    Ok(())
}
