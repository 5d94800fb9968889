//! Integration tests of the analysis crate (one binary): a fixture sweep stored through the
//! coordinator's store, its frames, aggregates and report.

mod fixture;
mod report;
