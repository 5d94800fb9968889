//! The ops port: plaintext and without a token, for kubelets and Prometheus. It serves the
//! standard `grpc.health.v1` service (a Kubernetes `grpc:` probe), HTTP `/healthz` (the
//! process is up), `/readyz` (the store is open and lease expiry runs) and `/metrics` (the
//! OpenMetrics text format). Nothing on it changes state or shows a token.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use convsweep_proto::pb::admin_service_server::AdminServiceServer;
use convsweep_proto::pb::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use crate::coordinator::Coordinator;
use crate::error::Result;
use crate::service::{AdminApi, WorkerApi};

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
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let http = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(coordinator);
    let routes = tonic::service::Routes::from(http).add_service(health_service);
    info!(%addr, "ops port listening (health, readiness, metrics)");
    tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
