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

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    Ok(())
}

/// Makes a CA (`ca.pem`, `ca.key`), a coordinator certificate for `hosts` plus `localhost` and
/// `127.0.0.1` (`server.pem`, `server.key`) and a client certificate (`client.pem`,
/// `client.key`) in `out`. Keys are written readable by their owner only.
pub fn make(out: &Path, hosts: &[String]) -> Result<Files> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
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

/// `convsweep certs`.
pub fn certs(args: &CertsArgs) -> Result<ExitCode> {
    let files = make(&args.out, &args.hosts)?;
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
