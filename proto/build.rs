//! Compiles `proto/convsweep/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/convsweep/v1/convsweep.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Service stubs only with the `grpc` feature; without it plain prost messages, and no tonic
    // in the dependency tree.
    // The descriptor set, for gRPC reflection (grpcurl, grpcui).
    #[cfg(feature = "grpc")]
    {
        use prost::Message;
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("convsweep_descriptor.bin"), fds.encode_to_vec())?;
    }
    #[cfg(feature = "grpc")]
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    #[cfg(not(feature = "grpc"))]
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
