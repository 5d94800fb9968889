//! Why a dataset could not be loaded.

use std::path::Path;

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
    /// A split the spec asks for that the dataset's images cannot make.
    #[error("{field}: {problem}")]
    Split {
        /// The spec field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// A file or folder that is not there; `hint` says what belongs there.
pub(super) fn missing(path: &Path, hint: &str) -> DataError {
    DataError::Missing {
        path: path.display().to_string(),
        hint: hint.to_owned(),
    }
}

/// A file or folder that is there but wrong.
pub(super) fn malformed(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}
