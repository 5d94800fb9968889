//! Integration tests of the `convsweep` binary: real worker processes over loopback gRPC.

mod common;
mod processes;
