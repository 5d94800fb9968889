//! Integration tests of the worker crate (one binary): models, training.

mod agent;
mod common;
mod data;
mod eval;
mod fuzz;
mod model;
mod resume;
mod training;
