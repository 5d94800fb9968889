//! `convsweep-bench coordinator`: a real coordinator (its own process, a state folder of its own,
//! `synchronous = FULL`) under N simulated workers over real gRPC on loopback. Each simulated
//! trial leases, heartbeats, reports its epochs one by one and completes, with no training; a
//! health check runs beside them on the ops port, as a Kubernetes probe would. At the end every
//! trial must have succeeded exactly once with all its epochs stored. Ray Tune runs the same
//! number of trivial trials on the same machine, side by side (`bench/ray_tune_reference.py`,
//! with the Ray Tune that `bench/setup-peers.sh` installs into `.deps/ray`).
//!
//! `--sizes` measures large sweeps instead: submitting 100,000 and 1,000,000 trials, `GetStatus`
//! over them, and exporting a state of 1,000,000 epoch rows.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use convsweep_proto::client::{AuthChannel, Connection, Secret};
use convsweep_proto::pb::worker_service_client::WorkerServiceClient;
use convsweep_proto::{PROTOCOL_VERSION, pb};
use serde_json::json;
use tokio::sync::Mutex;

/// What to run: the flags of `convsweep-bench coordinator`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Simulated workers, one connection each.
    #[arg(long, default_value_t = 100)]
    pub workers: usize,
    /// Trials in the sweep.
    #[arg(long, default_value_t = 2_000)]
    pub trials: u64,
    /// Epoch reports per trial, sent one by one.
    #[arg(long, default_value_t = 10)]
    pub epochs: u32,
    /// Trials each simulated worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Time submitting 100,000 and 1,000,000 trials, GetStatus over them and exporting
    /// 1,000,000 epoch rows instead.
    #[arg(long)]
    pub sizes: bool,
    /// Skip Ray Tune.
    #[arg(long)]
    pub no_peer: bool,
    /// Trials Ray Tune runs (default: --trials).
    #[arg(long)]
    pub peer_trials: Option<u64>,
    /// Python with Ray Tune (default: the one `bench/setup-peers.sh` installs into .deps/ray).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Folder for the state folders (default: a temporary one, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The `convsweep` binary whose coordinator is measured (default: the one beside this
    /// benchmark).
    #[arg(long)]
    pub convsweep: Option<PathBuf>,
    /// Keep the state in this PostgreSQL database (`postgres://...`; it must hold no state yet)
    /// instead of SQLite.
    #[arg(long, conflicts_with = "postgres")]
    pub store: Option<String>,
    /// Keep the state in PostgreSQL: a server of the bench's own (Debian's binaries, default
    /// durability: fsync on), started for the run and stopped after.
    #[arg(long)]
    pub postgres: bool,
    /// Coordinator replicas on the PostgreSQL store; simulated worker i talks to replica
    /// i mod N.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
}

/// Latencies of one kind of call, in seconds.
#[derive(Debug, Default)]
pub(crate) struct Samples(pub(crate) Vec<f64>);

impl Samples {
    pub(crate) fn summary(&mut self) -> serde_json::Value {
        self.0.sort_by(f64::total_cmp);
        let q = |q: f64| {
            if self.0.is_empty() {
                0.0
            } else {
                crate::rpc::quantile(&self.0, q) * 1000.0
            }
        };
        json!({"calls": self.0.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)})
    }
}

#[derive(Debug, Default)]
struct Latencies {
    /// Leases that brought a trial.
    lease: Samples,
    /// Long polls that came back empty.
    empty_leases: u64,
    heartbeat: Samples,
    report: Samples,
    complete: Samples,
}

/// A coordinator process of the bench's own, on loopback ports this process holds.
pub(crate) struct Served {
    child: tokio::process::Child,
    url: String,
    pub(crate) ops: String,
    pub(crate) token: Secret,
    _ports: (std::net::TcpListener, std::net::TcpListener),
}

/// Lets this process (and the coordinator it starts) hold a connection per simulated worker.
fn raise_open_files() {
    // SAFETY: plain calls on a stack value.
    #[allow(unsafe_code)]
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub(crate) async fn start_coordinator(program: &Path, state: &Path, max_trials: u64) -> Result<Served> {
    start_replica(program, state, None, "coordinator", &Secret::random()?, max_trials).await
}

/// A coordinator process on the SQLite state in `state`, or on the PostgreSQL `store` (its log
/// then in `state` as `NAME.log`), with `token`.
async fn start_replica(
    program: &Path,
    state: &Path,
    store: Option<&str>,
    name: &str,
    token: &Secret,
    max_trials: u64,
) -> Result<Served> {
    use convsweep_testkit::listen;
    let (main, ops) = (listen::loopback()?, listen::loopback()?);
    let token = token.clone();
    std::fs::create_dir_all(state)?;
    let log_path = state.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = std::process::Command::new(program);
    match store {
        Some(url) => cmd.args(["coordinator", "--store", url]),
        None => cmd.args(["coordinator", "--state-dir"]).arg(state),
    };
    listen::hand_over(&mut cmd, "--listen-fd", &main);
    listen::hand_over(&mut cmd, "--ops-listen-fd", &ops)
        .args(["--max-trials-per-sweep", &max_trials.to_string()])
        .env("CONVSWEEP_TOKEN", token.expose())
        .env_remove("CONVSWEEP_TOKEN_FILE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the coordinator ({})", program.display()))?;
    let served = Served {
        child,
        url: listen::url(&main),
        ops: listen::url(&ops),
        token,
        _ports: (main, ops),
    };
    // The ports are bound already: the first calls wait in the backlog until it serves.
    let started = Instant::now();
    loop {
        if health(&served.ops).await.is_ok() && served.connection().admin().await.is_ok() {
            return Ok(served);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the coordinator did not come up within 60 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(ops: &str) -> Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(ops.to_owned())?
        .connect()
        .await?;
    tonic_health_check(channel).await
}

pub(crate) async fn tonic_health_check(channel: tonic::transport::Channel) -> Result<()> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = client
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await?
        .into_inner();
    if resp.status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        bail!("not serving: {resp:?}");
    }
    Ok(())
}

impl Served {
    fn connection(&self) -> Connection {
        Connection {
            url: self.url.clone(),
            token: Some(self.token.clone()),
            ..Default::default()
        }
    }

    /// CPU seconds (user + system) and peak RSS in bytes of the coordinator so far.
    fn usage(&self) -> Result<(f64, u64)> {
        let pid = self.child.id().context("the coordinator exited")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start at index 3.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((ticks / 100.0, hwm_kb * 1024))
    }

    async fn metric(&self, name: &str) -> Result<f64> {
        let addr = self.ops.trim_start_matches("http://");
        let (_, body) = http_get(addr, "/metrics", None).await?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum())
    }

    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        Ok(())
    }
}

/// `GET path` over a fresh HTTP/1.0 connection, with the bearer `token` when given; the
/// status code and the body.
pub(crate) async fn http_get(addr: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {:?}", &head[..head.len().min(64)]))?;
    Ok((code, body.to_owned()))
}

pub(crate) fn sweep_spec(name: &str, trials: u64, epochs: u32) -> String {
    format!(
        "name = \"{name}\"\nseeds = {trials}\n[dataset]\nname = \"synthetic\"\ntrain_size = 64\ntest_size = 32\n\
         [model]\narch = \"resnet\"\ndepth = 8\nwidth = 4\nkernel_size = 3\ntrain_mode = \"learned\"\n\
         init = \"kaiming-uniform\"\n[train]\nepochs = {epochs}\n"
    )
}

fn epoch(n: u32) -> pb::EpochMetrics {
    pb::EpochMetrics {
        epoch: n,
        lr: 0.1,
        train_loss: 1.0 / f64::from(n),
        train_acc: 0.5,
        test_loss: 1.0,
        test_acc: 0.5,
        seconds: 0.0,
        val_loss: None,
        val_acc: None,
    }
}

/// Awaits one call, adding its latency to `samples`.
async fn timed<T>(
    samples: &mut Samples,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T> {
    let started = Instant::now();
    let r = call.await;
    samples.0.push(started.elapsed().as_secs_f64());
    Ok(r?)
}

/// One slot of a simulated worker: trials one after the other until all are done.
async fn slot(
    mut client: WorkerServiceClient<AuthChannel>,
    worker_id: String,
    epochs: u32,
    total: u64,
    done: Arc<AtomicU64>,
    last_done: Arc<Mutex<Instant>>,
) -> Result<Latencies> {
    let mut l = Latencies::default();
    while done.load(Ordering::SeqCst) < total {
        let t = Instant::now();
        let r = client
            .lease(pb::LeaseRequest {
                worker_id: worker_id.clone(),
                max_trials: 1,
                wait_ms: 500,
            })
            .await;
        let leases = r?.into_inner().leases;
        if leases.is_empty() {
            // A long poll that found no work (at the end of the sweep) is not a lease latency.
            l.empty_leases += 1;
            continue;
        }
        l.lease.0.push(t.elapsed().as_secs_f64());
        for lease in leases {
            let heartbeat = client.heartbeat(pb::HeartbeatRequest {
                worker_id: worker_id.clone(),
                leases: vec![pb::LeaseRef {
                    trial_id: lease.trial_id.clone(),
                    lease_token: lease.lease_token.clone(),
                }],
            });
            timed(&mut l.heartbeat, heartbeat).await?;
            for e in 1..=epochs {
                let report = client.report_epochs(pb::ReportEpochsRequest {
                    worker_id: worker_id.clone(),
                    trial_id: lease.trial_id.clone(),
                    lease_token: lease.lease_token.clone(),
                    epochs: vec![epoch(e)],
                });
                timed(&mut l.report, report).await?;
            }
            let complete = client.complete(pb::CompleteRequest {
                worker_id: worker_id.clone(),
                trial_id: lease.trial_id.clone(),
                lease_token: lease.lease_token.clone(),
                outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                    result: Some(pb::TrialResult {
                        final_test_acc: 0.5,
                        best_test_acc: 0.5,
                        best_epoch: epochs,
                        device: "simulated".into(),
                        ..Default::default()
                    }),
                })),
            });
            timed(&mut l.complete, complete).await?;
            done.fetch_add(1, Ordering::SeqCst);
            *last_done.lock().await = Instant::now();
        }
    }
    Ok(l)
}

async fn load(args: &Args, program: &Path, state: &Path, store: Option<&str>) -> Result<serde_json::Value> {
    if args.trials == 0 || args.workers == 0 || args.epochs == 0 || args.slots == 0 || args.replicas == 0 {
        bail!("--workers, --trials, --epochs, --slots and --replicas must each be at least 1");
    }
    if args.replicas > 1 && store.is_none() {
        bail!(
            "--replicas {} needs a PostgreSQL store (--postgres or --store): SQLite serves one coordinator",
            args.replicas
        );
    }
    if let Some(url) = store {
        let backend = convsweep_coordinator::store::PostgresBackend::new(url.to_owned());
        let held = tokio::task::spawn_blocking(move || {
            use convsweep_coordinator::store::Backend;
            backend.open_reader().and_then(|r| r.sweep_ids())
        })
        .await?;
        if let Ok(sweeps) = held
            && !sweeps.is_empty()
        {
            bail!(
                "the database at --store already holds sweeps ({}); give the bench an empty one",
                sweeps.join(", ")
            );
        }
    }
    let token = Secret::random()?;
    let mut replicas = Vec::with_capacity(args.replicas);
    for i in 0..args.replicas {
        let name = if store.is_some() {
            format!("replica-{i}")
        } else {
            "coordinator".into()
        };
        replicas.push(start_replica(program, state, store, &name, &token, args.trials.max(1_000_000)).await?);
    }
    let served = &replicas[0];
    let mut admin = served.connection().admin().await?;
    admin
        .submit_sweep(pb::SubmitSweepRequest {
            spec_toml: sweep_spec("bench", args.trials, args.epochs),
        })
        .await
        .context("submitting the bench sweep")?;

    // Every worker on a connection of its own, registered before the clock starts.
    eprintln!(
        "bench coordinator: {} workers x {} slots, {} trials of {} epochs",
        args.workers, args.slots, args.trials, args.epochs
    );
    let mut clients = Vec::with_capacity(args.workers);
    for i in 0..args.workers {
        let mut client = WorkerServiceClient::new(replicas[i % replicas.len()].connection().connect().await?);
        let id = client
            .register(pb::RegisterRequest {
                protocol_version: PROTOCOL_VERSION,
                host: "bench".into(),
                devices: vec!["simulated".into()],
                slots: args.slots,
                name: format!("sim-{i}"),
                instance: String::new(),
            })
            .await?
            .into_inner()
            .worker_id;
        clients.push((client, id));
    }

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let last_done = Arc::new(Mutex::new(started));
    let usage = |replicas: &[Served]| -> Result<(f64, u64)> {
        let mut total = (0.0, 0);
        for r in replicas {
            let (cpu, rss) = r.usage()?;
            total = (total.0 + cpu, total.1.max(rss));
        }
        Ok(total)
    };
    let (cpu0, _) = usage(&replicas)?;
    let probe = {
        let ops = served.ops.clone();
        let done = done.clone();
        let total = args.trials;
        tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(ops)?.connect().await?;
            let mut s = Samples::default();
            loop {
                let t = Instant::now();
                tonic_health_check(channel.clone()).await?;
                s.0.push(t.elapsed().as_secs_f64());
                if done.load(Ordering::SeqCst) >= total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(s)
        })
    };
    let progress = {
        let done = done.clone();
        let total = args.trials;
        tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < total {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "  {} / {total} trials, {:.0} s",
                    done.load(Ordering::SeqCst),
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut slots = Vec::new();
    for (client, id) in clients {
        for _ in 0..args.slots {
            slots.push(tokio::spawn(slot(
                client.clone(),
                id.clone(),
                args.epochs,
                args.trials,
                done.clone(),
                last_done.clone(),
            )));
        }
    }
    let mut all = Latencies::default();
    for s in slots {
        let l = s.await??;
        all.lease.0.extend(l.lease.0);
        all.empty_leases += l.empty_leases;
        all.heartbeat.0.extend(l.heartbeat.0);
        all.report.0.extend(l.report.0);
        all.complete.0.extend(l.complete.0);
    }
    let elapsed = last_done.lock().await.duration_since(started).as_secs_f64();
    let mut health = probe.await??;
    progress.abort();
    let (cpu1, peak_rss) = usage(&replicas)?;
    // Counters summed over replicas; the writer's busy time per replica.
    let (mut expiries, mut batches, mut batched, mut writer_busy) = (0.0, 0.0, 0.0, 0.0);
    for r in &replicas {
        expiries += r.metric("convsweep_lease_expirations").await?;
        batches += r.metric("convsweep_store_batch_writes_count").await?;
        batched += r.metric("convsweep_store_batch_writes_sum").await?;
        writer_busy += r
            .metric("convsweep_store_transaction_seconds_sum{op=\"write_batch\"}")
            .await?
            / replicas.len() as f64;
    }
    for r in replicas {
        r.stop().await?;
    }

    // Every trial succeeded exactly once, with all its epochs.
    let backend = convsweep_coordinator::store::backend_at(&match store {
        Some(url) => url.to_owned(),
        None => state.display().to_string(),
    });
    let results = tokio::task::spawn_blocking(move || backend.open_reader()?.results(None)).await??;
    let succeeded = results
        .trials
        .iter()
        .filter(|t| t.state == convsweep_proto::TrialState::Succeeded && t.attempts == 1)
        .count() as u64;
    let epoch_rows = results.epochs.len() as u64;
    let complete = succeeded == args.trials && epoch_rows == args.trials * u64::from(args.epochs);
    let trials_per_s = args.trials as f64 / elapsed;
    let out = json!({
        "store": if store.is_some() { "postgres" } else { "sqlite" },
        "replicas": args.replicas,
        "workers": args.workers,
        "slots": args.slots,
        "trials": args.trials,
        "epochs": args.epochs,
        "seconds": elapsed,
        "trials_per_s": trials_per_s,
        "epoch_rows_per_s": (args.trials * u64::from(args.epochs)) as f64 / elapsed,
        "lease": all.lease.summary(),
        "empty_leases": all.empty_leases,
        "heartbeat": all.heartbeat.summary(),
        "report_epochs": all.report.summary(),
        "complete": all.complete.summary(),
        "health_check": health.summary(),
        "false_expiries": expiries,
        "coordinator_cpu_seconds": cpu1 - cpu0,
        "coordinator_peak_rss_bytes": peak_rss,
        "writes_per_transaction": if batches > 0.0 { batched / batches } else { 0.0 },
        "store_writer_busy_fraction": writer_busy / elapsed,
        "succeeded_once": succeeded,
        "epoch_rows": epoch_rows,
        "complete_and_exact": complete,
    });
    print_load(&out);
    if !complete {
        bail!(
            "{succeeded} of {} trials succeeded in exactly one attempt and {epoch_rows} of {} epoch rows are stored",
            args.trials,
            args.trials * u64::from(args.epochs)
        );
    }
    if expiries > 0.0 {
        bail!("{expiries} leases expired under load (false expiries)");
    }
    Ok(out)
}

fn print_load(v: &serde_json::Value) {
    println!(
        "convsweep ({}, {} replica(s)): {:.0} trials/s, {:.0} epoch rows/s over {:.1} s ({} workers x {} slots)",
        v["store"].as_str().unwrap_or("?"),
        v["replicas"],
        v["trials_per_s"].as_f64().unwrap_or(0.0),
        v["epoch_rows_per_s"].as_f64().unwrap_or(0.0),
        v["seconds"].as_f64().unwrap_or(0.0),
        v["workers"],
        v["slots"]
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}",
        "call", "calls", "p50 ms", "p99 ms", "max ms"
    );
    for k in ["lease", "heartbeat", "report_epochs", "complete", "health_check"] {
        let s = &v[k];
        println!(
            "{:<14} {:>9} {:>9.2} {:>9.2} {:>9.2}",
            k,
            s["calls"],
            s["p50_ms"].as_f64().unwrap_or(0.0),
            s["p99_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "false expiries {}, coordinator CPU {:.1} s, peak RSS {:.0} MiB, {:.1} writes per transaction",
        v["false_expiries"],
        v["coordinator_cpu_seconds"].as_f64().unwrap_or(0.0),
        v["coordinator_peak_rss_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64,
        v["writes_per_transaction"].as_f64().unwrap_or(0.0)
    );
    println!(
        "store writer (one thread, group commit) busy {:.0}% of the run",
        v["store_writer_busy_fraction"].as_f64().unwrap_or(0.0) * 100.0
    );
    println!(
        "check: {} trials succeeded exactly once, {} epoch rows stored",
        v["succeeded_once"], v["epoch_rows"]
    );
}

/// The Python that has Ray Tune: `explicit`, else the one `bench/setup-peers.sh` installs into
/// the repository's `.deps/ray`.
fn ray_python(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let python = match explicit {
        Some(p) => p.to_owned(),
        None => crate::files::repo_file(".deps/ray/bin/python"),
    };
    let has_ray = std::process::Command::new(&python)
        .args(["-c", "import ray.tune"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_ray {
        Ok(python)
    } else {
        Err(format!(
            "{} has no Ray Tune; run bench/setup-peers.sh once (it installs ray[tune] into .deps/ray) or give --python",
            python.display()
        ))
    }
}

fn peer(args: &Args, trials: u64) -> Option<serde_json::Value> {
    let python = match ray_python(args.python.as_deref()) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("bench coordinator: Ray Tune skipped: {why}");
            return None;
        }
    };
    let out = tempfile::NamedTempFile::new().ok()?;
    eprintln!(
        "bench coordinator: Ray Tune, {trials} trials of {} results",
        args.epochs
    );
    let status = std::process::Command::new(&python)
        .arg(crate::files::repo_file("bench/ray_tune_reference.py"))
        .args([
            "--trials",
            &trials.to_string(),
            "--epochs",
            &args.epochs.to_string(),
            "--json",
        ])
        .arg(out.path())
        .stdout(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path()).ok()?).ok()?;
            println!(
                "Ray Tune: {:.1} trials/s, {:.0} results/s over {:.1} s ({trials} trials)",
                v["trials_per_s"].as_f64().unwrap_or(0.0),
                v["results_per_s"].as_f64().unwrap_or(0.0),
                v["seconds"].as_f64().unwrap_or(0.0)
            );
            Some(v)
        }
        other => {
            eprintln!("bench coordinator: Ray Tune skipped: the reference failed ({other:?})");
            None
        }
    }
}

async fn sizes(program: &Path, dir: &Path) -> Result<serde_json::Value> {
    let mut rows = Vec::new();
    for n in [100_000u64, 1_000_000] {
        let state = dir.join(format!("size-{n}"));
        let served = start_coordinator(program, &state, n).await?;
        let mut admin = served.connection().admin().await?;
        let t = Instant::now();
        let submitted = admin
            .submit_sweep(pb::SubmitSweepRequest {
                spec_toml: sweep_spec("large", n, 10),
            })
            .await?
            .into_inner();
        let submit_s = t.elapsed().as_secs_f64();
        let (_, rss) = served.usage()?;
        let mut status = Samples::default();
        for _ in 0..5 {
            let t = Instant::now();
            let s = admin
                .get_status(pb::GetStatusRequest {
                    sweep_id: "large".into(),
                })
                .await?
                .into_inner();
            status.0.push(t.elapsed().as_secs_f64());
            if s.sweeps[0].total as u64 != n {
                bail!("GetStatus counted {} trials of {n}", s.sweeps[0].total);
            }
        }
        println!(
            "submit {n} trials: {submit_s:.1} s, coordinator peak RSS {:.0} MiB; GetStatus median {:.1} ms",
            rss as f64 / (1u64 << 20) as f64,
            status.summary()["p50_ms"].as_f64().unwrap_or(0.0)
        );
        rows.push(json!({"trials": submitted.trials, "submit_s": submit_s, "peak_rss_bytes": rss, "get_status": status.summary()}));
        served.stop().await?;
    }
    let export = export_rows(program, dir).await?;
    Ok(json!({"submit": rows, "export": export}))
}

/// A state of 100,000 succeeded trials with 10 epochs each (1,000,000 epoch rows), written
/// through the store in large batches, then exported through the `Export` stream of a
/// coordinator and, where this binary has it, by `convsweep export` and `convsweep report`.
async fn export_rows(program: &Path, dir: &Path) -> Result<serde_json::Value> {
    use convsweep_coordinator::store::{LeaseOps, LeasePolicy, SqliteStore, StoreWriter};
    let state = dir.join("export");
    let trials = 100_000u64;
    let epochs = 10u32;
    let t = Instant::now();
    {
        let state = state.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::create_dir_all(&state)?;
            let mut store = SqliteStore::open(&state, LeasePolicy::default())?;
            let spec = convsweep_coordinator::sweep::SweepSpec::from_toml(&sweep_spec("exported", trials, epochs))?;
            store.submit(&spec.id, "", &spec.expand_canonical()?, 0)?;
            let worker = store.register_worker("filler", "bench", &[], 1000, 0, "")?;
            let epoch_rows: Vec<pb::EpochMetrics> = (1..=epochs).map(epoch).collect();
            let succeeded = convsweep_proto::Outcome::Succeeded(pb::TrialResult::default());
            loop {
                // A thousand trials leased, reported and completed per transaction.
                let mut leased = 0;
                store.batch(2, &mut |ops: &mut dyn LeaseOps| {
                    let leases = ops.lease(&worker, 1000)?.leases;
                    leased = leases.len();
                    for l in leases {
                        ops.report_epochs(&worker, &l.trial_id, &l.lease_token, &epoch_rows)?;
                        ops.complete(&worker, &l.trial_id, &l.lease_token, &succeeded)?;
                    }
                    Ok(())
                })?;
                if leased == 0 {
                    return Ok(());
                }
            }
        })
        .await??;
    }
    eprintln!(
        "bench coordinator: wrote {} epoch rows in {:.0} s",
        trials * u64::from(epochs),
        t.elapsed().as_secs_f64()
    );
    let served = start_coordinator(program, &state, 1_000_000).await?;
    let mut admin = served.connection().admin().await?;
    let t = Instant::now();
    let mut stream = admin
        .export(pb::ExportRequest {
            sweep_id: String::new(),
        })
        .await?
        .into_inner();
    let mut rows = 0usize;
    while let Some(chunk) = stream.message().await? {
        rows += chunk.epochs.len();
    }
    let rpc_s = t.elapsed().as_secs_f64();
    let (_, rss) = served.usage()?;
    served.stop().await?;
    println!(
        "export of {rows} epoch rows over the Export stream: {rpc_s:.1} s, coordinator peak RSS {:.0} MiB",
        rss as f64 / (1u64 << 20) as f64
    );
    let mut out = json!({"epoch_rows": rows, "export_stream_s": rpc_s, "coordinator_peak_rss_bytes": rss});
    for (what, args) in [("export", vec!["export", "--state-dir"]), ("report", vec!["report"])] {
        let target = dir.join(format!("{what}-out"));
        let mut cmd = std::process::Command::new(program);
        cmd.args(&args).arg(&state).arg("--out").arg(&target);
        let run = tokio::task::spawn_blocking(move || measured(cmd)).await??;
        if run.ok {
            println!(
                "convsweep {what} of {rows} epoch rows: {:.1} s, peak RSS {:.0} MiB",
                run.seconds,
                run.max_rss as f64 / (1u64 << 20) as f64
            );
            out[what] = json!({"seconds": run.seconds, "peak_rss_bytes": run.max_rss});
        } else {
            eprintln!("bench coordinator: convsweep {what} skipped: {}", run.stderr.trim());
        }
    }
    Ok(out)
}

/// How a child process went: its exit, wall time, peak RSS (from `wait4`) and stderr.
struct Measured {
    ok: bool,
    seconds: f64,
    max_rss: u64,
    stderr: String,
}

fn measured(mut cmd: std::process::Command) -> Result<Measured> {
    let err = tempfile::tempfile()?;
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(err.try_clone()?)
        .spawn()
        .context("cannot start convsweep")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: waits for our own child (reaping it) and fills a zeroed rusage; std's `Child` is
    // not waited for afterwards.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::wait4(pid, &mut status, 0, &mut usage) != pid {
            bail!("wait4 on convsweep failed: {}", std::io::Error::last_os_error());
        }
        usage
    };
    let seconds = started.elapsed().as_secs_f64();
    drop(child);
    use std::io::{Read, Seek};
    let mut err = err;
    err.seek(std::io::SeekFrom::Start(0))?;
    let mut stderr = String::new();
    err.read_to_string(&mut stderr)?;
    Ok(Measured {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        seconds,
        max_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        stderr,
    })
}

/// `convsweep-bench coordinator`.
pub async fn bench(args: Args) -> Result<ExitCode> {
    raise_open_files();
    let program = crate::files::convsweep_binary(args.convsweep.as_deref())?;
    let scratch = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| scratch.path().to_owned());
    let report = if args.sizes {
        sizes(&program, &dir).await?
    } else {
        // A PostgreSQL server of the bench's own lives as long as the run.
        let server = args.postgres.then(convsweep_testkit::postgres::PgServer::start_durable);
        let store = match (&args.store, &server) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(pg)) => Some(pg.url(&pg.fresh_database())),
            (None, None) => None,
        };
        let mine = load(&args, &program, &dir.join("load"), store.as_deref()).await?;
        drop(server);
        let theirs = if args.no_peer {
            None
        } else {
            peer(&args, args.peer_trials.unwrap_or(args.trials))
        };
        if let Some(t) = &theirs {
            let ratio = mine["trials_per_s"].as_f64().unwrap_or(0.0) / t["trials_per_s"].as_f64().unwrap_or(f64::NAN);
            println!("convsweep / Ray Tune trials/s: {ratio:.1}x");
        }
        json!({"convsweep": mine, "ray_tune": theirs})
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
