//! The coordinator's Prometheus metrics, built once and passed down: names
//! `convsweep_<thing>_<unit>`, histograms for latencies, no per-trial or per-worker labels.
//!
//! Counters and histograms are updated where things happen; the gauges (trials by sweep and
//! state, queue depth, active leases, workers) are read from the store when `/metrics` is
//! scraped, so they always agree with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the trial gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepState {
    /// The sweep.
    pub sweep: String,
    /// The trial state.
    pub state: String,
}

/// Labels of the RPC metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    /// The method (`Lease`, `GetStatus`, ...), `other` for a path that is none of ours.
    pub method: String,
    /// The gRPC status code (`Ok`, `Unauthenticated`, ...).
    pub code: String,
}

/// A label with one value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// Its value.
    pub value: String,
}

/// Why a trial went back to the queue.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Requeue {
    /// `expired`, `retryable_failure`, `preempted` or `resumed`.
    pub reason: String,
}

/// Labels of the worker gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerState {
    /// `alive` (heard from within three heartbeat intervals) or `lost`.
    pub state: String,
}

/// Labels of the store transaction histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOp {
    /// The store operation (`lease`, `heartbeat`, `report_epochs`, ...).
    pub op: String,
}

/// Every method the coordinator serves; other paths are counted as `other`, so that a client
/// cannot grow the label set.
const METHODS: &[&str] = &[
    "Register",
    "Lease",
    "Heartbeat",
    "ReportEpochs",
    "Complete",
    "SubmitSweep",
    "GetStatus",
    "Cancel",
    "Resume",
    "ExtendSweep",
    "Export",
    "Watch",
    "Check",
    "ServerReflectionInfo",
];

fn latency() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The registry and every metric in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Trials by sweep and state (set at scrape).
    pub trials: Family<SweepState, Gauge>,
    /// Trials waiting for a worker: pending and preempted (set at scrape).
    pub queue_depth: Gauge,
    /// Leased and running trials (set at scrape).
    pub active_leases: Gauge,
    /// How long `Lease` calls waited before they answered.
    pub lease_wait: Histogram,
    /// Leases that expired without a heartbeat.
    pub lease_expirations: Counter,
    /// Trials put back in the queue, by reason.
    pub requeues: Family<Requeue, Counter>,
    /// Workers by state (set at scrape).
    pub workers: Family<WorkerState, Gauge>,
    /// Seconds since the oldest heartbeat of each worker state's workers (set at scrape).
    pub oldest_heartbeat: Family<WorkerState, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// RPCs by method and status code.
    pub rpcs: Family<Rpc, Counter>,
    /// RPC latency by method and status code.
    pub rpc_seconds: Family<Rpc, Histogram, fn() -> Histogram>,
    /// Store transaction time by operation.
    pub store_seconds: Family<StoreOp, Histogram, fn() -> Histogram>,
    /// Epoch rows the store took in.
    pub epoch_rows: Counter,
    /// Writes per committed transaction (group commit).
    pub batch_size: Histogram,
    /// 1 where this coordinator reports the state's gauges (always, alone on its state; one of
    /// the coordinators that share a state), 0 where another does.
    pub state_reporter: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            trials: Family::default(),
            queue_depth: Gauge::default(),
            active_leases: Gauge::default(),
            lease_wait: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            lease_expirations: Counter::default(),
            requeues: Family::default(),
            workers: Family::default(),
            oldest_heartbeat: Family::default(),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(latency),
            store_seconds: Family::new_with_constructor(latency),
            epoch_rows: Counter::default(),
            // 1 to 4096 writes.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            state_reporter: Gauge::default(),
            registry: Registry::default(),
        };
        m.registry
            .register("convsweep_trials", "Trials by sweep and state", m.trials.clone());
        m.registry.register(
            "convsweep_queue_depth",
            "Trials waiting for a worker (pending and preempted)",
            m.queue_depth.clone(),
        );
        m.registry.register(
            "convsweep_active_leases",
            "Trials leased to a worker (leased and running)",
            m.active_leases.clone(),
        );
        m.registry.register(
            "convsweep_lease_wait_seconds",
            "How long Lease calls waited before they answered",
            m.lease_wait.clone(),
        );
        m.registry.register(
            "convsweep_lease_expirations",
            "Leases that expired without a heartbeat",
            m.lease_expirations.clone(),
        );
        m.registry.register(
            "convsweep_requeues",
            "Trials put back in the queue, by reason",
            m.requeues.clone(),
        );
        m.registry
            .register("convsweep_workers", "Workers by state", m.workers.clone());
        m.registry.register(
            "convsweep_worker_oldest_heartbeat_seconds",
            "Seconds since the oldest last heartbeat among the workers of each state",
            m.oldest_heartbeat.clone(),
        );
        m.registry
            .register("convsweep_rpcs", "RPCs by method and status code", m.rpcs.clone());
        m.registry.register(
            "convsweep_rpc_duration_seconds",
            "RPC latency by method and status code",
            m.rpc_seconds.clone(),
        );
        m.registry.register(
            "convsweep_store_transaction_seconds",
            "Store transaction time by operation",
            m.store_seconds.clone(),
        );
        m.registry.register(
            "convsweep_epoch_rows_ingested",
            "Epoch rows the store took in",
            m.epoch_rows.clone(),
        );
        m.registry.register(
            "convsweep_store_batch_writes",
            "Worker RPC writes committed per store transaction (group commit)",
            m.batch_size.clone(),
        );
        m.registry.register(
            "convsweep_state_reporter",
            "1 where this coordinator reports the state gauges (trials, queue depth, active leases, workers); of \
             coordinators sharing a state one does, so that the gauges sum over them",
            m.state_reporter.clone(),
        );
        m
    }

    /// Records one RPC.
    pub fn rpc(&self, method: &str, code: tonic::Code, took: Duration) {
        let method = if METHODS.contains(&method) { method } else { "other" };
        let labels = Rpc {
            method: method.to_owned(),
            code: format!("{code:?}"),
        };
        self.rpcs.get_or_create(&labels).inc();
        self.rpc_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Records one store transaction.
    pub fn store(&self, op: &str, took: Duration) {
        self.store_seconds
            .get_or_create(&StoreOp { op: op.to_owned() })
            .observe(took.as_secs_f64());
    }

    /// Counts trials put back in the queue.
    pub fn requeued(&self, reason: &str, n: u64) {
        if n > 0 {
            self.requeues
                .get_or_create(&Requeue {
                    reason: reason.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A tower layer that times every request of the services it wraps and counts it by method
/// and status code. The code is the `grpc-status` of the response headers, where tonic puts
/// every error of a unary call; a response without one carries its status in the trailers,
/// which for our unary calls is `Ok`.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Internal,
            };
            metrics.rpc(&method, code, started.elapsed());
            response
        })
    }
}
