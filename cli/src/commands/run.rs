//! `convsweep run`: the whole system on one machine ([`crate::local`]): the coordinator in this
//! process on a loopback port, workers as separate processes of this binary, exactly as on a
//! cluster; a progress bar from the sweep's `Watch` stream; the report at the end.
//!
//! Layout of `runs/<sweep>/`: `state.db` (coordinator state; running the same spec again
//! resumes it), `checkpoints/` (interrupted trials continue from them), `convsweep.log`,
//! `logs/worker-N.log`, the Parquet tables and `report.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::{Globals, Logging};

/// Flags of `convsweep run`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct RunArgs {
    /// Sweep spec (TOML).
    pub spec: PathBuf,
    /// Worker processes to start.
    #[arg(long, default_value_t = 2, env = "CONVSWEEP_WORKERS", value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
    /// libtorch threads per worker (default: the machine's cores divided by --workers).
    #[arg(long, env = "CONVSWEEP_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Folder holding one folder per sweep (state, logs, Parquet, report).
    #[arg(long, default_value = "runs", env = "CONVSWEEP_RUNS_DIR")]
    pub runs_dir: PathBuf,
    /// Device for the workers: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", env = "CONVSWEEP_DEVICE")]
    pub device: String,
    /// Most trials the spec may expand to (grid times seeds); checked before expansion.
    #[arg(long, default_value_t = convsweep_coordinator::sweep::DEFAULT_MAX_TRIALS_PER_SWEEP,
          env = "CONVSWEEP_MAX_TRIALS_PER_SWEEP", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_trials_per_sweep: u64,
}

#[cfg(feature = "worker")]
mod imp {
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use convsweep_coordinator::CoordinatorConfig;
    use convsweep_coordinator::sweep::SweepSpec;
    use indicatif::{ProgressBar, ProgressStyle};

    use super::*;
    use crate::commands::watch;
    use crate::commands::worker::WorkerArgs;
    use crate::local::{self, Followed, Local};

    /// Runs a sweep end to end on this machine.
    pub async fn run(args: &RunArgs, globals: &Globals, log: &Logging) -> Result<ExitCode> {
        let text =
            std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read {}", args.spec.display()))?;
        let spec = SweepSpec::from_toml_capped(&text, args.max_trials_per_sweep)
            .with_context(|| format!("{}", args.spec.display()))?;
        let run_dir = args.runs_dir.join(spec.id.as_str());
        let log_dir = run_dir.join("logs");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
        // The progress bar owns the terminal: log lines go to the run's folder.
        log.to_file(&run_dir.join("convsweep.log"))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let threads = args.threads.unwrap_or((cores / args.workers).max(1));

        let started = Instant::now();
        let mut local = Local::start(CoordinatorConfig {
            max_trials_per_sweep: args.max_trials_per_sweep,
            ..local::config(&run_dir)
        })
        .await?;
        let (sweep_id, submitted) = local.coordinator().submit_or_extend(&text)?;
        eprintln!(
            "sweep {sweep_id}: {} trials ({} new), {} workers x {threads} threads, state in {}",
            submitted.trials,
            submitted.new_trials,
            args.workers,
            run_dir.display()
        );
        let program = std::env::current_exe().context("cannot find the convsweep binary to start workers")?;
        for i in 0..args.workers {
            let worker = WorkerArgs {
                device: args.device.clone(),
                threads: Some(threads),
                name: Some(format!("local-{i}")),
                grace_secs: 10,
                checkpoint_dir: Some(run_dir.join("checkpoints")),
                ..WorkerArgs::new("")
            };
            local.spawn_worker(&program, globals, worker, &log_dir.join(format!("worker-{i}.log")))?;
        }

        let interrupted = crate::shutdown_on_signals();
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials {msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let followed = local
            .follow(
                sweep_id.as_str(),
                &interrupted,
                |snapshot| show(&bar, snapshot),
                |event| {
                    if let Some(line) = watch::event_line(event) {
                        bar.println(line);
                    }
                },
                &log_dir,
            )
            .await;
        bar.finish();
        let stopped = local.stop(interrupted.is_cancelled()).await;
        let last = match followed? {
            Followed::Interrupted => {
                stopped?;
                eprintln!("interrupted; run the same command again to resume");
                return Ok(ExitCode::from(130));
            }
            Followed::Done(last) => last,
        };
        stopped?;

        report(&run_dir, sweep_id.as_str())?;
        let sweep = last
            .status
            .unwrap_or_default()
            .sweeps
            .into_iter()
            .next()
            .unwrap_or_default();
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

    /// The bar's position, length and message for one snapshot.
    fn show(bar: &ProgressBar, snapshot: &convsweep_proto::pb::WatchSnapshot) {
        let Some(s) = snapshot.status.as_ref().and_then(|st| st.sweeps.first()) else {
            return;
        };
        let c = s.counts.unwrap_or_default();
        bar.set_length(u64::from(s.total));
        bar.set_position(u64::from(c.done()));
        let eta = if s.eta_seconds >= 0.0 {
            format!(", ETA {}", convsweep_proto::numbers::duration(s.eta_seconds))
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
        bar.set_message(format!("(running {}, failed {}{eta}{best})", c.active(), c.failed));
    }

    #[cfg(feature = "analysis")]
    fn report(run_dir: &std::path::Path, sweep: &str) -> Result<()> {
        use convsweep_analysis::report::views::accuracy;
        let frames = crate::commands::results::state_frames(run_dir, Some(sweep))?;
        frames.write_parquet(run_dir)?;
        let report = convsweep_analysis::Report::build(&frames, sweep)?;
        let written = report.write(run_dir)?;
        if let Some(table) = report.table(accuracy::TABLE) {
            println!(
                "Test accuracy (%) over seeds, by kernel size x train mode x init and every other factor that varies:\n{}",
                convsweep_analysis::tables::to_text(table)
            );
        }
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
}

#[cfg(feature = "worker")]
pub use imp::run;

/// `convsweep run` in a build without libtorch.
#[cfg(not(feature = "worker"))]
pub async fn run(_: &RunArgs, _: &Globals, _: &Logging) -> Result<ExitCode> {
    Err(super::without_worker("run"))
}
