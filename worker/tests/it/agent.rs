//! The agent against a real coordinator over loopback gRPC, driven by scripted trainers; and
//! the real trainer's failure classes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::spec::{DatasetName, TrainMode};
use convsweep_proto::{Lease, Outcome, SweepId, pb};
use convsweep_worker::control::{Signal, TrainEnd, TrainError, Trainer, TrialControl};
use convsweep_worker::trainer::TchTrainer;
use convsweep_worker::{WorkerConfig, run};
use tokio_util::sync::CancellationToken;

use crate::common::{model, trial};

const SPEC: &str = r#"
name = "agent"
[dataset]
name = "synthetic"
[model]
arch = "resnet"
depth = 8
train_mode = "learned"
init = "kaiming-uniform"
[grid]
kernel_size = [3, 5, 7, 9]
"#;

type Script = dyn Fn(&Lease, &TrialControl) -> TrainEnd + Send + Sync;

struct Scripted {
    script: Box<Script>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Scripted {
    fn new(script: impl Fn(&Lease, &TrialControl) -> TrainEnd + Send + Sync + 'static) -> Arc<Scripted> {
        Arc::new(Scripted {
            script: Box::new(script),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        })
    }
}

impl Trainer for Scripted {
    fn devices(&self) -> Vec<String> {
        vec!["scripted".into()]
    }

    fn run(&self, lease: &Lease, ctl: &TrialControl) -> TrainEnd {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let end = (self.script)(lease, ctl);
        self.running.fetch_sub(1, Ordering::SeqCst);
        end
    }
}

fn success() -> TrainEnd {
    TrainEnd::Finished(Outcome::Succeeded(pb::TrialResult {
        final_test_acc: 0.5,
        final_train_acc: 0.5,
        best_test_acc: 0.5,
        best_epoch: 1,
        ..Default::default()
    }))
}

/// Waits for `signal`, then returns what `on` says.
fn until(ctl: &TrialControl, on: impl Fn(Signal) -> Option<TrainEnd>) -> TrainEnd {
    let start = Instant::now();
    loop {
        if let Some(end) = on(ctl.signal()) {
            return end;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no signal came");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Setup {
    coordinator: Arc<Coordinator>,
    url: String,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

async fn coordinator() -> Setup {
    coordinator_with(|_| {}).await
}

/// A served coordinator with the tests' settings, changed by `adjust`.
async fn coordinator_with(adjust: impl FnOnce(&mut CoordinatorConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig {
        state_dir: dir.path().to_owned(),
        heartbeat_interval: Duration::from_millis(100),
        lease_timeout: Duration::from_secs(5),
        max_attempts: 2,
        max_lease_wait: Duration::from_millis(500),
        expiry_interval: Duration::from_millis(50),
        watch_interval: Duration::from_millis(100),
        max_trials_per_sweep: convsweep_coordinator::sweep::DEFAULT_MAX_TRIALS_PER_SWEEP,
        ..Default::default()
    };
    adjust(&mut config);
    let coordinator = Coordinator::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(convsweep_coordinator::serve(listener, coordinator.clone(), {
        let s = stop.clone();
        async move { s.cancelled().await }
    }));
    Setup {
        coordinator,
        url,
        _dir: dir,
        stop,
    }
}

impl Setup {
    /// Drains the coordinator, waits for the worker to exit cleanly, and stops the server.
    async fn drain_and_join<E: std::fmt::Debug>(self, agent: tokio::task::JoinHandle<Result<(), E>>) {
        self.coordinator.set_drain(true);
        tokio::time::timeout(Duration::from_secs(10), agent)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        self.stop.cancel();
    }
}

fn config(url: &str, slots: u32) -> WorkerConfig {
    WorkerConfig {
        coordinator: convsweep_proto::client::Connection::plain(url),
        name: "test".into(),
        slots,
        lease_wait: Duration::from_millis(300),
        max_backoff: Duration::from_millis(200),
        grace: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(30),
        exit_when_idle: false,
        max_disconnected: None,
    }
}

async fn wait_for(c: &Coordinator, what: &str, done: impl Fn(&pb::StateCounts) -> bool) -> pb::SweepStatus {
    let start = Instant::now();
    loop {
        let s = c.status("agent").unwrap().sweeps.remove(0);
        if done(&s.counts.unwrap()) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: {:?}", s.counts);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_trainer_fails_its_trial_and_the_worker_carries_on() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let trainer = Scripted::new(|lease, _| {
        if lease.spec.model.kernel_size == 5 {
            panic!("kernel 5 is cursed");
        }
        success()
    });
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(config(&s.url, 1), trainer, shutdown.clone()));
    let status = wait_for(&s.coordinator, "all done", |c| c.succeeded + c.failed == 4).await;
    assert_eq!(status.counts.unwrap().succeeded, 3);
    let reason = &status.failures[0].reason;
    assert!(
        reason.contains("trainer panicked: kernel 5 is cursed") && reason.contains("2 failed attempts"),
        "{reason}"
    );
    assert!(!agent.is_finished(), "the worker is still serving");
    s.drain_and_join(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_run_trials_side_by_side() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let trainer = Scripted::new(|_, _| {
        std::thread::sleep(Duration::from_millis(400));
        success()
    });
    let agent = tokio::spawn(run(config(&s.url, 2), trainer.clone(), CancellationToken::new()));
    wait_for(&s.coordinator, "all done", |c| c.succeeded == 4).await;
    assert_eq!(trainer.max_running.load(Ordering::SeqCst), 2);
    s.drain_and_join(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_running_trials_stop_at_the_next_heartbeat() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let trainer = Scripted::new(|_, ctl| until(ctl, |sig| (sig == Signal::Stop).then_some(TrainEnd::Stopped)));
    let agent = tokio::spawn(run(config(&s.url, 2), trainer.clone(), CancellationToken::new()));
    wait_for(&s.coordinator, "two running", |c| c.leased + c.running == 2).await;
    assert_eq!(s.coordinator.cancel("agent", &[]).unwrap(), 4);
    let start = Instant::now();
    while trainer.running.load(Ordering::SeqCst) > 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "trainers were not stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = s.coordinator.status("agent").unwrap().sweeps.remove(0);
    assert_eq!(status.counts.unwrap().cancelled, 4);
    // Resume puts them back.
    assert_eq!(s.coordinator.resume("agent").unwrap(), 4);
    assert_eq!(
        s.coordinator.status("agent").unwrap().sweeps[0]
            .counts
            .unwrap()
            .cancelled,
        0
    );
    s.coordinator.cancel("agent", &[]).unwrap();
    s.drain_and_join(agent).await;
}

/// A stopping rule through the agent: the coordinator decides at rung 1 from the reported
/// validation accuracy, its heartbeat answer says STOP for the two worse configurations, their
/// trainers see the halt and end `stopped`; the better two run to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_directive_halts_the_trial_and_it_ends_stopped() {
    let s = coordinator().await;
    let spec = SPEC.replace("name = \"synthetic\"", "name = \"synthetic\"\nval_fraction = 0.2")
        + "[train]\nepochs = 2\n[stopping]\nrule = \"successive-halving\"\nrungs = [1]\nkeep = 0.5\n";
    s.coordinator.submit(&spec).unwrap();
    let trainer = Scripted::new(|lease, ctl| {
        let k = lease.spec.model.kernel_size;
        let val = f64::from(k) / 10.0;
        ctl.epoch(pb::EpochMetrics {
            epoch: 1,
            lr: 0.1,
            train_loss: 1.0,
            train_acc: 0.5,
            test_loss: 1.0,
            test_acc: 0.5,
            seconds: 0.1,
            val_loss: Some(1.0 - val),
            val_acc: Some(val),
        });
        if k >= 7 {
            return success();
        }
        until(ctl, |sig| {
            (sig == Signal::Halt).then_some(TrainEnd::Finished(Outcome::Stopped { epochs: 1 }))
        })
    });
    let agent = tokio::spawn(run(config(&s.url, 4), trainer, CancellationToken::new()));
    let status = wait_for(&s.coordinator, "all done", |c| c.succeeded + c.stopped == 4).await;
    let counts = status.counts.unwrap();
    assert_eq!((counts.succeeded, counts.stopped), (2, 2), "{counts:?}");
    let results = s.coordinator.export("agent").await.unwrap();
    for t in &results.trials {
        let want = if t.spec.model.kernel_size >= 7 {
            convsweep_proto::TrialState::Succeeded
        } else {
            convsweep_proto::TrialState::Stopped
        };
        assert_eq!(t.state, want, "k={}", t.spec.model.kernel_size);
    }
    let stopped: Vec<String> = results
        .decisions
        .iter()
        .filter(|d| !d.kept)
        .map(|d| d.config.clone())
        .collect();
    assert_eq!(stopped, vec!["kernel_size=3".to_owned(), "kernel_size=5".to_owned()]);
    s.drain_and_join(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_preempts_running_trials_within_the_grace_period() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let trainer = Scripted::new(|_, ctl| {
        until(ctl, |sig| {
            (sig == Signal::Preempt).then(|| {
                TrainEnd::Finished(Outcome::Preempted {
                    reason: "checkpointed at epoch 3".into(),
                })
            })
        })
    });
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(config(&s.url, 2), trainer, shutdown.clone()));
    wait_for(&s.coordinator, "two running", |c| c.leased + c.running == 2).await;
    shutdown.cancel();
    // The grace (5 s) is what is asserted: reports still pending when it ends are abandoned,
    // so both trials counted preempted means both were preempted and reported within it. The
    // timeout only keeps a hang from blocking the suite.
    tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("the worker exits after its grace period at the latest")
        .unwrap()
        .unwrap();
    let counts = s.coordinator.status("agent").unwrap().sweeps[0].counts.unwrap();
    assert_eq!((counts.preempted, counts.pending), (2, 2), "{counts:?}");
    s.stop.cancel();
}

fn lease(spec: convsweep_proto::TrialSpec) -> Lease {
    Lease {
        trial_id: spec.id(),
        sweep_id: SweepId::parse("t").unwrap(),
        spec,
        attempt: 1,
        token: "l".into(),
    }
}

#[test]
fn a_diverging_trial_fails_without_retry() {
    let mut spec = trial(model(8, 4, 3, TrainMode::Learned), 64, 2);
    spec.train.lr = 1e12;
    let (ctl, _s, _e) = TrialControl::new();
    match TchTrainer::new(tch::Device::Cpu, None).run(&lease(spec), &ctl) {
        TrainEnd::Finished(Outcome::Failed { retryable, reason }) => {
            assert!(!retryable);
            assert!(reason.contains("non-finite training loss"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unreadable_dataset_fails_with_its_reason_and_may_be_retried() {
    let mut spec = trial(model(8, 4, 3, TrainMode::Learned), 64, 1);
    spec.dataset.name = DatasetName::Cifar10;
    spec.dataset.root = Some("/nonexistent/cifar".into());
    spec.dataset.noise = None;
    spec.dataset.data_seed = None;
    let (ctl, _s, _e) = TrialControl::new();
    match TchTrainer::new(tch::Device::Cpu, None).run(&lease(spec), &ctl) {
        TrainEnd::Finished(Outcome::Failed { retryable, reason }) => {
            // Retryable (another worker may have the files), bounded by max_attempts.
            assert!(retryable);
            assert!(
                reason.contains("/nonexistent/cifar/data_batch_1.bin: missing"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_memory_is_not_retried() {
    let e = TrainError::from_panic_message("CUDA out of memory. Tried to allocate 20.00 GiB\nmore");
    assert!(matches!(e, TrainError::OutOfMemory(_)));
    match e.into_outcome() {
        Outcome::Failed { retryable, reason } => {
            assert!(!retryable);
            assert_eq!(reason, "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB");
        }
        other => panic!("{other:?}"),
    }
    assert!(TrainError::from_panic_message("index out of range").retryable());

    // As it reached the coordinator from an H200: tch's error inside an unwrap, the C++
    // backtrace after escaped newlines. The reason keeps PyTorch's message, not the backtrace.
    let msg = concat!(
        "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried to allocate ",
        "19.53 GiB. GPU 0 has a total capacity of 139.80 GiB of which 1.67 GiB is free.\\n",
        "Exception raised from malloc at /pytorch/c10/cuda/CUDACachingAllocator.cpp:1574 (most ",
        "recent call first):\\nframe #0: c10::Error::Error(c10::SourceLocation) + 0x9d\")"
    );
    match TrainError::from_panic_message(msg) {
        TrainError::OutOfMemory(m) => assert_eq!(
            m,
            "CUDA out of memory. Tried to allocate 19.53 GiB. GPU 0 has a total capacity of 139.80 GiB of which 1.67 GiB is free."
        ),
        other => panic!("{other:?}"),
    }
    let short = "called `Result::unwrap()` on an `Err` value: Torch(\"see (https://x.org/a)\")";
    match TrainError::from_panic_message(short) {
        TrainError::Internal(m) => assert_eq!(m, "trainer panicked: see (https://x.org/a)"),
        other => panic!("{other:?}"),
    }
    let long = format!(
        "called `Result::unwrap()` on an `Err` value: Torch(\"{}\")",
        "x".repeat(5000)
    );
    match TrainError::from_panic_message(&long) {
        TrainError::Internal(m) => assert!(m.len() < 700 && m.ends_with("..."), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_exits_when_asked_to_once_the_sweep_is_drained() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let trainer = Scripted::new(|_, _| success());
    let config = WorkerConfig {
        exit_when_idle: true,
        ..config(&s.url, 2)
    };
    let agent = tokio::spawn(run(config, trainer, CancellationToken::new()));
    tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the worker exits by itself")
        .unwrap()
        .unwrap();
    let status = s.coordinator.status("agent").unwrap().sweeps.remove(0);
    assert_eq!(status.counts.unwrap().succeeded, 4, "after every trial ran");
    s.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_coordinator_gives_up_by_name() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let config = WorkerConfig {
        connect_timeout: Duration::from_secs(1),
        ..config(&url, 1)
    };
    let started = Instant::now();
    let err = run(config, Scripted::new(|_, _| success()), CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&url) && err.contains("connect timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_coordinator_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    // The port is bound but not listening: the worker's connections are refused until the
    // coordinator listens on this very socket (nobody else can take the port meanwhile).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let url = format!("http://{addr}");
    let config = WorkerConfig {
        exit_when_idle: true,
        ..config(&url, 1)
    };
    let agent = tokio::spawn(run(config, Scripted::new(|_, _| success()), CancellationToken::new()));
    // The coordinator comes up later on that address, with work.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: dir.path().to_owned(),
        heartbeat_interval: Duration::from_millis(100),
        max_lease_wait: Duration::from_millis(500),
        ..Default::default()
    })
    .unwrap();
    coordinator.submit(SPEC).unwrap();
    let listener = socket.listen(1024).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(convsweep_coordinator::serve(listener, coordinator.clone(), {
        let s = stop.clone();
        async move { s.cancelled().await }
    }));
    tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the worker found the coordinator, ran the sweep and exited")
        .unwrap()
        .unwrap();
    assert_eq!(
        coordinator.status("agent").unwrap().sweeps[0].counts.unwrap().succeeded,
        4
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_registers_again_with_a_coordinator_that_forgot_it() {
    // A first coordinator knows the worker; a second, on a fresh state folder, takes over the
    // address: the worker's id means nothing to it, so the worker registers again and works.
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &std::path::Path| {
        Coordinator::open(CoordinatorConfig {
            state_dir: dir.to_owned(),
            heartbeat_interval: Duration::from_millis(100),
            max_lease_wait: Duration::from_millis(300),
            ..Default::default()
        })
        .unwrap()
    };
    let first = open(first_dir.path());
    // One listening socket for both coordinators: the second takes over the port the first
    // served (connections made in between wait in its backlog).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    held.set_nonblocking(true).unwrap();
    let addr = held.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(held.try_clone().unwrap()).unwrap();
    let stop_first = CancellationToken::new();
    let server = tokio::spawn(convsweep_coordinator::serve(listener, first.clone(), {
        let s = stop_first.clone();
        async move { s.cancelled().await }
    }));
    let agent = tokio::spawn(run(
        config(&format!("http://{addr}"), 1),
        Scripted::new(|_, _| success()),
        CancellationToken::new(),
    ));
    for _ in 0..100 {
        if first.status("").unwrap().workers_alive == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first.status("").unwrap().workers_alive, 1);
    stop_first.cancel();
    server.await.unwrap().unwrap();

    let second = open(second_dir.path());
    second.submit(SPEC).unwrap();
    let listener = tokio::net::TcpListener::from_std(held).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(convsweep_coordinator::serve(listener, second.clone(), {
        let s = stop.clone();
        async move { s.cancelled().await }
    }));
    wait_for(&second, "the sweep ran on the worker that registered again", |c| {
        c.succeeded == 4
    })
    .await;
    second.set_drain(true);
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    stop.cancel();
}

/// A coordinator in front of the real one that misbehaves on purpose: leases more than asked,
/// drops heartbeats on request, and records the lease tokens of every heartbeat.
struct Meddler {
    inner: Arc<Coordinator>,
    extra_leases: u32,
    drop_heartbeats: Arc<std::sync::atomic::AtomicBool>,
    heartbeats: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Meddler {
    async fn register(
        &self,
        req: tonic::Request<pb::RegisterRequest>,
    ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
        // The coordinator grants no more than a worker's slots: claim the extra ones too.
        let mut req = req.into_inner();
        req.slots += self.extra_leases;
        Ok(tonic::Response::new(self.inner.register(req)?))
    }

    async fn lease(
        &self,
        req: tonic::Request<pb::LeaseRequest>,
    ) -> Result<tonic::Response<pb::LeaseResponse>, tonic::Status> {
        let mut req = req.into_inner();
        req.max_trials += self.extra_leases;
        Ok(tonic::Response::new(self.inner.lease(req).await?))
    }

    async fn heartbeat(
        &self,
        req: tonic::Request<pb::HeartbeatRequest>,
    ) -> Result<tonic::Response<pb::HeartbeatResponse>, tonic::Status> {
        if self.drop_heartbeats.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("heartbeat dropped by the test"));
        }
        let req = req.into_inner();
        let tokens = req.leases.iter().map(|l| l.lease_token.clone()).collect();
        self.heartbeats.lock().unwrap().push(tokens);
        Ok(tonic::Response::new(self.inner.heartbeat(req).await?))
    }

    async fn report_epochs(
        &self,
        req: tonic::Request<pb::ReportEpochsRequest>,
    ) -> Result<tonic::Response<pb::ReportEpochsResponse>, tonic::Status> {
        self.inner.report_epochs(req.into_inner()).await?;
        Ok(tonic::Response::new(pb::ReportEpochsResponse {}))
    }

    async fn complete(
        &self,
        req: tonic::Request<pb::CompleteRequest>,
    ) -> Result<tonic::Response<pb::CompleteResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.inner.complete(req.into_inner()).await?))
    }
}

impl Meddler {
    fn new(inner: Arc<Coordinator>, extra_leases: u32) -> Meddler {
        Meddler {
            inner,
            extra_leases,
            drop_heartbeats: Arc::default(),
            heartbeats: Arc::default(),
        }
    }

    /// Serves it on a loopback port; returns the URL.
    async fn serve(self, stop: CancellationToken) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::worker_service_server::WorkerServiceServer::new(self))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                    stop.cancelled().await
                }),
        );
        url
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_leases_are_handed_back_not_a_panic() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let url = Meddler::new(s.coordinator.clone(), 2).serve(s.stop.clone()).await;
    let trainer = Scripted::new(|_, _| {
        std::thread::sleep(Duration::from_millis(50));
        success()
    });
    let agent = tokio::spawn(run(config(&url, 1), trainer.clone(), CancellationToken::new()));
    let status = wait_for(&s.coordinator, "all done", |c| c.succeeded == 4).await;
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert_eq!(
        trainer.max_running.load(Ordering::SeqCst),
        1,
        "one slot, one trial at a time"
    );
    assert!(!agent.is_finished(), "the worker is still serving");
    s.drain_and_join(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_attempt_ending_does_not_stop_the_heartbeats_of_its_successor() {
    // The served coordinator runs the lease expiry; the worker talks to the meddler.
    let s = coordinator_with(|c| {
        c.lease_timeout = Duration::from_millis(1500);
        c.max_attempts = 3;
        c.max_lease_wait = Duration::from_millis(300);
    })
    .await;
    s.coordinator
        .submit(&SPEC.replace("kernel_size = [3, 5, 7, 9]", "kernel_size = [3]"))
        .unwrap();
    let meddler = Meddler::new(s.coordinator.clone(), 0);
    let (drop_heartbeats, heartbeats) = (meddler.drop_heartbeats.clone(), meddler.heartbeats.clone());
    let url = meddler.serve(s.stop.clone()).await;

    let second_started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trainer = Scripted::new({
        let (second_started, first_ended) = (second_started.clone(), first_ended.clone());
        move |lease, _| {
            let wait = |flag: &std::sync::atomic::AtomicBool, what: &str| {
                let start = Instant::now();
                while !flag.load(Ordering::SeqCst) {
                    assert!(start.elapsed() < Duration::from_secs(30), "{what} never happened");
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            if lease.attempt == 1 {
                // Heartbeats stop reaching the coordinator: this lease expires and the trial is
                // leased again, to this worker's other slot.
                drop_heartbeats.store(true, Ordering::SeqCst);
                wait(&second_started, "the second attempt");
                first_ended.store(true, Ordering::SeqCst);
                return TrainEnd::Stopped;
            }
            if lease.attempt > 2 {
                // Attempt 2's lease expired: its heartbeats stopped.
                return TrainEnd::Finished(Outcome::Failed {
                    retryable: false,
                    reason: format!("attempt {}: the second attempt's lease expired", lease.attempt),
                });
            }
            second_started.store(true, Ordering::SeqCst);
            drop_heartbeats.store(false, Ordering::SeqCst);
            wait(&first_ended, "the end of the first attempt");
            // Once the first attempt is cleaned up, heartbeats must still carry this lease.
            std::thread::sleep(Duration::from_millis(500));
            let seen = heartbeats.lock().unwrap().len();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if heartbeats.lock().unwrap()[seen..]
                    .iter()
                    .any(|h| h.contains(&lease.token))
                {
                    return success();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            TrainEnd::Finished(Outcome::Failed {
                retryable: false,
                reason: "the worker stopped heartbeating this lease".into(),
            })
        }
    });
    let agent = tokio::spawn(run(config(&url, 2), trainer, CancellationToken::new()));
    let status = wait_for(&s.coordinator, "the trial done", |c| c.succeeded + c.failed == 1).await;
    assert!(status.failures.is_empty(), "{:?}", status.failures);
    assert_eq!(status.counts.unwrap().succeeded, 1);
    s.drain_and_join(agent).await;
}

/// Runs each trial by its kernel size, and records the trials the worker said ended for good,
/// with whether each call ran where blocking is allowed (`Handle::block_on` panics on a
/// runtime thread and works on a blocking-pool thread).
struct EndProbe {
    leased: std::sync::Mutex<std::collections::BTreeMap<u32, String>>,
    ended: std::sync::Mutex<Vec<(u32, bool)>>,
}

impl Trainer for EndProbe {
    fn devices(&self) -> Vec<String> {
        vec!["probe".into()]
    }

    fn run(&self, lease: &Lease, ctl: &TrialControl) -> TrainEnd {
        let k = lease.spec.model.kernel_size;
        self.leased.lock().unwrap().insert(k, lease.trial_id.to_string());
        match (k, lease.attempt) {
            (5, _) => TrainEnd::Finished(Outcome::Failed {
                retryable: true,
                reason: "flaky".into(),
            }),
            (7, _) => until(ctl, |s| (s == Signal::Stop).then_some(TrainEnd::Stopped)),
            (9, 1) => TrainEnd::Finished(Outcome::Preempted {
                reason: "node drained".into(),
            }),
            _ => success(),
        }
    }

    fn ended(&self, lease: &Lease) {
        let handle = tokio::runtime::Handle::current();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle.block_on(async {}))).is_ok();
        self.ended.lock().unwrap().push((lease.spec.model.kernel_size, ok));
    }
}

/// The trainer hears once, off the async runtime, of each trial that is done for good, and of
/// no other: a success (k = 3); a retryable failure only after its last attempt, as the
/// coordinator says (k = 5, two attempts); a cancel (k = 7); a preempted trial only once it
/// succeeded later (k = 9). That is when a worker removes a trial's checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trainer_hears_off_the_runtime_which_trials_are_done_for_good() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let probe = Arc::new(EndProbe {
        leased: std::sync::Mutex::default(),
        ended: std::sync::Mutex::default(),
    });
    let agent = tokio::spawn(run(config(&s.url, 4), probe.clone(), CancellationToken::new()));
    let start = Instant::now();
    let seven = loop {
        if let Some(id) = probe.leased.lock().unwrap().get(&7) {
            break id.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "k = 7 never leased");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s.coordinator.cancel("agent", &[seven]).unwrap(), 1);
    wait_for(&s.coordinator, "all done", |c| {
        c.succeeded == 2 && c.failed == 1 && c.cancelled == 1
    })
    .await;
    // The cancelled trial's stop comes with a heartbeat: wait for its end to be heard.
    let start = Instant::now();
    while probe.ended.lock().unwrap().len() < 4 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.drain_and_join(agent).await;
    let mut ended = probe.ended.lock().unwrap().clone();
    ended.sort();
    assert_eq!(ended, vec![(3, true), (5, true), (7, true), (9, true)]);
}

/// A trial whose report or result the coordinator would refuse fails at once, not retryably,
/// naming the field: a non-finite loss caught here before sending, an epoch past the trial's
/// epochs and a best epoch past them refused there with `INVALID_ARGUMENT`. None is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_report_fails_its_trial_for_good_naming_the_field() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let epoch = |n: u32, loss: f64| pb::EpochMetrics {
        epoch: n,
        lr: 0.1,
        train_loss: loss,
        train_acc: 0.5,
        test_loss: 1.0,
        test_acc: 0.5,
        seconds: 0.1,
        val_loss: None,
        val_acc: None,
    };
    let trainer = Scripted::new(move |lease, ctl| match lease.spec.model.kernel_size {
        3 => {
            ctl.epoch(epoch(1, f64::NAN));
            success()
        }
        5 => {
            // SPEC trains 75 epochs.
            ctl.epoch(epoch(76, 1.0));
            until(ctl, |s| (s == Signal::Stop).then(success))
        }
        7 => TrainEnd::Finished(Outcome::Succeeded(pb::TrialResult {
            best_epoch: 1_000,
            ..match success() {
                TrainEnd::Finished(Outcome::Succeeded(r)) => r,
                _ => unreachable!(),
            }
        })),
        _ => success(),
    });
    let agent = tokio::spawn(run(config(&s.url, 1), trainer, CancellationToken::new()));
    let status = wait_for(&s.coordinator, "all done", |c| c.succeeded + c.failed == 4).await;
    assert_eq!(status.counts.unwrap().succeeded, 1);
    let reasons: Vec<&str> = status.failures.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    for field in ["epochs[0].epoch", "epochs[0].train_loss", "result.best_epoch"] {
        let of_field: Vec<_> = reasons.iter().filter(|r| r.contains(field)).collect();
        assert_eq!(of_field.len(), 1, "{field}: {reasons:#?}");
        assert!(
            of_field[0].contains("attempt 1 failed (not retryable)"),
            "{}",
            of_field[0]
        );
    }
    let results = s.coordinator.export("agent").await.unwrap();
    assert!(results.trials.iter().all(|t| t.attempts == 1), "nothing was retried");
    s.drain_and_join(agent).await;
}

/// A worker given a bound on how long it may go without its coordinator stops its trials and
/// exits with an error naming the bound once the coordinator is gone that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_its_coordinator_for_longer_than_its_bound_exits() {
    let s = coordinator().await;
    s.coordinator.submit(SPEC).unwrap();
    let trainer = Scripted::new(|_, ctl| until(ctl, |sig| (sig != Signal::Run).then_some(TrainEnd::Stopped)));
    let agent = tokio::spawn(run(
        WorkerConfig {
            max_disconnected: Some(Duration::from_secs(1)),
            ..config(&s.url, 1)
        },
        trainer.clone(),
        CancellationToken::new(),
    ));
    wait_for(&s.coordinator, "a trial runs", |c| c.leased + c.running == 1).await;
    // The coordinator goes away for good.
    s.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("the worker exits on its own")
        .unwrap();
    let err = ended.unwrap_err().to_string();
    assert!(
        err.contains("lost the coordinator") && err.contains("--max-disconnected-secs"),
        "{err}"
    );
    assert_eq!(trainer.running.load(Ordering::SeqCst), 0, "its trial was stopped");
}
