//! `convsweep-bench rpc`: what token auth and TLS cost a call. One in-process coordinator per
//! configuration on loopback, `GetStatus` called back to back over one connection; median, p99
//! and max latency of each, side by side in the same run.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use convsweep_coordinator::{Coordinator, CoordinatorConfig, ServeConfig, TlsFiles};
use convsweep_proto::client::{Connection, Secret};
use convsweep_proto::pb;
use tokio_util::sync::CancellationToken;

/// Flags of `convsweep-bench rpc`.
#[derive(Debug, Clone, clap::Args)]
pub struct RpcArgs {
    /// Calls per configuration and round.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    pub calls: u64,
    /// Rounds (they alternate the configurations; the median round is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
}

/// The latency figures of one configuration, in milliseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    /// The configuration.
    pub name: &'static str,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest call.
    pub max: f64,
}

/// The `q` quantile of sorted samples (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn measure(name: &'static str, serve: ServeConfig, client: Connection, calls: usize) -> Result<Latency> {
    let dir = tempfile::tempdir()?;
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: dir.path().to_owned(),
        ..Default::default()
    })?;
    coordinator.submit(
        "name = \"bench\"\nseeds = 4\n[dataset]\nname = \"synthetic\"\n[model]\narch = \"resnet\"\ninit = \"kaiming-uniform\"\n\
         [grid]\nkernel_size = [3, 5, 7, 9]\ntrain_mode = [\"learned\", \"frozen\"]\n",
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "{}://{}",
        if serve.tls.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            convsweep_coordinator::serve_with(listener, coordinator, &serve, async move { stop.cancelled().await })
                .await
        }
    });
    let mut admin = Connection { url, ..client }.admin().await?;
    let request = || pb::GetStatusRequest {
        sweep_id: "bench".into(),
    };
    for _ in 0..calls / 10 + 10 {
        admin.get_status(request()).await?;
    }
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        admin.get_status(request()).await?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(admin);
    stop.cancel();
    server.await??;
    took.sort_by(f64::total_cmp);
    Ok(Latency {
        name,
        p50: quantile(&took, 0.5),
        p99: quantile(&took, 0.99),
        max: *took.last().unwrap_or(&0.0),
    })
}

/// `convsweep-bench rpc`.
pub async fn bench_rpc(args: &RpcArgs) -> Result<ExitCode> {
    let (calls, rounds) = (args.calls as usize, args.rounds as usize);
    let dir = tempfile::tempdir()?;
    let files = convsweep::commands::certs::make(dir.path(), &[])?;
    let token = Secret::random()?;
    let tls = TlsFiles {
        cert: files.server.0.clone(),
        key: files.server.1.clone(),
        client_ca: None,
    };
    let mtls = TlsFiles {
        client_ca: Some(files.ca.clone()),
        ..tls.clone()
    };
    let serve = |t: bool, tls: Option<TlsFiles>| ServeConfig {
        token: t.then(|| token.clone()),
        tls,
        ..Default::default()
    };
    let client = |t: bool, tls: bool, cert: bool| Connection {
        token: t.then(|| token.clone()),
        tls_ca: tls.then(|| files.ca.clone()),
        tls_cert: cert.then(|| files.client.0.clone()),
        tls_key: cert.then(|| files.client.1.clone()),
        ..Default::default()
    };
    let configs: Vec<(&'static str, ServeConfig, Connection)> = vec![
        ("plaintext", serve(false, None), client(false, false, false)),
        ("token", serve(true, None), client(true, false, false)),
        ("TLS", serve(false, Some(tls.clone())), client(false, true, false)),
        ("TLS + token", serve(true, Some(tls)), client(true, true, false)),
        ("mTLS + token", serve(true, Some(mtls)), client(true, true, true)),
    ];
    println!("GetStatus latency over loopback, {calls} calls per configuration and round, {rounds} round(s):");
    println!("| configuration | median (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|");
    let mut all: Vec<Vec<Latency>> = vec![Vec::new(); configs.len()];
    // Rounds alternate the configurations, so that machine drift touches all alike.
    for _ in 0..rounds {
        for (i, (name, serve, conn)) in configs.iter().enumerate() {
            all[i].push(measure(name, serve.clone(), conn.clone(), calls).await?);
        }
    }
    for runs in &all {
        let mid = |f: fn(&Latency) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.3} |",
            runs[0].name,
            mid(|l| l.p50),
            mid(|l| l.p99),
            mid(|l| l.max)
        );
    }
    Ok(ExitCode::SUCCESS)
}
