//! Integration tests of the `convsweep-bench` binary: each benchmark that starts `convsweep`
//! processes, end to end at a small size.

mod bench;

/// The benchmark binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_convsweep-bench");

/// The `convsweep` binary the benchmarks start: the workspace's own, beside the benchmark.
pub fn convsweep_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(BIN).with_file_name("convsweep");
    assert!(
        path.is_file(),
        "{} is missing: these tests run in the workspace's test command (`cargo test --workspace`), which builds it",
        path.display()
    );
    path
}

/// The standard output of a finished command, after asserting that it succeeded (both streams
/// are shown when it did not).
pub fn stdout_of_success(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
