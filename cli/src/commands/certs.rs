//! `convsweep certs`: a private CA and the certificates a TLS or mTLS coordinator and its
//! clients need, made with rcgen (the same files `openssl` would make; see the README).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde::Serialize;

/// Flags of `convsweep certs`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct CertsArgs {
    /// Folder to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key into.
    #[arg(long)]
    pub out: PathBuf,
    /// Names and addresses the coordinator is reached by (localhost and 127.0.0.1 are
    /// always in), e.g. --host convsweep-coordinator --host 10.0.0.5.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Also write secret.json: a Kubernetes Secret of this name and type kubernetes.io/tls
    /// (tls.crt and tls.key: the coordinator's; ca.crt: the CA), the layout cert-manager
    /// writes, for `kubectl apply -f` (the Kubernetes base's certs Job does so).
    #[arg(long, value_name = "NAME", value_parser = secret_name)]
    pub kubernetes_secret: Option<String>,
}

/// A Kubernetes object name (a DNS-1123 subdomain): what the API server would accept.
fn secret_name(name: &str) -> std::result::Result<String, String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(part_ok) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a Kubernetes object name: at most 253 characters of a-z, 0-9, '-' and '.', \
             each dot-separated part starting and ending with a letter or digit (e.g. convsweep-tls)"
        ))
    }
}

/// The files [`make`] wrote.
#[derive(Debug, Clone)]
pub struct Files {
    /// The CA's certificate: `--tls-ca` for clients, `--tls-client-ca` for an mTLS coordinator.
    pub ca: PathBuf,
    /// The coordinator's certificate and key (`--tls-cert`, `--tls-key`).
    pub server: (PathBuf, PathBuf),
    /// A client's certificate and key, for an mTLS coordinator.
    pub client: (PathBuf, PathBuf),
}

/// Writes `text` to `path` whole, created 0600 from the start when `private`
/// ([`convsweep_proto::files::replace`]).
fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    convsweep_proto::files::replace(path, text.as_bytes(), if private { 0o600 } else { 0o644 })
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Makes a CA (`ca.pem`, `ca.key`), a coordinator certificate for `hosts` plus `localhost` and
/// `127.0.0.1` (`server.pem`, `server.key`) and a client certificate (`client.pem`,
/// `client.key`) in `out` (created 0700). Keys are created readable by their owner only.
pub fn make(out: &Path, hosts: &[String]) -> Result<Files> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "convsweep CA");
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let leaf = |names: Vec<String>, cn: &str| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        Ok((params.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
    };
    let mut names: Vec<String> = hosts.to_vec();
    for default in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == default) {
            names.push(default.to_owned());
        }
    }
    let (server_pem, server_key) = leaf(names, "convsweep-coordinator")?;
    let (client_pem, client_key) = leaf(vec!["convsweep-client".to_owned()], "convsweep-client")?;
    let files = Files {
        ca: out.join("ca.pem"),
        server: (out.join("server.pem"), out.join("server.key")),
        client: (out.join("client.pem"), out.join("client.key")),
    };
    write(&files.ca, &ca.pem(), false)?;
    write(&out.join("ca.key"), &ca_key_pem, true)?;
    write(&files.server.0, &server_pem, false)?;
    write(&files.server.1, &server_key, true)?;
    write(&files.client.0, &client_pem, false)?;
    write(&files.client.1, &client_key, true)?;
    Ok(files)
}

/// A Kubernetes Secret `name` of type `kubernetes.io/tls` holding the coordinator's
/// certificate and key and the CA, as JSON (which `kubectl apply -f` reads like YAML).
fn kubernetes_secret(name: &str, files: &Files) -> Result<String> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "convsweep"}},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": read(&files.server.0)?,
            "tls.key": read(&files.server.1)?,
            "ca.crt": read(&files.ca)?,
        },
    });
    Ok(serde_json::to_string_pretty(&secret)?)
}

/// `convsweep certs`.
pub fn certs(args: &CertsArgs) -> Result<ExitCode> {
    let files = make(&args.out, &args.hosts)?;
    if let Some(name) = &args.kubernetes_secret {
        let path = args.out.join("secret.json");
        write(&path, &kubernetes_secret(name, &files)?, true)?;
        println!("{}", path.display());
    }
    println!("{}", files.ca.display());
    println!("{}", files.server.0.display());
    println!("{}", files.server.1.display());
    println!("{}", files.client.0.display());
    println!("{}", files.client.1.display());
    eprintln!(
        "coordinator: --tls-cert {} --tls-key {} [--tls-client-ca {}]; clients: --tls-ca {} [--tls-cert {} --tls-key {}]",
        files.server.0.display(),
        files.server.1.display(),
        files.ca.display(),
        files.ca.display(),
        files.client.0.display(),
        files.client.1.display()
    );
    Ok(ExitCode::SUCCESS)
}
