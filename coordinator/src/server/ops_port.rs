//! The ops port: plaintext and without a token, for kubelets, Prometheus and a browser. It
//! serves the standard `grpc.health.v1` service (a Kubernetes `grpc:` probe), HTTP `/healthz`
//! (the process is up), `/readyz` (the store is open and lease expiry runs), `/metrics` (the
//! OpenMetrics text format), and the live status page `/` with the `/status.json` it polls
//! (no external assets, the JSON of [`StatusJson`]). Nothing on it changes state or shows a
//! token, and nothing on its thread waits on the store: the reads behind `/status.json` and
//! `/metrics` run on the blocking pool.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use convsweep_proto::status::StatusJson;
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

/// Runs a blocking read of the coordinator on this runtime's blocking pool, so that the one
/// thread that also answers `/healthz` and the gRPC health probe never waits on the store.
async fn off_thread<T: Send + 'static>(
    c: &Arc<Coordinator>,
    f: impl FnOnce(&Coordinator) -> Result<T> + Send + 'static,
) -> std::result::Result<T, String> {
    let c = c.clone();
    match tokio::task::spawn_blocking(move || f(&c)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the read failed: {e}")),
    }
}

async fn status_json(State(c): State<Arc<Coordinator>>) -> axum::response::Response {
    match off_thread(&c, |c| c.snapshot("")).await {
        Ok(s) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            serde_json::to_string(&StatusJson::from(&s)).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("status unavailable: {e}\n")).into_response(),
    }
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> axum::response::Response {
    match off_thread(&c, Coordinator::scrape).await {
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
    let health_service = super::grpc::health().await;
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
        .serve_with_incoming_shutdown(super::listen::no_delay(listener), shutdown)
        .await?;
    Ok(())
}
