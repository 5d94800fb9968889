//! Integration tests of the worker crate (one binary): models, training.

mod common;
mod data;
mod eval;
mod model;
mod training;
