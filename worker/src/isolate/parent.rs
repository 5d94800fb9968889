//! The worker's side: [`ProcessTrainer`] starts a child process per trial attempt, feeds it the
//! lease and the agent's signals, relays what it reports, and is its watchdog (stall timeout,
//! memory limit, a stop that is not obeyed).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use convsweep_proto::{Lease, Outcome};
use tracing::{info, warn};

use super::protocol::{FromChild, ToChild, read_frame, write_frame};
use crate::control::{Signal, TrainEnd, Trainer, TrialControl};
use crate::trainer::CheckpointStore;

/// The watchdog's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A child that shows no progress for this long is killed (the attempt fails retryable).
    pub stall_timeout: Duration,
    /// A child whose resident memory grows past this many bytes is killed (not retryable).
    pub max_rss_bytes: Option<u64>,
    /// How long a stopped (cancelled, lease lost) child, or one that closed its output, gets to
    /// exit before it is killed.
    pub stop_timeout: Duration,
    /// How long a child asked to preempt (checkpoint and stop: the worker's grace) gets before
    /// it is killed.
    pub preempt_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stall_timeout: Duration::from_secs(30 * 60),
            max_rss_bytes: None,
            stop_timeout: Duration::from_secs(3),
            preempt_timeout: Duration::from_secs(30),
        }
    }
}

/// How to start a trial process: a program and its arguments (for `convsweep`, itself with its
/// hidden `trial-process` subcommand).
#[derive(Debug, Clone)]
pub struct ChildCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// A [`Trainer`] that runs each trial in a child process and watches it.
#[derive(Debug)]
pub struct ProcessTrainer {
    command: ChildCommand,
    limits: Limits,
    devices: Vec<String>,
    checkpoints: Option<CheckpointStore>,
}

impl ProcessTrainer {
    /// Trials run by `command`, watched within `limits`; `devices` is what `Register` reports;
    /// `checkpoints` (the children's folder) is cleaned up when a trial is acknowledged done.
    pub fn new(
        command: ChildCommand,
        limits: Limits,
        devices: Vec<String>,
        checkpoints: Option<CheckpointStore>,
    ) -> ProcessTrainer {
        ProcessTrainer {
            command,
            limits,
            devices,
            checkpoints,
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = Command::new(&self.command.program);
        command
            .args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The child dies with its supervising thread (a SIGKILLed worker leaves no trainer
        // behind), and ignores the signals a shell, Slurm or a terminal sends the whole group:
        // the worker asks it to checkpoint and stop over the pipe. SIGXFSZ too: a checkpoint
        // written past a file-size limit fails with EFBIG and the trial trains on.
        #[allow(unsafe_code)]
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP, libc::SIGXFSZ] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        command.spawn()
    }
}

/// What the supervisor hears from the child's output.
enum Heard {
    Frame(Box<FromChild>),
    /// The output closed (the child exited) or was garbled.
    Closed(Option<String>),
}

fn reader(mut out: std::process::ChildStdout, tx: mpsc::Sender<Heard>) {
    loop {
        match read_frame::<FromChild>(&mut out) {
            Ok(Some(frame)) => {
                if tx.send(Heard::Frame(Box::new(frame))).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Heard::Closed(None));
                return;
            }
            Err(e) => {
                let _ = tx.send(Heard::Closed(Some(e.to_string())));
                return;
            }
        }
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The name of signal `sig` (SIGSEGV, ...), or its number.
fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV (segmentation fault)".into(),
        libc::SIGABRT => "SIGABRT (abort)".into(),
        libc::SIGBUS => "SIGBUS (bus error)".into(),
        libc::SIGFPE => "SIGFPE (arithmetic error)".into(),
        libc::SIGILL => "SIGILL (illegal instruction)".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// Whether `child` exits within `limit` (polled; a child that exited is reaped by the caller).
fn exited_within(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if start.elapsed() >= limit => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Why the watchdog killed a child.
enum Killed {
    Stalled(Duration),
    Memory {
        rss: u64,
        limit: u64,
    },
    Stopped,
    /// Asked to preempt, still running after the grace.
    Preempted,
    /// Its output closed, and it did not exit.
    Silent,
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

impl Trainer for ProcessTrainer {
    fn devices(&self) -> Vec<String> {
        self.devices.clone()
    }

    fn run(&self, lease: &Lease, ctl: &TrialControl) -> TrainEnd {
        let failed = |reason: String, retryable: bool| TrainEnd::Finished(Outcome::Failed { retryable, reason });
        let mut child = match self.spawn() {
            Ok(c) => c,
            Err(e) => {
                return failed(
                    format!(
                        "could not start a trial process ({}): {e}",
                        self.command.program.display()
                    ),
                    true,
                );
            }
        };
        let pid = child.id();
        info!(trial = %lease.trial_id, attempt = lease.attempt, pid, "trial process started");
        let mut stdin: Option<ChildStdin> = child.stdin.take();
        let leased = ctl
            .started_at()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let first = ToChild {
            lease: Some(lease.into()),
            signal: ctl.peek_signal() as u32,
            leased_unix_micros: u64::try_from(leased.as_micros()).unwrap_or(0),
        };
        if let Some(w) = stdin.as_mut()
            && let Err(e) = write_frame(w, &first)
        {
            warn!(trial = %lease.trial_id, error = %e, "could not hand the lease to the trial process");
        }
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        let reading = std::thread::Builder::new()
            .name(format!("trial-io-{pid}"))
            .spawn(move || reader(out, tx));
        if reading.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return failed("could not start a thread to read the trial process".into(), true);
        }

        let mut end: Option<TrainEnd> = None;
        let mut garbled: Option<String> = None;
        let mut killed: Option<Killed> = None;
        let mut sent = first.signal;
        let mut stop_sent: Option<Instant> = None;
        let (mut progress, mut last_progress) = (0u64, Instant::now());
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Heard::Frame(f)) => {
                    if f.progress != progress {
                        if progress == 0 {
                            ctl.stepped();
                        }
                        progress = f.progress;
                        last_progress = Instant::now();
                    }
                    if let Some(m) = f.epoch {
                        last_progress = Instant::now();
                        ctl.epoch(m);
                    }
                    if f.stopped {
                        end = Some(TrainEnd::Stopped);
                    } else if let Some(done) = f.outcome {
                        end = Some(match Outcome::try_from(done.outcome) {
                            Ok(o) => TrainEnd::Finished(o),
                            Err(e) => TrainEnd::Finished(Outcome::Failed {
                                retryable: true,
                                reason: format!("the trial process sent an unreadable outcome: {e}"),
                            }),
                        });
                    }
                }
                Ok(Heard::Closed(why)) => {
                    garbled = why;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let signal = ctl.peek_signal() as u32;
            if signal != sent {
                sent = signal;
                if signal != Signal::Run as u32 && signal != Signal::Halt as u32 && stop_sent.is_none() {
                    stop_sent = Some(Instant::now());
                }
                if let Some(w) = stdin.as_mut() {
                    let _ = write_frame(
                        w,
                        &ToChild {
                            signal,
                            ..Default::default()
                        },
                    );
                }
            }
            if killed.is_some() {
                continue;
            }
            let kill =
                if sent == Signal::Stop as u32 && stop_sent.is_some_and(|t| t.elapsed() > self.limits.stop_timeout) {
                    Some(Killed::Stopped)
                } else if sent == Signal::Preempt as u32
                    && stop_sent.is_some_and(|t| t.elapsed() > self.limits.preempt_timeout)
                {
                    Some(Killed::Preempted)
                } else if last_progress.elapsed() > self.limits.stall_timeout {
                    Some(Killed::Stalled(last_progress.elapsed()))
                } else {
                    match (self.limits.max_rss_bytes, rss_bytes(pid)) {
                        (Some(limit), Some(rss)) if rss > limit => Some(Killed::Memory { rss, limit }),
                        _ => None,
                    }
                };
            if let Some(k) = kill {
                match &k {
                    Killed::Stalled(d) => {
                        warn!(trial = %lease.trial_id, pid, seconds = d.as_secs(), "trial process made no progress; killing it")
                    }
                    Killed::Memory { rss, limit } => {
                        warn!(trial = %lease.trial_id, pid, rss = %mib(*rss), limit = %mib(*limit), "trial process over its memory limit; killing it")
                    }
                    Killed::Stopped => {
                        warn!(trial = %lease.trial_id, pid, "stopped trial process did not exit; killing it")
                    }
                    Killed::Preempted => {
                        warn!(trial = %lease.trial_id, pid, grace = ?self.limits.preempt_timeout, "preempted trial process did not stop within the grace; killing it")
                    }
                    Killed::Silent => {}
                }
                let _ = child.kill();
                killed = Some(k);
            }
        }
        drop(stdin);
        // Its output closed: a child that does not exit soon after is killed rather than
        // waited for without end.
        if killed.is_none() && !exited_within(&mut child, self.limits.stop_timeout) {
            warn!(trial = %lease.trial_id, pid, "trial process closed its output but did not exit; killing it");
            let _ = child.kill();
            killed = Some(Killed::Silent);
        }
        let status = child.wait();
        info!(trial = %lease.trial_id, pid, status = ?status.as_ref().ok(), "trial process ended");
        if let Some(k) = killed {
            return match k {
                Killed::Stalled(d) => failed(
                    format!(
                        "no progress for {} s (the stall timeout is {} s): the trial process was killed",
                        d.as_secs(),
                        self.limits.stall_timeout.as_secs()
                    ),
                    true,
                ),
                Killed::Memory { rss, limit } => failed(
                    format!(
                        "the trial process used {} of memory, more than its limit of {}: killed",
                        mib(rss),
                        mib(limit)
                    ),
                    false,
                ),
                Killed::Stopped => TrainEnd::Stopped,
                Killed::Preempted => TrainEnd::Finished(Outcome::Preempted {
                    reason: format!(
                        "the trial process did not stop within the worker's grace of {} s after it was asked to \
                         checkpoint and stop: killed",
                        self.limits.preempt_timeout.as_secs()
                    ),
                }),
                Killed::Silent => failed(
                    "the trial process closed its output but did not exit: killed".into(),
                    true,
                ),
            };
        }
        if let Some(end) = end {
            return end;
        }
        if ctl.peek_signal() == Signal::Stop {
            return TrainEnd::Stopped;
        }
        let how = match status {
            Ok(s) => match (s.signal(), s.code()) {
                (Some(libc::SIGKILL), _) => {
                    "the trial process was killed by SIGKILL (the kernel's OOM killer does this when memory runs out)"
                        .to_owned()
                }
                (Some(sig), _) => format!("the trial process died of {}", signal_name(sig)),
                (None, Some(code)) => format!("the trial process exited with status {code} without a result"),
                (None, None) => "the trial process ended without a result".to_owned(),
            },
            Err(e) => format!("the trial process could not be waited for: {e}"),
        };
        let how = match garbled {
            Some(why) => format!("{how} (its output was unreadable: {why})"),
            None => how,
        };
        failed(how, true)
    }

    fn ended(&self, lease: &Lease) {
        crate::trainer::remove_checkpoints(self.checkpoints.as_ref(), lease);
    }
}
