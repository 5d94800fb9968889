//! Integration tests of the coordinator (one binary): gRPC over loopback, the lease state
//! machine under a paused clock, durability across restarts and the read-only reader. A scripted fake worker
//! stands in for the trainer.

mod common;
mod fuzz;
#[path = "../../../build-support/fuzz_runner.rs"]
mod fuzz_runner;
mod grpc;
mod hostile;
mod lease;
mod ops;
mod reader;
mod replicas;
mod scale;
mod security;
mod stopping;
mod streams;
