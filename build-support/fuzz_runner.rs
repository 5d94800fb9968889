//! The fuzz tests' runner, one file for the test crates of the coordinator and the worker
//! (each `#[path]`s it in, as the build scripts `include!` `link_libtorch.rs`).

use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A runner of `default` cases (`PROPTEST_CASES` overrides) drawn from a fixed seed
/// (`FUZZ_SEED` overrides; both are printed), so that the suite's run is the same every time and
/// a longer or other run is one variable away. Failures are not persisted into the source tree.
pub(crate) fn runner(default: u32) -> TestRunner {
    let mut config = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(default)
    };
    config.failure_persistence = None;
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_F0CC);
    eprintln!("fuzz: seed {seed} (FUZZ_SEED), {} cases (PROPTEST_CASES)", config.cases);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}
