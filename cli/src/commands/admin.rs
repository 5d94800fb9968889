//! The administrative commands against a running coordinator: `submit`, `extend`, `cancel`,
//! `resume` and `status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use convsweep_proto::client::{AuthChannel, Connection};
use convsweep_proto::pb;
use convsweep_proto::pb::admin_service_client::AdminServiceClient;
use convsweep_proto::status::StatusJson;
use serde::Serialize;

use crate::Access;
use crate::flags::refused;

/// Flags of `convsweep submit`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct SubmitArgs {
    /// Sweep spec (TOML).
    pub spec: PathBuf,
    /// Coordinator URL.
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
}

/// Flags of `convsweep extend`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct ExtendArgs {
    /// Sweep spec (TOML) with the sweep's name.
    pub spec: PathBuf,
    /// Coordinator URL.
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
}

/// Flags of `convsweep cancel`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct CancelArgs {
    /// The sweep.
    pub sweep: String,
    /// Only these trial ids.
    pub trials: Vec<String>,
    /// Coordinator URL.
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
}

/// Flags of `convsweep resume`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct ResumeArgs {
    /// The sweep.
    pub sweep: String,
    /// Re-queue the trials a stopping rule stopped, to train to their full budget from their
    /// checkpoints (instead of the failed and cancelled ones).
    #[arg(long)]
    pub stopped: bool,
    /// With --stopped: only this trial (repeat for several).
    #[arg(long = "trial", requires = "stopped")]
    pub trials: Vec<String>,
    /// With --stopped: only the trials of this comparison group, as the report's decisions name
    /// it (e.g. "kernel_size=3"; repeat for several).
    #[arg(long = "group", requires = "stopped")]
    pub groups: Vec<String>,
    /// Coordinator URL.
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
}

/// Flags of `convsweep status`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct StatusArgs {
    /// Coordinator URL.
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
    /// Only this sweep.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Print JSON (the shape of the ops port's /status.json) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// An `AdminService` client of `url` with `access`'s credentials.
pub async fn admin(access: &Access, url: &str) -> Result<AdminServiceClient<AuthChannel>> {
    admin_of(&access.connection(url)?).await
}

/// An `AdminService` client of `conn`.
pub async fn admin_of(conn: &Connection) -> Result<AdminServiceClient<AuthChannel>> {
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
pub async fn submit(args: &SubmitArgs, access: &Access) -> Result<ExitCode> {
    let resp = admin(access, &args.coordinator)
        .await?
        .submit_sweep(pb::SubmitSweepRequest {
            spec_toml: read_spec(&args.spec)?,
        })
        .await
        .map_err(|s| refused(args.spec.display().to_string(), s))?
        .into_inner();
    Ok(print_sweep(&resp.sweep_id, resp.trials, resp.new_trials))
}

/// `convsweep extend`.
pub async fn extend(args: &ExtendArgs, access: &Access) -> Result<ExitCode> {
    let resp = admin(access, &args.coordinator)
        .await?
        .extend_sweep(pb::ExtendSweepRequest {
            spec_toml: read_spec(&args.spec)?,
        })
        .await
        .map_err(|s| refused(args.spec.display().to_string(), s))?
        .into_inner();
    Ok(print_sweep(&resp.sweep_id, resp.trials, resp.new_trials))
}

/// `convsweep cancel`.
pub async fn cancel(args: &CancelArgs, access: &Access) -> Result<ExitCode> {
    let resp = admin(access, &args.coordinator)
        .await?
        .cancel(pb::CancelRequest {
            sweep_id: args.sweep.clone(),
            trial_ids: args.trials.clone(),
        })
        .await
        .map_err(|s| refused(format!("cancel {}", args.sweep), s))?
        .into_inner();
    println!("cancelled {} trials of {}", resp.cancelled, args.sweep);
    Ok(ExitCode::SUCCESS)
}

/// `convsweep resume`.
pub async fn resume(args: &ResumeArgs, access: &Access) -> Result<ExitCode> {
    let resp = admin(access, &args.coordinator)
        .await?
        .resume(pb::ResumeRequest {
            sweep_id: args.sweep.clone(),
            stopped: args.stopped,
            trial_ids: args.trials.clone(),
            groups: args.groups.clone(),
        })
        .await
        .map_err(|s| refused(format!("resume {}", args.sweep), s))?
        .into_inner();
    println!("re-queued {} trials of {}", resp.requeued, args.sweep);
    Ok(ExitCode::SUCCESS)
}

/// Human form of a status answer.
pub fn status_text(resp: &pb::GetStatusResponse) -> String {
    let mut out = format!("workers alive: {}\n", resp.workers_alive);
    if resp.sweeps.is_empty() {
        out.push_str("no sweeps\n");
    }
    for s in &resp.sweeps {
        let c = s.counts.unwrap_or_default();
        out.push_str(&format!(
            "sweep {}: {}/{} done | pending {} leased {} running {} succeeded {} failed {} preempted {} cancelled {}{}\n",
            s.sweep_id,
            c.done(),
            s.total,
            c.pending,
            c.leased,
            c.running,
            c.succeeded,
            c.failed,
            c.preempted,
            c.cancelled,
            if c.stopped > 0 {
                format!(" stopped {}", c.stopped)
            } else {
                String::new()
            }
        ));
        if s.trials_per_hour > 0.0 {
            out.push_str(&format!(
                "  throughput {:.1} trials/h, ETA {}\n",
                s.trials_per_hour,
                convsweep_proto::numbers::duration(s.eta_seconds)
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

/// `convsweep status`.
pub async fn status(args: &StatusArgs, access: &Access) -> Result<ExitCode> {
    let resp = admin(access, &args.coordinator)
        .await?
        .get_status(pb::GetStatusRequest {
            sweep_id: args.sweep.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| refused("status", s))?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&StatusJson::from(&resp))?);
    } else {
        print!("{}", status_text(&resp));
    }
    Ok(ExitCode::SUCCESS)
}
