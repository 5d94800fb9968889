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
    /// Send the token over plaintext (http://) to a coordinator that is not on this machine.
    /// Refused by default: anyone on the path could read it and act as you.
    #[arg(long, global = true, env = "CONVSWEEP_ALLOW_PLAINTEXT_TOKEN")]
    pub allow_plaintext_token: bool,
}

/// Whether every address `host` names is a loopback address (a name such as `localhost`, or
/// one that `--add-host` maps to 127.0.0.1, is looked up).
fn is_loopback(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// Refuses to send `token` in plaintext to `url` unless it stays on this machine or the user
/// allowed it.
/// [`check_plaintext`] for each address of a comma-separated list (coordinator replicas).
fn check_every_address(urls: &str, allowed: bool) -> Result<()> {
    urls.split(',')
        .map(str::trim)
        .try_for_each(|url| check_plaintext(url, allowed))
}

fn check_plaintext(url: &str, allowed: bool) -> Result<()> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse().unwrap_or(80))
        }
        _ => (authority, 80),
    };
    if allowed || is_loopback(host, port) {
        return Ok(());
    }
    bail!(
        "refusing to send the token over plaintext to {url}: {host} is not this machine, and anyone on the path \
         could read the token; use https:// (the coordinator's --tls-cert and --tls-key, clients' --tls-ca) or, on a \
         network you trust, --allow-plaintext-token (CONVSWEEP_ALLOW_PLAINTEXT_TOKEN=true)"
    )
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

    /// How to reach the coordinator at `url` with these credentials. A token is not sent over
    /// plaintext to another machine unless `--allow-plaintext-token` says so.
    pub fn connection(&self, url: &str) -> Result<Connection> {
        let token = self.token()?;
        if token.is_some() {
            check_every_address(url, self.allow_plaintext_token)?;
        }
        Ok(Connection {
            url: url.to_owned(),
            token,
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_over_plaintext_only_to_this_machine_unless_allowed() {
        for url in [
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
            "http://127.0.0.2:1/x",
            "https://coordinator.example:443",
            "https://10.0.0.1:50051",
        ] {
            check_plaintext(url, false).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for url in [
            "http://10.0.0.1:50051",
            "http://192.0.2.7",
            "http://[2001:db8::1]:50051",
        ] {
            let e = check_plaintext(url, false).unwrap_err().to_string();
            assert!(e.contains("--allow-plaintext-token") && e.contains("https://"), "{e}");
            check_plaintext(url, true).unwrap();
        }
    }

    #[test]
    fn every_address_of_a_replica_list_is_checked() {
        // A remote plaintext address anywhere in the list is refused, naming it.
        let e = check_every_address("http://127.0.0.1:1, http://10.0.0.1:2", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://10.0.0.1:2"), "{e}");
        check_every_address("http://127.0.0.1:1,https://10.0.0.1:2", false).unwrap();
        check_every_address("http://127.0.0.1:1,http://10.0.0.1:2", true).unwrap();
    }
}
