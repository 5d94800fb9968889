//! Time and concurrency limits on the main port, refused with a status that names the limit
//! (message sizes are tonic's own check, which names the size).
//!
//! The timeout covers a call until its reply starts: a unary call entirely, a stream (`Watch`,
//! `Export`) until its first message is ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;

/// The layer that applies [`Limits`](crate::config::Limits) to every call.
#[derive(Debug, Clone)]
pub struct LimitsLayer {
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl LimitsLayer {
    /// At most `max_in_flight` calls at once, each given at most `timeout` to answer.
    pub fn new(timeout: Duration, max_in_flight: usize) -> LimitsLayer {
        LimitsLayer {
            timeout,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service [`LimitsLayer`] makes.
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limits: LimitsLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for Limited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Ok(permit) = self.limits.in_flight.clone().try_acquire_owned() else {
            let status = tonic::Status::resource_exhausted(format!(
                "the coordinator is serving its limit of {} calls at once; retry shortly",
                self.limits.max_in_flight
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let timeout = self.limits.timeout;
        let response = self.inner.call(request);
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, response).await {
                Ok(r) => r,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the call took longer than the coordinator's limit of {:.1} s per request",
                    timeout.as_secs_f64()
                ))
                .into_http()),
            }
        })
    }
}
