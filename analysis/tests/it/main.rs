//! Integration tests of the analysis crate (one binary): the result rows of a fixture sweep,
//! their frames, aggregates and report.

mod budget;
mod fixture;
mod report;
