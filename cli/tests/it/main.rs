//! Integration tests of the `convsweep` binary: real worker processes over loopback gRPC.

mod chaos;
mod chaos_replicas;
mod common;
mod disk;
mod isolation;
mod postgres;
mod processes;
mod reading;
mod security;
mod tensorboard;
mod watch;
