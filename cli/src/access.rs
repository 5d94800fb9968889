//! Credentials: the flags every command that talks to a coordinator takes (and the
//! coordinator's own TLS files), and how they become a [`Connection`].

use std::path::PathBuf;

use anyhow::{Result, bail};
use convsweep_proto::client::{Connection, Secret};

/// The environment variable that carries a token's value.
pub const TOKEN_ENV: &str = "CONVSWEEP_TOKEN";

/// Token and TLS files, shared by every subcommand.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, serde::Serialize)]
pub struct Access {
    /// File holding the bearer token (e.g. a mounted Secret); CONVSWEEP_TOKEN gives the value
    /// itself. The coordinator requires it on every call; clients and workers send it.
    #[arg(long, global = true, env = "CONVSWEEP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle to trust for an https:// coordinator (default: the system's roots).
    #[arg(long, global = true, env = "CONVSWEEP_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate: the coordinator's own (TLS), or a client's for a coordinator that
    /// requires one (mTLS).
    #[arg(long, global = true, env = "CONVSWEEP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, global = true, env = "CONVSWEEP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl Access {
    /// The token from --token-file or CONVSWEEP_TOKEN, if any (not both).
    pub fn token(&self) -> Result<Option<Secret>> {
        let value = std::env::var(TOKEN_ENV).ok().filter(|v| !v.is_empty());
        Ok(match (&self.token_file, value) {
            (Some(_), Some(_)) => {
                bail!("give the token one way: --token-file (CONVSWEEP_TOKEN_FILE) or {TOKEN_ENV}, not both")
            }
            (Some(path), None) => Some(Secret::from_file(path)?),
            (None, Some(v)) => Some(Secret::new(&v, TOKEN_ENV)?),
            (None, None) => None,
        })
    }

    /// How to reach the coordinator at `url` with these credentials.
    pub fn connection(&self, url: &str) -> Result<Connection> {
        Ok(Connection {
            url: url.to_owned(),
            token: self.token()?,
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        })
    }
}
