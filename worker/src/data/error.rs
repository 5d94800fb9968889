//! Why a dataset could not be loaded.

use convsweep_proto::spec::DatasetName;

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file the format needs is not there.
    #[error("{path}: missing ({hint})")]
    Missing {
        /// The file.
        path: String,
        /// What was expected there.
        hint: String,
    },
    /// A file is not in the expected format.
    #[error("{path}: {problem}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A dataset spec without the folder its files are in.
    #[error("dataset {0:?} needs `dataset.root`, the folder holding its files")]
    Unsupported(DatasetName),
}
