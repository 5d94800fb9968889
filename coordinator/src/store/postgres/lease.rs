//! The lease state machine on PostgreSQL: [`PgLeaseOps`], the worker writes over an open
//! transaction, and lease expiry. The SQLite backend's statements, with the row locks that
//! several coordinators on one database need: a lease takes its trials with
//! `FOR UPDATE SKIP LOCKED` (two replicas never take the same one and never wait for each
//! other), a report locks its trial's row before it checks the lease token (fencing), and an
//! expiry pass skips rows another replica is expiring.

use convsweep_proto::{FieldError, Outcome, TrialId, TrialState, pb};

use super::conn::{Session, u32_of};
use crate::error::{Error, Result};
use crate::store::lease::{self, Completed, Expired, Granted, LeaseOps, LeasePolicy, new_token, state_of};

/// The worker writes inside one open transaction, at one clock reading.
pub(super) struct PgLeaseOps<'s, 'c> {
    pub(super) s: &'s mut Session<'c>,
    pub(super) policy: LeasePolicy,
    pub(super) now: i64,
}

impl LeaseOps for PgLeaseOps<'_, '_> {
    fn begin_write(&mut self) -> Result<()> {
        self.s.batch("SAVEPOINT write")
    }

    fn end_write(&mut self, keep: bool) -> Result<()> {
        if !keep {
            self.s.batch("ROLLBACK TO SAVEPOINT write")?;
        }
        self.s.batch("RELEASE SAVEPOINT write")
    }

    fn lease(&mut self, worker_id: &str, max: u32) -> Result<Granted> {
        lease(self.s, self.policy, worker_id, max, self.now)
    }

    fn heartbeat(&mut self, worker_id: &str, leases: &[pb::LeaseRef]) -> Result<Vec<pb::LeaseStatus>> {
        heartbeat(self.s, self.policy, worker_id, leases, self.now)
    }

    fn report_epochs(
        &mut self,
        worker_id: &str,
        trial_id: &str,
        token: &str,
        epochs: &[pb::EpochMetrics],
    ) -> Result<()> {
        report_epochs(self.s, self.policy, worker_id, trial_id, token, epochs, self.now)
    }

    fn complete(&mut self, worker_id: &str, trial_id: &str, token: &str, outcome: &Outcome) -> Result<Completed> {
        complete(self.s, self.policy, worker_id, trial_id, token, outcome, self.now)
    }
}

/// The first sweep `trial_id` was linked to (a trial shared by sweeps is leased once for all).
pub(super) fn first_sweep(s: &mut Session<'_>, trial_id: &str) -> Result<String> {
    Ok(s.one(
        "SELECT sweep_id FROM sweep_trials WHERE trial_id = $1 ORDER BY link LIMIT 1",
        &[&trial_id],
    )?
    .get(0))
}

fn unknown_worker(worker_id: &str) -> Error {
    Error::NotFound(format!(
        "unknown worker {worker_id}: register first (the coordinator may have been reset)"
    ))
}

fn touch_worker(s: &mut Session<'_>, worker_id: &str, now: i64) -> Result<()> {
    if s.exec(
        "UPDATE workers SET last_seen_ms = $2 WHERE id = $1",
        &[&worker_id, &now],
    )? == 0
    {
        return Err(unknown_worker(worker_id));
    }
    Ok(())
}

/// A worker's registered slots less the leases it holds.
fn free_slots(s: &mut Session<'_>, worker_id: &str) -> Result<u32> {
    let slots: i64 = s
        .opt("SELECT slots FROM workers WHERE id = $1", &[&worker_id])?
        .ok_or_else(|| unknown_worker(worker_id))?
        .get(0);
    let held: i64 = s
        .one(
            "SELECT COUNT(*) FROM trials WHERE worker_id = $1 AND state IN ('leased', 'running')",
            &[&worker_id],
        )?
        .get(0);
    u32_of(slots.saturating_sub(held).max(0), "free slots")
}

/// The epochs a trial's spec trains (`train.epochs`), read when it is leased.
fn spec_epochs(spec_json: &str) -> Option<i64> {
    let spec: serde_json::Value = serde_json::from_str(spec_json).ok()?;
    spec.get("train")?.get("epochs")?.as_i64()
}

fn lease(s: &mut Session<'_>, policy: LeasePolicy, worker_id: &str, max: u32, now: i64) -> Result<Granted> {
    let free = free_slots(s, worker_id)?;
    let picked = s.rows(
        "SELECT id, spec_json, attempt FROM trials WHERE state IN ('pending', 'preempted') \
         ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        &[&i64::from(max.min(free))],
    )?;
    if picked.is_empty() {
        return Ok(Granted {
            leases: vec![],
            free_slots: free,
        });
    }
    touch_worker(s, worker_id, now)?;
    let mut leases = Vec::with_capacity(picked.len());
    for r in picked {
        let (trial_id, spec_json, attempt): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let attempt = attempt + 1;
        let token = new_token("l-");
        let deadline = now + policy.lease_timeout_ms;
        let epochs = spec_epochs(&spec_json);
        s.exec(
            "UPDATE trials SET state = 'leased', attempt = $2, lease_token = $3, worker_id = $4, lease_deadline_ms = $5, \
             lease_heard = FALSE, planned_epochs = $6 WHERE id = $1",
            &[&trial_id, &attempt, &token, &worker_id, &deadline, &epochs],
        )?;
        s.exec(
            "INSERT INTO attempts (trial_id, attempt, worker_id, lease_token, started_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&trial_id, &attempt, &worker_id, &token, &now],
        )?;
        let sweep_id = first_sweep(s, &trial_id)?;
        leases.push(pb::TrialLease {
            trial_id,
            sweep_id,
            spec_json,
            attempt: u32_of(attempt, "attempt")?,
            lease_token: token,
        });
    }
    Ok(Granted {
        leases,
        free_slots: free,
    })
}

/// An active lease as [`check_lease`] found it.
struct Held {
    attempt: i64,
    /// The epochs its trial trains.
    planned: Option<i64>,
    /// The rung a stopping rule stopped its configuration at (`trials.stop_rung`).
    stop_rung: Option<i64>,
}

impl Held {
    /// The epochs the trial trains: a stored spec without them is corrupt.
    fn planned(&self, trial_id: &str) -> Result<u32> {
        self.planned
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::Corrupt(format!("stored spec of trial {trial_id} has no train.epochs")))
    }
}

/// Checks that `token` is the current token of an active lease on `trial_id`, with the trial's
/// row locked until the transaction ends: no other replica's write to it comes between this
/// check and the write it guards.
fn check_lease(s: &mut Session<'_>, trial_id: &str, token: &str) -> Result<Held> {
    let found = s.opt(
        "SELECT state, lease_token, attempt, worker_id, \
         COALESCE(planned_epochs, (spec_json::json -> 'train' ->> 'epochs')::bigint), stop_rung \
         FROM trials WHERE id = $1 FOR UPDATE",
        &[&trial_id],
    )?;
    let Some(r) = found else {
        return Err(Error::NotFound(format!("unknown trial {trial_id}")));
    };
    let (state, current, holder): (String, Option<String>, Option<String>) = (r.get(0), r.get(1), r.get(3));
    let held = Held {
        attempt: r.get(2),
        planned: r.get(4),
        stop_rung: r.get(5),
    };
    let state = state_of(state)?;
    if current.as_deref() != Some(token) || !state.is_active() {
        return Err(Error::StaleLease(format!(
            "trial {trial_id} is {state} at attempt {}{}; this report's lease is no longer current",
            held.attempt,
            holder.map(|w| format!(" (last leased to {w})")).unwrap_or_default()
        )));
    }
    Ok(held)
}

fn heartbeat(
    s: &mut Session<'_>,
    policy: LeasePolicy,
    worker_id: &str,
    leases: &[pb::LeaseRef],
    now: i64,
) -> Result<Vec<pb::LeaseStatus>> {
    touch_worker(s, worker_id, now)?;
    let deadline = now + policy.lease_timeout_ms;
    let mut out = Vec::with_capacity(leases.len());
    for l in leases {
        let directive = match check_lease(s, &l.trial_id, &l.lease_token) {
            Ok(held) => {
                s.exec(
                    "UPDATE trials SET lease_deadline_ms = $2, lease_heard = TRUE WHERE id = $1",
                    &[&l.trial_id, &deadline],
                )?;
                lease::active_directive(held.stop_rung)
            }
            Err(Error::StaleLease(_) | Error::NotFound(_)) => {
                let state: Option<String> = s
                    .opt("SELECT state FROM trials WHERE id = $1", &[&l.trial_id])?
                    .map(|r| r.get(0));
                if state.map(state_of).transpose()? == Some(TrialState::Cancelled) {
                    pb::LeaseDirective::Cancel
                } else {
                    pb::LeaseDirective::Lost
                }
            }
            Err(e) => return Err(e),
        };
        out.push(pb::LeaseStatus {
            trial_id: l.trial_id.clone(),
            directive: directive as i32,
            lease_token: l.lease_token.clone(),
        });
    }
    Ok(out)
}

fn report_epochs(
    s: &mut Session<'_>,
    policy: LeasePolicy,
    worker_id: &str,
    trial_id: &str,
    token: &str,
    epochs: &[pb::EpochMetrics],
    now: i64,
) -> Result<()> {
    touch_worker(s, worker_id, now)?;
    let held = check_lease(s, trial_id, token)?;
    let (attempt, planned) = (held.attempt, held.planned(trial_id)?);
    if let Some((i, e)) = epochs.iter().enumerate().find(|(_, e)| e.epoch > planned) {
        return Err(Error::InvalidArgument(FieldError::new(
            format!("epochs[{i}].epoch"),
            format!("trial {trial_id} trains {planned} epochs, got epoch {}", e.epoch),
        )));
    }
    for e in epochs {
        s.exec(
            "INSERT INTO epochs (trial_id, epoch, attempt, lr, train_loss, train_acc, test_loss, test_acc, seconds, \
             val_loss, val_acc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (trial_id, epoch) DO UPDATE SET attempt = excluded.attempt, lr = excluded.lr, \
             train_loss = excluded.train_loss, train_acc = excluded.train_acc, test_loss = excluded.test_loss, \
             test_acc = excluded.test_acc, seconds = excluded.seconds, val_loss = excluded.val_loss, \
             val_acc = excluded.val_acc",
            &[
                &trial_id,
                &i64::from(e.epoch),
                &attempt,
                &e.lr,
                &e.train_loss,
                &e.train_acc,
                &e.test_loss,
                &e.test_acc,
                &e.seconds,
                &e.val_loss,
                &e.val_acc,
            ],
        )?;
    }
    // A report renews the lease like a heartbeat, but at most once per tenth of the timeout.
    let deadline = now + policy.lease_timeout_ms;
    s.exec(
        "UPDATE trials SET state = 'running', lease_deadline_ms = $2, lease_heard = TRUE \
         WHERE id = $1 AND (state <> 'running' OR lease_deadline_ms < $3)",
        &[&trial_id, &deadline, &(deadline - policy.lease_timeout_ms / 10)],
    )?;
    Ok(())
}

/// The attempts of a trial that count against `max_attempts`.
fn failed_attempts(s: &mut Session<'_>, trial_id: &str) -> Result<u32> {
    let n: i64 = s
        .one(
            "SELECT COUNT(*) FROM attempts a JOIN trials t ON t.id = a.trial_id \
             WHERE a.trial_id = $1 AND a.outcome IN ('expired', 'failed') AND a.attempt > t.resume_floor",
            &[&trial_id],
        )?
        .get(0);
    u32_of(n, "failed attempts")
}

/// Stores a result's robustness rows and filter statistics (replacing an earlier attempt's).
fn insert_evaluations(s: &mut Session<'_>, trial_id: &str, r: &pb::TrialResult) -> Result<()> {
    s.exec("DELETE FROM robustness WHERE trial_id = $1", &[&trial_id])?;
    s.exec("DELETE FROM filters WHERE trial_id = $1", &[&trial_id])?;
    for x in &r.robustness {
        s.exec(
            "INSERT INTO robustness (trial_id, kind, name, eps, severity, accuracy, images) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (trial_id, kind, name, eps, severity) DO UPDATE SET accuracy = excluded.accuracy, \
             images = excluded.images",
            &[
                &trial_id,
                &x.kind,
                &x.name,
                &x.eps,
                &i64::from(x.severity),
                &x.accuracy,
                &i64::from(x.images),
            ],
        )?;
    }
    for f in &r.filters {
        let heatmap = serde_json::to_string(&f.heatmap).unwrap_or_else(|_| "[]".into());
        s.exec(
            "INSERT INTO filters (trial_id, stage, layer, kernel_size, filters, fve, fve_norm, sparsity, \
             orthogonality, heatmap, folded) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (trial_id, stage, layer) DO UPDATE SET kernel_size = excluded.kernel_size, \
             filters = excluded.filters, fve = excluded.fve, fve_norm = excluded.fve_norm, \
             sparsity = excluded.sparsity, orthogonality = excluded.orthogonality, heatmap = excluded.heatmap, \
             folded = excluded.folded",
            &[
                &trial_id,
                &f.stage,
                &f.layer,
                &i64::from(f.kernel_size),
                &(f.filters as i64),
                &f.fve,
                &f.fve_norm,
                &f.sparsity,
                &f.orthogonality,
                &heatmap,
                &f.folded,
            ],
        )?;
    }
    Ok(())
}

/// After an attempt expired or failed retryably: lease again, or give up with every reason.
fn retry_or_fail(policy: LeasePolicy, s: &mut Session<'_>, trial_id: &str, now: i64) -> Result<TrialState> {
    let failures = failed_attempts(s, trial_id)?;
    if failures < policy.max_attempts {
        s.exec(
            "UPDATE trials SET state = 'pending', lease_token = NULL, lease_deadline_ms = NULL WHERE id = $1",
            &[&trial_id],
        )?;
        return Ok(TrialState::Pending);
    }
    let reasons: Vec<String> = s
        .rows(
            "SELECT a.attempt, a.outcome, COALESCE(a.reason, '') FROM attempts a JOIN trials t ON t.id = a.trial_id \
             WHERE a.trial_id = $1 AND a.outcome IN ('expired', 'failed') AND a.attempt > t.resume_floor \
             ORDER BY a.attempt",
            &[&trial_id],
        )?
        .into_iter()
        .map(|r| {
            let (a, o, why): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
            format!("attempt {a} {o}: {why}")
        })
        .collect();
    let reason = format!("gave up after {failures} failed attempts: {}", reasons.join("; "));
    s.exec(
        "UPDATE trials SET state = 'failed', lease_token = NULL, lease_deadline_ms = NULL, reason = $2, \
         finished_ms = $3 WHERE id = $1",
        &[&trial_id, &reason, &now],
    )?;
    Ok(TrialState::Failed)
}

fn complete(
    s: &mut Session<'_>,
    policy: LeasePolicy,
    worker_id: &str,
    trial_id: &str,
    token: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<Completed> {
    touch_worker(s, worker_id, now)?;
    // Locked first, like every write to a trial: a duplicate is decided on the settled row.
    let current: Option<String> = s
        .opt("SELECT state FROM trials WHERE id = $1 FOR UPDATE", &[&trial_id])?
        .map(|r| r.get(0));
    let recorded: Option<Option<String>> = s
        .opt(
            "SELECT outcome FROM attempts WHERE trial_id = $1 AND lease_token = $2",
            &[&trial_id, &token],
        )?
        .map(|r| r.get(0));
    // Only an outcome that a completion recorded makes this a duplicate; an attempt that
    // expired was never completed, and its late report is stale (fenced below).
    if let (Some(Some(previous)), Some(state)) = (&recorded, current)
        && !matches!(previous.as_str(), "expired" | "unheard")
    {
        return Ok(Completed {
            duplicate: true,
            state: state_of(state)?,
            sweep_id: first_sweep(s, trial_id)?,
        });
    }
    let held = check_lease(s, trial_id, token)?;
    let attempt = held.attempt;
    let stopped_reason = lease::stopped_reason(trial_id, held.stop_rung, outcome)?;
    if let Outcome::Succeeded(r) = outcome {
        let planned = held.planned(trial_id)?;
        if r.best_epoch > planned {
            return Err(Error::InvalidArgument(FieldError::new(
                "result.best_epoch",
                format!("trial {trial_id} trains {planned} epochs, got {}", r.best_epoch),
            )));
        }
    }
    s.exec(
        "UPDATE attempts SET ended_ms = $3, outcome = $4, reason = $5 WHERE trial_id = $1 AND attempt = $2",
        &[&trial_id, &attempt, &now, &outcome.kind().as_str(), &outcome.reason()],
    )?;
    let state = match outcome {
        Outcome::Succeeded(r) => {
            let times = r.times.unwrap_or_default();
            s.exec(
                "INSERT INTO results (trial_id, attempt, worker_id, final_train_loss, final_train_acc, \
                 final_test_loss, final_test_acc, best_test_acc, best_epoch, params_total, params_learnable, \
                 flops_per_image, wall_seconds, peak_memory_bytes, device, completed_ms, eval_error, eval_seconds, \
                 conv_algorithm, startup_seconds, train_seconds, epoch_eval_seconds, checkpoint_seconds, \
                 report_seconds, train_images) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                 $20, $21, $22, $23, $24, $25) \
                 ON CONFLICT (trial_id) DO UPDATE SET attempt = excluded.attempt, worker_id = excluded.worker_id, \
                 final_train_loss = excluded.final_train_loss, final_train_acc = excluded.final_train_acc, \
                 final_test_loss = excluded.final_test_loss, final_test_acc = excluded.final_test_acc, \
                 best_test_acc = excluded.best_test_acc, best_epoch = excluded.best_epoch, \
                 params_total = excluded.params_total, params_learnable = excluded.params_learnable, \
                 flops_per_image = excluded.flops_per_image, wall_seconds = excluded.wall_seconds, \
                 peak_memory_bytes = excluded.peak_memory_bytes, device = excluded.device, \
                 completed_ms = excluded.completed_ms, eval_error = excluded.eval_error, \
                 eval_seconds = excluded.eval_seconds, conv_algorithm = excluded.conv_algorithm, \
                 startup_seconds = excluded.startup_seconds, train_seconds = excluded.train_seconds, \
                 epoch_eval_seconds = excluded.epoch_eval_seconds, checkpoint_seconds = excluded.checkpoint_seconds, \
                 report_seconds = excluded.report_seconds, train_images = excluded.train_images",
                &[
                    &trial_id,
                    &attempt,
                    &worker_id,
                    &r.final_train_loss,
                    &r.final_train_acc,
                    &r.final_test_loss,
                    &r.final_test_acc,
                    &r.best_test_acc,
                    &i64::from(r.best_epoch),
                    &(r.params_total as i64),
                    &(r.params_learnable as i64),
                    &(r.flops_per_image as i64),
                    &r.wall_seconds,
                    &(r.peak_memory_bytes as i64),
                    &r.device,
                    &now,
                    &r.eval_error,
                    &r.eval_seconds,
                    &r.conv_algorithm,
                    &times.startup_seconds,
                    &times.train_seconds,
                    &times.epoch_eval_seconds,
                    &times.checkpoint_seconds,
                    &times.report_seconds,
                    &(times.train_images as i64),
                ],
            )?;
            insert_evaluations(s, trial_id, r)?;
            s.exec(
                "UPDATE trials SET state = 'succeeded', lease_token = NULL, lease_deadline_ms = NULL, reason = NULL, \
                 finished_ms = $2 WHERE id = $1",
                &[&trial_id, &now],
            )?;
            TrialState::Succeeded
        }
        Outcome::Failed { retryable: true, .. } => retry_or_fail(policy, s, trial_id, now)?,
        Outcome::Failed {
            retryable: false,
            reason,
        } => {
            s.exec(
                "UPDATE trials SET state = 'failed', lease_token = NULL, lease_deadline_ms = NULL, reason = $2, \
                 finished_ms = $3 WHERE id = $1",
                &[
                    &trial_id,
                    &format!("attempt {attempt} failed (not retryable): {reason}"),
                    &now,
                ],
            )?;
            TrialState::Failed
        }
        Outcome::Preempted { .. } => {
            s.exec(
                "UPDATE trials SET state = 'preempted', lease_token = NULL, lease_deadline_ms = NULL WHERE id = $1",
                &[&trial_id],
            )?;
            TrialState::Preempted
        }
        Outcome::Stopped { .. } => {
            s.exec(
                "UPDATE trials SET state = 'stopped', lease_token = NULL, lease_deadline_ms = NULL, reason = $2, \
                 finished_ms = $3 WHERE id = $1",
                &[&trial_id, &stopped_reason, &now],
            )?;
            TrialState::Stopped
        }
    };
    Ok(Completed {
        duplicate: false,
        state,
        sweep_id: first_sweep(s, trial_id)?,
    })
}

/// Returns every lease whose deadline passed to the queue (or fails it after too many
/// attempts), inside the caller's transaction. Rows another replica is expiring (or writing)
/// are skipped: that replica settles them, and the next pass looks again.
pub(super) fn expire_leases(s: &mut Session<'_>, policy: LeasePolicy, now: i64) -> Result<Vec<Expired>> {
    let expired = s.rows(
        "SELECT id, attempt, worker_id, lease_deadline_ms, lease_heard FROM trials \
         WHERE state IN ('leased', 'running') AND lease_deadline_ms < $1 FOR UPDATE SKIP LOCKED",
        &[&now],
    )?;
    let mut touched = Vec::with_capacity(expired.len());
    for r in expired {
        let (trial_id, attempt, worker, deadline, heard): (String, i64, Option<String>, i64, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let worker = worker.as_deref().unwrap_or("?");
        let silent = (now - deadline + policy.lease_timeout_ms) as f64 / 1000.0;
        let (outcome, reason) = if heard {
            (
                "expired",
                format!("lease expired: no heartbeat from worker {worker} for {silent:.0} s"),
            )
        } else {
            (
                "unheard",
                format!(
                    "lease expired unconfirmed: worker {worker} never named it in a heartbeat or report in {silent:.0} s \
                     (not counted as an attempt)"
                ),
            )
        };
        s.exec(
            "UPDATE attempts SET ended_ms = $3, outcome = $4, reason = $5 WHERE trial_id = $1 AND attempt = $2",
            &[&trial_id, &attempt, &now, &outcome, &reason],
        )?;
        let state = retry_or_fail(policy, s, &trial_id, now)?;
        touched.push(Expired {
            trial_id: TrialId::parse(&trial_id).map_err(|e| Error::Corrupt(format!("stored trial id: {e}")))?,
            state,
            sweep_id: first_sweep(s, &trial_id)?,
        });
    }
    Ok(touched)
}
