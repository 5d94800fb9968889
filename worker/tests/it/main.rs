//! Integration tests of the worker crate (one binary): models, training.

mod agent;
mod common;
mod data;
mod eval;
mod folder;
mod fuzz;
#[path = "../../../build-support/fuzz_runner.rs"]
mod fuzz_runner;
mod model;
mod resume;
mod training;
