//! Integration tests of the worker crate (one binary): models, training.

mod common;
mod model;
mod training;
