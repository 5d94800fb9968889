//! Budgets: stopping rules that end configurations early at rungs, decided by the coordinator
//! on a validation split, inside comparison groups of the grid, over a configuration's seeds.
//!
//! ```toml
//! [dataset]
//! val_fraction = 0.1                 # the validation split decisions use
//! [stopping]
//! rule = "successive-halving"        # or "median", "asha", "none" (the default)
//! metric = "val_acc"                 # val_acc | val_loss | train_acc | train_loss, never test
//! rungs = [5, 15]                    # or min_epochs = 5 (and eta = 3)
//! keep = 0.34                        # share kept at each rung (default 1 / eta)
//! within = ["kernel_size"]           # decided inside each group of these axes' values
//! exempt = { expansion = "none" }    # cells that always run to the end
//! min_seeds = 2                      # a configuration's lowest seeds, pooled
//! pilot = 1                          # groups run in full first, to measure rank fidelity
//! min_tau = 0.5                      # no pruning at a rung whose pilot tau is below this
//! ```
//!
//! - [`spec`]: the section, checked against the grid (each error names its field).
//! - [`decide`]: the decisions, a pure function of the recorded curves and the stored
//!   decisions. The coordinator runs it after epochs arrive, stores what it decided and marks
//!   the trials of stopped configurations: a queued one ends `stopped` at once, a running one
//!   is told STOP in its next heartbeat answer and ends `stopped` at its epoch's end, after its
//!   checkpoint (resumable with `convsweep resume --stopped`).
//!
//! Determinism: successive halving and the median rule decide a group's rung once every
//! configuration of the group (not exempt, not stopped before) has the rung's value over its
//! `min_seeds` lowest seeds, ranking by the mean and breaking ties by the smallest trial id:
//! nothing depends on which worker ran what, when a report arrived or whether a coordinator
//! restarted. A configuration that reaches a rung before its group trains on meanwhile; one
//! whose evidence trial failed before the rung leaves the race (it is not ranked). ASHA decides
//! each configuration as soon as it has the rung's value, against the values its group has at
//! that rung by then: faster, and dependent on arrival order; its inputs are stored with each
//! decision.

pub mod decide;
pub mod spec;

pub use decide::{Decided, decide};
pub use spec::{GridFacts, Metric, Rule, StoppingSpec};
