//! The ops port: plaintext and without a token, for kubelets, Prometheus and a browser. It
//! serves the standard `grpc.health.v1` service (a Kubernetes `grpc:` probe), HTTP `/healthz`
//! (the process is up), `/readyz` (the store is open and lease expiry runs), `/metrics` (the
//! OpenMetrics text format), and the live status page `/` with the `/status.json` it polls
//! (no external assets). Nothing on it changes state or shows a token.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use convsweep_proto::pb;
use tokio::net::TcpListener;
use tracing::info;

use crate::coordinator::Coordinator;
use crate::error::Result;

/// The content type of the OpenMetrics text format that `/metrics` answers in.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(c): State<Arc<Coordinator>>) -> impl IntoResponse {
    if c.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: lease expiry is not running\n",
        )
    }
}

/// The status page: HTML, CSS and script in one file.
const STATUS_PAGE: &str = include_str!("status_page.html");

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        STATUS_PAGE,
    )
}

/// What the status page shows, as JSON.
pub fn snapshot_json(s: &pb::WatchSnapshot) -> serde_json::Value {
    let status = s.status.clone().unwrap_or_default();
    let sweeps: Vec<serde_json::Value> = status
        .sweeps
        .iter()
        .map(|w| {
            let c = w.counts.unwrap_or_default();
            serde_json::json!({
                "sweep": w.sweep_id,
                "total": w.total,
                "done": c.succeeded + c.failed + c.cancelled,
                "succeeded": c.succeeded,
                "failed": c.failed,
                "running": c.leased + c.running,
                "pending": c.pending + c.preempted,
                "eta_seconds": w.eta_seconds,
                "failures": w.failures.iter().map(|f| serde_json::json!({
                    "trial": f.trial_id, "attempt": f.attempt, "reason": f.reason,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let active: Vec<serde_json::Value> = s
        .active
        .iter()
        .map(|a| {
            serde_json::json!({
                "sweep": a.sweep_id, "trial": a.trial_id, "label": a.label, "state": a.state,
                "attempt": a.attempt, "epoch": a.epoch, "epochs": a.epochs, "test_acc": a.test_acc,
            })
        })
        .collect();
    let accuracy: Vec<serde_json::Value> = s
        .accuracy
        .iter()
        .map(|c| {
            serde_json::json!({
                "sweep": c.sweep_id, "kernel_size": c.kernel_size, "train_mode": c.train_mode,
                "mean_test_acc": c.mean_test_acc, "trials": c.trials,
            })
        })
        .collect();
    serde_json::json!({
        "workers_alive": status.workers_alive,
        "sweeps": sweeps,
        "active": active,
        "accuracy": accuracy,
    })
}

async fn status_json(State(c): State<Arc<Coordinator>>) -> axum::response::Response {
    match c.snapshot("") {
        Ok(s) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            snapshot_json(&s).to_string(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("status unavailable: {e}\n")).into_response(),
    }
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> axum::response::Response {
    match c.scrape() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics unavailable: {e}\n")).into_response(),
    }
}

/// Serves the ops port on `listener` until `shutdown` completes.
pub async fn serve_ops(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let health_service = crate::service::health().await;
    let http = axum::Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        // Browsers ask for one; there is none.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(coordinator);
    let routes = tonic::service::Routes::from(http).add_service(health_service);
    info!(%addr, "ops port listening (health, readiness, metrics, status page)");
    tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(crate::service::no_delay(listener), shutdown)
        .await?;
    Ok(())
}
