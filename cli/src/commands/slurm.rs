//! `convsweep slurm`: submits a sweep to a coordinator and writes (or submits) the sbatch array
//! job of workers that runs it on a Slurm cluster.
//!
//! Each array task is one worker with `--exit-when-idle`: it leases trials until none is left
//! and ends. Logs go to `convsweep-%A_%a.log`; `--requeue` lets Slurm requeue a task whose node
//! failed; `--signal=B:USR1@S` sends the batch step SIGUSR1 S seconds before the time limit,
//! and since the batch shell `exec`s the worker, the worker gets it: it checkpoints, reports
//! its trials preempted and exits, and another task resumes them from their checkpoints (the
//! checkpoint folder must be shared by the nodes). Worker names come from
//! `SLURM_ARRAY_JOB_ID`/`SLURM_ARRAY_TASK_ID`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use convsweep_proto::client::Connection;
use convsweep_proto::pb;
use serde::Serialize;

use crate::Access;
use crate::flags::refused;

/// Flags of `convsweep slurm`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize)]
pub struct SlurmArgs {
    /// Sweep spec (TOML).
    pub spec: PathBuf,
    /// Coordinator URL, as the compute nodes reach it.
    #[arg(long, env = "CONVSWEEP_COORDINATOR")]
    pub coordinator: String,
    /// Array tasks, one worker each (default: one per trial, at most 32).
    #[arg(long)]
    pub array: Option<u32>,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per task (0 for CPU workers).
    #[arg(long, default_value_t = 1)]
    pub gpus_per_task: u32,
    /// CPUs per task.
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// Time limit of each task (e.g. 04:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// Account to charge.
    #[arg(long)]
    pub account: Option<String>,
    /// Quality of service.
    #[arg(long)]
    pub qos: Option<String>,
    /// Node features (--constraint).
    #[arg(long)]
    pub constraint: Option<String>,
    /// Seconds before the time limit at which workers get SIGUSR1, checkpoint and leave.
    #[arg(long, default_value_t = 120)]
    pub signal_secs: u32,
    /// Checkpoint folder shared by the nodes (not on the coordinator's state disk).
    #[arg(long, default_value = "convsweep-checkpoints")]
    pub checkpoint_dir: PathBuf,
    /// Folder of the tasks' logs (convsweep-%A_%a.log).
    #[arg(long, default_value = "convsweep-logs")]
    pub log_dir: PathBuf,
    /// Trials each worker runs at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub slots: u32,
    /// The convsweep binary on the nodes (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Where to write the job script.
    #[arg(long, default_value = "convsweep-array.sbatch")]
    pub out: PathBuf,
    /// Also submit it with sbatch (prints the job id).
    #[arg(long)]
    pub submit: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

/// Quotes `s` for a POSIX shell.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The sbatch script of `tasks` workers against `conn`; the workers read the token from
/// `token_file` (a token given by value is not written into a script).
pub fn script(
    args: &SlurmArgs,
    conn: &Connection,
    token_file: Option<&Path>,
    sweep: &str,
    tasks: u32,
    binary: &Path,
) -> Result<String> {
    if tasks == 0 {
        bail!("--array must be at least 1");
    }
    if args.signal_secs < 10 {
        bail!("--signal-secs must be at least 10: the workers need time to checkpoint and report");
    }
    let grace = args.signal_secs.saturating_sub(10).max(5);
    let mut s = String::from("#!/bin/bash\n");
    let mut opt = |line: String| {
        let _ = writeln!(s, "#SBATCH {line}");
    };
    opt(format!("--job-name=convsweep-{sweep}"));
    opt(format!("--array=0-{}", tasks - 1));
    opt(format!(
        "--output={}/convsweep-%A_%a.log",
        absolute(&args.log_dir)?.display()
    ));
    opt("--requeue".into());
    opt(format!("--signal=B:USR1@{}", args.signal_secs));
    opt("--ntasks=1".into());
    if args.gpus_per_task > 0 {
        opt(format!("--gpus-per-task={}", args.gpus_per_task));
    }
    if let Some(c) = args.cpus_per_task {
        opt(format!("--cpus-per-task={c}"));
    }
    for (flag, v) in [
        ("partition", &args.partition),
        ("time", &args.time),
        ("account", &args.account),
        ("qos", &args.qos),
        ("constraint", &args.constraint),
    ] {
        if let Some(v) = v {
            opt(format!("--{flag}={v}"));
        }
    }
    let _ = writeln!(
        s,
        "\n# One convsweep worker per array task; `exec` hands the batch shell's SIGUSR1 (sent\n\
         # {} s before the time limit) to the worker, which checkpoints and reports its trials\n\
         # preempted within {grace} s.",
        args.signal_secs
    );
    let _ = writeln!(s, "export CONVSWEEP_COORDINATOR={}", sh(&conn.url));
    match (token_file, &conn.token) {
        (Some(f), _) => {
            let _ = writeln!(
                s,
                "export CONVSWEEP_TOKEN_FILE={}",
                sh(&absolute(f)?.display().to_string())
            );
        }
        (None, Some(_)) => bail!(
            "the workers need the token as a file they can read: give --token-file (a token given in CONVSWEEP_TOKEN is not written into a job script)"
        ),
        (None, None) => {}
    }
    for (var, v) in [
        ("CONVSWEEP_TLS_CA", &conn.tls_ca),
        ("CONVSWEEP_TLS_CERT", &conn.tls_cert),
        ("CONVSWEEP_TLS_KEY", &conn.tls_key),
    ] {
        if let Some(p) = v {
            let _ = writeln!(s, "export {var}={}", sh(&absolute(p)?.display().to_string()));
        }
    }
    let device = if args.gpus_per_task > 0 { "cuda" } else { "cpu" };
    let _ = writeln!(
        s,
        "exec {} worker --exit-when-idle --device {device} --slots {} --grace-secs {grace} --checkpoint-dir {}",
        sh(&binary.display().to_string()),
        args.slots,
        sh(&absolute(&args.checkpoint_dir)?.display().to_string()),
    );
    Ok(s)
}

/// `convsweep slurm`.
pub async fn slurm(args: &SlurmArgs, access: &Access) -> Result<ExitCode> {
    let conn = access.connection(&args.coordinator)?;
    let text = std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read {}", args.spec.display()))?;
    let mut admin = super::admin::admin_of(&conn).await?;
    let submitted = admin
        .submit_sweep(pb::SubmitSweepRequest { spec_toml: text })
        .await
        .map_err(|s| refused(args.spec.display().to_string(), s))?
        .into_inner();
    eprintln!(
        "sweep {}: {} trials ({} new)",
        submitted.sweep_id, submitted.trials, submitted.new_trials
    );
    let tasks = args.array.unwrap_or_else(|| submitted.trials.clamp(1, 32));
    let binary = match &args.binary {
        Some(b) => absolute(b)?,
        None => std::env::current_exe().context("cannot find the convsweep binary")?,
    };
    std::fs::create_dir_all(&args.log_dir).with_context(|| format!("cannot create {}", args.log_dir.display()))?;
    std::fs::create_dir_all(&args.checkpoint_dir)
        .with_context(|| format!("cannot create {}", args.checkpoint_dir.display()))?;
    let body = script(
        args,
        &conn,
        access.token_file.as_deref(),
        &submitted.sweep_id,
        tasks,
        &binary,
    )?;
    std::fs::write(&args.out, &body).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {} ({tasks} array tasks)", args.out.display());
    if args.submit {
        let out = std::process::Command::new("sbatch")
            .arg("--parsable")
            .arg(&args.out)
            .output()
            .context("cannot run sbatch (is this a Slurm login node?)")?;
        if !out.status.success() {
            bail!(
                "sbatch refused {}: {}",
                args.out.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let job = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        eprintln!("submitted array job {job}");
        println!("{job}");
    } else {
        println!("{}", args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_asks_for_what_a_cluster_needs() {
        let args = SlurmArgs {
            spec: "s.toml".into(),
            coordinator: "https://login1:50051".into(),
            array: Some(4),
            partition: Some("gpu".into()),
            gpus_per_task: 1,
            cpus_per_task: Some(8),
            time: Some("04:00:00".into()),
            account: Some("lab".into()),
            qos: None,
            constraint: Some("a100".into()),
            signal_secs: 120,
            checkpoint_dir: "/shared/ckpt".into(),
            log_dir: "/shared/logs".into(),
            slots: 2,
            binary: None,
            out: "job.sh".into(),
            submit: false,
        };
        let token = Some(Path::new("/shared/token"));
        let conn = Connection::plain("https://login1:50051");
        let s = script(&args, &conn, token, "demo", 4, Path::new("/opt/convsweep")).unwrap();
        for line in [
            "#SBATCH --array=0-3",
            "#SBATCH --output=/shared/logs/convsweep-%A_%a.log",
            "#SBATCH --requeue",
            "#SBATCH --signal=B:USR1@120",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --partition=gpu",
            "#SBATCH --time=04:00:00",
            "#SBATCH --account=lab",
            "#SBATCH --constraint=a100",
            "export CONVSWEEP_COORDINATOR='https://login1:50051'",
            "export CONVSWEEP_TOKEN_FILE='/shared/token'",
            "exec '/opt/convsweep' worker --exit-when-idle --device cuda --slots 2 --grace-secs 110 --checkpoint-dir '/shared/ckpt'",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} missing:\n{s}");
        }
        assert!(!s.contains("--qos"));
        assert!(
            script(
                &SlurmArgs {
                    signal_secs: 5,
                    ..args.clone()
                },
                &conn,
                token,
                "demo",
                4,
                Path::new("/x")
            )
            .is_err()
        );
        assert!(script(&args, &conn, token, "demo", 0, Path::new("/x")).is_err());
    }
}
