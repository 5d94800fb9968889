//! `convsweep-bench`: the benchmarks of convsweep, a binary of their own so that the
//! `convsweep` users install holds no benchmark code and installs nothing at run time. The
//! peers it measures against are set up by a script: `bench/setup-peers.sh` (Ray Tune into
//! `.deps/ray`; PyTorch eager comes with the libtorch setup).
//!
//! - [`step`] (no subcommand): training images/s of the reference configurations against
//!   PyTorch eager (`bench/pytorch_reference.py`), round by round.
//! - [`trial`]: whole trials through the real worker path against that step, and slots.
//! - [`stopping`]: one sweep in full and with each stopping rule: budget saved, decisions,
//!   what each kept of the full run's best.
//! - [`coordinator`]: a coordinator process under simulated workers, against Ray Tune; or
//!   large sweeps (`--sizes`).
//! - [`rpc`]: what token auth and TLS cost a call.
//! - [`ops`]: health probes on the ops port while viewers hammer its status and metrics.
//! - [`decode`] and [`decode_pipeline`]: the imagefolder pipeline's images/s.
//! - [`files`]: the `convsweep` binary and the peers' scripts the benchmarks start.
//!
//! The benchmarks that start `convsweep` processes (`trial`, `stopping`, `coordinator`) run the `convsweep`
//! binary beside this one (`cargo build --release -p convsweep` puts it there), or `--convsweep`.

mod coordinator;
mod decode;
mod decode_pipeline;
mod files;
mod ops;
mod rpc;
mod step;
mod stopping;
mod trial;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks of convsweep: the training step (no subcommand), whole trials, the coordinator
/// under load, RPC latency, image decoding.
#[derive(Debug, Parser)]
#[command(name = "convsweep-bench", about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// A benchmark other than the training step.
    #[command(subcommand)]
    target: Option<Target>,
    #[command(flatten)]
    step: step::StepArgs,
}

#[derive(Debug, Subcommand)]
enum Target {
    /// GetStatus latency (median, p99) with and without token auth and TLS, side by side.
    Rpc(rpc::RpcArgs),
    /// Health probes (/healthz and gRPC health: p50, p99) of a coordinator on a large state
    /// while viewers poll /status.json and /metrics as fast as they can.
    Ops(ops::OpsArgs),
    /// A coordinator process under N simulated workers over loopback gRPC (no training), with
    /// Ray Tune running the same trials side by side; or, with --sizes, large sweeps.
    Coordinator(coordinator::Args),
    /// Images per second the imagefolder loader decodes, crops and resizes (training and
    /// evaluation transforms), with each thread count, on ImageNet-like JPEGs it writes (or a
    /// real folder's `train/`).
    Decode(decode::DecodeArgs),
    /// Whole trials through the real worker path (a local coordinator, a worker process):
    /// training images/s against the step benchmark of the same model, where each trial's
    /// time went, and trials per hour with S slots against one.
    Trial(trial::TrialArgs),
    /// One sweep run in full and with each stopping rule, side by side: trial-seconds saved,
    /// the decisions, and how well each kept what the full run found best.
    Stopping(stopping::StoppingArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log = convsweep::Logging::init(convsweep::logging::Format::Text);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.target {
            None => step::bench(&cli.step),
            Some(Target::Rpc(args)) => rpc::bench_rpc(&args).await,
            Some(Target::Ops(args)) => ops::bench_ops(args).await,
            Some(Target::Coordinator(args)) => coordinator::bench(args).await,
            Some(Target::Decode(args)) => decode::bench_decode(args),
            Some(Target::Trial(args)) => trial::bench_trial(args).await,
            Some(Target::Stopping(args)) => stopping::bench_stopping(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", convsweep::flags::explain(&e));
            ExitCode::FAILURE
        }
    }
}
