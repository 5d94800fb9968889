//! Trial checkpoints on disk, keyed by trial id, so that a trial leased again (on this worker
//! or any other that shares the folder) continues where it stopped.
//!
//! Per trial: `<trial>.state` (a `CheckpointState` protobuf: epoch, step, RNG, cursor, ...)
//! and `<trial>.<generation>.ot` (model variables, momentum buffers, the interrupted epoch's
//! data order). A save writes the new generation's tensors, then atomically renames the state
//! that names them, then deletes the old generation: a crash at any point leaves a consistent
//! pair. The state carries a SHA-256 over the tensor file and itself: a checkpoint whose files
//! were truncated or altered (a full disk, a bad sector, a partial copy) is refused with the
//! reason, and the trial starts afresh rather than resume from garbage.

use std::path::{Path, PathBuf};

use convsweep_proto::{files, pb};
use prost::Message;
use sha2::{Digest, Sha256};
use tch::Tensor;

/// Why a checkpoint could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// libtorch could not read or write a tensor file.
    #[error("{}: {message}", path.display())]
    Tensors {
        /// The file.
        path: PathBuf,
        /// What libtorch said.
        message: String,
    },
    /// The state file is not a `CheckpointState`.
    #[error("{}: not a checkpoint state: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why it does not decode.
        source: prost::DecodeError,
    },
    /// The checkpoint is another trial's.
    #[error("{}: the checkpoint of {found:?} found under {trial}", path.display())]
    WrongTrial {
        /// The state file.
        path: PathBuf,
        /// The trial whose folder entry it is.
        trial: String,
        /// The trial it says it belongs to.
        found: String,
    },
    /// The files do not match the checksum written with them.
    #[error("{}: {problem}", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What does not match.
        problem: String,
    },
    /// The checkpoint does not fit the model or optimiser it is restored into.
    #[error("checkpoint does not fit: {0}")]
    Mismatch(String),
}

/// A trial's state at one moment.
pub struct Checkpoint {
    /// Scalars.
    pub state: pb::CheckpointState,
    /// Named tensors (on the CPU).
    pub tensors: Vec<(String, Tensor)>,
}

/// The checkpoint folder and how often to write.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    every: u32,
}

impl CheckpointStore {
    /// Checkpoints in `dir` (created 0700 when missing: a checkpoint holds a model's weights)
    /// every `every` epochs (at least 1).
    pub fn new(dir: &Path, every: u32) -> std::io::Result<CheckpointStore> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(CheckpointStore {
            dir: dir.to_owned(),
            every: every.max(1),
        })
    }

    /// Epochs between checkpoints.
    pub fn every(&self) -> u32 {
        self.every
    }

    fn state_path(&self, trial: &str) -> PathBuf {
        self.dir.join(format!("{trial}.state"))
    }

    fn tensors_path(&self, trial: &str, generation: u64) -> PathBuf {
        self.dir.join(format!("{trial}.{generation}.ot"))
    }

    fn read_state(&self, trial: &str) -> Result<Option<pb::CheckpointState>, CheckpointError> {
        let path = self.state_path(trial);
        match std::fs::read(&path) {
            Ok(bytes) => pb::CheckpointState::decode(&bytes[..])
                .map(Some)
                .map_err(|source| CheckpointError::Decode { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io { path, source }),
        }
    }

    /// The latest checkpoint of `trial`, if any.
    pub fn load(&self, trial: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let Some(state) = self.read_state(trial)? else {
            return Ok(None);
        };
        if state.trial_id != trial {
            return Err(CheckpointError::WrongTrial {
                path: self.state_path(trial),
                trial: trial.to_owned(),
                found: state.trial_id,
            });
        }
        let path = self.tensors_path(trial, state.generation);
        let bytes = std::fs::read(&path).map_err(|source| CheckpointError::Io {
            path: path.clone(),
            source,
        })?;
        let corrupt = |problem: String| CheckpointError::Corrupt {
            path: self.state_path(trial),
            problem,
        };
        if state.checksum.is_empty() {
            return Err(corrupt(
                "has no checksum (written by an older convsweep); not trusted".into(),
            ));
        }
        if checksum(&bytes, &state) != state.checksum {
            return Err(corrupt(format!(
                "checksum does not match {} ({} bytes) and the state: truncated or altered",
                path.display(),
                bytes.len()
            )));
        }
        let tensors =
            Tensor::load_multi_from_stream(std::io::Cursor::new(bytes)).map_err(|e| CheckpointError::Tensors {
                message: e.to_string(),
                path,
            })?;
        Ok(Some(Checkpoint { state, tensors }))
    }

    /// Writes `ck` as the latest checkpoint of `trial`.
    pub fn save(&self, trial: &str, mut ck: Checkpoint) -> Result<(), CheckpointError> {
        let previous = self.read_state(trial).ok().flatten().map(|s| s.generation);
        let generation = previous.map_or(1, |g| g + 1);
        let tensors = self.tensors_path(trial, generation);
        let named: Vec<(&str, &Tensor)> = ck.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut bytes = Vec::new();
        Tensor::save_multi_to_stream(&named, &mut bytes).map_err(|e| CheckpointError::Tensors {
            message: e.to_string(),
            path: tensors.clone(),
        })?;
        files::replace(&tensors, &bytes, 0o600).map_err(|(path, source)| CheckpointError::Io { path, source })?;
        ck.state.trial_id = trial.to_owned();
        ck.state.generation = generation;
        ck.state.checksum = checksum(&bytes, &ck.state);
        let state_path = self.state_path(trial);
        if let Err((_, source)) = files::replace(&state_path, &ck.state.encode_to_vec(), 0o600) {
            let _ = std::fs::remove_file(&tensors);
            return Err(CheckpointError::Io {
                path: state_path,
                source,
            });
        }
        if let Some(old) = previous {
            let _ = std::fs::remove_file(self.tensors_path(trial, old));
        }
        Ok(())
    }

    /// Deletes every checkpoint file of `trial`.
    pub fn remove(&self, trial: &str) {
        if let Ok(Some(state)) = self.read_state(trial) {
            let _ = std::fs::remove_file(self.tensors_path(trial, state.generation));
        }
        let _ = std::fs::remove_file(self.state_path(trial));
    }
}

/// SHA-256 over the tensor file and the state with its checksum left out.
fn checksum(tensors: &[u8], state: &pb::CheckpointState) -> Vec<u8> {
    let mut unsummed = state.clone();
    unsummed.checksum.clear();
    let mut hash = Sha256::new();
    hash.update(tensors);
    hash.update(unsummed.encode_to_vec());
    hash.finalize().to_vec()
}
