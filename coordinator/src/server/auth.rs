//! Token auth on the main port: every `WorkerService` and `AdminService` call must carry
//! `authorization: Bearer <token>`, compared in constant time; the health service is exempt.

use std::sync::Arc;

use convsweep_proto::client::Secret;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The interceptor that checks the bearer token (lets every call through without one).
#[derive(Clone, Default)]
pub struct TokenCheck(Option<Arc<[u8]>>);

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TokenCheck(on)"
        } else {
            "TokenCheck(off)"
        })
    }
}

impl TokenCheck {
    /// Checks calls against `token`; `None` lets every call through (loopback, or insecure on
    /// purpose).
    pub fn new(token: Option<&Secret>) -> TokenCheck {
        TokenCheck(token.map(|t| Arc::from(format!("Bearer {}", t.expose()).into_bytes())))
    }

    /// Whether calls are checked.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map_or(&[][..], |v| v.as_bytes());
        if bool::from(given.ct_eq(expected)) {
            Ok(request)
        } else if given.is_empty() {
            Err(Status::unauthenticated(
                "this coordinator requires a bearer token and the call carried none",
            ))
        } else {
            Err(Status::unauthenticated(
                "the bearer token does not match the coordinator's",
            ))
        }
    }
}
