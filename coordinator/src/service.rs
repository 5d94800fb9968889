//! The gRPC face of the coordinator: both services and the server that hosts them with the
//! standard health service.

use std::future::Future;
use std::sync::Arc;

use convsweep_proto::pb;
use convsweep_proto::pb::admin_service_server::{AdminService, AdminServiceServer};
use convsweep_proto::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::coordinator::Coordinator;
use crate::error::Result;

/// `WorkerService` over a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct WorkerApi(pub Arc<Coordinator>);

/// `AdminService` over a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct AdminApi(pub Arc<Coordinator>);

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        Ok(Response::new(self.0.register(req.into_inner())?))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        Ok(Response::new(self.0.lease(req.into_inner()).await?))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(self.0.heartbeat(req.into_inner())?))
    }

    async fn report_epochs(
        &self,
        req: Request<pb::ReportEpochsRequest>,
    ) -> Result<Response<pb::ReportEpochsResponse>, Status> {
        self.0.report_epochs(req.into_inner())?;
        Ok(Response::new(pb::ReportEpochsResponse {}))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        Ok(Response::new(self.0.complete(req.into_inner())?))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn submit_sweep(
        &self,
        req: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let (id, submitted) = self.0.submit(&req.into_inner().spec_toml)?;
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep_id: id.to_string(),
            trials: submitted.trials,
            new_trials: submitted.new_trials,
        }))
    }

    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.0.status(&req.into_inner().sweep_id)?))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(pb::CancelResponse {
            cancelled: self.0.cancel(&req.sweep_id, &req.trial_ids)?,
        }))
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeResponse>, Status> {
        Ok(Response::new(pb::ResumeResponse {
            requeued: self.0.resume(&req.into_inner().sweep_id)?,
        }))
    }

    async fn extend_sweep(
        &self,
        req: Request<pb::ExtendSweepRequest>,
    ) -> Result<Response<pb::ExtendSweepResponse>, Status> {
        let (id, submitted) = self.0.extend(&req.into_inner().spec_toml)?;
        Ok(Response::new(pb::ExtendSweepResponse {
            sweep_id: id.to_string(),
            trials: submitted.trials,
            new_trials: submitted.new_trials,
        }))
    }
}

/// A listener on `addr` with `SO_REUSEADDR`, so that a restarted coordinator can take its port
/// back at once (connections of the killed one may still be in TIME_WAIT).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves both services, the health service and lease expiry on `listener` until `shutdown`
/// completes. Bind the listener first (port 0 in tests) so callers know the address.
pub async fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;

    let cancel = CancellationToken::new();
    let expiry = tokio::spawn(coordinator.clone().run_expiry(cancel.clone()));
    info!(%addr, "coordinator listening");
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(WorkerServiceServer::new(WorkerApi(coordinator.clone())))
        .add_service(AdminServiceServer::new(AdminApi(coordinator)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    cancel.cancel();
    let _ = expiry.await;
    info!(%addr, "coordinator stopped");
    Ok(served?)
}
