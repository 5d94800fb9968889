//! `convsweep`: run, coordinate, work on and report CNN training sweeps.
//!
//! Parses flags, sets up tracing and calls the libraries; everything testable lives in them
//! (and in this crate's `commands` modules).

mod commands;
mod logging;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Sweeps of CNN training runs over kernel size, init scheme, architecture and more.
#[derive(Debug, Parser)]
#[command(name = "convsweep", version, about)]
struct Cli {
    /// Log format on stderr: text or json. Filter with RUST_LOG (default: info).
    #[arg(long, global = true, default_value = "text", env = "CONVSWEEP_LOG_FORMAT")]
    log_format: logging::Format,
    /// Train stride-1 convs with kernel size 9 or more on the CPU through the FFT (same
    /// function, about twice as fast at k = 9); false keeps every conv on libtorch's conv2d. Each
    /// result records which ran.
    #[arg(long, global = true, default_value_t = true, env = "CONVSWEEP_FFT_CONV",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    fft_conv: bool,
    /// Tune glibc's allocator for CPU training (no fresh mmap per large tensor); false keeps
    /// glibc's defaults.
    #[arg(long, global = true, default_value_t = true, env = "CONVSWEEP_MALLOC_TUNING",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    malloc_tuning: bool,

    #[command(flatten)]
    access: commands::Access,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a sweep on this machine: coordinator in-process, local worker processes, report.
    Run {
        /// Sweep spec (TOML).
        spec: PathBuf,
        /// Worker processes to start.
        #[arg(long, default_value_t = 2, env = "CONVSWEEP_WORKERS")]
        workers: u32,
        /// libtorch threads per worker (default: the machine's cores divided by --workers).
        #[arg(long, env = "CONVSWEEP_THREADS")]
        threads: Option<u32>,
        /// Folder holding one folder per sweep (state, logs, Parquet, report).
        #[arg(long, default_value = "runs", env = "CONVSWEEP_RUNS_DIR")]
        runs_dir: PathBuf,
        /// Device for the workers: auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto", env = "CONVSWEEP_DEVICE")]
        device: String,
        /// Most trials the spec may expand to (grid times seeds); checked before expansion.
        #[arg(long, default_value_t = convsweep_coordinator::sweep::DEFAULT_MAX_TRIALS_PER_SWEEP,
              env = "CONVSWEEP_MAX_TRIALS_PER_SWEEP")]
        max_trials_per_sweep: u64,
    },
    /// Serve the coordinator (gRPC) on ADDR with its state in DIR.
    Coordinator {
        /// Folder of the SQLite state (created when missing; reopened after a restart).
        #[arg(long, env = "CONVSWEEP_STATE_DIR")]
        state_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:50051", env = "CONVSWEEP_LISTEN")]
        listen: SocketAddr,
        /// Seconds between worker heartbeats.
        #[arg(long, default_value_t = 5, env = "CONVSWEEP_HEARTBEAT_SECS")]
        heartbeat_secs: u64,
        /// Seconds without a heartbeat before a lease expires.
        #[arg(long, default_value_t = 60, env = "CONVSWEEP_LEASE_TIMEOUT_SECS")]
        lease_timeout_secs: u64,
        /// Failed or expired attempts before a trial fails for good.
        #[arg(long, default_value_t = 3, env = "CONVSWEEP_MAX_ATTEMPTS")]
        max_attempts: u32,
        /// Address of the ops port (plaintext, no token): gRPC health, /healthz, /readyz,
        /// /metrics. Loopback by default; a pod sets 0.0.0.0:9090 for its kubelet.
        #[arg(long, default_value = "127.0.0.1:9090", env = "CONVSWEEP_OPS_LISTEN")]
        ops_listen: SocketAddr,
        /// PEM CA whose certificates clients must present (mTLS; needs --tls-cert/--tls-key).
        #[arg(long, env = "CONVSWEEP_TLS_CLIENT_CA")]
        tls_client_ca: Option<PathBuf>,
        /// Serve without a token on a non-loopback address (anyone who reaches the port can
        /// submit, cancel and report). Off by default.
        #[arg(long, env = "CONVSWEEP_INSECURE")]
        insecure: bool,
        /// Largest gRPC message, in MiB.
        #[arg(long, default_value_t = 16, env = "CONVSWEEP_MAX_MESSAGE_MIB")]
        max_message_mib: usize,
        /// Longest a request may take, in seconds (a long-polling Lease waits less).
        #[arg(long, default_value_t = 120, env = "CONVSWEEP_REQUEST_TIMEOUT_SECS")]
        request_timeout_secs: u64,
        /// Calls served at once over all connections (a waiting Lease counts); one more is
        /// refused with ResourceExhausted.
        #[arg(long, default_value_t = 10_000, env = "CONVSWEEP_MAX_CONCURRENT_REQUESTS")]
        max_concurrent_requests: usize,
        /// Most trials one sweep may expand to (grid times seeds); a larger spec is refused,
        /// naming its size, before it is expanded.
        #[arg(long, default_value_t = convsweep_coordinator::sweep::DEFAULT_MAX_TRIALS_PER_SWEEP,
              env = "CONVSWEEP_MAX_TRIALS_PER_SWEEP")]
        max_trials_per_sweep: u64,
    },
    /// Train trials leased from a coordinator until it drains or SIGTERM arrives.
    Worker {
        /// Coordinator URL, e.g. http://10.0.0.5:50051.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
        /// Trials to run at once on the device.
        #[arg(long, default_value_t = 1, env = "CONVSWEEP_SLOTS")]
        slots: u32,
        /// Device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto", env = "CONVSWEEP_DEVICE")]
        device: String,
        /// libtorch intra-op threads (default: libtorch's choice).
        #[arg(long, env = "CONVSWEEP_THREADS")]
        threads: Option<u32>,
        /// Name shown in status and logs (default: the host name).
        #[arg(long, env = "CONVSWEEP_WORKER_NAME")]
        name: Option<String>,
        /// Seconds running trials get to checkpoint, stop and report on SIGTERM.
        #[arg(long, default_value_t = 30, env = "CONVSWEEP_GRACE_SECS")]
        grace_secs: u64,
        /// Folder for trial checkpoints (shared by all workers of a sweep, e.g. a cluster
        /// volume); a trial leased again resumes from its latest one. None: no checkpoints.
        #[arg(long, env = "CONVSWEEP_CHECKPOINT_DIR")]
        checkpoint_dir: Option<PathBuf>,
        /// Epochs between checkpoints (one is also written on preemption and at the end).
        #[arg(long, default_value_t = 1, env = "CONVSWEEP_CHECKPOINT_EVERY")]
        checkpoint_every: u32,
        /// Exit 0 once a lease call finds no work and nothing runs (an Indexed Job's or a
        /// Slurm array task's worker ends when the sweep is drained).
        #[arg(long, env = "CONVSWEEP_EXIT_WHEN_IDLE")]
        exit_when_idle: bool,
        /// Seconds to keep trying to reach the coordinator at start-up (it may start later).
        #[arg(long, default_value_t = 900, env = "CONVSWEEP_CONNECT_TIMEOUT_SECS")]
        connect_timeout_secs: u64,
        /// Seconds a trial may go without progress (a finished batch or evaluation step)
        /// before its process is killed and the attempt fails (retryable).
        #[arg(long, default_value_t = 1800, env = "CONVSWEEP_STALL_TIMEOUT")]
        stall_timeout: u64,
        /// Most resident memory of one trial process, in MiB; a trial that grows past it is
        /// killed and fails for good (the same spec would again). None: no limit.
        #[arg(long, env = "CONVSWEEP_MAX_TRIAL_RSS")]
        max_trial_rss: Option<u64>,
        /// Train trials on threads of the worker process instead of a process per trial (a
        /// crash in libtorch then takes the worker and all its slots down).
        #[arg(long, env = "CONVSWEEP_IN_PROCESS")]
        in_process: bool,
    },
    /// One trial attempt in a process of its own, driven by a worker over stdin and stdout.
    #[command(hide = true)]
    TrialProcess {
        /// Device.
        #[arg(long, default_value = "auto")]
        device: String,
        /// libtorch intra-op threads.
        #[arg(long)]
        threads: Option<u32>,
        /// Checkpoint folder.
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Epochs between checkpoints.
        #[arg(long, default_value_t = 1)]
        checkpoint_every: u32,
    },
    /// Submit a sweep spec to a coordinator; prints the sweep id.
    Submit {
        /// Sweep spec (TOML).
        spec: PathBuf,
        /// Coordinator URL.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
    },
    /// Add the trials of a grown spec (more seeds or grid values) to its sweep.
    Extend {
        /// Sweep spec (TOML) with the sweep's name.
        spec: PathBuf,
        /// Coordinator URL.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
    },
    /// Cancel a sweep's unfinished trials (or only the given ones); running ones stop at their
    /// next heartbeat.
    Cancel {
        /// The sweep.
        sweep: String,
        /// Only these trial ids.
        trials: Vec<String>,
        /// Coordinator URL.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
    },
    /// Put a sweep's failed and cancelled trials back in the queue.
    Resume {
        /// The sweep.
        sweep: String,
        /// Coordinator URL.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
    },
    /// Show trial counts per state, throughput, ETA and failures.
    Status {
        /// Coordinator URL.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
        /// Only this sweep.
        #[arg(long)]
        sweep: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Parameters (total, learnable) and FLOPs per image of models, given as grid settings.
    ///
    /// Example: `convsweep model-info arch=resnet18 stem=imagenet --classes 1000 --image-size 224`
    /// or `convsweep model-info kernel_size=[3,5,7,9] expansion=128 train_mode=frozen`.
    ModelInfo {
        /// KEY=VALUE settings with the keys of a sweep's [grid] (lists give several models).
        settings: Vec<String>,
        /// List the models of a sweep spec instead.
        #[arg(long, conflicts_with = "settings")]
        spec: Option<PathBuf>,
        /// Classes of the head (default: the dataset's).
        #[arg(long)]
        classes: Option<u32>,
        /// Side of the input images (default: the dataset's, 32).
        #[arg(long)]
        image_size: Option<u32>,
        /// Input channels (default: the dataset's).
        #[arg(long)]
        channels: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time training steps of the reference configurations, optionally against PyTorch eager.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        /// What to measure instead of training throughput.
        #[command(subcommand)]
        target: Option<BenchTarget>,
        /// libtorch threads (and the reference's); default: every core.
        #[arg(long)]
        threads: Option<u32>,
        /// Images per step.
        #[arg(long, default_value_t = 128)]
        batch: i64,
        /// Untimed steps per case.
        #[arg(long, default_value_t = 2)]
        warmup: u32,
        /// Timed steps per round.
        #[arg(long, default_value_t = 5)]
        steps: u32,
        /// Rounds per case (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// The PyTorch-eager reference script to run on the same cases.
        #[arg(long, default_value = "bench/pytorch_reference.py")]
        reference: PathBuf,
        /// Skip the PyTorch reference.
        #[arg(long)]
        no_reference: bool,
        /// Python interpreter for the reference.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Only these cases (by name, repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Submit a sweep and write (or --submit) the Slurm array job of workers that runs it.
    Slurm {
        /// Sweep spec (TOML).
        spec: PathBuf,
        /// Coordinator URL, as the compute nodes reach it.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
        /// Array tasks, one worker each (default: one per trial, at most 32).
        #[arg(long)]
        array: Option<u32>,
        /// Slurm partition.
        #[arg(long)]
        partition: Option<String>,
        /// GPUs per task (0 for CPU workers).
        #[arg(long, default_value_t = 1)]
        gpus_per_task: u32,
        /// CPUs per task.
        #[arg(long)]
        cpus_per_task: Option<u32>,
        /// Time limit of each task (e.g. 04:00:00).
        #[arg(long)]
        time: Option<String>,
        /// Account to charge.
        #[arg(long)]
        account: Option<String>,
        /// Quality of service.
        #[arg(long)]
        qos: Option<String>,
        /// Node features (--constraint).
        #[arg(long)]
        constraint: Option<String>,
        /// Seconds before the time limit at which workers get SIGUSR1, checkpoint and leave.
        #[arg(long, default_value_t = 120)]
        signal_secs: u32,
        /// Checkpoint folder shared by the nodes (not on the coordinator's state disk).
        #[arg(long, default_value = "convsweep-checkpoints")]
        checkpoint_dir: PathBuf,
        /// Folder of the tasks' logs (convsweep-%A_%a.log).
        #[arg(long, default_value = "convsweep-logs")]
        log_dir: PathBuf,
        /// Trials each worker runs at once.
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// The convsweep binary on the nodes (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where to write the job script.
        #[arg(long, default_value = "convsweep-array.sbatch")]
        out: PathBuf,
        /// Also submit it with sbatch (prints the job id).
        #[arg(long)]
        submit: bool,
    },
    /// Make a private CA and the certificates of a TLS/mTLS coordinator and a client, in DIR.
    Certs {
        /// Folder to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key into.
        #[arg(long)]
        out: PathBuf,
        /// Names and addresses the coordinator is reached by (localhost and 127.0.0.1 are
        /// always in), e.g. --host convsweep-coordinator --host 10.0.0.5.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Write a sweep's report: HTML (plots inline), Markdown, and every table as CSV and Parquet.
    Report {
        /// An export folder (Parquet files) or a coordinator's state folder (read-only).
        #[arg(required_unless_present = "coordinator", conflicts_with = "coordinator")]
        dir: Option<PathBuf>,
        /// Report from a running coordinator instead (its Export stream).
        #[arg(long)]
        coordinator: Option<String>,
        /// Folder to write the report into.
        #[arg(long)]
        out: PathBuf,
        /// The sweep to report on (needed when the source holds several).
        #[arg(long)]
        sweep: Option<String>,
    },
    /// Export results as Parquet (trials, epochs, robustness, filters), from a state folder
    /// (read-only) or from a running coordinator.
    Export {
        /// The coordinator's state folder.
        #[arg(
            long,
            env = "CONVSWEEP_STATE_DIR",
            required_unless_present = "coordinator",
            conflicts_with = "coordinator"
        )]
        state_dir: Option<PathBuf>,
        /// Export from a running coordinator instead (its Export stream, in chunks).
        #[arg(long)]
        coordinator: Option<String>,
        /// Folder to write the Parquet files into.
        #[arg(long)]
        out: PathBuf,
        /// Only this sweep.
        #[arg(long)]
        sweep: Option<String>,
    },
    /// Follow sweeps live: a bar per sweep with ETA, the running trials, the last failures;
    /// exits when the sweep (or, without --sweep, every sweep) is done.
    Watch {
        /// Coordinator URL.
        #[arg(long, env = "CONVSWEEP_COORDINATOR")]
        coordinator: String,
        /// Only this sweep.
        #[arg(long)]
        sweep: Option<String>,
    },
}

/// `convsweep bench` targets other than training throughput.
#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// GetStatus latency (median, p99) with and without token auth and TLS, side by side.
    Rpc {
        /// Calls per configuration and round.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Rounds (they alternate the configurations; the median round is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A coordinator process under N simulated workers over loopback gRPC (no training), with
    /// Ray Tune running the same trials side by side; or, with --sizes, large sweeps.
    Coordinator(commands::bench_coordinator::Args),
    /// Images per second the imagefolder loader decodes, crops and resizes (training and
    /// evaluation transforms), with each thread count, on ImageNet-like JPEGs it writes (or a
    /// real folder's `train/`).
    Decode(commands::bench_decode::DecodeArgs),
    /// Whole trials through the real worker path (a local coordinator, a worker process):
    /// training images/s against the step benchmark of the same model, where each trial's
    /// time went, and trials per hour with S slots against one.
    #[cfg(feature = "worker")]
    Trial(commands::bench_trial::TrialArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "worker")]
    if cli.malloc_tuning {
        convsweep_worker::device::tune_cpu_allocator();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A write past a file-size limit (`ulimit -f`) must fail with EFBIG and be refused like a
    // full disk, not kill the coordinator or a worker with SIGXFSZ's default action.
    match runtime
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ)) })
    {
        Ok(mut xfsz) => {
            runtime.spawn(async move {
                while xfsz.recv().await.is_some() {
                    tracing::warn!(
                        "a write went past the file-size limit (SIGXFSZ); it fails with EFBIG and is reported"
                    );
                }
            });
        }
        Err(e) => eprintln!("warning: cannot handle SIGXFSZ ({e}); a file-size limit will end this process"),
    }
    let result = runtime.block_on(async move {
        match cli.command {
            #[cfg(feature = "worker")]
            Command::Run {
                spec,
                workers,
                threads,
                runs_dir,
                device,
                max_trials_per_sweep,
            } => {
                commands::run::run(commands::run::RunArgs {
                    spec,
                    workers,
                    threads,
                    runs_dir,
                    device,
                    max_trials_per_sweep,
                    fft_conv: cli.fft_conv,
                    log_format: cli.log_format,
                })
                .await
            }
            Command::Coordinator {
                state_dir,
                listen,
                heartbeat_secs,
                lease_timeout_secs,
                max_attempts,
                ops_listen,
                tls_client_ca,
                insecure,
                max_message_mib,
                request_timeout_secs,
                max_concurrent_requests,
                max_trials_per_sweep,
            } => {
                logging::init_stderr(cli.log_format);
                let config = convsweep_coordinator::CoordinatorConfig {
                    state_dir,
                    heartbeat_interval: Duration::from_secs(heartbeat_secs.max(1)),
                    lease_timeout: Duration::from_secs(lease_timeout_secs.max(2)),
                    max_attempts,
                    max_trials_per_sweep: max_trials_per_sweep.max(1),
                    ..Default::default()
                };
                let limits = convsweep_coordinator::Limits {
                    max_message_bytes: max_message_mib.max(1) << 20,
                    request_timeout: Duration::from_secs(request_timeout_secs.max(1)),
                    max_concurrent_requests: max_concurrent_requests.max(1),
                };
                commands::serve_coordinator(commands::ServeArgs {
                    config,
                    listen,
                    ops_listen,
                    access: cli.access,
                    tls_client_ca,
                    insecure,
                    limits,
                })
                .await
            }
            #[cfg(feature = "worker")]
            Command::Worker {
                coordinator,
                slots,
                device,
                threads,
                name,
                grace_secs,
                checkpoint_dir,
                checkpoint_every,
                exit_when_idle,
                connect_timeout_secs,
                stall_timeout,
                max_trial_rss,
                in_process,
            } => {
                logging::init_stderr(cli.log_format);
                commands::worker(commands::WorkerArgs {
                    isolation: (!in_process).then_some(commands::Isolation {
                        stall_timeout: Duration::from_secs(stall_timeout.max(1)),
                        max_trial_rss_mib: max_trial_rss,
                        log_format: cli.log_format,
                        malloc_tuning: cli.malloc_tuning,
                    }),
                    exit_when_idle,
                    connect_timeout: Duration::from_secs(connect_timeout_secs.max(1)),
                    coordinator: cli.access.connection(&coordinator)?,
                    slots,
                    device,
                    threads,
                    name,
                    grace: Duration::from_secs(grace_secs),
                    checkpoint_dir,
                    checkpoint_every,
                    fft_conv: cli.fft_conv,
                })
                .await
            }
            #[cfg(feature = "worker")]
            Command::TrialProcess {
                device,
                threads,
                checkpoint_dir,
                checkpoint_every,
            } => {
                logging::init_stderr(cli.log_format);
                commands::trial_process(commands::TrialProcessArgs {
                    device,
                    threads,
                    checkpoint_dir,
                    checkpoint_every,
                    fft_conv: cli.fft_conv,
                })
            }
            Command::Submit { spec, coordinator } => {
                logging::init_stderr(cli.log_format);
                commands::submit(&spec, &cli.access.connection(&coordinator)?).await
            }
            Command::Extend { spec, coordinator } => {
                logging::init_stderr(cli.log_format);
                commands::extend(&spec, &cli.access.connection(&coordinator)?).await
            }
            Command::Cancel {
                sweep,
                trials,
                coordinator,
            } => {
                logging::init_stderr(cli.log_format);
                commands::cancel(&cli.access.connection(&coordinator)?, &sweep, trials).await
            }
            Command::Resume { sweep, coordinator } => {
                logging::init_stderr(cli.log_format);
                commands::resume(&cli.access.connection(&coordinator)?, &sweep).await
            }
            Command::Status {
                coordinator,
                sweep,
                json,
            } => {
                logging::init_stderr(cli.log_format);
                commands::status(&cli.access.connection(&coordinator)?, sweep.as_deref(), json).await
            }
            #[cfg(feature = "worker")]
            Command::ModelInfo {
                settings,
                spec,
                classes,
                image_size,
                channels,
                json,
            } => commands::info::model_info(commands::info::ModelInfoArgs {
                settings,
                spec,
                classes,
                image_size,
                channels,
                json,
            }),
            Command::Bench {
                target: Some(BenchTarget::Coordinator(args)),
                ..
            } => {
                logging::init_stderr(cli.log_format);
                commands::bench_coordinator::bench(args).await
            }
            Command::Bench {
                target: Some(BenchTarget::Rpc { calls, rounds }),
                ..
            } => {
                logging::init_stderr(cli.log_format);
                commands::bench_rpc::bench_rpc(calls, rounds).await
            }
            Command::Slurm {
                spec,
                coordinator,
                array,
                partition,
                gpus_per_task,
                cpus_per_task,
                time,
                account,
                qos,
                constraint,
                signal_secs,
                checkpoint_dir,
                log_dir,
                slots,
                binary,
                out,
                submit,
            } => {
                logging::init_stderr(cli.log_format);
                let conn = cli.access.connection(&coordinator)?;
                commands::slurm::slurm(
                    commands::slurm::SlurmArgs {
                        spec,
                        array,
                        partition,
                        gpus_per_task,
                        cpus_per_task,
                        time,
                        account,
                        qos,
                        constraint,
                        signal_secs,
                        checkpoint_dir,
                        log_dir,
                        slots,
                        binary,
                        out,
                        submit,
                        token_file: cli.access.token_file.clone(),
                    },
                    conn,
                )
                .await
            }
            Command::Certs { out, hosts } => {
                logging::init_stderr(cli.log_format);
                commands::certs::certs(&out, &hosts)
            }
            #[cfg(feature = "worker")]
            Command::Bench {
                target: Some(BenchTarget::Trial(args)),
                ..
            } => {
                logging::init_stderr(cli.log_format);
                commands::bench_trial::bench_trial(args).await
            }
            #[cfg(feature = "worker")]
            Command::Bench {
                target: Some(BenchTarget::Decode(args)),
                ..
            } => {
                logging::init_stderr(cli.log_format);
                commands::bench_decode::bench_decode(args)
            }
            #[cfg(feature = "worker")]
            Command::Bench {
                target: None,
                threads,
                batch,
                warmup,
                steps,
                rounds,
                device,
                reference,
                no_reference,
                python,
                only,
                json,
            } => {
                logging::init_stderr(cli.log_format);
                let threads =
                    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
                commands::info::bench(commands::info::BenchArgs {
                    threads,
                    batch,
                    warmup,
                    steps,
                    rounds,
                    device,
                    reference: (!no_reference).then_some(reference),
                    python,
                    only,
                    json,
                    fft_conv: cli.fft_conv,
                })
            }
            #[cfg(not(feature = "worker"))]
            Command::Run { .. }
            | Command::Worker { .. }
            | Command::TrialProcess { .. }
            | Command::ModelInfo { .. }
            | Command::Bench { target: None, .. }
            | Command::Bench {
                target: Some(BenchTarget::Decode(_)),
                ..
            } => Err(anyhow::anyhow!(
                "this convsweep was built without the `worker` feature (a coordinator-only build): it serves, submits, \
                 exports and reports; run, worker, model-info and the training bench need a full build"
            )),
            Command::Report {
                dir,
                coordinator,
                out,
                sweep,
            } => {
                logging::init_stderr(cli.log_format);
                let source = commands::Source::of(dir, coordinator.as_deref(), &cli.access)?;
                commands::report(&source, &out, sweep.as_deref()).await
            }
            Command::Export {
                state_dir,
                coordinator,
                out,
                sweep,
            } => {
                logging::init_stderr(cli.log_format);
                let source = commands::Source::of(state_dir, coordinator.as_deref(), &cli.access)?;
                commands::export(&source, &out, sweep.as_deref()).await
            }
            Command::Watch { coordinator, sweep } => {
                logging::init_stderr(cli.log_format);
                commands::watch::watch(&cli.access.connection(&coordinator)?, sweep.as_deref()).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
