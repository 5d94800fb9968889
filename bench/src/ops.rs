//! `convsweep-bench ops`: whether health waits on the status. A coordinator process serves a
//! large state (by default 1,000,000 trials of which 100,000 succeeded) while viewers poll
//! `/status.json` and `/metrics` on its ops port as fast as they can; meanwhile `/healthz` (a
//! fresh connection per probe, as a kubelet makes them) and the gRPC health check (one
//! channel) are timed. Also counts the viewers' answers by status (429 past the port's rate).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use convsweep_proto::pb;
use serde_json::json;

use crate::coordinator::{Samples, Served, http_get, start_coordinator, sweep_spec};

/// The flags of `convsweep-bench ops`.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Trials in the state.
    #[arg(long, default_value_t = 1_000_000)]
    pub trials: u64,
    /// Of which succeeded.
    #[arg(long, default_value_t = 100_000)]
    pub succeeded: u64,
    /// Clients polling /status.json and /metrics as fast as they can.
    #[arg(long, default_value_t = 16)]
    pub viewers: usize,
    /// How long health is probed under that load.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Folder of the state (default: a temporary one, removed after). A state already there
    /// (from an earlier run) is used as it is.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The `convsweep` binary whose coordinator is measured (default: the one beside this
    /// benchmark).
    #[arg(long)]
    pub convsweep: Option<PathBuf>,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Fills a state folder: `trials` pending, `succeeded` of them leased and completed.
fn fill(state: &std::path::Path, trials: u64, succeeded: u64) -> Result<()> {
    use convsweep_coordinator::store::{LeaseOps, LeasePolicy, SqliteStore, StoreWriter};
    std::fs::create_dir_all(state)?;
    let mut store = SqliteStore::open(state, LeasePolicy::default())?;
    let spec = convsweep_coordinator::sweep::SweepSpec::from_toml_capped(&sweep_spec("ops", trials, 1), trials)?;
    store.submit(&spec.id, "", &spec.expand_canonical()?, 0)?;
    let worker = store.register_worker("filler", "bench", &[], 1000, 0, "")?;
    let result = convsweep_proto::Outcome::Succeeded(pb::TrialResult {
        final_test_acc: 0.5,
        best_test_acc: 0.5,
        best_epoch: 1,
        ..Default::default()
    });
    let mut done = 0;
    while done < succeeded {
        let n = (succeeded - done).min(1000) as u32;
        store.batch(2, &mut |ops: &mut dyn LeaseOps| {
            for l in ops.lease(&worker, n)?.leases {
                ops.complete(&worker, &l.trial_id, &l.lease_token, &result)?;
            }
            Ok(())
        })?;
        done += u64::from(n);
    }
    Ok(())
}

/// `GET path` with the token, on a fresh connection; the status code.
async fn get(addr: &str, path: &str, token: &str) -> Result<u16> {
    Ok(http_get(addr, path, (!token.is_empty()).then_some(token)).await?.0)
}

/// `convsweep-bench ops`.
pub async fn bench_ops(args: OpsArgs) -> Result<ExitCode> {
    let program = crate::files::convsweep_binary(args.convsweep.as_deref())?;
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let state = dir.join("ops-state");
    if !state.join("state.db").exists() {
        let t = Instant::now();
        let (s, trials, succeeded) = (state.clone(), args.trials, args.succeeded);
        tokio::task::spawn_blocking(move || fill(&s, trials, succeeded)).await??;
        eprintln!(
            "bench ops: a state of {} trials ({} succeeded) in {:.0} s",
            args.trials,
            args.succeeded,
            t.elapsed().as_secs_f64()
        );
    }
    let served: Served = start_coordinator(&program, &state, args.trials.max(1)).await?;
    let ops = served.ops.trim_start_matches("http://").to_owned();
    let token = served.token.expose().to_owned();

    // The first status read, before the load (how long one takes on this state).
    let t = Instant::now();
    let first = get(&ops, "/status.json", &token).await?;
    let first_read = t.elapsed().as_secs_f64();
    anyhow::ensure!(first == 200, "/status.json answered {first}");

    let stop = Arc::new(AtomicBool::new(false));
    let viewers: Vec<_> = (0..args.viewers)
        .map(|i| {
            let (ops, token, stop) = (ops.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut codes: BTreeMap<String, u64> = BTreeMap::new();
                let path = if i % 2 == 0 { "/status.json" } else { "/metrics" };
                while !stop.load(Ordering::Relaxed) {
                    let code = match get(&ops, path, &token).await {
                        Ok(c) => c.to_string(),
                        Err(_) => "error".to_owned(),
                    };
                    *codes.entry(format!("{path} {code}")).or_default() += 1;
                }
                codes
            })
        })
        .collect();

    let channel = tonic::transport::Endpoint::from_shared(served.ops.clone())?
        .connect()
        .await?;
    let (mut http, mut grpc) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        let t = Instant::now();
        let code = get(&ops, "/healthz", "").await?;
        anyhow::ensure!(code == 200, "/healthz answered {code}");
        http.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        crate::coordinator::tonic_health_check(channel.clone()).await?;
        grpc.push(t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    for v in viewers {
        for (k, n) in v.await? {
            *answers.entry(k).or_default() += n;
        }
    }
    served.stop().await?;

    let out = json!({
        "trials": args.trials,
        "succeeded": args.succeeded,
        "viewers": args.viewers,
        "seconds": args.seconds,
        "first_status_read_s": first_read,
        "healthz": Samples(http).summary(),
        "grpc_health": Samples(grpc).summary(),
        "viewer_answers": answers,
    });
    println!(
        "ops port under {} viewers, state of {} trials ({} succeeded); first /status.json {:.2} s",
        args.viewers, args.trials, args.succeeded, first_read
    );
    for (name, key) in [("/healthz", "healthz"), ("gRPC health", "grpc_health")] {
        let s = &out[key];
        println!(
            "  {name:<12} {} probes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            s["calls"],
            s["p50_ms"].as_f64().unwrap_or(0.0),
            s["p99_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!("  viewers' answers: {}", out["viewer_answers"]);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
