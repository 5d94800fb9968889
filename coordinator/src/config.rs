//! How a coordinator is served: [`ServerConfig`] (its state and lease rules, the main port's
//! token, TLS and limits, and whether it may serve insecure), and [`ServerConfig::validate`],
//! which refuses (never clamps) settings that make no sense and names the [`Setting`]: the
//! CLI says which flag sets it.
//!
//! [`Setting`]: crate::error::Setting

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use convsweep_proto::client::Secret;

use crate::coordinator::CoordinatorConfig;
use crate::error::{ConfigError, Setting};

/// The coordinator's TLS files (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Its certificate chain.
    pub cert: PathBuf,
    /// The certificate's key.
    pub key: PathBuf,
    /// When given, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Limits every request is held to; a request over one is refused with a status that names it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message a request or reply may carry, in bytes.
    pub max_message_bytes: usize,
    /// Longest a request may take (a long-polling `Lease` waits less than this).
    pub request_timeout: Duration,
    /// Calls served at once (over all connections); one more is refused.
    pub max_concurrent_requests: usize,
    /// Connections open at once on the main port; one more is closed when accepted.
    pub max_connections: usize,
    /// Connections open at once on the ops port.
    pub max_ops_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// `Watch` and `Export` streams open at once (they outlive the call limit once they
    /// stream); one more is refused.
    pub max_open_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            request_timeout: Duration::from_secs(120),
            max_concurrent_requests: 10_000,
            max_connections: 10_000,
            max_ops_connections: 256,
            max_streams_per_connection: 1_000,
            handshake_timeout: Duration::from_secs(10),
            max_open_streams: 1_000,
        }
    }
}

/// How the main port is served.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// Every `WorkerService` and `AdminService` call must carry this bearer token.
    pub token: Option<Secret>,
    /// TLS (and mTLS) when given; plaintext otherwise.
    pub tls: Option<TlsFiles>,
    /// Message size, time and concurrency limits.
    pub limits: Limits,
}

/// A coordinator as a service: its state and lease rules, and how its main port is served.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// The state and the lease rules.
    pub coordinator: CoordinatorConfig,
    /// Token, TLS and limits of the main port.
    pub serve: ServeConfig,
    /// Serve without a token on a non-loopback address (anyone who reaches the port can submit,
    /// cancel and report).
    pub insecure: bool,
}

fn invalid(setting: Setting, problem: String) -> ConfigError {
    ConfigError::Invalid { setting, problem }
}

fn at_least_one<T: PartialOrd + Default + std::fmt::Display>(setting: Setting, value: T) -> Result<(), ConfigError> {
    if value <= T::default() {
        return Err(invalid(setting, format!("must be at least 1, got {value}")));
    }
    Ok(())
}

impl ServerConfig {
    /// Refuses settings that cannot work together, naming the setting, before anything is
    /// opened or bound: zero counts and durations, a lease that would expire between two
    /// heartbeats, and no token on an address off loopback unless `insecure` says so.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        let c = &self.coordinator;
        let l = &self.serve.limits;
        if c.heartbeat_interval.is_zero() {
            return Err(invalid(Setting::HeartbeatInterval, "must be longer than 0 s".into()));
        }
        if c.lease_timeout <= c.heartbeat_interval {
            return Err(invalid(
                Setting::LeaseTimeout,
                format!(
                    "{:?} is not longer than the heartbeat interval ({:?}): every lease would expire between two \
                     heartbeats; give it several heartbeat intervals",
                    c.lease_timeout, c.heartbeat_interval
                ),
            ));
        }
        at_least_one(Setting::MaxAttempts, c.max_attempts)?;
        at_least_one(Setting::MaxTrialsPerSweep, c.max_trials_per_sweep)?;
        at_least_one(Setting::MaxSpecBytes, c.max_spec_bytes)?;
        at_least_one(Setting::MaxSweepBytes, c.max_sweep_bytes)?;
        at_least_one(Setting::MaxMessageBytes, l.max_message_bytes)?;
        at_least_one(Setting::MaxConcurrentRequests, l.max_concurrent_requests)?;
        at_least_one(Setting::MaxConnections, l.max_connections)?;
        at_least_one(Setting::MaxOpsConnections, l.max_ops_connections)?;
        at_least_one(Setting::MaxStreamsPerConnection, l.max_streams_per_connection)?;
        at_least_one(Setting::MaxOpenStreams, l.max_open_streams)?;
        if l.handshake_timeout.is_zero() {
            return Err(invalid(Setting::HandshakeTimeout, "must be longer than 0 s".into()));
        }
        if l.request_timeout.is_zero() {
            return Err(invalid(Setting::RequestTimeout, "must be longer than 0 s".into()));
        }
        if self.serve.token.is_none() && !listen.ip().is_loopback() && !self.insecure {
            return Err(ConfigError::TokenRequired { addr: listen });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        "127.0.0.1:50051".parse().unwrap()
    }

    #[test]
    fn nonsense_is_refused_by_setting_not_clamped() {
        let mut c = ServerConfig::default();
        assert_eq!(c.validate(loopback()), Ok(()));
        c.coordinator.lease_timeout = c.coordinator.heartbeat_interval;
        let err = c.validate(loopback()).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: Setting::LeaseTimeout,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("heartbeat interval"), "{err}");

        type Break = fn(&mut ServerConfig);
        let cases: [(Break, Setting); 13] = [
            (
                |c| c.coordinator.heartbeat_interval = Duration::ZERO,
                Setting::HeartbeatInterval,
            ),
            (|c| c.coordinator.max_attempts = 0, Setting::MaxAttempts),
            (|c| c.coordinator.max_trials_per_sweep = 0, Setting::MaxTrialsPerSweep),
            (|c| c.coordinator.max_spec_bytes = 0, Setting::MaxSpecBytes),
            (|c| c.coordinator.max_sweep_bytes = 0, Setting::MaxSweepBytes),
            (|c| c.serve.limits.max_connections = 0, Setting::MaxConnections),
            (|c| c.serve.limits.max_ops_connections = 0, Setting::MaxOpsConnections),
            (
                |c| c.serve.limits.max_streams_per_connection = 0,
                Setting::MaxStreamsPerConnection,
            ),
            (
                |c| c.serve.limits.handshake_timeout = Duration::ZERO,
                Setting::HandshakeTimeout,
            ),
            (|c| c.serve.limits.max_open_streams = 0, Setting::MaxOpenStreams),
            (|c| c.serve.limits.max_message_bytes = 0, Setting::MaxMessageBytes),
            (
                |c| c.serve.limits.request_timeout = Duration::ZERO,
                Setting::RequestTimeout,
            ),
            (
                |c| c.serve.limits.max_concurrent_requests = 0,
                Setting::MaxConcurrentRequests,
            ),
        ];
        for (break_it, setting) in cases {
            let mut c = ServerConfig::default();
            break_it(&mut c);
            match c.validate(loopback()) {
                Err(ConfigError::Invalid { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_token_off_loopback_unless_insecure() {
        let open: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let mut c = ServerConfig::default();
        assert_eq!(c.validate(open), Err(ConfigError::TokenRequired { addr: open }));
        c.insecure = true;
        assert_eq!(c.validate(open), Ok(()));
        c.insecure = false;
        c.serve.token = Some(Secret::new("t", "test").unwrap());
        assert_eq!(c.validate(open), Ok(()));
    }
}
