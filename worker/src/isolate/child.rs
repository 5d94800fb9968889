//! The trial process's side of the pipe: [`serve_trial`] reads the lease and the worker's
//! signals from standard input, runs the trainer and writes progress, epochs and the end to
//! standard output.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use convsweep_proto::{Lease, Outcome, pb};

use super::protocol::{FromChild, ToChild, read_frame, write_frame};
use crate::control::{Signal, TrainEnd, Trainer, TrialControl, TrialEvent, run_guarded};

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
    #[cfg(feature = "fault-injection")]
    let fault = super::fault::fault_for(&lease);
    let (done_tx, done_rx) = mpsc::channel();
    let trainer_ctl = ctl.clone();
    let spawned = std::thread::Builder::new().name("trainer".into()).spawn(move || {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = fault {
            super::fault::suffer(f, &trainer_ctl);
        }
        let end = run_guarded(trainer.as_ref(), &lease, &trainer_ctl);
        drop(trainer_ctl);
        let _ = done_tx.send(end);
    });
    if spawned.is_err() {
        eprintln!("trial-process: could not start the trainer thread");
        return 2;
    }
    #[cfg(feature = "fault-injection")]
    if fault == Some(super::fault::Fault::CloseOutput) {
        drop(output);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
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
