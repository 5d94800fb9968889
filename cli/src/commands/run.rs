//! `convsweep run`: the whole system on one machine. The coordinator runs in this process on a
//! loopback port; workers are separate processes of this binary, exactly as on a cluster.
//!
//! Layout of `runs/<sweep>/`: `state.db` (coordinator state; running the same spec again
//! resumes it), `checkpoints/` (interrupted trials continue from them), `convsweep.log`,
//! `logs/worker-N.log`, the Parquet tables and `report.md`.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use convsweep_coordinator::sweep::SweepSpec;
use convsweep_coordinator::{Coordinator, CoordinatorConfig, ServeConfig};
use convsweep_proto::client::{Connection, Secret};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::logging;

/// Flags of `convsweep run`.
#[derive(Debug)]
pub struct RunArgs {
    pub spec: PathBuf,
    pub workers: u32,
    pub threads: Option<u32>,
    pub runs_dir: PathBuf,
    pub device: String,
    pub fft_conv: bool,
    pub log_format: logging::Format,
    pub max_trials_per_sweep: u64,
}

/// A `convsweep worker` process of this binary against the local coordinator at `url`, as a
/// cluster would start it: its token in the environment, checkpoints under `run_dir`, stdout and
/// stderr into `log_path`. `extra` are the caller's own flags (threads, slots, name...).
pub(super) fn spawn_local_worker(
    url: &str,
    token: &Secret,
    device: &str,
    run_dir: &std::path::Path,
    log_path: &std::path::Path,
    extra: &[String],
) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the convsweep binary to start a worker")?;
    let log = std::fs::File::create(log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    Command::new(exe)
        .args(["worker", "--coordinator", url, "--device", device])
        .args(extra)
        .arg("--checkpoint-dir")
        .arg(run_dir.join("checkpoints"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .env(super::TOKEN_ENV, token.expose())
        // The run's own coordinator is plaintext on loopback with this token: credentials meant
        // for another coordinator must not reach its workers.
        .env_remove("CONVSWEEP_TOKEN_FILE")
        .env_remove("CONVSWEEP_TLS_CA")
        .env_remove("CONVSWEEP_TLS_CERT")
        .env_remove("CONVSWEEP_TLS_KEY")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a worker process")
}

/// Runs a sweep end to end on this machine.
pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read {}", args.spec.display()))?;
    let spec = SweepSpec::from_toml_capped(&text, args.max_trials_per_sweep)
        .with_context(|| format!("{}", args.spec.display()))?;
    let run_dir = args.runs_dir.join(spec.id.as_str());
    let log_dir = run_dir.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
    logging::init_file(args.log_format, &run_dir.join("convsweep.log"))?;
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let threads = args.threads.unwrap_or((cores / args.workers).max(1));

    let started = Instant::now();
    let config = CoordinatorConfig {
        state_dir: run_dir.clone(),
        heartbeat_interval: Duration::from_secs(2),
        lease_timeout: Duration::from_secs(30),
        max_trials_per_sweep: args.max_trials_per_sweep,
        ..Default::default()
    };
    let coordinator = Coordinator::open(config)?;
    let (sweep_id, submitted) = coordinator.submit_or_extend(&text)?;
    eprintln!(
        "sweep {sweep_id}: {} trials ({} new), {} workers x {threads} threads, state in {}",
        submitted.trials,
        submitted.new_trials,
        args.workers,
        run_dir.display()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // A fresh token for this run's own workers (given to them in their environment, not on
    // their command line), so nothing else on the machine can drive this coordinator.
    let token = Secret::random().context("cannot draw a token from /dev/urandom")?;
    let serve = ServeConfig {
        token: Some(token.clone()),
        ..Default::default()
    };
    let stop_server = CancellationToken::new();
    let server = {
        let (stop, coordinator) = (stop_server.clone(), coordinator.clone());
        tokio::spawn(async move {
            convsweep_coordinator::serve_with(listener, coordinator, &serve, async move { stop.cancelled().await })
                .await
        })
    };
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let extra = [
            "--grace-secs".to_owned(),
            "10".to_owned(),
            "--fft-conv".to_owned(),
            args.fft_conv.to_string(),
            "--threads".to_owned(),
            threads.to_string(),
            "--name".to_owned(),
            format!("local-{i}"),
        ];
        let log_path = log_dir.join(format!("worker-{i}.log"));
        workers.push(spawn_local_worker(
            &url,
            &token,
            &args.device,
            &run_dir,
            &log_path,
            &extra,
        )?);
    }

    let interrupted = super::shutdown_on_signals();
    let conn = Connection {
        token: Some(token.clone()),
        ..Connection::plain(&url)
    };
    let outcome = watch(&conn, sweep_id.as_str(), &mut workers, &interrupted, &log_dir).await;

    // Let workers finish and exit on their own, then stop the server.
    coordinator.set_drain(true);
    for w in &mut workers {
        if interrupted.is_cancelled() {
            if let Some(pid) = w.id() {
                terminate(pid);
            }
        }
        if tokio::time::timeout(Duration::from_secs(20), w.wait()).await.is_err() {
            let _ = w.kill().await;
        }
    }
    stop_server.cancel();
    server.await??;
    outcome?;
    if interrupted.is_cancelled() {
        eprintln!("interrupted; run the same command again to resume");
        return Ok(ExitCode::from(130));
    }

    let status = coordinator.status(sweep_id.as_str())?;
    let sweep = &status.sweeps[0];
    report(&run_dir, sweep_id.as_str())?;
    let counts = sweep.counts.unwrap_or_default();
    eprintln!(
        "{} succeeded, {} failed in {:.0} s; results in {}",
        counts.succeeded,
        counts.failed,
        started.elapsed().as_secs_f64(),
        run_dir.display()
    );
    for f in &sweep.failures {
        eprintln!("  failed {} (attempt {}): {}", f.trial_id, f.attempt, f.reason);
    }
    Ok(if counts.failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Returns once every worker process has exited.
async fn all_exited(workers: &mut [Child]) {
    loop {
        let alive = workers
            .iter_mut()
            .map(|w| w.try_wait())
            .filter(|status| matches!(status, Ok(None)))
            .count();
        if alive == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Shows progress (from the coordinator's `Watch` stream, as `convsweep watch` does) until every
/// trial is done, the run is interrupted, or all workers died.
async fn watch(
    conn: &Connection,
    sweep: &str,
    workers: &mut [Child],
    interrupted: &CancellationToken,
    log_dir: &std::path::Path,
) -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let follow = super::watch::follow(
        conn,
        Some(sweep),
        |snapshot| {
            let Some(s) = snapshot.status.as_ref().and_then(|st| st.sweeps.first()) else {
                return;
            };
            let c = s.counts.unwrap_or_default();
            bar.set_length(u64::from(s.total));
            bar.set_position(u64::from(super::watch::done(s)));
            let eta = if s.eta_seconds >= 0.0 {
                format!(", ETA {}", super::format_duration(s.eta_seconds))
            } else {
                String::new()
            };
            let best = snapshot
                .active
                .iter()
                .filter(|a| a.epoch > 0)
                .map(|a| a.test_acc)
                .fold(f64::NAN, f64::max);
            let best = if best.is_nan() {
                String::new()
            } else {
                format!(", best running {:.1}%", best * 100.0)
            };
            bar.set_message(format!(
                "(running {}, failed {}{eta}{best})",
                c.leased + c.running,
                c.failed
            ));
        },
        |event| {
            if let Some(line) = super::watch::event_line(event) {
                bar.println(line);
            }
        },
    );
    let result = tokio::select! {
        r = follow => r.map(|_| ()),
        () = interrupted.cancelled() => Ok(()),
        () = all_exited(workers) => Err(anyhow::anyhow!(
            "every worker process exited with trials left; see the logs in {}",
            log_dir.display()
        )),
    };
    bar.finish();
    result
}

#[cfg(feature = "analysis")]
fn report(run_dir: &std::path::Path, sweep: &str) -> Result<()> {
    let frames = super::state_frames(run_dir)?.for_sweep(sweep)?;
    frames.write_parquet(run_dir)?;
    let report = convsweep_analysis::Report::build(&frames, sweep)?;
    let written = report.write(run_dir)?;
    let headline = convsweep_analysis::tables::to_text(&report.sections[0].tables[0].1);
    println!(
        "Test accuracy (%) over seeds, by kernel size x train mode x init and every other factor that varies:\n{headline}"
    );
    eprintln!("report: {} and {}", written.html.display(), written.markdown.display());
    Ok(())
}

#[cfg(not(feature = "analysis"))]
fn report(run_dir: &std::path::Path, _sweep: &str) -> Result<()> {
    eprintln!(
        "built without the `analysis` feature: no Parquet or report; state is in {}",
        run_dir.display()
    );
    Ok(())
}
