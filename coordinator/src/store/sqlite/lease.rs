//! The lease state machine on SQLite: [`SqliteLeaseOps`], the worker writes over an open
//! transaction (group commit batches many into one), and lease expiry. The transitions and
//! the refusal rule are [`crate::store::lease`]'s.

use convsweep_proto::{Outcome, TrialId, TrialState, pb};
use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use crate::error::{Error, Result};
use convsweep_proto::FieldError;

pub(super) use crate::store::lease::new_token;
use crate::store::lease::{self, Completed, Expired, Granted, LeaseOps, LeasePolicy, state_of};

/// The worker writes inside one open SQLite transaction, at one clock reading.
pub(super) struct SqliteLeaseOps<'a> {
    pub(super) tx: &'a Connection,
    pub(super) policy: LeasePolicy,
    pub(super) now: i64,
}

impl LeaseOps for SqliteLeaseOps<'_> {
    fn begin_write(&mut self) -> Result<()> {
        exec(self.tx, "SAVEPOINT write", [])?;
        Ok(())
    }

    fn end_write(&mut self, keep: bool) -> Result<()> {
        if !keep {
            exec(self.tx, "ROLLBACK TO write", [])?;
        }
        exec(self.tx, "RELEASE write", [])?;
        Ok(())
    }

    fn lease(&mut self, worker_id: &str, max: u32) -> Result<Granted> {
        lease(self.tx, self.policy, worker_id, max, self.now)
    }

    fn heartbeat(&mut self, worker_id: &str, leases: &[pb::LeaseRef]) -> Result<Vec<pb::LeaseStatus>> {
        heartbeat(self.tx, self.policy, worker_id, leases, self.now)
    }

    fn report_epochs(
        &mut self,
        worker_id: &str,
        trial_id: &str,
        token: &str,
        epochs: &[pb::EpochMetrics],
    ) -> Result<()> {
        report_epochs(self.tx, self.policy, worker_id, trial_id, token, epochs, self.now)
    }

    fn complete(&mut self, worker_id: &str, trial_id: &str, token: &str, outcome: &Outcome) -> Result<Completed> {
        complete(self.tx, self.policy, worker_id, trial_id, token, outcome, self.now)
    }
}

/// Runs a cached statement.
pub(super) fn exec(c: &Connection, sql: &str, p: impl Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// One row of a cached statement.
pub(super) fn row<T>(
    c: &Connection,
    sql: &str,
    p: impl Params,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// The first sweep `trial_id` belongs to (a trial shared by sweeps is leased once for all).
fn first_sweep(tx: &Connection, trial_id: &str) -> Result<String> {
    Ok(row(
        tx,
        "SELECT sweep_id FROM sweep_trials WHERE trial_id = ?1 ORDER BY rowid LIMIT 1",
        [trial_id],
        |r| r.get(0),
    )?)
}

fn unknown_worker(worker_id: &str) -> Error {
    Error::NotFound(format!(
        "unknown worker {worker_id}: register first (the coordinator may have been reset)"
    ))
}

fn touch_worker(tx: &Connection, worker_id: &str, now: i64) -> Result<()> {
    if exec(
        tx,
        "UPDATE workers SET last_seen_ms = ?2 WHERE id = ?1",
        params![worker_id, now],
    )? == 0
    {
        return Err(unknown_worker(worker_id));
    }
    Ok(())
}

/// A worker's registered slots less the leases it holds.
fn free_slots(tx: &Connection, worker_id: &str) -> Result<u32> {
    let slots: u32 = row(tx, "SELECT slots FROM workers WHERE id = ?1", [worker_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| unknown_worker(worker_id))?;
    let held: u32 = row(
        tx,
        "SELECT COUNT(*) FROM trials WHERE worker_id = ?1 AND state IN ('leased', 'running')",
        [worker_id],
        |r| r.get(0),
    )?;
    Ok(slots.saturating_sub(held))
}

/// Leases up to `max` leasable trials (pending or preempted, oldest first) to a worker, never
/// more than its free slots. With nothing to lease it writes nothing (the worker's heartbeats
/// keep it seen).
fn lease(tx: &Connection, policy: LeasePolicy, worker_id: &str, max: u32, now: i64) -> Result<Granted> {
    let free = free_slots(tx, worker_id)?;
    let picked: Vec<(String, String, u32, Option<i64>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, spec_json, attempt, json_extract(spec_json, '$.train.epochs') FROM trials \
             WHERE state IN ('pending', 'preempted') ORDER BY seq LIMIT ?1",
        )?;
        stmt.query_map([max.min(free)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    if picked.is_empty() {
        return Ok(Granted {
            leases: vec![],
            free_slots: free,
        });
    }
    touch_worker(tx, worker_id, now)?;
    let mut leases = Vec::with_capacity(picked.len());
    for (trial_id, spec_json, attempt, epochs) in picked {
        let attempt = attempt + 1;
        let token = new_token("l-");
        let deadline = now + policy.lease_timeout_ms;
        exec(
            tx,
            "UPDATE trials SET state = 'leased', attempt = ?2, lease_token = ?3, worker_id = ?4, lease_deadline_ms = ?5, \
             lease_heard = 0, planned_epochs = ?6 WHERE id = ?1",
            params![trial_id, attempt, token, worker_id, deadline, epochs],
        )?;
        exec(
            tx,
            "INSERT INTO attempts (trial_id, attempt, worker_id, lease_token, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![trial_id, attempt, worker_id, token, now],
        )?;
        let sweep_id = first_sweep(tx, &trial_id)?;
        leases.push(pb::TrialLease {
            trial_id,
            sweep_id,
            spec_json,
            attempt,
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
    attempt: u32,
    /// The epochs its trial trains.
    planned: Option<u32>,
    /// The rung a stopping rule stopped its configuration at (`trials.stop_rung`).
    stop_rung: Option<i64>,
}

impl Held {
    /// The epochs the trial trains: a stored spec without them is corrupt.
    fn planned(&self, trial_id: &str) -> Result<u32> {
        self.planned
            .ok_or_else(|| Error::Corrupt(format!("stored spec of trial {trial_id} has no train.epochs")))
    }
}

/// Checks that `token` is the current token of an active lease on `trial_id`. Read in the same
/// row: the epochs the trial trains (copied at lease time; read from its spec for a lease an
/// older coordinator granted).
fn check_lease(tx: &Connection, trial_id: &str, token: &str) -> Result<Held> {
    let found = row(
        tx,
        "SELECT state, lease_token, attempt, worker_id, \
         COALESCE(planned_epochs, json_extract(spec_json, '$.train.epochs')), stop_rung FROM trials WHERE id = ?1",
        [trial_id],
        |r| {
            let planned: Option<i64> = r.get(4)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                Held {
                    attempt: r.get(2)?,
                    planned: planned.and_then(|n| u32::try_from(n).ok()),
                    stop_rung: r.get(5)?,
                },
                r.get::<_, Option<String>>(3)?,
            ))
        },
    )
    .optional()?;
    let Some((state, current, held, holder)) = found else {
        return Err(Error::NotFound(format!("unknown trial {trial_id}")));
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

/// Renews each lease the worker still holds; says what to do about each.
fn heartbeat(
    tx: &Connection,
    policy: LeasePolicy,
    worker_id: &str,
    leases: &[pb::LeaseRef],
    now: i64,
) -> Result<Vec<pb::LeaseStatus>> {
    touch_worker(tx, worker_id, now)?;
    let deadline = now + policy.lease_timeout_ms;
    let mut out = Vec::with_capacity(leases.len());
    for l in leases {
        let directive = match check_lease(tx, &l.trial_id, &l.lease_token) {
            Ok(held) => {
                exec(
                    tx,
                    "UPDATE trials SET lease_deadline_ms = ?2, lease_heard = 1 WHERE id = ?1",
                    params![l.trial_id, deadline],
                )?;
                lease::active_directive(held.stop_rung)
            }
            Err(Error::StaleLease(_) | Error::NotFound(_)) => {
                let state: Option<String> = row(tx, "SELECT state FROM trials WHERE id = ?1", [&l.trial_id], |r| {
                    r.get(0)
                })
                .optional()?;
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

/// Stores epoch metrics of an active lease (upsert per epoch) and marks the trial running.
fn report_epochs(
    tx: &Connection,
    policy: LeasePolicy,
    worker_id: &str,
    trial_id: &str,
    token: &str,
    epochs: &[pb::EpochMetrics],
    now: i64,
) -> Result<()> {
    touch_worker(tx, worker_id, now)?;
    let held = check_lease(tx, trial_id, token)?;
    let (attempt, planned) = (held.attempt, held.planned(trial_id)?);
    if let Some((i, e)) = epochs.iter().enumerate().find(|(_, e)| e.epoch > planned) {
        return Err(Error::InvalidArgument(FieldError::new(
            format!("epochs[{i}].epoch"),
            format!("trial {trial_id} trains {planned} epochs, got epoch {}", e.epoch),
        )));
    }
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO epochs (trial_id, epoch, attempt, lr, train_loss, train_acc, test_loss, test_acc, seconds, \
             val_loss, val_acc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for e in epochs {
            stmt.execute(params![
                trial_id,
                e.epoch,
                attempt,
                e.lr,
                e.train_loss,
                e.train_acc,
                e.test_loss,
                e.test_acc,
                e.seconds,
                e.val_loss,
                e.val_acc
            ])?;
        }
    }
    // A report renews the lease like a heartbeat, but at most once per tenth of the timeout:
    // most reports of a busy trial then leave its row (and the deadline index) as it is.
    let deadline = now + policy.lease_timeout_ms;
    exec(
        tx,
        "UPDATE trials SET state = 'running', lease_deadline_ms = ?2, lease_heard = 1 \
         WHERE id = ?1 AND (state <> 'running' OR lease_deadline_ms < ?3)",
        params![trial_id, deadline, deadline - policy.lease_timeout_ms / 10],
    )?;
    Ok(())
}

/// Counts the attempts of a trial that count against `max_attempts`.
fn failed_attempts(tx: &Connection, trial_id: &str) -> Result<u32> {
    Ok(row(
        tx,
        "SELECT COUNT(*) FROM attempts a JOIN trials t ON t.id = a.trial_id \
         WHERE a.trial_id = ?1 AND a.outcome IN ('expired', 'failed') AND a.attempt > t.resume_floor",
        [trial_id],
        |r| r.get(0),
    )?)
}

/// Stores a result's robustness rows and filter statistics (replacing an earlier attempt's).
fn insert_evaluations(tx: &Connection, trial_id: &str, r: &pb::TrialResult) -> Result<()> {
    exec(tx, "DELETE FROM robustness WHERE trial_id = ?1", [trial_id])?;
    exec(tx, "DELETE FROM filters WHERE trial_id = ?1", [trial_id])?;
    let mut rob = tx.prepare_cached(
        "INSERT OR REPLACE INTO robustness (trial_id, kind, name, eps, severity, accuracy, images) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for x in &r.robustness {
        rob.execute(params![
            trial_id, x.kind, x.name, x.eps, x.severity, x.accuracy, x.images
        ])?;
    }
    let mut fil = tx.prepare_cached(
        "INSERT OR REPLACE INTO filters (trial_id, stage, layer, kernel_size, filters, fve, fve_norm, sparsity, \
         orthogonality, heatmap, folded) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for f in &r.filters {
        let heatmap = serde_json::to_string(&f.heatmap).unwrap_or_else(|_| "[]".into());
        fil.execute(params![
            trial_id,
            f.stage,
            f.layer,
            f.kernel_size,
            f.filters as i64,
            f.fve,
            f.fve_norm,
            f.sparsity,
            f.orthogonality,
            heatmap,
            f.folded
        ])?;
    }
    Ok(())
}

/// After an attempt expired or failed retryably: lease again, or give up with every reason.
fn retry_or_fail(policy: LeasePolicy, tx: &Connection, trial_id: &str, now: i64) -> Result<TrialState> {
    let failures = failed_attempts(tx, trial_id)?;
    if failures < policy.max_attempts {
        exec(
            tx,
            "UPDATE trials SET state = 'pending', lease_token = NULL, lease_deadline_ms = NULL WHERE id = ?1",
            [trial_id],
        )?;
        return Ok(TrialState::Pending);
    }
    let reasons: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT a.attempt, a.outcome, COALESCE(a.reason, '') FROM attempts a JOIN trials t ON t.id = a.trial_id \
             WHERE a.trial_id = ?1 AND a.outcome IN ('expired', 'failed') AND a.attempt > t.resume_floor ORDER BY a.attempt",
        )?;
        stmt.query_map([trial_id], |r| {
            let (a, o, why): (u32, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            Ok(format!("attempt {a} {o}: {why}"))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let reason = format!("gave up after {failures} failed attempts: {}", reasons.join("; "));
    exec(
        tx,
        "UPDATE trials SET state = 'failed', lease_token = NULL, lease_deadline_ms = NULL, reason = ?2, finished_ms = ?3 WHERE id = ?1",
        params![trial_id, reason, now],
    )?;
    Ok(TrialState::Failed)
}

/// Records how an attempt ended. The same token completing again is a duplicate, not an error.
fn complete(
    tx: &Connection,
    policy: LeasePolicy,
    worker_id: &str,
    trial_id: &str,
    token: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<Completed> {
    touch_worker(tx, worker_id, now)?;
    let recorded: Option<Option<String>> = row(
        tx,
        "SELECT outcome FROM attempts WHERE trial_id = ?1 AND lease_token = ?2",
        params![trial_id, token],
        |r| r.get(0),
    )
    .optional()?;
    // Only an outcome that a completion recorded makes this a duplicate; an attempt that
    // expired was never completed, and its late report is stale (fenced below).
    if let Some(Some(previous)) = recorded
        && !matches!(previous.as_str(), "expired" | "unheard")
    {
        let state: String = row(tx, "SELECT state FROM trials WHERE id = ?1", [trial_id], |r| r.get(0))?;
        return Ok(Completed {
            duplicate: true,
            state: state_of(state)?,
            sweep_id: first_sweep(tx, trial_id)?,
        });
    }
    let held = check_lease(tx, trial_id, token)?;
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
    exec(
        tx,
        "UPDATE attempts SET ended_ms = ?3, outcome = ?4, reason = ?5 WHERE trial_id = ?1 AND attempt = ?2",
        params![trial_id, attempt, now, outcome.kind().as_str(), outcome.reason()],
    )?;
    let state = match outcome {
        Outcome::Succeeded(r) => {
            let times = r.times.unwrap_or_default();
            exec(
                tx,
                "INSERT OR REPLACE INTO results (trial_id, attempt, worker_id, final_train_loss, final_train_acc, \
                 final_test_loss, final_test_acc, best_test_acc, best_epoch, params_total, params_learnable, \
                 flops_per_image, wall_seconds, peak_memory_bytes, device, completed_ms, eval_error, eval_seconds, \
                 conv_algorithm, startup_seconds, train_seconds, epoch_eval_seconds, checkpoint_seconds, \
                 report_seconds, train_images) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
                 ?20, ?21, ?22, ?23, ?24, ?25)",
                params![
                    trial_id,
                    attempt,
                    worker_id,
                    r.final_train_loss,
                    r.final_train_acc,
                    r.final_test_loss,
                    r.final_test_acc,
                    r.best_test_acc,
                    r.best_epoch,
                    r.params_total as i64,
                    r.params_learnable as i64,
                    r.flops_per_image as i64,
                    r.wall_seconds,
                    r.peak_memory_bytes as i64,
                    r.device,
                    now,
                    r.eval_error,
                    r.eval_seconds,
                    r.conv_algorithm,
                    times.startup_seconds,
                    times.train_seconds,
                    times.epoch_eval_seconds,
                    times.checkpoint_seconds,
                    times.report_seconds,
                    times.train_images as i64
                ],
            )?;
            insert_evaluations(tx, trial_id, r)?;
            exec(
                tx,
                "UPDATE trials SET state = 'succeeded', lease_token = NULL, lease_deadline_ms = NULL, reason = NULL, finished_ms = ?2 WHERE id = ?1",
                params![trial_id, now],
            )?;
            TrialState::Succeeded
        }
        Outcome::Failed { retryable: true, .. } => retry_or_fail(policy, tx, trial_id, now)?,
        Outcome::Failed {
            retryable: false,
            reason,
        } => {
            exec(
                tx,
                "UPDATE trials SET state = 'failed', lease_token = NULL, lease_deadline_ms = NULL, reason = ?2, finished_ms = ?3 WHERE id = ?1",
                params![
                    trial_id,
                    format!("attempt {attempt} failed (not retryable): {reason}"),
                    now
                ],
            )?;
            TrialState::Failed
        }
        Outcome::Preempted { .. } => {
            exec(
                tx,
                "UPDATE trials SET state = 'preempted', lease_token = NULL, lease_deadline_ms = NULL WHERE id = ?1",
                [trial_id],
            )?;
            TrialState::Preempted
        }
        Outcome::Stopped { .. } => {
            exec(
                tx,
                "UPDATE trials SET state = 'stopped', lease_token = NULL, lease_deadline_ms = NULL, reason = ?2, finished_ms = ?3 WHERE id = ?1",
                params![trial_id, stopped_reason, now],
            )?;
            TrialState::Stopped
        }
    };
    Ok(Completed {
        duplicate: false,
        state,
        sweep_id: first_sweep(tx, trial_id)?,
    })
}

/// Returns every lease whose deadline passed to the queue (or fails it after too many
/// attempts), inside the caller's transaction.
pub(super) fn expire_leases(tx: &Connection, policy: LeasePolicy, now: i64) -> Result<Vec<Expired>> {
    let expired: Vec<(String, u32, Option<String>, i64, bool)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, attempt, worker_id, lease_deadline_ms, lease_heard FROM trials \
             WHERE state IN ('leased', 'running') AND lease_deadline_ms < ?1",
        )?;
        stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut touched = Vec::with_capacity(expired.len());
    for (trial_id, attempt, worker, deadline, heard) in expired {
        let worker = worker.as_deref().unwrap_or("?");
        let silent = (now - deadline + policy.lease_timeout_ms) as f64 / 1000.0;
        // A lease its worker never confirmed (the answer may never have reached it) is not
        // an attempt that failed: it does not count against max_attempts.
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
        exec(
            tx,
            "UPDATE attempts SET ended_ms = ?3, outcome = ?4, reason = ?5 WHERE trial_id = ?1 AND attempt = ?2",
            params![trial_id, attempt, now, outcome, reason],
        )?;
        let state = retry_or_fail(policy, tx, &trial_id, now)?;
        touched.push(Expired {
            trial_id: TrialId::parse(&trial_id).map_err(|e| Error::Corrupt(format!("stored trial id: {e}")))?,
            state,
            sweep_id: first_sweep(tx, &trial_id)?,
        });
    }
    Ok(touched)
}
