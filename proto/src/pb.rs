//! Generated protobuf (and with the `grpc` feature, gRPC) code for package `convsweep.v1`.

include!(concat!(env!("OUT_DIR"), "/convsweep.v1.rs"));
