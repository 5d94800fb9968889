//! Serving a coordinator: [`run`], the one entry point that validates a
//! [`ServerConfig`](crate::config::ServerConfig) and starts both ports.
//!
//! - this module: [`run`].
//! - [`grpc`]: the main port: `WorkerService`, `AdminService`, health and reflection behind the
//!   token, with TLS or mTLS ([`serve_with`]).
//! - [`ops_port`]: the plaintext ops port for kubelets, Prometheus and a browser: health,
//!   readiness, metrics and the status page ([`serve_ops`]).
//! - [`auth`]: the bearer-token check on the main port.
//! - [`limits`]: the time and concurrency limits of the main port.
//! - [`listen`]: listeners ([`bind`]) and accepted connections with `TCP_NODELAY`, capped.
//! - `shared_read`: the ops port's reads, shared by every viewer, and its rate limit.

pub mod auth;
pub mod grpc;
pub mod limits;
pub mod listen;
pub mod ops_port;
mod shared_read;

pub use grpc::{serve, serve_with};
pub use listen::{bind, capped, no_delay};
pub use ops_port::serve_ops;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::coordinator::Coordinator;
use crate::error::{Error, Result};

/// Serves a coordinator until `shutdown` is cancelled: validates `config` against the main
/// listener's address, opens the state, and serves the main port on `main` and the ops port on
/// `ops`. The ops port runs on a thread and runtime of its own, so that a health probe is
/// answered at once even while every thread of the main runtime is busy with worker calls.
pub async fn run(
    config: ServerConfig,
    main: std::net::TcpListener,
    ops: std::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate(main.local_addr()?)?;
    main.set_nonblocking(true)?;
    ops.set_nonblocking(true)?;
    let coordinator = Coordinator::open(config.coordinator.clone())?;
    let ops_server = std::thread::Builder::new().name("convsweep-ops".into()).spawn({
        let coordinator = coordinator.clone();
        let stop = shutdown.clone();
        let serve = config.serve.clone();
        move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = TcpListener::from_std(ops)?;
                serve_ops(listener, coordinator, &serve, async move { stop.cancelled().await }).await
            })
        }
    })?;
    let main = TcpListener::from_std(main)?;
    let served = serve_with(main, coordinator, &config.serve, {
        let stop = shutdown.clone();
        async move { stop.cancelled().await }
    })
    .await;
    // The main port stopped (on shutdown or an error): the ops port follows.
    shutdown.cancel();
    let ops = tokio::task::spawn_blocking(move || ops_server.join())
        .await
        .map_err(|e| Error::Io(std::io::Error::other(format!("the ops port's thread: {e}"))))?;
    served?;
    match ops {
        Ok(result) => result,
        Err(_) => Err(Error::Io(std::io::Error::other("the ops port's thread panicked"))),
    }
}
