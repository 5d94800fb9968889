//! Trial lifecycle states and outcomes, shared by the coordinator's store and the wire.

use std::fmt;
use std::str::FromStr;

/// Where a trial is in its life.
///
/// `pending -> leased -> running -> succeeded | failed | preempted | cancelled`; an expired lease
/// or a preemption returns it to `pending` with the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrialState {
    /// Waiting for a worker.
    Pending,
    /// Handed to a worker that has not reported yet.
    Leased,
    /// A worker reported progress.
    Running,
    /// Finished with results.
    Succeeded,
    /// Finished without results, for a reason.
    Failed,
    /// Stopped by its worker's shutdown; waiting to be leased again.
    Preempted,
    /// Stopped by a user.
    Cancelled,
}

impl TrialState {
    /// Every state, in lifecycle order.
    pub const ALL: [TrialState; 7] = [
        TrialState::Pending,
        TrialState::Leased,
        TrialState::Running,
        TrialState::Succeeded,
        TrialState::Failed,
        TrialState::Preempted,
        TrialState::Cancelled,
    ];

    /// The name stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Pending => "pending",
            TrialState::Leased => "leased",
            TrialState::Running => "running",
            TrialState::Succeeded => "succeeded",
            TrialState::Failed => "failed",
            TrialState::Preempted => "preempted",
            TrialState::Cancelled => "cancelled",
        }
    }

    /// Whether a worker holds the trial.
    pub fn is_active(self) -> bool {
        matches!(self, TrialState::Leased | TrialState::Running)
    }
}

impl fmt::Display for TrialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`TrialState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown trial state {0:?}; expected one of pending, leased, running, succeeded, failed, preempted, cancelled")]
pub struct UnknownState(pub String);

impl FromStr for TrialState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrialState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in TrialState::ALL {
            assert_eq!(state.as_str().parse::<TrialState>().unwrap(), state);
        }
        assert!("done".parse::<TrialState>().is_err());
    }
}
