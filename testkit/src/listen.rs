//! Listeners a child process inherits: the test (or benchmark) binds `127.0.0.1:0` once, keeps
//! the listener, and hands it to each child it starts as a file descriptor (the coordinator's
//! `--listen-fd` and `--ops-listen-fd`). The port stays this process's from the first bind to
//! the end: a restarted child serves the same port, and connections made while no child runs
//! wait in the listen backlog instead of being refused.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A listener on a loopback port the system picks.
pub fn loopback() -> std::io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
}

/// Its address as a URL (`http://127.0.0.1:PORT`).
pub fn url(listener: &TcpListener) -> String {
    let addr: SocketAddr = listener.local_addr().expect("a bound listener has an address");
    format!("http://{addr}")
}

/// Makes the child of `cmd` inherit `listener` and tells it with `flag FD` (e.g.
/// `--listen-fd`; the number is the same there as here). Only that child inherits it: the
/// descriptor stays close-on-exec in this process and in every other child.
#[allow(unsafe_code)]
pub fn hand_over<'a>(cmd: &'a mut Command, flag: &str, listener: &TcpListener) -> &'a mut Command {
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec, only fcntl(2) on a descriptor the child has (async-signal
    // safe, no allocation): it clears close-on-exec in the child's copy of the table.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.arg(flag).arg(fd.to_string())
}
