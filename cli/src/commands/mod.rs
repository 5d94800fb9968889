//! The subcommands, each wiring the libraries together.

pub mod bench_coordinator;
pub mod bench_decode;
pub mod bench_rpc;
#[cfg(feature = "worker")]
pub mod bench_trial;
pub mod certs;
#[cfg(feature = "worker")]
pub mod info;
#[cfg(feature = "worker")]
pub mod run;
pub mod slurm;
pub mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
#[cfg(feature = "worker")]
use std::sync::Arc;
#[cfg(feature = "worker")]
use std::time::Duration;

use anyhow::{Context, Result, bail};
use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::client::{AuthChannel, Connection, Secret};
use convsweep_proto::pb;
use convsweep_proto::pb::admin_service_client::AdminServiceClient;
use tokio_util::sync::CancellationToken;

/// The credentials every command that talks to a coordinator takes (and the coordinator's own
/// TLS files): flags shared by every subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Access {
    /// File holding the bearer token (e.g. a mounted Secret); CONVSWEEP_TOKEN gives the value
    /// itself. The coordinator requires it on every call; clients and workers send it.
    #[arg(long, global = true, env = "CONVSWEEP_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM CA bundle to trust for an https:// coordinator (default: the system's roots).
    #[arg(long, global = true, env = "CONVSWEEP_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM certificate: the coordinator's own (TLS), or a client's for a coordinator that
    /// requires one (mTLS).
    #[arg(long, global = true, env = "CONVSWEEP_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, global = true, env = "CONVSWEEP_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The environment variable that carries a token's value.
pub const TOKEN_ENV: &str = "CONVSWEEP_TOKEN";

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

/// Cancels the returned token on SIGTERM, SIGINT or SIGUSR1 (the pre-timeout signal a Slurm
/// job asks for with `--signal=B:USR1@120`): a worker then checkpoints, reports its trials
/// preempted and exits, whichever of them came.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = usr1.recv() => tracing::info!("SIGUSR1 received (a scheduler's pre-timeout signal)"),
        }
        t.cancel();
    });
    token
}

/// The worker's name: the flag, else the Slurm array task (`slurm-<job>_<task>`), else the
/// host name. (On Kubernetes the manifests set the pod name through CONVSWEEP_WORKER_NAME.)
#[cfg(feature = "worker")]
pub fn worker_name(flag: Option<String>) -> String {
    flag.filter(|n| !n.is_empty()).unwrap_or_else(|| {
        match (
            std::env::var("SLURM_ARRAY_JOB_ID"),
            std::env::var("SLURM_ARRAY_TASK_ID"),
        ) {
            (Ok(job), Ok(task)) => format!("slurm-{job}_{task}"),
            _ => convsweep_worker::agent::host_name(),
        }
    })
}

/// Flags of `convsweep coordinator`.
#[derive(Debug)]
pub struct ServeArgs {
    pub config: CoordinatorConfig,
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub access: Access,
    pub tls_client_ca: Option<std::path::PathBuf>,
    pub insecure: bool,
    pub limits: convsweep_coordinator::Limits,
}

/// How the main port is served: the token, TLS and limits; refuses a non-loopback address
/// without a token unless `--insecure` says so.
pub fn serve_config(args: &ServeArgs) -> Result<convsweep_coordinator::ServeConfig> {
    let token = args.access.token()?;
    if token.is_none() && !args.listen.ip().is_loopback() && !args.insecure {
        bail!(
            "refusing to serve on {} without a token: anyone who reaches it could submit, cancel and report. \
             Give a token with --token-file FILE (or CONVSWEEP_TOKEN_FILE / {TOKEN_ENV}), listen on 127.0.0.1, \
             or pass --insecure to serve without one",
            args.listen
        );
    }
    let tls = match (&args.access.tls_cert, &args.access.tls_key) {
        (Some(cert), Some(key)) => Some(convsweep_coordinator::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        (None, None) if args.tls_client_ca.is_some() => {
            bail!("--tls-client-ca (mTLS) needs the coordinator's own --tls-cert and --tls-key")
        }
        (None, None) => None,
        _ => bail!("TLS needs both --tls-cert and --tls-key"),
    };
    Ok(convsweep_coordinator::ServeConfig {
        token,
        tls,
        limits: args.limits,
    })
}

/// `convsweep coordinator`.
pub async fn serve_coordinator(args: ServeArgs) -> Result<ExitCode> {
    let serve = serve_config(&args)?;
    let coordinator = Coordinator::open(args.config)?;
    let listen = args.listen;
    let listener = convsweep_coordinator::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let ops = args.ops_listen;
    let ops_listener =
        convsweep_coordinator::bind(ops).with_context(|| format!("cannot listen on {ops} (--ops-listen)"))?;
    let stop = shutdown_on_signals();
    // The ops port on a thread and runtime of its own: a health probe is answered at once even
    // while every thread of the main runtime is busy with worker calls.
    let ops_listener = ops_listener.into_std()?;
    let ops_server = std::thread::Builder::new().name("convsweep-ops".into()).spawn({
        let coordinator = coordinator.clone();
        let stop = stop.clone();
        move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(ops_listener)?;
                convsweep_coordinator::serve_ops(listener, coordinator, async move { stop.cancelled().await }).await?;
                Ok(())
            })
        }
    })?;
    let served =
        convsweep_coordinator::serve_with(listener, coordinator, &serve, async move { stop.cancelled().await }).await;
    let ops = tokio::task::spawn_blocking(move || ops_server.join()).await?;
    served?;
    match ops {
        Ok(result) => result.context("the ops port failed")?,
        Err(_) => bail!("the ops port's thread panicked"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `convsweep worker`.
#[cfg(feature = "worker")]
#[derive(Debug)]
pub struct WorkerArgs {
    pub coordinator: Connection,
    pub slots: u32,
    pub device: String,
    pub threads: Option<u32>,
    pub name: Option<String>,
    pub grace: Duration,
    pub checkpoint_dir: Option<std::path::PathBuf>,
    pub checkpoint_every: u32,
    pub fft_conv: bool,
    pub exit_when_idle: bool,
    pub connect_timeout: Duration,
    /// A process per trial (None: threads of the worker).
    pub isolation: Option<Isolation>,
}

/// How a worker runs its trial processes.
#[cfg(feature = "worker")]
#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    pub stall_timeout: std::time::Duration,
    pub max_trial_rss_mib: Option<u64>,
    pub log_format: crate::logging::Format,
    pub malloc_tuning: bool,
}

/// The flags of the hidden `convsweep trial-process`.
#[cfg(feature = "worker")]
#[derive(Debug)]
pub struct TrialProcessArgs {
    pub device: String,
    pub threads: Option<u32>,
    pub checkpoint_dir: Option<std::path::PathBuf>,
    pub checkpoint_every: u32,
    pub fft_conv: bool,
}

#[cfg(feature = "worker")]
fn checkpoint_store(dir: Option<&Path>, every: u32) -> Result<Option<convsweep_worker::trainer::CheckpointStore>> {
    dir.map(|dir| {
        convsweep_worker::trainer::CheckpointStore::new(dir, every)
            .with_context(|| format!("cannot use checkpoint folder {}", dir.display()))
    })
    .transpose()
}

/// `convsweep trial-process`: one trial, its lease on stdin, frames on stdout.
#[cfg(feature = "worker")]
pub fn trial_process(args: TrialProcessArgs) -> Result<ExitCode> {
    if let Some(t) = args.threads {
        tch::set_num_threads(t.max(1) as i32);
    }
    let out = convsweep_worker::isolate::take_stdout().context("cannot take standard output for the worker")?;
    let device = convsweep_worker::pick_device(&args.device)?;
    let checkpoints = checkpoint_store(args.checkpoint_dir.as_deref(), args.checkpoint_every)?;
    let compute = convsweep_worker::model::Compute {
        device,
        fft_conv: args.fft_conv,
    };
    let trainer = Arc::new(convsweep_worker::TchTrainer::new(compute, checkpoints));
    let code = convsweep_worker::isolate::serve_trial(trainer, std::io::stdin(), out);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The command line of a worker's trial processes: this binary, its global flags, and
/// `trial-process` with the worker's device, threads and checkpoints.
#[cfg(feature = "worker")]
fn child_command(
    args: &WorkerArgs,
    iso: &Isolation,
    device: tch::Device,
) -> Result<convsweep_worker::isolate::ChildCommand> {
    let program = std::env::current_exe().context("cannot find this program's path to start trial processes")?;
    let format = match iso.log_format {
        crate::logging::Format::Text => "text",
        crate::logging::Format::Json => "json",
    };
    let device = match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_owned(),
    };
    let mut argv: Vec<std::ffi::OsString> = vec![
        "--log-format".into(),
        format.into(),
        "--fft-conv".into(),
        args.fft_conv.to_string().into(),
        "--malloc-tuning".into(),
        iso.malloc_tuning.to_string().into(),
        "trial-process".into(),
        "--device".into(),
        device.into(),
    ];
    if let Some(t) = args.threads {
        argv.extend(["--threads".into(), t.to_string().into()]);
    }
    if let Some(dir) = &args.checkpoint_dir {
        argv.extend([
            "--checkpoint-dir".into(),
            dir.clone().into_os_string(),
            "--checkpoint-every".into(),
            args.checkpoint_every.to_string().into(),
        ]);
    }
    Ok(convsweep_worker::isolate::ChildCommand { program, args: argv })
}

/// `convsweep worker`.
#[cfg(feature = "worker")]
pub async fn worker(args: WorkerArgs) -> Result<ExitCode> {
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    if let Some(t) = args.threads {
        tch::set_num_threads(t.max(1) as i32);
    }
    let device = convsweep_worker::pick_device(&args.device)?;
    let checkpoints = checkpoint_store(args.checkpoint_dir.as_deref(), args.checkpoint_every)?;
    let trainer: Arc<dyn convsweep_worker::Trainer> = match &args.isolation {
        Some(iso) => {
            let limits = convsweep_worker::isolate::Limits {
                stall_timeout: iso.stall_timeout,
                max_rss_bytes: iso.max_trial_rss_mib.map(|m| m.saturating_mul(1 << 20)),
                ..Default::default()
            };
            Arc::new(convsweep_worker::isolate::ProcessTrainer::new(
                child_command(&args, iso, device)?,
                limits,
                vec![convsweep_worker::device::describe_device(device)],
                checkpoints,
            ))
        }
        None => {
            let compute = convsweep_worker::model::Compute {
                device,
                fft_conv: args.fft_conv,
            };
            Arc::new(convsweep_worker::TchTrainer::new(compute, checkpoints))
        }
    };
    let config = convsweep_worker::WorkerConfig {
        coordinator: args.coordinator,
        name: worker_name(args.name),
        slots: args.slots,
        grace: args.grace,
        exit_when_idle: args.exit_when_idle,
        connect_timeout: args.connect_timeout,
        ..Default::default()
    };
    convsweep_worker::run(config, trainer, shutdown_on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn admin(conn: &Connection) -> Result<AdminServiceClient<AuthChannel>> {
    Ok(conn.admin().await?)
}

fn read_spec(spec: &Path) -> Result<String> {
    std::fs::read_to_string(spec).with_context(|| format!("cannot read {}", spec.display()))
}

/// Prints what a submission or extension did: details to stderr, the sweep id to stdout.
fn print_sweep(sweep_id: &str, trials: u32, new_trials: u32) -> ExitCode {
    eprintln!("sweep {sweep_id}: {trials} trials ({new_trials} new)");
    println!("{sweep_id}");
    ExitCode::SUCCESS
}

/// `convsweep submit`.
pub async fn submit(spec: &Path, url: &Connection) -> Result<ExitCode> {
    let resp = admin(url)
        .await?
        .submit_sweep(pb::SubmitSweepRequest {
            spec_toml: read_spec(spec)?,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", spec.display(), s.message()))?
        .into_inner();
    Ok(print_sweep(&resp.sweep_id, resp.trials, resp.new_trials))
}

/// `convsweep extend`.
pub async fn extend(spec: &Path, url: &Connection) -> Result<ExitCode> {
    let resp = admin(url)
        .await?
        .extend_sweep(pb::ExtendSweepRequest {
            spec_toml: read_spec(spec)?,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", spec.display(), s.message()))?
        .into_inner();
    Ok(print_sweep(&resp.sweep_id, resp.trials, resp.new_trials))
}

/// `convsweep cancel`.
pub async fn cancel(url: &Connection, sweep: &str, trial_ids: Vec<String>) -> Result<ExitCode> {
    let resp = admin(url)
        .await?
        .cancel(pb::CancelRequest {
            sweep_id: sweep.to_owned(),
            trial_ids,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("cancelled {} trials of {sweep}", resp.cancelled);
    Ok(ExitCode::SUCCESS)
}

/// `convsweep resume`.
pub async fn resume(url: &Connection, sweep: &str) -> Result<ExitCode> {
    let resp = admin(url)
        .await?
        .resume(pb::ResumeRequest {
            sweep_id: sweep.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("re-queued {} trials of {sweep}", resp.requeued);
    Ok(ExitCode::SUCCESS)
}

/// JSON form of a status answer.
pub fn status_json(resp: &pb::GetStatusResponse) -> serde_json::Value {
    let sweeps: Vec<serde_json::Value> = resp
        .sweeps
        .iter()
        .map(|s| {
            let c = s.counts.unwrap_or_default();
            serde_json::json!({
                "sweep": s.sweep_id,
                "total": s.total,
                "counts": {
                    "pending": c.pending, "leased": c.leased, "running": c.running,
                    "succeeded": c.succeeded, "failed": c.failed, "preempted": c.preempted,
                    "cancelled": c.cancelled,
                },
                "trials_per_hour": s.trials_per_hour,
                "eta_seconds": if s.eta_seconds < 0.0 { serde_json::Value::Null } else { s.eta_seconds.into() },
                "failures": s.failures.iter().map(|f| serde_json::json!({
                    "trial": f.trial_id, "attempt": f.attempt, "reason": f.reason,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "workers_alive": resp.workers_alive, "sweeps": sweeps })
}

/// Human form of a status answer.
pub fn status_text(resp: &pb::GetStatusResponse) -> String {
    let mut out = format!("workers alive: {}\n", resp.workers_alive);
    if resp.sweeps.is_empty() {
        out.push_str("no sweeps\n");
    }
    for s in &resp.sweeps {
        let c = s.counts.unwrap_or_default();
        let done = c.succeeded + c.failed + c.cancelled;
        out.push_str(&format!(
            "sweep {}: {done}/{} done | pending {} leased {} running {} succeeded {} failed {} preempted {} cancelled {}\n",
            s.sweep_id, s.total, c.pending, c.leased, c.running, c.succeeded, c.failed, c.preempted, c.cancelled
        ));
        if s.trials_per_hour > 0.0 {
            out.push_str(&format!(
                "  throughput {:.1} trials/h, ETA {}\n",
                s.trials_per_hour,
                format_duration(s.eta_seconds)
            ));
        }
        for f in &s.failures {
            out.push_str(&format!(
                "  failed {} (attempt {}): {}\n",
                f.trial_id, f.attempt, f.reason
            ));
        }
    }
    out
}

/// `1h02m`, `3m05s`, `12s`, or `unknown` for negative values.
pub fn format_duration(seconds: f64) -> String {
    if seconds < 0.0 || !seconds.is_finite() {
        return "unknown".into();
    }
    let s = seconds.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// `convsweep status`.
pub async fn status(url: &Connection, sweep: Option<&str>, json: bool) -> Result<ExitCode> {
    let resp = admin(url)
        .await?
        .get_status(pb::GetStatusRequest {
            sweep_id: sweep.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&resp))?);
    } else {
        print!("{}", status_text(&resp));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where results come from: a folder (an export or a state) or a running coordinator.
#[derive(Debug)]
pub enum Source {
    /// An export folder (Parquet) or a coordinator's state folder (read read-only).
    Dir(std::path::PathBuf),
    /// A coordinator's Export stream.
    Remote(Connection),
}

impl Source {
    /// The source the flags name (clap makes sure exactly one is given).
    pub fn of(dir: Option<std::path::PathBuf>, coordinator: Option<&str>, access: &Access) -> Result<Source> {
        match (dir, coordinator) {
            (Some(d), None) => Ok(Source::Dir(d)),
            (None, Some(url)) => Ok(Source::Remote(access.connection(url)?)),
            _ => bail!("give either a folder or --coordinator URL"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Remote(c) => c.url.clone(),
        }
    }
}

/// Every result row a coordinator's Export stream sends (one sweep's, or all).
pub async fn remote_results(conn: &Connection, sweep: Option<&str>) -> Result<convsweep_proto::results::Results> {
    let mut stream = admin(conn)
        .await?
        .export(pb::ExportRequest {
            sweep_id: sweep.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("export from {}: {}", conn.url, s.message()))?
        .into_inner();
    let mut results = convsweep_proto::results::Results::default();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("export from {} stopped: {}", conn.url, s.message()))?
    {
        convsweep_proto::convert::add_export_chunk(&mut results, chunk)
            .with_context(|| format!("export from {} sent a row that does not fit", conn.url))?;
    }
    Ok(results)
}

#[cfg(feature = "analysis")]
mod results {
    use super::*;

    /// The result frames of a state folder, read-only: safe beside a live coordinator, never
    /// a migration.
    pub fn state_frames(state_dir: &Path) -> Result<convsweep_analysis::Frames> {
        let results = convsweep_coordinator::store::StateReader::open(state_dir)?.results()?;
        Ok(convsweep_analysis::Frames::from_results(&results)?)
    }

    /// The frames of `source`, all sweeps.
    async fn frames(source: &Source) -> Result<convsweep_analysis::Frames> {
        Ok(match source {
            Source::Dir(dir) if convsweep_analysis::Frames::is_export(dir) => {
                convsweep_analysis::Frames::read_parquet(dir)?
            }
            Source::Dir(dir) => state_frames(dir)?,
            Source::Remote(conn) => convsweep_analysis::Frames::from_results(&remote_results(conn, None).await?)?,
        })
    }

    /// The sweeps of `frames`, and the one asked for (or the only one).
    fn pick_sweep(frames: &convsweep_analysis::Frames, sweep: Option<&str>, source: &Source) -> Result<String> {
        let sweeps: std::collections::BTreeSet<String> = {
            let c = frames.trials.column("sweep")?.str()?.clone();
            (0..c.len()).filter_map(|i| c.get(i).map(str::to_owned)).collect()
        };
        let from = source.describe();
        Ok(match (sweep, sweeps.len()) {
            (Some(s), _) if sweeps.contains(s) => s.to_owned(),
            (Some(s), _) => bail!(
                "no sweep {s:?} in {from}; it holds: {}",
                sweeps.into_iter().collect::<Vec<_>>().join(", ")
            ),
            (None, 1) => sweeps.into_iter().next().expect("one sweep"),
            (None, 0) => bail!("{from} holds no trials"),
            (None, _) => bail!(
                "{from} holds several sweeps ({}); choose one with --sweep",
                sweeps.into_iter().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// `convsweep export`.
    pub async fn export(source: &Source, out: &Path, sweep: Option<&str>) -> Result<ExitCode> {
        let mut frames = frames(source).await?;
        if let Some(s) = sweep {
            let name = pick_sweep(&frames, Some(s), source)?;
            frames = frames.for_sweep(&name)?;
        }
        for path in frames.write_parquet(out)? {
            println!("{}", path.display());
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `convsweep report`.
    pub async fn report(source: &Source, out: &Path, sweep: Option<&str>) -> Result<ExitCode> {
        let frames = frames(source).await?;
        let name = pick_sweep(&frames, sweep, source)?;
        let frames = frames.for_sweep(&name)?;
        let report = convsweep_analysis::Report::build(&frames, &name)?;
        let written = report.write(out)?;
        println!("{}", written.html.display());
        println!("{}", written.markdown.display());
        eprintln!(
            "{} tables (CSV and Parquet) and {} plots in {}",
            written.tables.len() / 2,
            written.plots.len(),
            out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(all(feature = "analysis", feature = "worker"))]
pub use results::state_frames;
#[cfg(feature = "analysis")]
pub use results::{export, report};

/// `convsweep report` in a worker-only build.
#[cfg(not(feature = "analysis"))]
pub async fn report(_source: &Source, _out: &Path, _sweep: Option<&str>) -> Result<ExitCode> {
    bail!("this convsweep was built without the `analysis` feature (a worker-only build); report from a full build")
}

/// `convsweep export` in a worker-only build.
#[cfg(not(feature = "analysis"))]
pub async fn export(_source: &Source, _out: &Path, _sweep: Option<&str>) -> Result<ExitCode> {
    bail!("this convsweep was built without the `analysis` feature (a worker-only build); export from a full build")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(-1.0), "unknown");
        assert_eq!(format_duration(12.4), "12s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(3720.0), "1h02m");
    }
}
