//! The worker's async side: register, lease into free slots, heartbeat, and forward what each
//! trainer thread produces to the coordinator.
//!
//! ```text
//! main loop ── Lease (long-poll) ──> per trial: task ── thread runs Trainer::run
//!                                                 └─ forwards epochs, then Complete (retried)
//! heartbeat task ── Heartbeat every interval ──> CANCEL / LOST set the trial's stop signal
//! ```
//!
//! Every RPC is retried with capped exponential backoff while the coordinator is unreachable,
//! so trials keep training through a coordinator restart and report once it is back. A report
//! the coordinator refuses for good (stale lease, unknown trial) stops that trial quietly. A
//! report it refuses as invalid (`INVALID_ARGUMENT`, naming the field), or one that fails the
//! same checks here before it is sent (a non-finite loss), fails the trial for good: it is
//! never retried, and the reason names the field.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convsweep_proto::client::{AuthChannel, ClientError, Connection};
use convsweep_proto::pb::worker_service_client::WorkerServiceClient;
use convsweep_proto::{Lease, Outcome, PROTOCOL_VERSION, pb};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::control::{Signal, TrainEnd, Trainer, TrialControl, TrialEvent, run_guarded};

/// Runtime settings of a worker. Tests build it directly.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How to reach the coordinator: URL (e.g. `http://127.0.0.1:50051`), TLS, token.
    pub coordinator: Connection,
    /// A stable name for logs and status (defaults to the host name).
    pub name: String,
    /// Trials run at once.
    pub slots: u32,
    /// How long one `Lease` call waits for work.
    pub lease_wait: Duration,
    /// Longest pause between retries of an RPC.
    pub max_backoff: Duration,
    /// On shutdown, how long running trials get to stop and be reported.
    pub grace: Duration,
    /// How long to keep trying to reach the coordinator at start-up (it may start after the
    /// worker) before giving up with an error.
    pub connect_timeout: Duration,
    /// Exit (successfully) once a lease call finds no work and nothing runs: an Indexed Job's
    /// or array task's worker ends when the sweep is drained.
    pub exit_when_idle: bool,
    /// Once registered, stop (preempting what runs) and fail after the coordinator could not
    /// be reached for this long. None: keep trying.
    pub max_disconnected: Option<Duration>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: Connection::plain("http://127.0.0.1:50051"),
            name: host_name(),
            slots: 1,
            lease_wait: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            grace: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(900),
            exit_when_idle: false,
            max_disconnected: None,
        }
    }
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The coordinator's address or credentials are not usable.
    #[error(transparent)]
    Connection(#[from] ClientError),
    /// The coordinator refused this worker for good.
    #[error("the coordinator refused this worker: {0}")]
    Refused(Status),
    /// The coordinator could not be reached for longer than the worker's bound.
    #[error(
        "lost the coordinator at {url}: no call answered for {waited:?} (the worker's --max-disconnected-secs); \
         running trials were preempted"
    )]
    Disconnected {
        /// The URL.
        url: String,
        /// The bound.
        waited: Duration,
    },
    /// The coordinator could not be reached within the start-up limit.
    #[error(
        "no coordinator answered at {url} within {waited:?} (the worker's connect timeout); is it running and is the address right?"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// How long the worker tried.
        waited: Duration,
    },
}

/// The host name of this machine.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether an RPC failure may go away by itself (coordinator restarting, network blip).
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// Calls `rpc` until it succeeds, fails for good, or `stop` fires (then `None`).
async fn retry<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    max_backoff: Duration,
    mut rpc: F,
) -> Option<Result<T, Status>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            r = rpc() => r,
            () = stop.cancelled() => return None,
        };
        match result {
            Ok(resp) => return Some(Ok(resp.into_inner())),
            Err(status) if transient(&status) => {
                debug!(rpc = what, code = ?status.code(), message = status.message(), "coordinator unreachable; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return None,
                }
                backoff = (backoff * 2).min(max_backoff);
            }
            Err(status) => return Some(Err(status)),
        }
    }
}

/// A trial attempt this worker runs, under its lease token (two attempts of one trial may
/// overlap for a moment: an expired one still stopping and its successor).
#[derive(Debug)]
struct Running {
    trial_id: String,
    signal: Arc<AtomicU8>,
    /// Set when the coordinator said the trial was cancelled: it is done for good.
    cancelled: Arc<AtomicBool>,
}

/// State shared by the agent's tasks.
struct Shared {
    client: WorkerServiceClient<AuthChannel>,
    /// The id the coordinator gave at `Register` (a new one after it forgot this worker).
    worker_id: std::sync::RwLock<String>,
    /// What `Register` sends, for registering again.
    register: pb::RegisterRequest,
    config: WorkerConfig,
    /// Running attempts by lease token.
    running: Mutex<HashMap<String, Running>>,
    drain: AtomicBool,
    /// Cancelled when the worker must stop (signal); trials get `grace` to wrap up.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: pending reports are abandoned.
    hard_stop: CancellationToken,
    /// Set when the worker stops because the coordinator was out of reach too long.
    disconnected: AtomicBool,
}

impl Shared {
    /// The worker's current id.
    fn id(&self) -> String {
        self.worker_id.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Registers again, after a coordinator that no longer knows this worker (its state was
    /// reset) refused a call; returns whether it worked.
    async fn register_again(&self) -> bool {
        let registered = retry("register", &self.shutdown, self.config.max_backoff, || {
            let (mut c, r) = (self.client.clone(), self.register.clone());
            async move { c.register(r).await }
        })
        .await;
        match registered {
            Some(Ok(r)) => {
                info!(old = %self.id(), new = %r.worker_id, "registered again with a coordinator that did not know this worker");
                *self.worker_id.write().unwrap_or_else(|p| p.into_inner()) = r.worker_id;
                true
            }
            Some(Err(status)) => {
                warn!(code = ?status.code(), message = status.message(), "registering again was refused");
                false
            }
            None => false,
        }
    }

    fn lease_refs(&self) -> Vec<pb::LeaseRef> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .map(|(token, r)| pb::LeaseRef {
                trial_id: r.trial_id.clone(),
                lease_token: token.clone(),
            })
            .collect()
    }

    /// Runs `f` on the attempt a heartbeat status is about: by its lease token, or (from a
    /// coordinator that does not send tokens) on every attempt of its trial.
    fn each_named(&self, status: &pb::LeaseStatus, f: impl Fn(&Running)) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !status.lease_token.is_empty() {
            if let Some(r) = running.get(&status.lease_token) {
                f(r);
            }
            return;
        }
        running.values().filter(|r| r.trial_id == status.trial_id).for_each(f);
    }

    /// Signals the attempt a heartbeat status is about.
    fn signal(&self, status: &pb::LeaseStatus, signal: Signal) {
        self.each_named(status, |r| r.signal.store(signal as u8, Ordering::Relaxed));
    }

    /// Asks the attempt a heartbeat status is about to end at its epoch's end as stopped, unless
    /// it is already being stopped harder (cancelled, lost, preempted).
    fn halt(&self, status: &pb::LeaseStatus) {
        self.each_named(status, |r| {
            let _ = r.signal.compare_exchange(
                Signal::Run as u8,
                Signal::Halt as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        });
    }

    /// Stops the attempt a heartbeat status is about for good: its checkpoints go once it
    /// stopped.
    fn cancel(&self, status: &pb::LeaseStatus) {
        self.each_named(status, |r| {
            r.cancelled.store(true, Ordering::Relaxed);
            r.signal.store(Signal::Stop as u8, Ordering::Relaxed);
        });
    }

    fn signal_all(&self, signal: Signal) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for r in running.values() {
            r.signal.store(signal as u8, Ordering::Relaxed);
        }
    }
}

/// Runs a worker until the coordinator drains it or `shutdown` fires (then running trials are
/// preempted and reported within the grace period).
pub async fn run(
    config: WorkerConfig,
    trainer: Arc<dyn Trainer>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let client = config.coordinator.worker()?;

    let devices = trainer.devices();
    let register = pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        host: host_name(),
        devices: devices.clone(),
        slots: config.slots,
        name: config.name.clone(),
        // The same for every Register of this process: a retried or repeated one is the same
        // worker to the coordinator.
        instance: convsweep_proto::client::Secret::random()
            .map(|s| s.expose()[..32].to_owned())
            .unwrap_or_default(),
    };
    info!(coordinator = %config.coordinator.url, tls = config.coordinator.url.starts_with("https:"), token = config.coordinator.token.is_some(), ?devices, slots = config.slots, "worker starting");
    let attempt = retry("register", &shutdown, config.max_backoff, || {
        let (mut c, r) = (client.clone(), register.clone());
        async move { c.register(r).await }
    });
    let registered = match tokio::time::timeout(config.connect_timeout, attempt).await {
        Err(_) => {
            return Err(AgentError::Unreachable {
                url: config.coordinator.url.clone(),
                waited: config.connect_timeout,
            });
        }
        Ok(None) => return Ok(()),
        Ok(Some(Err(status))) => return Err(AgentError::Refused(status)),
        Ok(Some(Ok(r))) => r,
    };
    info!(worker = %registered.worker_id, "registered");
    let register = register.clone();

    let shared = Arc::new(Shared {
        client,
        worker_id: std::sync::RwLock::new(registered.worker_id),
        register,
        config: config.clone(),
        running: Mutex::new(HashMap::new()),
        drain: AtomicBool::new(false),
        shutdown: shutdown.clone(),
        hard_stop: CancellationToken::new(),
        disconnected: AtomicBool::new(false),
    });
    let tracker = TaskTracker::new();
    let heartbeat_stop = CancellationToken::new();
    let interval = Duration::from_millis(u64::from(registered.heartbeat_interval_ms.max(100)));
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), interval, heartbeat_stop.clone()));

    // The grace period starts with the shutdown signal; when it ends, pending reports (and a
    // lease call still in flight) are abandoned.
    let grace_timer = tokio::spawn({
        let (shutdown, hard_stop, grace) = (shutdown.clone(), shared.hard_stop.clone(), config.grace);
        let shared = shared.clone();
        async move {
            shutdown.cancelled().await;
            // Running trials start to wrap up at once, even while a lease call still waits.
            shared.signal_all(Signal::Preempt);
            tokio::time::sleep(grace).await;
            hard_stop.cancel();
        }
    });

    lease_loop(&shared, &trainer, &tracker).await;

    tracker.close();
    if shutdown.is_cancelled() {
        info!(
            running = shared.running.lock().map(|r| r.len()).unwrap_or(0),
            "shutting down: preempting running trials"
        );
        shared.signal_all(Signal::Preempt);
        tokio::select! {
            () = tracker.wait() => {}
            () = shared.hard_stop.cancelled() => {
                warn!(grace = ?config.grace, "grace period over; abandoning unfinished reports");
                tracker.wait().await;
            }
        }
    } else {
        info!("coordinator asked to drain; finishing running trials");
        tracker.wait().await;
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    grace_timer.abort();
    info!("worker stopped");
    if shared.disconnected.load(Ordering::SeqCst) {
        return Err(AgentError::Disconnected {
            url: config.coordinator.url.clone(),
            waited: config.max_disconnected.unwrap_or_default(),
        });
    }
    Ok(())
}

async fn lease_loop(shared: &Arc<Shared>, trainer: &Arc<dyn Trainer>, tracker: &TaskTracker) {
    let config = &shared.config;
    let slots = Arc::new(Semaphore::new(config.slots as usize));
    loop {
        if shared.drain.load(Ordering::SeqCst) || shared.shutdown.is_cancelled() {
            return;
        }
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            () = shared.shutdown.cancelled() => return,
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let request = pb::LeaseRequest {
            worker_id: shared.id(),
            max_trials: permits.len() as u32,
            wait_ms: config.lease_wait.as_millis() as u32,
        };
        // A lease call in flight when the shutdown comes is allowed to finish (within the grace
        // period): the coordinator may already have committed its leases.
        let response = match retry("lease", &shared.hard_stop, config.max_backoff, || {
            let (mut c, r) = (shared.client.clone(), request.clone());
            async move { c.lease(r).await }
        })
        .await
        {
            None => return,
            Some(Ok(r)) => r,
            Some(Err(status)) if status.code() == Code::NotFound => {
                warn!(
                    message = status.message(),
                    "the coordinator does not know this worker; registering again"
                );
                if !shared.register_again().await {
                    tokio::time::sleep(config.max_backoff).await;
                }
                continue;
            }
            Some(Err(status)) => {
                warn!(code = ?status.code(), message = status.message(), "lease refused; retrying later");
                tokio::time::sleep(config.max_backoff).await;
                continue;
            }
        };
        if response.drain {
            shared.drain.store(true, Ordering::SeqCst);
        }
        if config.exit_when_idle && response.leases.is_empty() && permits.len() == config.slots as usize {
            info!("no work for this worker and nothing running; exiting (told to exit when idle)");
            shared.drain.store(true, Ordering::SeqCst);
            return;
        }
        if shared.shutdown.is_cancelled() {
            // Leased while shutting down: hand them back at once rather than let them expire.
            for wire in response.leases {
                let shared = shared.clone();
                tracker.spawn(async move {
                    let outcome = Outcome::Preempted {
                        reason: "worker shutting down; not started".into(),
                    };
                    let _ = complete(&shared, &wire.trial_id, &wire.lease_token, outcome).await;
                });
            }
            return;
        }
        let asked = request.max_trials as usize;
        if response.free_slots < request.max_trials && response.leases.is_empty() {
            debug!(
                asked,
                free_slots = response.free_slots,
                "the coordinator counts fewer free slots than this worker has; its leases still running there will expire"
            );
        }
        for wire in response.leases {
            let Some(permit) = permits.pop() else {
                // More leases than asked for (a misbehaving coordinator): hand the surplus back
                // rather than overrun the slots.
                warn!(trial = %wire.trial_id, asked, "the coordinator leased more trials than asked for; handing this one back");
                let shared = shared.clone();
                tracker.spawn(async move {
                    let outcome = Outcome::Preempted {
                        reason: format!("worker asked for {asked} trials and was leased more; handed back unstarted"),
                    };
                    let _ = complete(&shared, &wire.trial_id, &wire.lease_token, outcome).await;
                });
                continue;
            };
            let trial_id = wire.trial_id.clone();
            let token = wire.lease_token.clone();
            match Lease::try_from(wire) {
                Ok(lease) => {
                    let shared = shared.clone();
                    let trainer = trainer.clone();
                    tracker.spawn(async move {
                        run_trial(shared, trainer, lease).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(trial = %trial_id, error = %e, "invalid lease; failing the trial");
                    let outcome = Outcome::Failed {
                        retryable: false,
                        reason: format!("worker could not accept the lease: {e}"),
                    };
                    let shared = shared.clone();
                    tracker.spawn(async move {
                        let _ = complete(&shared, &trial_id, &token, outcome).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let request = pb::HeartbeatRequest {
            worker_id: shared.id(),
            leases: shared.lease_refs(),
        };
        // One try per tick: the next tick is the retry.
        match shared.client.clone().heartbeat(request).await {
            Ok(resp) => {
                last_answer = tokio::time::Instant::now();
                let resp = resp.into_inner();
                if resp.drain {
                    shared.drain.store(true, Ordering::SeqCst);
                }
                for status in resp.leases {
                    match pb::LeaseDirective::try_from(status.directive) {
                        Ok(pb::LeaseDirective::Cancel) => {
                            info!(trial = %status.trial_id, "trial cancelled; stopping it");
                            shared.cancel(&status);
                        }
                        Ok(pb::LeaseDirective::Lost) => {
                            warn!(trial = %status.trial_id, "lease lost; stopping the trial");
                            shared.signal(&status, Signal::Stop);
                        }
                        Ok(pb::LeaseDirective::Stop) => {
                            info!(trial = %status.trial_id, "stopped by the sweep's stopping rule; ending it after this epoch");
                            shared.halt(&status);
                        }
                        _ => {}
                    }
                }
            }
            Err(status) => {
                debug!(code = ?status.code(), "heartbeat failed; will retry");
                if let Some(bound) = shared.config.max_disconnected
                    && last_answer.elapsed() > bound
                    && !shared.disconnected.swap(true, Ordering::SeqCst)
                {
                    warn!(
                        ?bound,
                        "the coordinator has not answered for longer than this worker's bound; stopping"
                    );
                    shared.shutdown.cancel();
                }
            }
        }
    }
}

/// Runs one leased trial on its own thread and reports what it produces.
async fn run_trial(shared: Arc<Shared>, trainer: Arc<dyn Trainer>, lease: Lease) {
    let trial_id = lease.trial_id.to_string();
    let token = lease.token.clone();
    let (ctl, signal, mut events) = TrialControl::new();
    let first_step = ctl.first_step();
    let cancelled = Arc::new(AtomicBool::new(false));
    shared.running.lock().unwrap_or_else(|p| p.into_inner()).insert(
        token.clone(),
        Running {
            trial_id: trial_id.clone(),
            signal: signal.clone(),
            cancelled: cancelled.clone(),
        },
    );
    if shared.shutdown.is_cancelled() {
        signal.store(Signal::Preempt as u8, Ordering::Relaxed);
    }
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let thread_name = format!("trial-{trial_id}");
    let (trainer_for_end, lease_for_end) = (trainer.clone(), lease.clone());
    // When the trainer handed over its end: what follows until the completion is reporting.
    let mut trainer_done = None;
    let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
        let end = run_guarded(trainer.as_ref(), &lease, &ctl);
        drop(ctl);
        let _ = done_tx.send(end);
    });
    let end = match spawned {
        Err(e) => TrainEnd::Finished(Outcome::Failed {
            retryable: true,
            reason: format!("could not start a trainer thread: {e}"),
        }),
        Ok(_) => {
            // Forward epochs as they come (batched when the coordinator was away).
            let mut reporting = Reported::Accepted;
            loop {
                tokio::select! {
                    biased;
                    Some(TrialEvent::Epoch(first)) = events.recv() => {
                        let mut batch = vec![first];
                        while let Ok(TrialEvent::Epoch(more)) = events.try_recv() {
                            batch.push(more);
                        }
                        if reporting == Reported::Accepted {
                            reporting = report_epochs(&shared, &trial_id, &token, batch).await;
                            if reporting != Reported::Accepted {
                                signal.store(Signal::Stop as u8, Ordering::Relaxed);
                            }
                        }
                    }
                    end = &mut done_rx => {
                        trainer_done = Some(std::time::Instant::now());
                        // Epochs sent just before the end are still queued: report them first.
                        let mut batch = Vec::new();
                        while let Ok(TrialEvent::Epoch(more)) = events.try_recv() {
                            batch.push(more);
                        }
                        if reporting == Reported::Accepted && !batch.is_empty() {
                            reporting = report_epochs(&shared, &trial_id, &token, batch).await;
                        }
                        let end = end.unwrap_or_else(|_| TrainEnd::Finished(Outcome::Failed {
                            retryable: true,
                            reason: "trainer thread ended without a result".into(),
                        }));
                        break match reporting {
                            Reported::Accepted => end,
                            Reported::Gone => TrainEnd::Stopped,
                            // The trial's own numbers are wrong: running it again would send
                            // the same, so it fails for good.
                            Reported::Invalid(reason) => TrainEnd::Finished(Outcome::Failed {
                                retryable: false,
                                reason,
                            }),
                        };
                    }
                }
            }
        }
    };
    let startup_ms = first_step.get().map(|d| d.as_millis() as u64);
    let done_for_good;
    if let TrainEnd::Finished(mut outcome) = end {
        if let (Outcome::Succeeded(result), Some(done)) = (&mut outcome, trainer_done) {
            result.times.get_or_insert_default().report_seconds += done.elapsed().as_secs_f64();
        }
        info!(trial = %trial_id, lease_to_first_step_ms = startup_ms, outcome = %outcome.kind(), "trial ended");
        let completing = std::time::Instant::now();
        let acknowledged = complete(&shared, &trial_id, &token, outcome.clone()).await;
        if acknowledged.is_some()
            && let Outcome::Succeeded(result) = &outcome
        {
            log_cost(&trial_id, result, completing.elapsed());
        }
        done_for_good = acknowledged.unwrap_or(false);
    } else {
        info!(trial = %trial_id, "trial stopped without a report");
        done_for_good = cancelled.load(Ordering::Relaxed);
    }
    if done_for_good {
        // Removing checkpoints is file I/O: off the runtime's threads.
        let removed = tokio::task::spawn_blocking(move || trainer_for_end.ended(&lease_for_end));
        if let Err(e) = removed.await {
            warn!(trial = %trial_id, error = %e, "cleaning up after the trial failed");
        }
    }
    shared.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
}

/// The worker's line on where a finished trial's time went (the split of
/// [`pb::TrialTimes`], the final evaluations, and the completion call itself, which the
/// result it carried cannot hold).
fn log_cost(trial_id: &str, result: &pb::TrialResult, completion: Duration) {
    let t = result.times.unwrap_or_default();
    let accounted = t.startup_seconds
        + t.train_seconds
        + t.epoch_eval_seconds
        + result.eval_seconds
        + t.checkpoint_seconds
        + t.report_seconds;
    info!(
        trial = %trial_id,
        test_acc = format!("{:.4}", result.final_test_acc),
        startup_seconds = format!("{:.2}", t.startup_seconds),
        train_seconds = format!("{:.2}", t.train_seconds),
        train_images_per_second = format!("{:.1}", t.train_images as f64 / t.train_seconds.max(1e-9)),
        epoch_eval_seconds = format!("{:.2}", t.epoch_eval_seconds),
        final_eval_seconds = format!("{:.2}", result.eval_seconds),
        checkpoint_seconds = format!("{:.2}", t.checkpoint_seconds),
        report_seconds = format!("{:.3}", t.report_seconds + completion.as_secs_f64()),
        total_seconds = format!("{:.2}", accounted + completion.as_secs_f64()),
        "trial cost"
    );
}

/// What became of an epoch report.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reported {
    /// Stored (or the trial goes on and the next report tries again).
    Accepted,
    /// Refused for good because the lease is gone (stale, unknown, shut down): stop quietly.
    Gone,
    /// The epochs themselves are invalid (checked here, or `INVALID_ARGUMENT` from the
    /// coordinator): the trial fails, not retryably, for this reason.
    Invalid(String),
}

/// Sends epochs once they pass the coordinator's own checks.
async fn report_epochs(shared: &Shared, trial_id: &str, token: &str, epochs: Vec<pb::EpochMetrics>) -> Reported {
    if let Err(e) = convsweep_proto::convert::validate_epochs(&epochs) {
        warn!(trial = %trial_id, error = %e, "an epoch report is invalid; failing the trial");
        return Reported::Invalid(format!("the trial reported an invalid epoch: {e}"));
    }
    let request = pb::ReportEpochsRequest {
        worker_id: shared.id(),
        trial_id: trial_id.to_owned(),
        lease_token: token.to_owned(),
        epochs,
    };
    match retry("report_epochs", &shared.hard_stop, shared.config.max_backoff, || {
        let (mut c, r) = (shared.client.clone(), request.clone());
        async move { c.report_epochs(r).await }
    })
    .await
    {
        Some(Ok(_)) => Reported::Accepted,
        None => Reported::Gone,
        Some(Err(status)) if status.code() == Code::InvalidArgument => {
            warn!(trial = %trial_id, message = status.message(), "the coordinator refused an epoch report as invalid; failing the trial");
            Reported::Invalid(format!("the coordinator refused an epoch report: {}", status.message()))
        }
        Some(Err(status)) => {
            warn!(trial = %trial_id, code = ?status.code(), message = status.message(), "epoch report refused; stopping the trial");
            Reported::Gone
        }
    }
}

/// Reports `outcome`; once the coordinator acknowledged it (now or before), whether the trial
/// is done for good (it will not run again: its checkpoints can go). A result that
/// fails the coordinator's checks (here, or `INVALID_ARGUMENT` there) is reported instead as a
/// failure that is not retryable, naming the field.
async fn complete(shared: &Shared, trial_id: &str, token: &str, outcome: Outcome) -> Option<bool> {
    let outcome = match convsweep_proto::convert::validate_outcome(&outcome) {
        Ok(()) => outcome,
        Err(e) => Outcome::Failed {
            retryable: false,
            reason: format!("the trial's result is invalid: {e}"),
        },
    };
    match send_completion(shared, trial_id, token, outcome.clone()).await {
        Err(refusal) if !matches!(outcome, Outcome::Failed { retryable: false, .. }) => {
            let failed = Outcome::Failed {
                retryable: false,
                reason: format!(
                    "the coordinator refused the trial's {} report: {refusal}",
                    outcome.kind()
                ),
            };
            send_completion(shared, trial_id, token, failed).await.unwrap_or(None)
        }
        sent => sent.unwrap_or(None),
    }
}

/// Sends one completion: once acknowledged, whether the trial is done for good (the outcome
/// ends it, or the coordinator says so: a last attempt failed); `Err` with the coordinator's
/// message when it refused it as invalid.
async fn send_completion(
    shared: &Shared,
    trial_id: &str,
    token: &str,
    outcome: Outcome,
) -> Result<Option<bool>, String> {
    let kind = outcome.kind();
    let ends = matches!(
        outcome,
        Outcome::Succeeded(_) | Outcome::Failed { retryable: false, .. }
    );
    if let Outcome::Failed { reason, retryable } = &outcome {
        warn!(trial = %trial_id, retryable, reason = %reason, "trial failed");
    }
    let request = pb::CompleteRequest {
        worker_id: shared.id(),
        trial_id: trial_id.to_owned(),
        lease_token: token.to_owned(),
        outcome: Some(outcome.into()),
    };
    match retry("complete", &shared.hard_stop, shared.config.max_backoff, || {
        let (mut c, r) = (shared.client.clone(), request.clone());
        async move { c.complete(r).await }
    })
    .await
    {
        Some(Ok(resp)) => {
            info!(trial = %trial_id, outcome = %kind, "reported");
            Ok(Some(ends || resp.done))
        }
        None => {
            warn!(trial = %trial_id, outcome = %kind, "gave up reporting at shutdown; the lease will expire and the trial run again");
            Ok(None)
        }
        Some(Err(status)) if status.code() == Code::InvalidArgument => {
            warn!(trial = %trial_id, outcome = %kind, message = status.message(), "completion refused as invalid");
            Err(status.message().to_owned())
        }
        Some(Err(status)) => {
            warn!(trial = %trial_id, code = ?status.code(), message = status.message(), "completion refused");
            Ok(None)
        }
    }
}
