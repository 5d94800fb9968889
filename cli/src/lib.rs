//! `convsweep`, the command users type, as a library: `main.rs` parses [`Cli`], sets up
//! tracing once and calls [`run`]; everything else lives here, where tests reach it.
//!
//! - this module: the command tree ([`Cli`]: the [`Globals`] every subcommand takes and one
//!   [`Command`] per subcommand, each a `#[derive(clap::Args)]` struct that the code running it
//!   takes as it is) and [`run`], the dispatch.
//! - [`commands`]: one module per subcommand: its flags and the function that runs it.
//! - [`local`]: a sweep on this machine: a coordinator in this process, worker processes of
//!   this binary, the sweep followed through its `Watch` stream (`convsweep run`, and the trial
//!   benchmark of the `convsweep-bench` crate).
//! - [`access`]: the token and TLS flags and the [`Connection`](convsweep_proto::client::Connection)
//!   they make.
//! - [`argv`]: a parsed command line back into arguments: how this binary starts its own
//!   child processes (`worker`, `trial-process`) from the structs above.
//! - [`flags`]: which flag sets what a library error names.
//! - [`logging`]: tracing, set up once per process.
//!
//! Features: `worker` (libtorch: `run`, `worker`, `model-info`) and `analysis` (Polars: `export`,
//! `report`), both on by default; a build without one says so when asked for what it lacks.

pub mod access;
pub mod argv;
pub mod commands;
pub mod flags;
pub mod local;
pub mod logging;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

pub use access::Access;
pub use logging::Logging;

use commands::{admin, certs, coordinator, info, results, run as run_cmd, slurm, store, watch, worker};

/// Sweeps of CNN training runs over kernel size, init scheme, architecture and more.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "convsweep", version, about)]
pub struct Cli {
    /// Flags every subcommand takes.
    #[command(flatten)]
    #[serde(flatten)]
    pub globals: Globals,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Clone, PartialEq, clap::Args, serde::Serialize)]
pub struct Globals {
    /// Log format on stderr: text or json. Filter with RUST_LOG (default: info).
    #[arg(long, global = true, default_value = "text", env = "CONVSWEEP_LOG_FORMAT")]
    pub log_format: logging::Format,
    /// Train stride-1 convs with kernel size 9 or more on the CPU through the FFT (same
    /// function, about twice as fast at k = 9); false keeps every conv on libtorch's conv2d. Each
    /// result records which ran.
    #[arg(long, global = true, default_value_t = true, env = "CONVSWEEP_FFT_CONV",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub fft_conv: bool,
    /// Tune glibc's allocator for CPU training (no fresh mmap per large tensor); false keeps
    /// glibc's defaults.
    #[arg(long, global = true, default_value_t = true, env = "CONVSWEEP_MALLOC_TUNING",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub malloc_tuning: bool,
    /// Threads that decode an image folder's JPEG and PNG files (default: every core the
    /// process may use).
    #[arg(long, global = true, env = "CONVSWEEP_DECODE_THREADS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub decode_threads: Option<u32>,
    /// Token and TLS files.
    #[command(flatten)]
    #[serde(flatten)]
    pub access: Access,
}

impl Default for Globals {
    /// Every global flag at its default.
    fn default() -> Self {
        argv::defaults(&[])
    }
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Run a sweep on this machine: coordinator in-process, local worker processes, report.
    Run(run_cmd::RunArgs),
    /// Serve the coordinator (gRPC) on ADDR with its state in DIR.
    Coordinator(coordinator::CoordinatorArgs),
    /// Train trials leased from a coordinator until it drains or SIGTERM arrives.
    Worker(worker::WorkerArgs),
    /// One trial attempt in a process of its own, driven by a worker over stdin and stdout.
    #[command(hide = true)]
    TrialProcess(worker::TrialProcessArgs),
    /// Submit a sweep spec to a coordinator; prints the sweep id.
    Submit(admin::SubmitArgs),
    /// Add the trials of a grown spec (more seeds or grid values) to its sweep.
    Extend(admin::ExtendArgs),
    /// Cancel a sweep's unfinished trials (or only the given ones); running ones stop at their
    /// next heartbeat.
    Cancel(admin::CancelArgs),
    /// Put a sweep's failed and cancelled trials back in the queue.
    Resume(admin::ResumeArgs),
    /// Show trial counts per state, throughput, ETA and failures.
    Status(admin::StatusArgs),
    /// Parameters (total, learnable) and FLOPs per image of models, given as grid settings.
    ///
    /// Example: `convsweep model-info arch=resnet18 stem=imagenet --classes 1000 --image-size 224`
    /// or `convsweep model-info kernel_size=[3,5,7,9] expansion=128 train_mode=frozen`.
    ModelInfo(info::ModelInfoArgs),
    /// Submit a sweep and write (or --submit) the Slurm array job of workers that runs it.
    Slurm(slurm::SlurmArgs),
    /// Make a private CA and the certificates of a TLS/mTLS coordinator and a client, in DIR.
    Certs(certs::CertsArgs),
    /// Write a sweep's report: HTML (plots inline), Markdown, and every table as CSV and Parquet.
    Report(results::ReportArgs),
    /// Export results as Parquet (trials, epochs, robustness, filters), from a state folder
    /// (read-only) or from a running coordinator.
    Export(results::ExportArgs),
    /// Move a coordinator's state between stores (`store copy --from DIR --to postgres://...`).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Follow sweeps live: a bar per sweep with ETA, the running trials, the last failures;
    /// exits when the sweep (or, without --sweep, every sweep) is done.
    Watch(watch::WatchArgs),
}

/// Process-wide set-up that must come before any thread starts: the CPU allocator policy.
pub fn prepare_process(globals: &Globals) {
    #[cfg(feature = "worker")]
    if globals.malloc_tuning {
        convsweep_worker::device::tune_cpu_allocator();
    }
    #[cfg(not(feature = "worker"))]
    let _ = globals;
}

/// A write past a file-size limit (`ulimit -f`) must fail with EFBIG and be refused like a full
/// disk, not end the process with SIGXFSZ's default action.
fn survive_file_size_limit() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::from_raw(libc::SIGXFSZ)) {
        Ok(mut xfsz) => {
            tokio::spawn(async move {
                while xfsz.recv().await.is_some() {
                    tracing::warn!(
                        "a write went past the file-size limit (SIGXFSZ); it fails with EFBIG and is reported"
                    );
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGXFSZ; a file-size limit will end this process"),
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

/// Runs `cli` (inside a tokio runtime, with tracing set up by `log`).
pub async fn run(cli: Cli, log: &Logging) -> Result<ExitCode> {
    survive_file_size_limit();
    let Cli { globals, command } = cli;
    match command {
        Command::Run(args) => run_cmd::run(&args, &globals, log).await,
        Command::Coordinator(args) => coordinator::serve(&args, &globals.access).await,
        Command::Worker(args) => worker::work(&args, &globals).await,
        Command::TrialProcess(args) => worker::trial_process(&args, &globals),
        Command::Submit(args) => admin::submit(&args, &globals.access).await,
        Command::Extend(args) => admin::extend(&args, &globals.access).await,
        Command::Cancel(args) => admin::cancel(&args, &globals.access).await,
        Command::Resume(args) => admin::resume(&args, &globals.access).await,
        Command::Status(args) => admin::status(&args, &globals.access).await,
        Command::ModelInfo(args) => info::model_info(&args),
        Command::Slurm(args) => slurm::slurm(&args, &globals.access).await,
        Command::Certs(args) => certs::certs(&args),
        Command::Report(args) => results::report(&args, &globals.access).await,
        Command::Export(args) => results::export(&args, &globals.access).await,
        Command::Watch(args) => watch::watch(&args, &globals.access).await,
        Command::Store(command) => store::store(&command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structs' defaults come from their `#[arg]` attributes.
    #[test]
    fn defaults_are_the_attributes() {
        let w = worker::WorkerArgs::new("http://c:1");
        assert_eq!(
            (
                w.coordinator.as_str(),
                w.slots,
                w.device.as_str(),
                w.grace_secs,
                w.stall_timeout
            ),
            ("http://c:1", 1, "auto", 30, None)
        );
        assert_eq!(
            (w.checkpoint_every, w.connect_timeout_secs, w.max_trial_rss),
            (1, 900, None)
        );
        let g = Globals::default();
        assert_eq!(
            (g.log_format, g.fft_conv, g.malloc_tuning, g.decode_threads),
            (logging::Format::Text, true, true, None)
        );
        assert_eq!(g.access, Access::default());
    }

    /// Every child process this binary starts parses back into the struct it was made from.
    #[test]
    fn child_command_lines_round_trip() {
        let worker = Cli {
            globals: Globals {
                log_format: logging::Format::Json,
                fft_conv: false,
                malloc_tuning: true,
                decode_threads: Some(3),
                access: Access {
                    token_file: Some("/run/secrets/token file".into()),
                    ..Default::default()
                },
            },
            command: Command::Worker(worker::WorkerArgs {
                checkpoint_dir: Some("runs/x y/checkpoints".into()),
                threads: Some(2),
                name: Some("local-0".into()),
                exit_when_idle: true,
                max_trial_rss: Some(1500),
                ..worker::WorkerArgs::new("http://127.0.0.1:5")
            }),
        };
        let trial = Cli {
            globals: Globals::default(),
            command: Command::TrialProcess(worker::TrialProcessArgs {
                device: "cuda:1".into(),
                threads: None,
                checkpoint_dir: Some("/ckpt".into()),
                checkpoint_every: 3,
            }),
        };
        for cli in [worker, trial] {
            let argv = argv::of(&cli).unwrap();
            let parsed = Cli::try_parse_from(std::iter::once("convsweep".into()).chain(argv.clone()))
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(
                serde_json::to_value(&parsed).unwrap(),
                serde_json::to_value(&cli).unwrap(),
                "{argv:?}"
            );
        }
    }
}
