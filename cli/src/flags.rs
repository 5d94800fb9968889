//! Which flag sets what a library's error names. The libraries say what is wrong (a setting,
//! a TLS file, a missing token); this module adds the flag (and its environment variable) a
//! user of this command line changes, so that no library error quotes a flag.

use convsweep_coordinator::{ConfigError, Setting};
use convsweep_proto::client::{ClientError, TlsFile as ClientTlsFile};

/// An RPC a command made that the coordinator refused, kept as a status so that [`hint`] can
/// tell which flag would help.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", status.message())]
pub struct Refused {
    /// What was asked, for people (`submit s.toml`, `export from http://...`).
    pub what: String,
    /// The coordinator's answer.
    pub status: tonic::Status,
}

/// `what` refused with `status`, as an error that keeps the status.
pub fn refused(what: impl Into<String>, status: tonic::Status) -> anyhow::Error {
    Refused {
        what: what.into(),
        status,
    }
    .into()
}

/// The flag of `convsweep coordinator` that sets `setting`.
pub fn coordinator_flag(setting: Setting) -> &'static str {
    match setting {
        Setting::HeartbeatInterval => "--heartbeat-secs (CONVSWEEP_HEARTBEAT_SECS)",
        Setting::LeaseTimeout => "--lease-timeout-secs (CONVSWEEP_LEASE_TIMEOUT_SECS)",
        Setting::MaxAttempts => "--max-attempts (CONVSWEEP_MAX_ATTEMPTS)",
        Setting::MaxTrialsPerSweep => "--max-trials-per-sweep (CONVSWEEP_MAX_TRIALS_PER_SWEEP)",
        Setting::MaxSpecBytes => "--max-spec-bytes (CONVSWEEP_MAX_SPEC_BYTES)",
        Setting::MaxSweepBytes => "--max-sweep-bytes (CONVSWEEP_MAX_SWEEP_BYTES)",
        Setting::MaxMessageBytes => "--max-message-mib (CONVSWEEP_MAX_MESSAGE_MIB)",
        Setting::RequestTimeout => "--request-timeout-secs (CONVSWEEP_REQUEST_TIMEOUT_SECS)",
        Setting::MaxConcurrentRequests => "--max-concurrent-requests (CONVSWEEP_MAX_CONCURRENT_REQUESTS)",
        Setting::MaxConnections => "--max-connections (CONVSWEEP_MAX_CONNECTIONS)",
        Setting::MaxOpsConnections => "--max-ops-connections (CONVSWEEP_MAX_OPS_CONNECTIONS)",
        Setting::MaxStreamsPerConnection => "--max-streams-per-connection (CONVSWEEP_MAX_STREAMS_PER_CONNECTION)",
        Setting::HandshakeTimeout => "--handshake-timeout-secs (CONVSWEEP_HANDSHAKE_TIMEOUT_SECS)",
        Setting::MaxOpenStreams => "--max-open-streams (CONVSWEEP_MAX_OPEN_STREAMS)",
    }
}

const TOKEN_FLAGS: &str = "--token-file FILE (or CONVSWEEP_TOKEN_FILE / CONVSWEEP_TOKEN)";

fn config_hint(e: &ConfigError) -> String {
    match e {
        ConfigError::Invalid { setting, .. } => format!("set by {}", coordinator_flag(*setting)),
        ConfigError::TokenRequired { .. } => format!(
            "give a token with {TOKEN_FLAGS}, listen on 127.0.0.1 with --listen, or pass --insecure to serve \
             without one"
        ),
    }
}

/// What to change on the command line about `e`, when a flag sets what went wrong.
pub fn hint(e: &anyhow::Error) -> Option<String> {
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<ConfigError>() {
            return Some(config_hint(e));
        }
        if let Some(e) = cause.downcast_ref::<convsweep_coordinator::Error>() {
            match e {
                convsweep_coordinator::Error::Config(c) => return Some(config_hint(c)),
                convsweep_coordinator::Error::TlsFile { file, .. } => {
                    return Some(
                        match file {
                            convsweep_coordinator::TlsFile::Cert => {
                                "the certificate is --tls-cert (CONVSWEEP_TLS_CERT)"
                            }
                            convsweep_coordinator::TlsFile::Key => "the key is --tls-key (CONVSWEEP_TLS_KEY)",
                            convsweep_coordinator::TlsFile::ClientCa => {
                                "the client CA is --tls-client-ca (CONVSWEEP_TLS_CLIENT_CA)"
                            }
                        }
                        .to_owned(),
                    );
                }
                _ => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            let hint = match e {
                ClientError::TlsFile {
                    file: ClientTlsFile::Ca,
                    ..
                } => "the CA bundle is --tls-ca (CONVSWEEP_TLS_CA)",
                ClientError::TlsFile {
                    file: ClientTlsFile::Cert,
                    ..
                } => "the client certificate is --tls-cert (CONVSWEEP_TLS_CERT)",
                ClientError::TlsFile {
                    file: ClientTlsFile::Key,
                    ..
                } => "the client key is --tls-key (CONVSWEEP_TLS_KEY)",
                ClientError::TlsWithoutHttps { .. } => "--tls-ca and --tls-cert are for an https:// --coordinator",
                ClientError::CertWithoutKey => "give both --tls-cert and --tls-key",
                ClientError::BadUrl { .. } => "the address is --coordinator (CONVSWEEP_COORDINATOR)",
                ClientError::Token { .. } | ClientError::Transport { .. } => continue,
            };
            return Some(hint.to_owned());
        }
        if let Some(r) = cause.downcast_ref::<Refused>()
            && r.status.code() == tonic::Code::Unauthenticated
        {
            return Some(format!("give the coordinator's token with {TOKEN_FLAGS}"));
        }
        if let Some(hint) = unreachable_hint(cause) {
            return Some(hint);
        }
    }
    None
}

#[cfg(feature = "worker")]
fn unreachable_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    match cause.downcast_ref::<convsweep_worker::agent::AgentError>()? {
        convsweep_worker::agent::AgentError::Unreachable { .. } => {
            Some("wait longer with --connect-timeout-secs (CONVSWEEP_CONNECT_TIMEOUT_SECS)".to_owned())
        }
        _ => None,
    }
}

#[cfg(not(feature = "worker"))]
fn unreachable_hint(_: &(dyn std::error::Error + 'static)) -> Option<String> {
    None
}

/// The error as `main` prints it: the whole chain, then the flag to change.
pub fn explain(e: &anyhow::Error) -> String {
    match hint(e) {
        Some(h) => format!("{e:#}\n  ({h})"),
        None => format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_get_the_flag_that_sets_them() {
        let e = anyhow::Error::from(ConfigError::Invalid {
            setting: Setting::LeaseTimeout,
            problem: "too short".into(),
        });
        let text = explain(&e);
        assert!(
            text.contains("the lease timeout: too short") && text.contains("--lease-timeout-secs"),
            "{text}"
        );

        let e = anyhow::Error::from(ConfigError::TokenRequired {
            addr: "0.0.0.0:1".parse().unwrap(),
        });
        let text = explain(&e);
        assert!(text.contains("--token-file") && text.contains("--insecure"), "{text}");

        let e = refused("status", tonic::Status::unauthenticated("requires a bearer token"));
        assert!(explain(&e).contains("--token-file"), "{}", explain(&e));
        let e = refused("status", tonic::Status::not_found("no sweep"));
        assert_eq!(explain(&e), "status: no sweep");

        let e = anyhow::Error::from(ClientError::CertWithoutKey);
        assert!(explain(&e).contains("--tls-key"));
    }
}
