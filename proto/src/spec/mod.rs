//! `TrialSpec`: the complete, resolved description of one training run.
//!
//! A sweep expands into trial specs; each spec is [canonicalised](TrialSpec::canonicalize)
//! (defaults resolved, settings that cannot matter reset) and its canonical JSON hashed into the
//! [`TrialId`]. Two specs that train the same thing therefore always get the same id, however
//! they were written.
//!
//! Compatibility rule for later fields: a new field must have a default and be skipped when it
//! holds it (`skip_serializing_if`), so that the ids of existing trials do not change.
//!
//! One file per section, each with its own validation: [`dataset`], [`model`], [`train`],
//! [`eval`]; [`trial`] puts them together; [`ids`] holds the canonical form and the ids;
//! [`error`] the field error they all return.

pub mod dataset;
pub mod error;
pub mod eval;
pub mod ids;
pub mod model;
pub mod train;
pub mod trial;

pub use dataset::{
    ClassSubset, DEFAULT_IMAGE_SIZE, DatasetName, DatasetSpec, MAX_DATASET_IMAGES, MAX_SYNTHETIC_IMAGES, inside_root,
    synthetic_defaults,
};
pub use error::FieldError;
pub use eval::{Corruption, Eps, EvalSpec, PgdSpec};
pub use ids::{SweepId, TRIAL_ID_HEX_LEN, TrialId};
pub use model::{
    Arch, DEFAULT_INIT_LENGTH, InitScheme, InterOp, MAX_KERNEL_SIZE, ModelSpec, Stem, TrainMode, default_init_decay,
};
pub use train::{Augment, Loss, LrSchedule, MAX_EPOCHS, Optimizer, Precision, TrainSpec};
pub use trial::TrialSpec;
