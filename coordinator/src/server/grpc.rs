//! The main port: both services and the server that hosts them with the standard health
//! service and reflection, behind token auth ([`super::auth`]) and optional TLS or mTLS.

use std::future::Future;
use std::sync::Arc;

use convsweep_proto::pb;
use convsweep_proto::pb::admin_service_server::{AdminService, AdminServiceServer};
use convsweep_proto::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tracing::info;

use super::auth::TokenCheck;
use super::listen::capped;
use crate::config::{ServeConfig, TlsFiles};
use crate::coordinator::Coordinator;
use crate::error::{Error, Result, TlsFile};

fn read_pem(file: TlsFile, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::TlsFile {
        file,
        path: path.to_owned(),
        source,
    })
}

fn server_tls(files: &TlsFiles, handshake: std::time::Duration) -> Result<ServerTlsConfig> {
    let identity = Identity::from_pem(
        read_pem(TlsFile::Cert, &files.cert)?,
        read_pem(TlsFile::Key, &files.key)?,
    );
    let mut config = ServerTlsConfig::new().identity(identity).timeout(handshake);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem(TlsFile::ClientCa, ca)?));
    }
    Ok(config)
}

/// Runs `f` on the blocking pool: store work that may take long (a large submit, a status
/// over many trials) never holds an async thread, where health checks and leases are served.
async fn blocking<T: Send + 'static>(
    coordinator: &Arc<Coordinator>,
    f: impl FnOnce(&Coordinator) -> Result<T> + Send + 'static,
) -> Result<T, Status> {
    let coordinator = coordinator.clone();
    tokio::task::spawn_blocking(move || f(&coordinator))
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(Status::from)
}

/// `WorkerService` over a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct WorkerApi(pub Arc<Coordinator>);

/// `AdminService` over a [`Coordinator`]; export chunks stay under `chunk_bytes`.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// The coordinator.
    pub coordinator: Arc<Coordinator>,
    /// Largest export chunk, in encoded bytes.
    pub chunk_bytes: usize,
    /// `Watch` and `Export` streams open at once: each holds a permit until it ends.
    pub streams: Arc<tokio::sync::Semaphore>,
}

impl AdminApi {
    /// A permit for one more stream, or `ResourceExhausted` naming the limit.
    fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "too many Watch and Export streams are open on this coordinator; close one or retry later \
                 (its limit of open streams)",
            )
        })
    }
}

/// A stream of replies of a server-streaming RPC.
pub type ReplyStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Does `event` concern `sweep` (every event does when `sweep` is empty)? Events whose sweep
/// is unknown pass too: a watcher ignores trials it does not show.
fn concerns(event: &pb::WatchEvent, sweep: &str) -> bool {
    use pb::watch_event::Event;
    match &event.event {
        _ if sweep.is_empty() => true,
        Some(Event::Trial(t)) => t.sweep_id.is_empty() || t.sweep_id == sweep,
        Some(Event::Snapshot(_)) | Some(Event::Epoch(_)) | Some(Event::Worker(_)) | None => true,
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(blocking(&self.0, move |c| c.register(req)).await?))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        Ok(Response::new(self.0.lease(req.into_inner()).await?))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(self.0.heartbeat(req.into_inner()).await?))
    }

    async fn report_epochs(
        &self,
        req: Request<pb::ReportEpochsRequest>,
    ) -> Result<Response<pb::ReportEpochsResponse>, Status> {
        self.0.report_epochs(req.into_inner()).await?;
        Ok(Response::new(pb::ReportEpochsResponse {}))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        Ok(Response::new(self.0.complete(req.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type ExportStream = ReplyStream<pb::ExportChunk>;
    type WatchStream = ReplyStream<pb::WatchEvent>;

    async fn export(&self, req: Request<pb::ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let permit = self.stream_permit()?;
        let results = self.coordinator.export(&req.into_inner().sweep_id).await?;
        let chunks = convsweep_proto::convert::export_chunks(results, self.chunk_bytes);
        // The permit goes with the stream: released when the last chunk was taken or the
        // client went away.
        let chunks = chunks.into_iter().map(move |c| {
            let _held = &permit;
            Ok(c)
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let permit = self.stream_permit()?;
        let sweep = req.into_inner().sweep_id;
        let coordinator = self.coordinator.clone();
        // Subscribe before the first snapshot, so that nothing between the two is missed.
        let mut events = coordinator.subscribe();
        let first = {
            let sweep = sweep.clone();
            blocking(&coordinator, move |c| c.snapshot(&sweep)).await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            // Held for as long as the stream is served.
            let _permit = permit;
            let snapshot = |s: pb::WatchSnapshot| pb::WatchEvent {
                time_ms: 0,
                event: Some(pb::watch_event::Event::Snapshot(s)),
            };
            if tx.send(Ok(snapshot(first))).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(coordinator.config().watch_interval);
            tick.tick().await;
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    _ = tick.tick() => {
                        let sweep = sweep.clone();
                        blocking(&coordinator, move |c| c.snapshot(&sweep)).await.map(snapshot)
                    }
                    event = events.recv() => match event {
                        Ok(e) if concerns(&e, &sweep) => Ok(e),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                };
                let failed = next.is_err();
                if tx.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn submit_sweep(
        &self,
        req: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let spec = req.into_inner().spec_toml;
        let (id, submitted) = blocking(&self.coordinator, move |c| c.submit(&spec)).await?;
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep_id: id.to_string(),
            trials: submitted.trials,
            new_trials: submitted.new_trials,
        }))
    }

    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::GetStatusResponse>, Status> {
        let sweep = req.into_inner().sweep_id;
        Ok(Response::new(
            blocking(&self.coordinator, move |c| c.status(&sweep)).await?,
        ))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(pb::CancelResponse {
            cancelled: blocking(&self.coordinator, move |c| c.cancel(&req.sweep_id, &req.trial_ids)).await?,
        }))
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeResponse>, Status> {
        let req = req.into_inner();
        let requeued = if req.stopped {
            blocking(&self.coordinator, move |c| {
                c.resume_stopped(&req.sweep_id, &req.trial_ids, &req.groups)
            })
            .await?
        } else if !req.trial_ids.is_empty() || !req.groups.is_empty() {
            return Err(Status::invalid_argument(
                "trial_ids and groups: only with stopped (failed and cancelled trials are resumed a sweep at a time)",
            ));
        } else {
            blocking(&self.coordinator, move |c| c.resume(&req.sweep_id)).await?
        };
        Ok(Response::new(pb::ResumeResponse { requeued }))
    }

    async fn extend_sweep(
        &self,
        req: Request<pb::ExtendSweepRequest>,
    ) -> Result<Response<pb::ExtendSweepResponse>, Status> {
        let spec = req.into_inner().spec_toml;
        let (id, submitted) = blocking(&self.coordinator, move |c| c.extend(&spec)).await?;
        Ok(Response::new(pb::ExtendSweepResponse {
            sweep_id: id.to_string(),
            trials: submitted.trials,
            new_trials: submitted.new_trials,
        }))
    }
}

/// The standard health service, reporting both services (and the server) serving.
pub(crate) async fn health()
-> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    reporter.set_serving::<AdminServiceServer<AdminApi>>().await;
    service
}

/// Serves both services, the health service and lease expiry on `listener`, plaintext and
/// without a token, until `shutdown` completes (tests on loopback). Bind the listener first
/// (port 0 in tests) so callers know the address.
pub async fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with(listener, coordinator, &ServeConfig::default(), shutdown).await
}

/// [`serve`] with token auth, TLS and limits as `config` says.
pub async fn serve_with(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let health_service = health().await;

    let auth = TokenCheck::new(config.token.as_ref());
    let limits = config.limits;
    let mut builder = tonic::transport::Server::builder().max_concurrent_streams(limits.max_streams_per_connection);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(server_tls(tls, limits.handshake_timeout)?)?;
    }
    // Metrics outermost, so that calls refused by a limit are counted with their code.
    let mut builder = builder.layer(
        tower::ServiceBuilder::new()
            .layer(crate::metrics::RpcMetricsLayer(coordinator.metrics().clone()))
            .layer(super::limits::LimitsLayer::new(
                limits.request_timeout,
                limits.max_concurrent_requests,
            )),
    );
    let worker = WorkerServiceServer::new(WorkerApi(coordinator.clone()))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    // Export chunks fit the default 4 MiB limit of any client, whatever the server allows.
    let chunk_bytes = limits.max_message_bytes.min(4 << 20) / 2;
    let admin = AdminServiceServer::new(AdminApi {
        coordinator: coordinator.clone(),
        chunk_bytes,
        streams: Arc::new(tokio::sync::Semaphore::new(limits.max_open_streams)),
    })
    .max_decoding_message_size(limits.max_message_bytes)
    .max_encoding_message_size(limits.max_message_bytes);

    // Reflection, so that grpcurl and grpcui work; behind the token like the services it shows.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(convsweep_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;

    let cancel = CancellationToken::new();
    let expiry = tokio::spawn(coordinator.clone().run_expiry(cancel.clone()));
    let bus = tokio::spawn(coordinator.clone().run_bus(cancel.clone()));
    info!(
        %addr,
        tls = config.tls.is_some(),
        mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        token = auth.enabled(),
        "coordinator listening"
    );
    let served = builder
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            worker,
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            admin,
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1,
            auth.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1alpha,
            auth,
        ))
        .serve_with_incoming_shutdown(capped(listener, limits.max_connections), shutdown)
        .await;
    cancel.cancel();
    let _ = expiry.await;
    let _ = bus.await;
    info!(%addr, "coordinator stopped");
    Ok(served?)
}
