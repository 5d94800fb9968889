//! Reaching a coordinator: the URL (`http://` plaintext, `https://` TLS), the CA to trust, a
//! client certificate for mTLS, and the bearer token every call carries. Shared by the worker
//! and every client command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::worker_service_client::WorkerServiceClient;

/// Why a coordinator could not be reached, or a credential not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse or names another scheme.
    #[error("coordinator address {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A token that cannot be used (empty, or characters a header cannot carry).
    #[error("token {origin}: {reason}")]
    Token {
        /// Where it came from (a file, or `CONVSWEEP_TOKEN`).
        origin: String,
        /// What is wrong (never the token itself).
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("{file} {}: {source}", path.display())]
    TlsFile {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CA bundle or a client certificate with a plaintext (`http://`) address.
    #[error("a CA bundle or a client certificate is for TLS; use an https:// address instead of {url}")]
    TlsWithoutHttps {
        /// The address.
        url: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate needs both the certificate and its key")]
    CertWithoutKey,
    /// The transport could not be set up or connect.
    #[error("cannot reach the coordinator at {url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// A client's TLS file, for errors: the CLI says which flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// [`Connection::tls_ca`].
    Ca,
    /// [`Connection::tls_cert`].
    Cert,
    /// [`Connection::tls_key`].
    Key,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFile::Ca => "CA bundle",
            TlsFile::Cert => "client certificate",
            TlsFile::Key => "client key",
        })
    }
}

/// A bearer token. Its `Debug` never shows it, so it cannot leak into a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// A token from its value; `origin` names where it came from, for errors. Surrounding
    /// whitespace (a file's trailing newline) is dropped.
    pub fn new(value: &str, origin: &str) -> Result<Secret, ClientError> {
        let value = value.trim();
        let bad = |reason: &str| ClientError::Token {
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        if value.is_empty() {
            return Err(bad("is empty"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "has characters other than visible ASCII (a header cannot carry them)",
            ));
        }
        Ok(Secret(value.to_owned()))
    }

    /// A token read from `path` (a mounted Secret, say).
    pub fn from_file(path: &Path) -> Result<Secret, ClientError> {
        let origin = format!("file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Token {
            origin: origin.clone(),
            reason: format!("cannot be read: {e}"),
        })?;
        Secret::new(&text, &origin)
    }

    /// 32 random bytes from the operating system, hex: a token for one `convsweep run`.
    pub fn random() -> std::io::Result<Secret> {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Secret(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The value, for the one place that needs it (a header, a child's environment).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How to reach a coordinator.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<Secret>,
    /// PEM CA bundle to trust (`https://` only; the system's roots otherwise).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a coordinator that requires one (mTLS).
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::TlsFile {
        file,
        path: path.to_owned(),
        source,
    })
}

impl Connection {
    /// A plaintext connection to `url` without a token (tests on loopback).
    pub fn plain(url: impl Into<String>) -> Connection {
        Connection {
            url: url.into(),
            ..Default::default()
        }
    }

    /// The addresses `url` names: one, or several separated by commas (replicas of one
    /// coordinator, tried in turn).
    pub fn urls(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    /// An endpoint for each address.
    fn endpoints(&self) -> Result<Vec<(String, Endpoint)>, ClientError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(ClientError::BadUrl {
                url: self.url.clone(),
                reason: "no address; use http://HOST:PORT (several, for replicas, separated by commas)".into(),
            });
        }
        urls.into_iter()
            .map(|url| Ok((url.to_owned(), self.endpoint(url)?)))
            .collect()
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: String| ClientError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let tls = if url.starts_with("https://") {
            true
        } else if url.starts_with("http://") {
            false
        } else {
            return Err(bad("use http://HOST:PORT, or https://HOST:PORT for TLS".into()));
        };
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if !tls {
            if self.tls_ca.is_some() || self.tls_cert.is_some() {
                return Err(ClientError::TlsWithoutHttps { url: url.to_owned() });
            }
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.tls_ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(TlsFile::Ca, ca)?)),
            None => config.with_native_roots(),
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(TlsFile::Cert, cert)?, read(TlsFile::Key, key)?));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::CertWithoutKey);
            }
        }
        endpoint = endpoint.tls_config(config).map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?;
        Ok(endpoint)
    }

    fn bearer(&self) -> Bearer {
        Bearer(self.token.as_ref().map(|t| {
            format!("Bearer {}", t.expose())
                .parse()
                .expect("a token of visible ASCII makes a valid header")
        }))
    }

    /// A channel that connects on first use (and reconnects), carrying the token; over
    /// several addresses, one that moves on to the next when a call finds its current one
    /// unreachable.
    pub fn lazy(&self) -> Result<AuthChannel, ClientError> {
        let channels = self
            .endpoints()?
            .into_iter()
            .map(|(url, e)| (url, e.connect_lazy()))
            .collect();
        Ok(InterceptedService::new(Failover::new(channels, 0), self.bearer()))
    }

    /// A channel connected now (to the first address that answers), carrying the token.
    pub async fn connect(&self) -> Result<AuthChannel, ClientError> {
        let endpoints = self.endpoints()?;
        let mut last = None;
        for (i, (url, endpoint)) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(connected) => {
                    // The connected channel for this address, lazy ones for the others.
                    let channels = endpoints
                        .iter()
                        .enumerate()
                        .map(|(j, (u, e))| (u.clone(), if j == i { connected.clone() } else { e.connect_lazy() }))
                        .collect();
                    return Ok(InterceptedService::new(Failover::new(channels, i), self.bearer()));
                }
                Err(source) => {
                    last = Some(ClientError::Transport {
                        url: url.clone(),
                        source,
                    })
                }
            }
        }
        Err(last.expect("at least one address"))
    }

    /// An `AdminService` client, connected now.
    pub async fn admin(&self) -> Result<AdminServiceClient<AuthChannel>, ClientError> {
        Ok(AdminServiceClient::new(self.connect().await?))
    }

    /// A `WorkerService` client that connects on first use.
    pub fn worker(&self) -> Result<WorkerServiceClient<AuthChannel>, ClientError> {
        Ok(WorkerServiceClient::new(self.lazy()?))
    }
}

/// Adds `authorization: Bearer <token>` to every request (nothing without a token).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(redacted)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the bearer token.
pub type AuthChannel = InterceptedService<Failover, Bearer>;

/// A channel to one of several coordinators that serve the same state (replicas): calls go to
/// the current one, and a call that finds it unreachable (a transport error: refused, reset,
/// timed out) or answered `UNAVAILABLE` moves the channel on to the next, in turn, so that a
/// caller's retry reaches another replica. With one address it is a plain channel.
#[derive(Debug, Clone)]
pub struct Failover {
    channels: std::sync::Arc<Vec<(String, Channel)>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Failover {
    fn new(channels: Vec<(String, Channel)>, current: usize) -> Failover {
        Failover {
            channels: std::sync::Arc::new(channels),
            current: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(current)),
        }
    }

    /// The address calls go to now.
    pub fn current_url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::SeqCst) % self.channels.len();
        &self.channels[i].0
    }

    /// Moves on from channel `from` to the next (unless another call moved on already).
    fn fail_over(&self, from: usize) {
        use std::sync::atomic::Ordering;
        let next = (from + 1) % self.channels.len();
        if self.channels.len() > 1
            && self
                .current
                .compare_exchange(from, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            tracing::warn!(from = %self.channels[from].0, to = %self.channels[next].0, "coordinator unreachable; trying the next address");
        }
    }
}

/// `grpc-status: 14` (UNAVAILABLE) in a trailers-only answer's headers.
fn unavailable(headers: &tonic::codegen::http::HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"14")
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Failover {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // Each call readies the channel it goes to.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let me = self.clone();
        let i = me.current.load(std::sync::atomic::Ordering::SeqCst) % me.channels.len();
        let mut channel = me.channels[i].1.clone();
        Box::pin(async move {
            let answer = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            match &answer {
                Err(_) => me.fail_over(i),
                Ok(response) if unavailable(response.headers()) => me.fail_over(i),
                Ok(_) => {}
            }
            answer
        })
    }
}
