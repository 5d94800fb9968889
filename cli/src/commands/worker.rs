//! `convsweep worker` and the hidden `convsweep trial-process` each of its trials runs in.

use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(not(feature = "worker"))]
use anyhow::Result;
use serde::Serialize;

use crate::Globals;

/// Flags of `convsweep worker`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct WorkerArgs {
    /// Coordinator URL, e.g. http://10.0.0.5:50051; for coordinator replicas on one store,
    /// several separated by commas (calls move on to the next when one is unreachable).
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
    /// Trials to run at once on the device.
    #[arg(long, default_value_t = 1, env = "CONVSWEEP_SLOTS", value_parser = clap::value_parser!(u32).range(1..))]
    pub slots: u32,
    /// Device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", env = "CONVSWEEP_DEVICE")]
    pub device: String,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, env = "CONVSWEEP_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Name shown in status and logs (default: the Slurm array task, else the host name).
    #[arg(long, env = "CONVSWEEP_WORKER_NAME")]
    pub name: Option<String>,
    /// Seconds running trials get to checkpoint, stop and report on SIGTERM.
    #[arg(long, default_value_t = 30, env = "CONVSWEEP_GRACE_SECS")]
    pub grace_secs: u64,
    /// Folder for trial checkpoints (shared by all workers of a sweep, e.g. a cluster
    /// volume); a trial leased again resumes from its latest one. None: no checkpoints.
    #[arg(long, env = "CONVSWEEP_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Epochs between checkpoints (one is also written on preemption and at the end).
    #[arg(long, default_value_t = 1, env = "CONVSWEEP_CHECKPOINT_EVERY", value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoint_every: u32,
    /// Exit 0 once a lease call finds no work and nothing runs (an Indexed Job's or a
    /// Slurm array task's worker ends when the sweep is drained).
    #[arg(long, env = "CONVSWEEP_EXIT_WHEN_IDLE")]
    pub exit_when_idle: bool,
    /// Seconds to keep trying to reach the coordinator at start-up (it may start later).
    #[arg(long, default_value_t = 900, env = "CONVSWEEP_CONNECT_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_secs: u64,
    /// Seconds a trial may go without progress (a finished batch or evaluation step)
    /// before its process is killed and the attempt fails (retryable). Default 1800.
    #[arg(long, env = "CONVSWEEP_STALL_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: Option<u64>,
    /// Most resident memory of one trial process, in MiB; a trial that grows past it is
    /// killed and fails for good (the same spec would again). None: no limit.
    #[arg(long, env = "CONVSWEEP_MAX_TRIAL_RSS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_trial_rss: Option<u64>,
    /// Train trials on threads of the worker process instead of a process per trial (a
    /// crash in libtorch then takes the worker and all its slots down; no --stall-timeout
    /// or --max-trial-rss, which watch a trial process).
    #[arg(long, env = "CONVSWEEP_IN_PROCESS")]
    pub in_process: bool,
    /// Stop (preempting running trials) and exit with an error once the coordinator has not
    /// answered for this many seconds. Default: keep trying.
    #[arg(long, env = "CONVSWEEP_MAX_DISCONNECTED_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_disconnected_secs: Option<u64>,
}

/// Seconds a trial may go without progress when `--stall-timeout` is not given.
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 1800;

impl WorkerArgs {
    /// A worker of `coordinator` with every other flag at its default.
    pub fn new(coordinator: &str) -> WorkerArgs {
        crate::argv::defaults(&["--coordinator", coordinator])
    }
}

/// Flags of the hidden `convsweep trial-process`: what its worker passes down.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct TrialProcessArgs {
    /// Device.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch intra-op threads.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Checkpoint folder.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Epochs between checkpoints.
    #[arg(long, default_value_t = 1)]
    pub checkpoint_every: u32,
}

#[cfg(feature = "worker")]
mod imp {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context, Result};
    use convsweep_worker::isolate::{ChildCommand, Limits, ProcessTrainer};
    use convsweep_worker::model::Compute;
    use convsweep_worker::{TchTrainer, Trainer, WorkerConfig};

    use super::*;
    use crate::{Access, Cli, Command};

    /// The worker's name: the flag, else the Slurm array task (`slurm-<job>_<task>`), else
    /// the host name. (On Kubernetes the manifests set the pod name through
    /// CONVSWEEP_WORKER_NAME.)
    fn worker_name(flag: Option<&str>) -> String {
        flag.filter(|n| !n.is_empty()).map_or_else(
            || match (
                std::env::var("SLURM_ARRAY_JOB_ID"),
                std::env::var("SLURM_ARRAY_TASK_ID"),
            ) {
                (Ok(job), Ok(task)) => format!("slurm-{job}_{task}"),
                _ => convsweep_worker::agent::host_name(),
            },
            str::to_owned,
        )
    }

    fn checkpoint_store(dir: Option<&Path>, every: u32) -> Result<Option<convsweep_worker::trainer::CheckpointStore>> {
        dir.map(|dir| {
            convsweep_worker::trainer::CheckpointStore::new(dir, every)
                .with_context(|| format!("cannot use checkpoint folder {}", dir.display()))
        })
        .transpose()
    }

    fn in_process_trainer(
        device: tch::Device,
        globals: &Globals,
        checkpoints: Option<convsweep_worker::trainer::CheckpointStore>,
    ) -> TchTrainer {
        let compute = Compute {
            device,
            fft_conv: globals.fft_conv,
        };
        TchTrainer::new(compute, checkpoints).with_decode_threads(globals.decode_threads.map(|n| n as usize))
    }

    /// How a worker starts its trial processes: this binary's `trial-process` with the
    /// worker's global flags (no credentials: a trial process talks only to its worker), the
    /// device it resolved, its threads and checkpoints.
    fn trial_process_command(args: &WorkerArgs, globals: &Globals, device: tch::Device) -> Result<ChildCommand> {
        let program = std::env::current_exe().context("cannot find this program's path to start trial processes")?;
        let child = Cli {
            globals: Globals {
                access: Access::default(),
                ..globals.clone()
            },
            command: Command::TrialProcess(TrialProcessArgs {
                device: match device {
                    tch::Device::Cuda(n) => format!("cuda:{n}"),
                    _ => "cpu".to_owned(),
                },
                threads: args.threads,
                checkpoint_dir: args.checkpoint_dir.clone(),
                checkpoint_every: args.checkpoint_every,
            }),
        };
        Ok(ChildCommand {
            program,
            args: crate::argv::of(&child)?,
        })
    }

    /// `convsweep worker`.
    pub async fn work(args: &WorkerArgs, globals: &Globals) -> Result<ExitCode> {
        if let Some(t) = args.threads {
            tch::set_num_threads(t as i32);
        }
        let device = convsweep_worker::pick_device(&args.device)?;
        let checkpoints = checkpoint_store(args.checkpoint_dir.as_deref(), args.checkpoint_every)?;
        if args.in_process && (args.stall_timeout.is_some() || args.max_trial_rss.is_some()) {
            anyhow::bail!(
                "--in-process cannot honour --stall-timeout or --max-trial-rss: they are the watchdog of a trial \
                 process, and --in-process trains on the worker's own threads; drop them, or drop --in-process"
            );
        }
        let trainer: Arc<dyn Trainer> = if args.in_process {
            Arc::new(in_process_trainer(device, globals, checkpoints))
        } else {
            let limits = Limits {
                stall_timeout: Duration::from_secs(args.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT_SECS)),
                max_rss_bytes: args.max_trial_rss.map(|m| m.saturating_mul(1 << 20)),
                // A trial asked to preempt gets four fifths of the worker's grace, then is
                // killed: the last fifth is left to report it.
                preempt_timeout: Duration::from_secs(args.grace_secs) * 4 / 5,
                ..Default::default()
            };
            Arc::new(ProcessTrainer::new(
                trial_process_command(args, globals, device)?,
                limits,
                vec![convsweep_worker::device::describe_device(device)],
                checkpoints,
            ))
        };
        let config = WorkerConfig {
            coordinator: globals.access.connection(&args.coordinator)?,
            name: worker_name(args.name.as_deref()),
            slots: args.slots,
            grace: Duration::from_secs(args.grace_secs),
            exit_when_idle: args.exit_when_idle,
            connect_timeout: Duration::from_secs(args.connect_timeout_secs),
            max_disconnected: args.max_disconnected_secs.map(Duration::from_secs),
            ..Default::default()
        };
        convsweep_worker::run(config, trainer, crate::shutdown_on_signals()).await?;
        Ok(ExitCode::SUCCESS)
    }

    /// `convsweep trial-process`: one trial, its lease on stdin, frames on stdout.
    pub fn trial_process(args: &TrialProcessArgs, globals: &Globals) -> Result<ExitCode> {
        if let Some(t) = args.threads {
            tch::set_num_threads(t.max(1) as i32);
        }
        let out = convsweep_worker::isolate::take_stdout().context("cannot take standard output for the worker")?;
        let device = convsweep_worker::pick_device(&args.device)?;
        let checkpoints = checkpoint_store(args.checkpoint_dir.as_deref(), args.checkpoint_every)?;
        let trainer = Arc::new(in_process_trainer(device, globals, checkpoints));
        let code = convsweep_worker::isolate::serve_trial(trainer, std::io::stdin(), out);
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    }
}

#[cfg(feature = "worker")]
pub use imp::{trial_process, work};

/// `convsweep worker` in a build without libtorch.
#[cfg(not(feature = "worker"))]
pub async fn work(_: &WorkerArgs, _: &Globals) -> Result<ExitCode> {
    Err(super::without_worker("worker"))
}

/// `convsweep trial-process` in a build without libtorch.
#[cfg(not(feature = "worker"))]
pub fn trial_process(_: &TrialProcessArgs, _: &Globals) -> Result<ExitCode> {
    Err(super::without_worker("trial-process"))
}
