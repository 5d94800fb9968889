//! Trial lifecycle states, their counts and how attempts end: the one definition the store,
//! the coordinator, the worker and the CLI share, on the wire as the enum `pb::TrialState`.

use std::fmt;
use std::str::FromStr;

use crate::pb;
use crate::spec::FieldError;

/// Where a trial is in its life.
///
/// `pending -> leased -> running -> succeeded | failed | preempted | cancelled | stopped`; an
/// expired lease or a preemption returns it to `pending` with the next attempt.
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
    /// Stopped by a stopping rule at a rung: a censored result (its epochs so far), never
    /// averaged with finished trials; resumable to its full budget.
    Stopped,
}

impl TrialState {
    /// Every state, in lifecycle order.
    pub const ALL: [TrialState; 8] = [
        TrialState::Pending,
        TrialState::Leased,
        TrialState::Running,
        TrialState::Succeeded,
        TrialState::Failed,
        TrialState::Preempted,
        TrialState::Cancelled,
        TrialState::Stopped,
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
            TrialState::Stopped => "stopped",
        }
    }

    /// Whether a worker holds the trial.
    pub fn is_active(self) -> bool {
        matches!(self, TrialState::Leased | TrialState::Running)
    }

    /// Whether the trial waits for a worker (new, retried or preempted).
    pub fn is_queued(self) -> bool {
        matches!(self, TrialState::Pending | TrialState::Preempted)
    }

    /// Whether nothing more will happen to the trial unless a user resumes it: it succeeded,
    /// failed for good, was cancelled or stopped by a stopping rule. A sweep is done when all of
    /// its trials are.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            TrialState::Succeeded | TrialState::Failed | TrialState::Cancelled | TrialState::Stopped
        )
    }
}

impl fmt::Display for TrialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`TrialState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown trial state {0:?}; expected one of pending, leased, running, succeeded, failed, preempted, cancelled, stopped"
)]
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

impl From<TrialState> for pb::TrialState {
    fn from(s: TrialState) -> Self {
        match s {
            TrialState::Pending => pb::TrialState::Pending,
            TrialState::Leased => pb::TrialState::Leased,
            TrialState::Running => pb::TrialState::Running,
            TrialState::Succeeded => pb::TrialState::Succeeded,
            TrialState::Failed => pb::TrialState::Failed,
            TrialState::Preempted => pb::TrialState::Preempted,
            TrialState::Cancelled => pb::TrialState::Cancelled,
            TrialState::Stopped => pb::TrialState::Stopped,
        }
    }
}

impl TrialState {
    /// The state a message's `state` field carries (prost keeps enums as `i32`); `field` names
    /// it in the error when the number is unspecified or unknown.
    pub fn from_wire(value: i32, field: &str) -> Result<TrialState, FieldError> {
        match pb::TrialState::try_from(value) {
            Ok(pb::TrialState::Pending) => Ok(TrialState::Pending),
            Ok(pb::TrialState::Leased) => Ok(TrialState::Leased),
            Ok(pb::TrialState::Running) => Ok(TrialState::Running),
            Ok(pb::TrialState::Succeeded) => Ok(TrialState::Succeeded),
            Ok(pb::TrialState::Failed) => Ok(TrialState::Failed),
            Ok(pb::TrialState::Preempted) => Ok(TrialState::Preempted),
            Ok(pb::TrialState::Cancelled) => Ok(TrialState::Cancelled),
            Ok(pb::TrialState::Stopped) => Ok(TrialState::Stopped),
            Ok(pb::TrialState::Unspecified) | Err(_) => Err(FieldError::new(
                field,
                format!(
                    "{value} is not a trial state; expected one of 1 (pending) to 8 (stopped) \
                     (a peer of protocol version 1 sends states as text)"
                ),
            )),
        }
    }

    /// The number a message's `state` field carries.
    pub fn to_wire(self) -> i32 {
        pb::TrialState::from(self) as i32
    }
}

/// A sweep's trials counted by state.
impl pb::StateCounts {
    /// The count of `state`.
    pub fn get(&self, state: TrialState) -> u32 {
        match state {
            TrialState::Pending => self.pending,
            TrialState::Leased => self.leased,
            TrialState::Running => self.running,
            TrialState::Succeeded => self.succeeded,
            TrialState::Failed => self.failed,
            TrialState::Preempted => self.preempted,
            TrialState::Cancelled => self.cancelled,
            TrialState::Stopped => self.stopped,
        }
    }

    /// The count of `state`, to set.
    pub fn get_mut(&mut self, state: TrialState) -> &mut u32 {
        match state {
            TrialState::Pending => &mut self.pending,
            TrialState::Leased => &mut self.leased,
            TrialState::Running => &mut self.running,
            TrialState::Succeeded => &mut self.succeeded,
            TrialState::Failed => &mut self.failed,
            TrialState::Preempted => &mut self.preempted,
            TrialState::Cancelled => &mut self.cancelled,
            TrialState::Stopped => &mut self.stopped,
        }
    }

    fn sum(&self, keep: impl Fn(TrialState) -> bool) -> u32 {
        TrialState::ALL
            .into_iter()
            .filter(|s| keep(*s))
            .map(|s| self.get(s))
            .sum()
    }

    /// Trials that are done ([`TrialState::is_done`]).
    pub fn done(&self) -> u32 {
        self.sum(TrialState::is_done)
    }

    /// Trials a worker holds ([`TrialState::is_active`]).
    pub fn active(&self) -> u32 {
        self.sum(TrialState::is_active)
    }

    /// Trials waiting for a worker ([`TrialState::is_queued`]).
    pub fn queued(&self) -> u32 {
        self.sum(TrialState::is_queued)
    }
}

/// How an attempt ended, without its payload: what the store records per attempt and what logs
/// and metrics name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// Trained and measured.
    Succeeded,
    /// Did not finish.
    Failed,
    /// Stopped by its worker's shutdown.
    Preempted,
    /// Stopped at a rung by a stopping rule.
    Stopped,
}

impl OutcomeKind {
    /// The name stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Succeeded => "succeeded",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Preempted => "preempted",
            OutcomeKind::Stopped => "stopped",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

    #[test]
    fn states_round_trip_on_the_wire_and_unspecified_is_refused() {
        for state in TrialState::ALL {
            assert_eq!(TrialState::from_wire(state.to_wire(), "state").unwrap(), state);
        }
        for bad in [0, 9, -1] {
            let err = TrialState::from_wire(bad, "trials.state").unwrap_err().to_string();
            assert!(err.contains("trials.state") && err.contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn every_state_is_exactly_one_of_queued_active_done() {
        for state in TrialState::ALL {
            let kinds = [state.is_queued(), state.is_active(), state.is_done()];
            assert_eq!(kinds.iter().filter(|k| **k).count(), 1, "{state}");
        }
        let mut counts = pb::StateCounts::default();
        for (n, state) in TrialState::ALL.into_iter().enumerate() {
            *counts.get_mut(state) = 1 << n;
        }
        assert_eq!(counts.queued(), 1 + (1 << 5));
        assert_eq!(counts.active(), (1 << 1) + (1 << 2));
        assert_eq!(counts.done(), (1 << 3) + (1 << 4) + (1 << 6) + (1 << 7));
    }
}
