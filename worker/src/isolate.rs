//! A process per trial attempt: the worker's [`ProcessTrainer`] starts each leased trial in a
//! child process (the same binary, a hidden subcommand that calls [`serve_trial`]) and talks to
//! it over its standard input and output; the child owns every tensor. A segfault, an abort, the
//! OOM killer or a CUDA context gone bad ends that child only, and the attempt is reported
//! failed with the reason; the worker and its other slots carry on.
//!
//! ```text
//! agent ── Trainer::run (a thread per trial) ── ProcessTrainer ─ stdin: lease, then signals ─> child
//!                                                      <─ stdout: progress, epochs, the end ──┘
//! ```
//!
//! The supervising thread is also the watchdog: a child that makes no progress (it checks the
//! agent's signal between batches) for the stall timeout, or grows past the RSS limit, is
//! killed. Frames are length-delimited protobuf messages.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use convsweep_proto::{Lease, Outcome, pb};
use prost::Message;
use tracing::{info, warn};

use crate::control::{Signal, TrainEnd, Trainer, TrialControl, TrialEvent, run_guarded};
use crate::trainer::CheckpointStore;

/// Parent to child: the lease first, then the agent's signal whenever it changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ToChild {
    /// The trial to run (first frame only).
    #[prost(message, optional, tag = "1")]
    pub lease: Option<pb::TrialLease>,
    /// A [`Signal`] as its number.
    #[prost(uint32, tag = "2")]
    pub signal: u32,
    /// When the worker got the lease, microseconds since the Unix epoch (first frame only): the
    /// child's start-up counts from there, its own process start included.
    #[prost(uint64, tag = "3")]
    pub leased_unix_micros: u64,
}

/// Child to parent: progress, an epoch, or the end of the run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FromChild {
    /// The trainer's progress count ([`TrialControl::progress`]).
    #[prost(uint64, tag = "1")]
    pub progress: u64,
    /// A finished epoch.
    #[prost(message, optional, tag = "2")]
    pub epoch: Option<pb::EpochMetrics>,
    /// The outcome to report (only its `outcome` is set).
    #[prost(message, optional, tag = "3")]
    pub outcome: Option<pb::CompleteRequest>,
    /// Stopped on request: report nothing.
    #[prost(bool, tag = "4")]
    pub stopped: bool,
}

/// Largest frame accepted (an epoch's metrics or a result with its evaluations are far smaller).
const MAX_FRAME: usize = 64 << 20;

/// Writes `msg` as one length-delimited frame and flushes.
fn write_frame(out: &mut impl Write, msg: &impl Message) -> std::io::Result<()> {
    out.write_all(&msg.encode_length_delimited_to_vec())?;
    out.flush()
}

/// Reads one length-delimited frame; `Ok(None)` at a clean end of the stream.
fn read_frame<M: Message + Default>(input: &mut impl Read) -> std::io::Result<Option<M>> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8];
        match input.read_exact(&mut byte) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && i == 0 => return Ok(None),
            Err(e) => return Err(e),
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes (at most {MAX_FRAME})"),
                ));
            }
            let mut buf = vec![0; len];
            input.read_exact(&mut buf)?;
            return M::decode(&buf[..])
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a frame length of more than 10 bytes",
    ))
}

/// The watchdog's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A child that shows no progress for this long is killed (the attempt fails retryable).
    pub stall_timeout: Duration,
    /// A child whose resident memory grows past this many bytes is killed (not retryable).
    pub max_rss_bytes: Option<u64>,
    /// How long a stopped (cancelled, lease lost) child gets to exit before it is killed.
    pub stop_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stall_timeout: Duration::from_secs(30 * 60),
            max_rss_bytes: None,
            stop_timeout: Duration::from_secs(3),
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

/// Why the watchdog killed a child.
enum Killed {
    Stalled(Duration),
    Memory { rss: u64, limit: u64 },
    Stopped,
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
                if signal != Signal::Run as u32 && stop_sent.is_none() {
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
                }
                let _ = child.kill();
                killed = Some(k);
            }
        }
        drop(stdin);
        let status = child.wait();
        info!(trial = %lease.trial_id, pid, status = ?status.as_ref().ok(), "trial process ended");
        if let Some(k) = killed {
            return match k {
                Killed::Stalled(d) => failed(
                    format!(
                        "no progress for {} s (--stall-timeout {} s): the trial process was killed",
                        d.as_secs(),
                        self.limits.stall_timeout.as_secs()
                    ),
                    true,
                ),
                Killed::Memory { rss, limit } => failed(
                    format!(
                        "the trial process used {} of memory, more than --max-trial-rss {}: killed",
                        mib(rss),
                        mib(limit)
                    ),
                    false,
                ),
                Killed::Stopped => TrainEnd::Stopped,
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

    fn acknowledged(&self, lease: &Lease, outcome: &Outcome) {
        crate::trainer::remove_finished(self.checkpoints.as_ref(), lease, outcome);
    }
}

/// A fault a test asks a trial process to suffer (`CONVSWEEP_TEST_FAULT=KIND:K[,KIND:K...]`: the
/// trial with kernel size K). Read by the trial process only; for tests of the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Segfault,
    Abort,
    Kill,
    Hang,
    Memory,
}

/// The env var of [`Fault`]s.
pub const FAULT_ENV: &str = "CONVSWEEP_TEST_FAULT";

fn fault_for(lease: &Lease) -> Option<Fault> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    spec.split(',').find_map(|item| {
        let (kind, k) = item.trim().split_once(':')?;
        if k.parse::<u32>().ok()? != lease.spec.model.kernel_size {
            return None;
        }
        match kind {
            "segfault" => Some(Fault::Segfault),
            "abort" => Some(Fault::Abort),
            "kill" => Some(Fault::Kill),
            "hang" => Some(Fault::Hang),
            "memory" => Some(Fault::Memory),
            _ => None,
        }
    })
}

#[allow(unsafe_code)]
fn suffer(fault: Fault, ctl: &TrialControl) {
    warn!(?fault, "{FAULT_ENV}: injecting a fault");
    match fault {
        // SAFETY: raising a signal at ourselves, with its default action (Rust's runtime
        // handles SIGSEGV to report stack overflows and would swallow a raised one).
        Fault::Segfault => unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        },
        Fault::Abort => std::process::abort(),
        // SAFETY: as above.
        Fault::Kill => unsafe {
            libc::raise(libc::SIGKILL);
        },
        Fault::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Fault::Memory => {
            // Touch memory, while making progress as a training loop would, until the watchdog
            // kills us.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 64 << 20]);
                let _ = ctl.signal();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Takes the process's standard output for frames and points file descriptor 1 at standard
/// error, so that whatever else writes to stdout (libtorch warnings, a stray print) goes to
/// the log instead of garbling the protocol.
#[allow(unsafe_code)]
pub fn take_stdout() -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain descriptor calls; the new descriptor is owned by the File alone.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::fs::File::from_raw_fd(fd))
    }
}

/// The child's side: reads the lease from `input`, runs `trainer` on it with a
/// [`TrialControl`] fed by the signals that follow, and writes progress, epochs and the end to
/// `output`. Returns the process's exit status (0 when an end was written).
pub fn serve_trial(trainer: Arc<dyn Trainer>, mut input: impl Read + Send + 'static, mut output: impl Write) -> i32 {
    let first = match read_frame::<ToChild>(&mut input) {
        Ok(Some(f)) => f,
        Ok(None) => {
            eprintln!("trial-process: no lease on standard input");
            return 2;
        }
        Err(e) => {
            eprintln!("trial-process: unreadable lease frame: {e}");
            return 2;
        }
    };
    let lease = match first.lease.map(Lease::try_from) {
        Some(Ok(l)) => l,
        Some(Err(e)) => {
            eprintln!("trial-process: invalid lease: {e}");
            return 2;
        }
        None => {
            eprintln!("trial-process: the first frame carries no lease");
            return 2;
        }
    };
    let (ctl, signal, mut events) = match first.leased_unix_micros {
        0 => TrialControl::new(),
        micros => TrialControl::since(std::time::UNIX_EPOCH + Duration::from_micros(micros)),
    };
    signal.store(Signal::from_number(first.signal) as u8, Ordering::Relaxed);
    // Signals from the worker; a closed input means the worker is gone: stop.
    let _ = std::thread::Builder::new().name("signals".into()).spawn({
        let signal: Arc<AtomicU8> = signal.clone();
        move || {
            loop {
                match read_frame::<ToChild>(&mut input) {
                    Ok(Some(f)) => signal.store(Signal::from_number(f.signal) as u8, Ordering::Relaxed),
                    _ => {
                        signal.store(Signal::Stop as u8, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    });
    let fault = fault_for(&lease);
    let (done_tx, done_rx) = mpsc::channel();
    let trainer_ctl = ctl.clone();
    let spawned = std::thread::Builder::new().name("trainer".into()).spawn(move || {
        if let Some(f) = fault {
            suffer(f, &trainer_ctl);
        }
        let end = run_guarded(trainer.as_ref(), &lease, &trainer_ctl);
        drop(trainer_ctl);
        let _ = done_tx.send(end);
    });
    if spawned.is_err() {
        eprintln!("trial-process: could not start the trainer thread");
        return 2;
    }
    let mut reported = 0u64;
    let mut last_beat = Instant::now();
    let end = loop {
        let done = done_rx.recv_timeout(Duration::from_millis(200));
        while let Ok(TrialEvent::Epoch(m)) = events.try_recv() {
            if write_frame(
                &mut output,
                &FromChild {
                    progress: ctl.progress(),
                    epoch: Some(m),
                    ..Default::default()
                },
            )
            .is_err()
            {
                return 3;
            }
        }
        match done {
            Ok(end) => break end,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break TrainEnd::Finished(Outcome::Failed {
                    retryable: true,
                    reason: "trainer thread ended without a result".into(),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = ctl.progress();
        if now != reported && last_beat.elapsed() >= Duration::from_secs(1) {
            reported = now;
            last_beat = Instant::now();
            if write_frame(
                &mut output,
                &FromChild {
                    progress: now,
                    ..Default::default()
                },
            )
            .is_err()
            {
                return 3;
            }
        }
    };
    let last = match end {
        TrainEnd::Stopped => FromChild {
            progress: ctl.progress(),
            stopped: true,
            ..Default::default()
        },
        TrainEnd::Finished(o) => FromChild {
            progress: ctl.progress(),
            outcome: Some(pb::CompleteRequest {
                outcome: Some(o.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    match write_frame(&mut output, &last) {
        Ok(()) => 0,
        Err(_) => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut buf = Vec::new();
        let msg = FromChild {
            progress: 7,
            stopped: true,
            ..Default::default()
        };
        write_frame(&mut buf, &msg).unwrap();
        write_frame(&mut buf, &msg).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<FromChild>(&mut r).unwrap(), Some(msg.clone()));
        assert_eq!(read_frame::<FromChild>(&mut r).unwrap(), Some(msg));
        assert_eq!(read_frame::<FromChild>(&mut r).unwrap(), None);
        // A truncated frame, an oversized length, an endless varint.
        let mut cut = &buf[..buf.len() / 2 - 1];
        assert!(read_frame::<FromChild>(&mut cut).is_err());
        let huge = [0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(
            read_frame::<FromChild>(&mut &huge[..])
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
        let endless = [0x80u8; 11];
        assert!(read_frame::<FromChild>(&mut &endless[..]).is_err());
    }
}
