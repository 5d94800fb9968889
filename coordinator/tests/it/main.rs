//! Integration tests of the coordinator (one binary): gRPC over loopback, the lease state
//! machine under a paused clock, and durability across restarts. A scripted fake worker
//! stands in for the trainer.

mod common;
mod grpc;
mod lease;
