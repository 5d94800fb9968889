//! The writes of the worker RPCs (lease, heartbeat, epoch reports, completion), each a function
//! over an open transaction, and `Store::write_batch`: many RPCs' writes in one transaction
//! (group commit).
//!
//! The rule every op here keeps: it refuses (a stale lease, an unknown worker or trial, a
//! corrupt row) before its first write, except for marking its worker seen. So a refused write
//! needs no savepoint to be undone and leaves the others of its batch in place, while any other
//! error (SQLite failing mid-op) rolls the whole batch back and none of it is acknowledged.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use convsweep_proto::{Outcome, TrialState, pb};
use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use super::schema::state_of;
use crate::error::{Error, Result};

/// Lease rules the store enforces.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A lease not renewed for this long expires.
    pub lease_timeout_ms: i64,
    /// A trial fails for good once this many attempts expired or failed retryably.
    pub max_attempts: u32,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            lease_timeout_ms: 60_000,
            max_attempts: 3,
        }
    }
}

/// A completion's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The same completion had already been recorded.
    pub duplicate: bool,
    /// The state the trial is in now.
    pub state: TrialState,
}

/// A random token with a prefix (`w-` worker ids, `l-` lease tokens).
pub(super) fn new_token(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    let a = h.finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u64(a ^ n.rotate_left(17));
    format!("{prefix}{a:016x}{:08x}", h.finish() as u32)
}

/// One RPC's write, to be committed with others.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per RPC, moved once into the writer's batch
pub enum Write {
    /// `Lease`: up to `max` trials.
    Lease {
        /// The worker.
        worker_id: String,
        /// Most trials to lease.
        max: u32,
    },
    /// `Heartbeat`: renew these leases.
    Heartbeat {
        /// The worker.
        worker_id: String,
        /// The leases it holds.
        leases: Vec<pb::LeaseRef>,
    },
    /// `ReportEpochs`.
    ReportEpochs {
        /// The worker.
        worker_id: String,
        /// The trial.
        trial_id: String,
        /// Its lease token.
        token: String,
        /// The epochs.
        epochs: Vec<pb::EpochMetrics>,
    },
    /// `Complete`.
    Complete {
        /// The worker.
        worker_id: String,
        /// The trial.
        trial_id: String,
        /// Its lease token.
        token: String,
        /// How the attempt ended.
        outcome: Outcome,
    },
}

/// What a [`Write`] did, once its transaction committed.
#[derive(Debug, Clone)]
pub enum Written {
    /// The trials leased (none when nothing was leasable).
    Leased(Vec<pb::TrialLease>),
    /// What to do about each lease of a heartbeat.
    Renewed(Vec<pb::LeaseStatus>),
    /// The epochs were stored.
    Reported,
    /// The completion was recorded (or was a duplicate).
    Completed(Completed),
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

pub(super) fn apply(c: &Connection, policy: LeasePolicy, write: &Write, now: i64) -> Result<Written> {
    Ok(match write {
        Write::Lease { worker_id, max } => Written::Leased(lease(c, policy, worker_id, *max, now)?),
        Write::Heartbeat { worker_id, leases } => Written::Renewed(heartbeat(c, policy, worker_id, leases, now)?),
        Write::ReportEpochs {
            worker_id,
            trial_id,
            token,
            epochs,
        } => {
            report_epochs(c, policy, worker_id, trial_id, token, epochs, now)?;
            Written::Reported
        }
        Write::Complete {
            worker_id,
            trial_id,
            token,
            outcome,
        } => Written::Completed(complete(c, policy, worker_id, trial_id, token, outcome, now)?),
    })
}

fn unknown_worker(worker_id: &str) -> Error {
    Error::NotFound(format!(
        "unknown worker {worker_id}: register first (the coordinator may have been reset)"
    ))
}

pub(super) fn touch_worker(tx: &Connection, worker_id: &str, now: i64) -> Result<()> {
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

fn require_worker(tx: &Connection, worker_id: &str) -> Result<()> {
    row(tx, "SELECT 1 FROM workers WHERE id = ?1", [worker_id], |_| Ok(()))
        .optional()?
        .ok_or_else(|| unknown_worker(worker_id))
}

/// Leases up to `max` leasable trials (pending or preempted, oldest first) to a worker. With
/// nothing to lease it writes nothing (the worker's heartbeats keep it seen).
pub(super) fn lease(
    tx: &Connection,
    policy: LeasePolicy,
    worker_id: &str,
    max: u32,
    now: i64,
) -> Result<Vec<pb::TrialLease>> {
    let picked: Vec<(String, String, u32)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, spec_json, attempt FROM trials WHERE state IN ('pending', 'preempted') ORDER BY seq LIMIT ?1",
        )?;
        stmt.query_map([max], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    if picked.is_empty() {
        require_worker(tx, worker_id)?;
        return Ok(vec![]);
    }
    touch_worker(tx, worker_id, now)?;
    let mut leases = Vec::with_capacity(picked.len());
    for (trial_id, spec_json, attempt) in picked {
        let attempt = attempt + 1;
        let token = new_token("l-");
        let deadline = now + policy.lease_timeout_ms;
        exec(
            tx,
            "UPDATE trials SET state = 'leased', attempt = ?2, lease_token = ?3, worker_id = ?4, lease_deadline_ms = ?5 WHERE id = ?1",
            params![trial_id, attempt, token, worker_id, deadline],
        )?;
        exec(
            tx,
            "INSERT INTO attempts (trial_id, attempt, worker_id, lease_token, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![trial_id, attempt, worker_id, token, now],
        )?;
        let sweep_id: String = row(
            tx,
            "SELECT sweep_id FROM sweep_trials WHERE trial_id = ?1 ORDER BY rowid LIMIT 1",
            [&trial_id],
            |r| r.get(0),
        )?;
        leases.push(pb::TrialLease {
            trial_id,
            sweep_id,
            spec_json,
            attempt,
            lease_token: token,
        });
    }
    Ok(leases)
}

/// Checks that `token` is the current token of an active lease on `trial_id`.
pub(super) fn check_lease(tx: &Connection, trial_id: &str, token: &str) -> Result<(TrialState, u32)> {
    let row: Option<(String, Option<String>, u32, Option<String>)> = tx
        .query_row(
            "SELECT state, lease_token, attempt, worker_id FROM trials WHERE id = ?1",
            [trial_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((state, current, attempt, holder)) = row else {
        return Err(Error::NotFound(format!("unknown trial {trial_id}")));
    };
    let state = state_of(state)?;
    if current.as_deref() != Some(token) || !state.is_active() {
        return Err(Error::StaleLease(format!(
            "trial {trial_id} is {state} at attempt {attempt}{}; this report's lease is no longer current",
            holder.map(|w| format!(" (last leased to {w})")).unwrap_or_default()
        )));
    }
    Ok((state, attempt))
}

/// Renews each lease the worker still holds; says what to do about each.
pub(super) fn heartbeat(
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
            Ok(_) => {
                exec(
                    tx,
                    "UPDATE trials SET lease_deadline_ms = ?2 WHERE id = ?1",
                    params![l.trial_id, deadline],
                )?;
                pb::LeaseDirective::Continue
            }
            Err(Error::StaleLease(_) | Error::NotFound(_)) => {
                let state: Option<String> = tx
                    .query_row("SELECT state FROM trials WHERE id = ?1", [&l.trial_id], |r| r.get(0))
                    .optional()?;
                if state.as_deref() == Some("cancelled") {
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
pub(super) fn report_epochs(
    tx: &Connection,
    policy: LeasePolicy,
    worker_id: &str,
    trial_id: &str,
    token: &str,
    epochs: &[pb::EpochMetrics],
    now: i64,
) -> Result<()> {
    touch_worker(tx, worker_id, now)?;
    let (_, attempt) = check_lease(tx, trial_id, token)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO epochs (trial_id, epoch, attempt, lr, train_loss, train_acc, test_loss, test_acc, seconds) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
                e.seconds
            ])?;
        }
    }
    // A report renews the lease like a heartbeat, but at most once per tenth of the timeout:
    // most reports of a busy trial then leave its row (and the deadline index) as it is.
    let deadline = now + policy.lease_timeout_ms;
    exec(
        tx,
        "UPDATE trials SET state = 'running', lease_deadline_ms = ?2 \
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
pub(super) fn retry_or_fail(policy: LeasePolicy, tx: &Connection, trial_id: &str, now: i64) -> Result<TrialState> {
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
pub(super) fn complete(
    tx: &Connection,
    policy: LeasePolicy,
    worker_id: &str,
    trial_id: &str,
    token: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<Completed> {
    touch_worker(tx, worker_id, now)?;
    let recorded: Option<Option<String>> = tx
        .query_row(
            "SELECT outcome FROM attempts WHERE trial_id = ?1 AND lease_token = ?2",
            params![trial_id, token],
            |r| r.get(0),
        )
        .optional()?;
    // Only an outcome that a completion recorded makes this a duplicate; an attempt that
    // expired was never completed, and its late report is stale (fenced below).
    if let Some(Some(previous)) = recorded
        && previous != "expired"
    {
        let state: String = row(tx, "SELECT state FROM trials WHERE id = ?1", [trial_id], |r| r.get(0))?;
        return Ok(Completed {
            duplicate: true,
            state: state_of(state)?,
        });
    }
    let (_, attempt) = check_lease(tx, trial_id, token)?;
    let (kind, reason) = match outcome {
        Outcome::Succeeded(_) => ("succeeded", None),
        Outcome::Failed { reason, .. } => ("failed", Some(reason.as_str())),
        Outcome::Preempted { reason } => ("preempted", Some(reason.as_str())),
    };
    exec(
        tx,
        "UPDATE attempts SET ended_ms = ?3, outcome = ?4, reason = ?5 WHERE trial_id = ?1 AND attempt = ?2",
        params![trial_id, attempt, now, kind, reason],
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
    };
    Ok(Completed {
        duplicate: false,
        state,
    })
}
