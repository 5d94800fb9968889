//! The ops port: plaintext, for kubelets, Prometheus and a browser. It serves to anyone the
//! standard `grpc.health.v1` service (a Kubernetes `grpc:` probe), HTTP `/healthz` (the process
//! is up), `/readyz` (the store is open and lease expiry runs) and `/metrics` (the OpenMetrics
//! text format, with no trial or worker ids in it). The live status page `/` and the
//! `/status.json` it polls (the JSON of [`StatusJson`]: trial ids, accuracies, failure
//! reasons) answer only with the coordinator's token when it has one: as
//! `Authorization: Bearer`, or in the `HttpOnly`, `SameSite=Strict` cookie that the page's
//! sign-in form (`POST /login`) sets once. Nothing on it changes state, and nothing on its
//! thread waits on the store: the status and the metrics are read on the blocking pool at most
//! once a second and shared by every viewer ([`super::shared_read`]); requests beyond the
//! health endpoints are rate-limited (429), and connections capped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use convsweep_proto::client::Secret;
use convsweep_proto::status::StatusJson;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::info;

use super::shared_read::{RateLimit, SharedRead};
use crate::config::ServeConfig;
use crate::coordinator::Coordinator;
use crate::error::Result;

/// The content type of the OpenMetrics text format that `/metrics` answers in.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.coordinator.ready() {
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

/// The page that asks for the token once (a form that posts to `/login`).
const SIGN_IN_PAGE: &str = include_str!("sign_in.html");

/// The cookie that carries the token after signing in.
pub const TOKEN_COOKIE: &str = "convsweep_token";

/// What the ops port's handlers share.
#[derive(Clone)]
struct Ops {
    coordinator: Arc<Coordinator>,
    /// The token the page and `/status.json` require; none: they are open.
    token: Option<Arc<Secret>>,
    /// `/status.json`'s body, computed at most once a second for every viewer.
    status: Arc<SharedRead<String>>,
    /// `/metrics`' body, likewise.
    metrics: Arc<SharedRead<String>>,
    /// Requests a second to everything but the health endpoints.
    limit: Arc<RateLimit>,
}

/// How often the status and the metrics are read at most.
const READ_EVERY: Duration = Duration::from_secs(1);

/// Requests a second (and the burst) the ops port answers beyond its health endpoints.
const RATE: f64 = 50.0;
const BURST: f64 = 100.0;

fn too_many() -> axum::response::Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        "too many requests to the ops port: its status and metrics are read at most once a second anyway\n",
    )
        .into_response()
}

/// Percent-encodes everything but unreserved characters (a cookie value, a form field).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (a form's space); `None` for a broken escape.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

impl Ops {
    /// Whether `given` is the token (compared in constant time); false when there is none.
    fn is_token(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| bool::from(given.as_bytes().ct_eq(t.expose().as_bytes())))
    }

    /// Whether a request may see the status: no token is set, or it carries the token as a
    /// bearer header or in the sign-in cookie.
    fn allowed(&self, headers: &HeaderMap) -> bool {
        if self.token.is_none() {
            return true;
        }
        let matches = |given: &str| self.is_token(given);
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(matches);
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| k == TOKEN_COOKIE && percent_decode(v).is_some_and(|v| matches(&v)));
        bearer || cookie
    }
}

fn html(status: StatusCode, body: String) -> axum::response::Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; form-action 'self'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn sign_in(status: StatusCode, note: &str) -> axum::response::Response {
    html(status, SIGN_IN_PAGE.replace("{note}", note))
}

async fn page(State(ops): State<Ops>, headers: HeaderMap) -> axum::response::Response {
    if !ops.limit.allow() {
        return too_many();
    }
    if ops.allowed(&headers) {
        html(StatusCode::OK, STATUS_PAGE.to_owned())
    } else {
        // The form itself is no secret (and a 401 document is an error in a browser's console).
        sign_in(StatusCode::OK, "")
    }
}

/// `POST /login` with the form's `token`: sets the cookie and goes to the page, or asks again.
async fn login(State(ops): State<Ops>, body: axum::body::Bytes) -> axum::response::Response {
    if !ops.limit.allow() {
        return too_many();
    }
    let given = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| b.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .and_then(percent_decode)
        .unwrap_or_default();
    if !ops.is_token(given.trim()) {
        return sign_in(StatusCode::UNAUTHORIZED, "That is not this coordinator's token.");
    }
    let cookie = format!(
        "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        percent_encode(given.trim())
    );
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/".to_owned()), (header::SET_COOKIE, cookie)],
    )
        .into_response()
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

async fn status_json(State(ops): State<Ops>, headers: HeaderMap) -> axum::response::Response {
    if !ops.limit.allow() {
        return too_many();
    }
    if !ops.allowed(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"this coordinator's status needs its token: sign in at / or send Authorization: Bearer"}"#,
        )
            .into_response();
    }
    match &*ops.status.get().await {
        Ok(json) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            json.clone(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("status unavailable: {e}\n")).into_response(),
    }
}

async fn metrics(State(ops): State<Ops>) -> axum::response::Response {
    if !ops.limit.allow() {
        return too_many();
    }
    match &*ops.metrics.get().await {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text.clone()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics unavailable: {e}\n")).into_response(),
    }
}

/// Aborts a task when dropped: the shared reads stop with the port.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the ops port on `listener` until `shutdown` completes; the status page and
/// `/status.json` require the main port's token when it has one, and connections are capped
/// at its `max_ops_connections`.
pub async fn serve_ops(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let token = config.token.clone();
    let addr = listener.local_addr()?;
    let health_service = super::grpc::health().await;
    let ops = Ops {
        coordinator,
        token: token.map(Arc::new),
        status: SharedRead::new(READ_EVERY),
        metrics: SharedRead::new(READ_EVERY),
        limit: Arc::new(RateLimit::new(RATE, BURST)),
    };
    let _refresh = [
        AbortOnDrop(tokio::spawn(ops.status.clone().refresh({
            let c = ops.coordinator.clone();
            move || {
                let c = c.clone();
                async move {
                    off_thread(&c, |c| c.snapshot(""))
                        .await
                        .map(|s| serde_json::to_string(&StatusJson::from(&s)).unwrap_or_default())
                }
            }
        }))),
        AbortOnDrop(tokio::spawn(ops.metrics.clone().refresh({
            let c = ops.coordinator.clone();
            move || {
                let c = c.clone();
                async move { off_thread(&c, Coordinator::scrape).await }
            }
        }))),
    ];
    let http = axum::Router::new()
        .route("/", get(page))
        .route("/login", axum::routing::post(login))
        .route("/status.json", get(status_json))
        // Browsers ask for one; there is none.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops);
    let routes = tonic::service::Routes::from(http).add_service(health_service);
    info!(%addr, "ops port listening (health, readiness, metrics, status page)");
    tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            super::listen::capped(listener, config.limits.max_ops_connections),
            shutdown,
        )
        .await?;
    Ok(())
}
