//! Conversions between wire messages (`pb`) and domain types, with validation. The one place
//! where a malformed message is turned into an error that names the field.

use crate::pb;
use crate::results::{EpochRow, FilterRow, Results, RobustnessRow, TrialRow};
use crate::spec::{FieldError, MAX_EPOCHS, SweepId, TrialId, TrialSpec};
use crate::text;

/// A trial handed to a worker, with its spec parsed and checked against its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The trial.
    pub trial_id: TrialId,
    /// The sweep that asked for it.
    pub sweep_id: SweepId,
    /// What to train.
    pub spec: TrialSpec,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Fencing token for every report about this attempt.
    pub token: String,
}

impl TryFrom<pb::TrialLease> for Lease {
    type Error = FieldError;

    fn try_from(m: pb::TrialLease) -> Result<Self, Self::Error> {
        let trial_id = TrialId::parse(&m.trial_id)?;
        let actual = TrialId::of_canonical_json(&m.spec_json);
        if actual != trial_id {
            return Err(FieldError::new(
                "spec_json",
                format!(
                    "hashes to {actual}, not to the trial id {trial_id}: the spec was altered in transit or by a different convsweep version"
                ),
            ));
        }
        let spec = TrialSpec::from_json(&m.spec_json)?;
        spec.validate()?;
        if m.attempt == 0 {
            return Err(FieldError::new("attempt", "must be at least 1"));
        }
        if m.lease_token.is_empty() {
            return Err(FieldError::new("lease_token", "must not be empty"));
        }
        Ok(Lease {
            trial_id,
            sweep_id: SweepId::parse(&m.sweep_id)?,
            spec,
            attempt: m.attempt,
            token: m.lease_token,
        })
    }
}

impl From<&Lease> for pb::TrialLease {
    fn from(l: &Lease) -> Self {
        pb::TrialLease {
            trial_id: l.trial_id.to_string(),
            sweep_id: l.sweep_id.to_string(),
            spec_json: l.spec.canonical_json(),
            attempt: l.attempt,
            lease_token: l.token.clone(),
        }
    }
}

impl From<&Lease> for pb::LeaseRef {
    fn from(l: &Lease) -> Self {
        pb::LeaseRef {
            trial_id: l.trial_id.to_string(),
            lease_token: l.token.clone(),
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per finished attempt: its size does not matter
pub enum Outcome {
    /// Trained and measured.
    Succeeded(pb::TrialResult),
    /// Did not finish; `retryable` says whether another attempt could succeed.
    Failed {
        /// Whether another attempt of the same spec may succeed.
        retryable: bool,
        /// Why, for people.
        reason: String,
    },
    /// Stopped by the worker's shutdown; should run again elsewhere.
    Preempted {
        /// Why, for people.
        reason: String,
    },
    /// Stopped on the coordinator's STOP directive (a stopping rule) after `epochs` epochs.
    Stopped {
        /// Epochs finished and reported.
        epochs: u32,
    },
}

impl Outcome {
    /// How the attempt ended, without the payload.
    pub fn kind(&self) -> crate::state::OutcomeKind {
        use crate::state::OutcomeKind;
        match self {
            Outcome::Succeeded(_) => OutcomeKind::Succeeded,
            Outcome::Failed { .. } => OutcomeKind::Failed,
            Outcome::Preempted { .. } => OutcomeKind::Preempted,
            Outcome::Stopped { .. } => OutcomeKind::Stopped,
        }
    }

    /// Why it did not succeed (none for a success).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded(_) | Outcome::Stopped { .. } => None,
            Outcome::Failed { reason, .. } | Outcome::Preempted { reason } => Some(reason),
        }
    }
}

impl TryFrom<Option<pb::complete_request::Outcome>> for Outcome {
    type Error = FieldError;

    fn try_from(m: Option<pb::complete_request::Outcome>) -> Result<Self, Self::Error> {
        use pb::complete_request::Outcome as O;
        match m {
            None => Err(FieldError::new(
                "outcome",
                "missing: one of succeeded, failed, preempted, stopped is required",
            )),
            Some(O::Succeeded(s)) => {
                let mut result = s.result.ok_or_else(|| FieldError::new("succeeded.result", "missing"))?;
                validate_result(&result)?;
                result.eval_error = text::reason(&result.eval_error);
                Ok(Outcome::Succeeded(result))
            }
            Some(O::Failed(f)) => Ok(Outcome::Failed {
                retryable: f.retryable,
                reason: text::reason(&f.reason),
            }),
            Some(O::Preempted(p)) => Ok(Outcome::Preempted {
                reason: text::reason(&p.reason),
            }),
            Some(O::Stopped(s)) => Ok(Outcome::Stopped { epochs: s.epochs }),
        }
    }
}

/// Checks an outcome as the coordinator will: a worker runs this before it sends one, so
/// that a result the coordinator would refuse fails its trial at once, naming the field.
pub fn validate_outcome(o: &Outcome) -> Result<(), FieldError> {
    match o {
        Outcome::Succeeded(r) => validate_result(r),
        Outcome::Failed { .. } | Outcome::Preempted { .. } | Outcome::Stopped { .. } => Ok(()),
    }
}

impl From<Outcome> for pb::complete_request::Outcome {
    fn from(o: Outcome) -> Self {
        use pb::complete_request::Outcome as O;
        match o {
            Outcome::Succeeded(result) => O::Succeeded(pb::Succeeded { result: Some(result) }),
            Outcome::Failed { retryable, reason } => O::Failed(pb::Failed { retryable, reason }),
            Outcome::Preempted { reason } => O::Preempted(pb::Preempted { reason }),
            Outcome::Stopped { epochs } => O::Stopped(pb::Stopped { epochs }),
        }
    }
}

fn accuracy(field: impl Into<String>, v: f64) -> Result<(), FieldError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("an accuracy in [0, 1], got {v}")))
    }
}

fn finite(field: impl Into<String>, v: f64) -> Result<(), FieldError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("must be finite, got {v}")))
    }
}

/// A duration or a size: finite and not negative.
fn not_negative(field: impl Into<String>, v: f64) -> Result<(), FieldError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("finite and not negative, got {v}")))
    }
}

/// At most `max` entries in a repeated field.
fn count(field: &str, n: usize, max: usize) -> Result<(), FieldError> {
    if n > max {
        return Err(FieldError::new(field, format!("at most {max} entries, got {n}")));
    }
    Ok(())
}

/// Most robustness rows one result may carry (attacks x radii + corruptions x severities).
pub const MAX_ROBUSTNESS_ROWS: usize = 4096;
/// Most filter-statistics rows one result may carry (2 stages x the layers of a deep net).
pub const MAX_FILTER_ROWS: usize = 4096;
/// Largest kernel side whose heatmap a filter row may carry.
pub const MAX_HEATMAP_SIDE: u32 = 63;

fn validate_result(r: &pb::TrialResult) -> Result<(), FieldError> {
    accuracy("result.final_test_acc", r.final_test_acc)?;
    accuracy("result.final_train_acc", r.final_train_acc)?;
    accuracy("result.best_test_acc", r.best_test_acc)?;
    for (field, v) in [
        ("final_train_loss", r.final_train_loss),
        ("final_test_loss", r.final_test_loss),
    ] {
        finite(format!("result.{field}"), v)?;
    }
    not_negative("result.wall_seconds", r.wall_seconds)?;
    not_negative("result.eval_seconds", r.eval_seconds)?;
    if r.best_epoch > MAX_EPOCHS {
        return Err(FieldError::new(
            "result.best_epoch",
            format!(
                "at most {MAX_EPOCHS} (the most epochs a trial has), got {}",
                r.best_epoch
            ),
        ));
    }
    text::name("result.device", &r.device)?;
    text::name("result.conv_algorithm", &r.conv_algorithm)?;
    count("result.robustness", r.robustness.len(), MAX_ROBUSTNESS_ROWS)?;
    count("result.filters", r.filters.len(), MAX_FILTER_ROWS)?;
    if let Some(t) = &r.times {
        for (field, v) in [
            ("startup_seconds", t.startup_seconds),
            ("train_seconds", t.train_seconds),
            ("epoch_eval_seconds", t.epoch_eval_seconds),
            ("checkpoint_seconds", t.checkpoint_seconds),
            ("report_seconds", t.report_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(FieldError::new(
                    format!("result.times.{field}"),
                    format!("seconds, finite and not negative; got {v}"),
                ));
            }
        }
    }
    for (i, x) in r.robustness.iter().enumerate() {
        accuracy(format!("result.robustness[{i}].accuracy"), x.accuracy)?;
        if !(0.0..=1.0).contains(&x.eps) {
            return Err(FieldError::new(
                format!("result.robustness[{i}].eps"),
                format!("a radius on [0, 1] inputs: 0 to 1, got {}", x.eps),
            ));
        }
        if x.severity > 5 {
            return Err(FieldError::new(
                format!("result.robustness[{i}].severity"),
                format!("0 to 5, got {}", x.severity),
            ));
        }
        text::name(format!("result.robustness[{i}].name"), &x.name)?;
        if !matches!(x.kind.as_str(), "clean" | "fgsm" | "pgd" | "corruption") {
            return Err(FieldError::new(
                format!("result.robustness[{i}].kind"),
                format!("one of clean, fgsm, pgd, corruption; got {:?}", x.kind),
            ));
        }
    }
    for (i, f) in r.filters.iter().enumerate() {
        let at = |name: &str| format!("result.filters[{i}].{name}");
        finite(at("fve"), f.fve)?;
        finite(at("sparsity"), f.sparsity)?;
        finite(at("orthogonality"), f.orthogonality)?;
        if let Some(n) = f.fve_norm {
            finite(at("fve_norm"), n)?;
        }
        text::name(at("layer"), &f.layer)?;
        if f.kernel_size > MAX_HEATMAP_SIDE {
            return Err(FieldError::new(
                at("kernel_size"),
                format!("at most {MAX_HEATMAP_SIDE}, got {}", f.kernel_size),
            ));
        }
        let cells = (f.kernel_size * f.kernel_size) as usize;
        if !f.heatmap.is_empty() && f.heatmap.len() != cells {
            return Err(FieldError::new(
                at("heatmap"),
                format!("kernel_size^2 = {cells} values (or none), got {}", f.heatmap.len()),
            ));
        }
        if let Some(v) = f.heatmap.iter().find(|v| !v.is_finite()) {
            return Err(FieldError::new(at("heatmap"), format!("must be finite, got {v}")));
        }
        if !matches!(f.stage.as_str(), "init" | "final") {
            return Err(FieldError::new(
                at("stage"),
                format!("init or final, got {:?}", f.stage),
            ));
        }
    }
    Ok(())
}

/// Checks a batch of epoch metrics: epochs numbered from 1 to [`MAX_EPOCHS`] (the trial's own
/// epochs are the store's to check), losses, lr and seconds finite and not negative, accuracies
/// in [0, 1].
pub fn validate_epochs(epochs: &[pb::EpochMetrics]) -> Result<(), FieldError> {
    count("epochs", epochs.len(), MAX_EPOCHS as usize)?;
    for (i, e) in epochs.iter().enumerate() {
        if e.epoch == 0 || e.epoch > MAX_EPOCHS {
            return Err(FieldError::new(
                format!("epochs[{i}].epoch"),
                format!("epochs are numbered from 1 to at most {MAX_EPOCHS}, got {}", e.epoch),
            ));
        }
        for (field, v) in [
            ("lr", e.lr),
            ("train_loss", e.train_loss),
            ("test_loss", e.test_loss),
            ("seconds", e.seconds),
        ] {
            not_negative(format!("epochs[{i}].{field}"), v)?;
        }
        for (field, v) in [("train_acc", e.train_acc), ("test_acc", e.test_acc)] {
            accuracy(format!("epochs[{i}].{field}"), v)?;
        }
        if let Some(v) = e.val_loss {
            not_negative(format!("epochs[{i}].val_loss"), v)?;
        }
        if let Some(v) = e.val_acc {
            accuracy(format!("epochs[{i}].val_acc"), v)?;
        }
        if e.val_loss.is_some() != e.val_acc.is_some() {
            return Err(FieldError::new(
                format!("epochs[{i}].val_acc"),
                "val_loss and val_acc come together (both with a validation split, neither without)",
            ));
        }
    }
    Ok(())
}

/// An export row of a trial on the wire.
impl From<TrialRow> for pb::ExportTrial {
    fn from(r: TrialRow) -> Self {
        pb::ExportTrial {
            sweep_id: r.sweep_id,
            trial_id: r.trial_id,
            spec_json: r.spec.canonical_json(),
            state: r.state.to_wire(),
            attempts: r.attempts,
            reason: r.reason,
            worker_id: r.worker_id,
            result: r.result,
            stop_group: r.cell.as_ref().map(|c| c.group.clone()),
            stop_config: r.cell.as_ref().map(|c| c.config.clone()),
            stop_exempt: r.cell.as_ref().is_some_and(|c| c.exempt),
        }
    }
}

impl TryFrom<pb::ExportTrial> for TrialRow {
    type Error = FieldError;

    fn try_from(m: pb::ExportTrial) -> Result<Self, Self::Error> {
        Ok(TrialRow {
            spec: TrialSpec::from_json(&m.spec_json)
                .map_err(|e| FieldError::new(format!("trials.spec_json.{}", e.field), e.message))?,
            state: crate::state::TrialState::from_wire(m.state, "trials.state")?,
            sweep_id: m.sweep_id,
            trial_id: m.trial_id,
            attempts: m.attempts,
            reason: m.reason,
            worker_id: m.worker_id,
            result: m.result,
            cell: match (m.stop_group, m.stop_config) {
                (Some(group), Some(config)) => Some(crate::results::StopCell {
                    group,
                    config,
                    exempt: m.stop_exempt,
                }),
                _ => None,
            },
        })
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, FieldError> {
    v.ok_or_else(|| FieldError::new(field, "missing"))
}

/// Splits `results` into export chunks of about `budget` encoded bytes each (at least one row
/// per chunk): all trials first, then epochs, robustness, filter and decision rows.
pub fn export_chunks(results: Results, budget: usize) -> Vec<pb::ExportChunk> {
    use prost::Message;
    let mut chunks = Vec::new();
    let mut chunk = pb::ExportChunk::default();
    let mut size = 0usize;
    let mut push =
        |chunk: &mut pb::ExportChunk, size: &mut usize, len: usize, add: &mut dyn FnMut(&mut pb::ExportChunk)| {
            if *size > 0 && *size + len > budget {
                chunks.push(std::mem::take(chunk));
                *size = 0;
            }
            add(chunk);
            *size += len + 8;
        };
    for t in results.trials {
        let t = pb::ExportTrial::from(t);
        let len = t.encoded_len();
        let mut t = Some(t);
        push(&mut chunk, &mut size, len, &mut |c| c.trials.extend(t.take()));
    }
    for e in results.epochs {
        let e = pb::ExportEpoch {
            trial_id: e.trial_id,
            attempt: e.attempt,
            metrics: Some(e.metrics),
        };
        let len = e.encoded_len();
        let mut e = Some(e);
        push(&mut chunk, &mut size, len, &mut |c| c.epochs.extend(e.take()));
    }
    for r in results.robustness {
        let r = pb::ExportRobustness {
            trial_id: r.trial_id,
            result: Some(r.result),
        };
        let len = r.encoded_len();
        let mut r = Some(r);
        push(&mut chunk, &mut size, len, &mut |c| c.robustness.extend(r.take()));
    }
    for f in results.filters {
        let f = pb::ExportFilter {
            trial_id: f.trial_id,
            stats: Some(f.stats),
        };
        let len = f.encoded_len();
        let mut f = Some(f);
        push(&mut chunk, &mut size, len, &mut |c| c.filters.extend(f.take()));
    }
    for d in results.decisions {
        let len = d.encoded_len();
        let mut d = Some(d);
        push(&mut chunk, &mut size, len, &mut |c| c.decisions.extend(d.take()));
    }
    if size > 0 || chunks.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// Adds the rows of one export chunk to `results`, naming what does not fit.
pub fn add_export_chunk(results: &mut Results, chunk: pb::ExportChunk) -> Result<(), FieldError> {
    for t in chunk.trials {
        results.trials.push(TrialRow::try_from(t)?);
    }
    for e in chunk.epochs {
        results.epochs.push(EpochRow {
            trial_id: e.trial_id,
            attempt: e.attempt,
            metrics: required(e.metrics, "epochs.metrics")?,
        });
    }
    for r in chunk.robustness {
        results.robustness.push(RobustnessRow {
            trial_id: r.trial_id,
            result: required(r.result, "robustness.result")?,
        });
    }
    for f in chunk.filters {
        results.filters.push(FilterRow {
            trial_id: f.trial_id,
            stats: required(f.stats, "filters.stats")?,
        });
    }
    results.decisions.extend(chunk.decisions);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::trial::tests::demo_spec;

    fn wire_lease() -> pb::TrialLease {
        let mut spec = demo_spec();
        spec.canonicalize();
        pb::TrialLease {
            trial_id: spec.id().to_string(),
            sweep_id: "demo".into(),
            spec_json: spec.canonical_json(),
            attempt: 1,
            lease_token: "t".into(),
        }
    }

    #[test]
    fn lease_round_trips_and_checks_the_hash() {
        let lease = Lease::try_from(wire_lease()).unwrap();
        assert_eq!(lease.spec.model.kernel_size, 3);
        let mut tampered = wire_lease();
        tampered.spec_json = tampered.spec_json.replace(r#""seed":7"#, r#""seed":8"#);
        let err = Lease::try_from(tampered).unwrap_err();
        assert_eq!(err.field, "spec_json");
    }

    #[test]
    fn outcome_requires_a_result() {
        use pb::complete_request::Outcome as O;
        let err = Outcome::try_from(Some(O::Succeeded(pb::Succeeded { result: None }))).unwrap_err();
        assert_eq!(err.field, "succeeded.result");
        assert_eq!(Outcome::try_from(None).unwrap_err().field, "outcome");
        let bad = pb::TrialResult {
            final_test_acc: 1.5,
            ..Default::default()
        };
        let err = Outcome::try_from(Some(O::Succeeded(pb::Succeeded { result: Some(bad) }))).unwrap_err();
        assert_eq!(err.field, "result.final_test_acc");
        let negative_time = pb::TrialResult {
            times: Some(pb::TrialTimes {
                train_seconds: -1.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = Outcome::try_from(Some(O::Succeeded(pb::Succeeded {
            result: Some(negative_time),
        })))
        .unwrap_err();
        assert_eq!(err.field, "result.times.train_seconds");
        let nan_filter = pb::TrialResult {
            filters: vec![pb::FilterStats {
                stage: "final".into(),
                fve: f64::NAN,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = Outcome::try_from(Some(O::Succeeded(pb::Succeeded {
            result: Some(nan_filter),
        })))
        .unwrap_err();
        assert_eq!(err.field, "result.filters[0].fve");
        let bad_kind = pb::TrialResult {
            robustness: vec![pb::RobustnessResult {
                kind: "magic".into(),
                accuracy: 0.5,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = Outcome::try_from(Some(O::Succeeded(pb::Succeeded { result: Some(bad_kind) }))).unwrap_err();
        assert_eq!(err.field, "result.robustness[0].kind");
    }
}
