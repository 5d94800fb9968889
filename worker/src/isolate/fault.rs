//! Faults a test asks a trial process to suffer, to test the watchdog: compiled only with the
//! `fault-injection` feature (test builds), never into the binary users install.

use std::time::Duration;

use convsweep_proto::Lease;
use tracing::warn;

use crate::control::TrialControl;

/// A fault a test asks a trial process to suffer (`CONVSWEEP_TEST_FAULT=KIND:K[,KIND:K...]`: the
/// trial with kernel size K). Read by the trial process only; for tests of the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Segfault,
    Abort,
    Kill,
    Hang,
    Memory,
    /// Closes its output to the worker, then hangs.
    CloseOutput,
}

/// The env var of [`Fault`]s.
pub const FAULT_ENV: &str = "CONVSWEEP_TEST_FAULT";

pub(super) fn fault_for(lease: &Lease) -> Option<Fault> {
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
            "close-output" => Some(Fault::CloseOutput),
            _ => None,
        }
    })
}

#[allow(unsafe_code)]
pub(super) fn suffer(fault: Fault, ctl: &TrialControl) {
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
        // The output is the child's main thread's to close (see `child`); the trainer hangs.
        Fault::Hang | Fault::CloseOutput => loop {
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
