//! The coordinator's durable state: SQLite in WAL mode with `synchronous = FULL`, so every
//! transaction that returned is on disk before the RPC that caused it is acknowledged.
//!
//! - this module: [`Store`], the writer, whose public methods are each one transaction and one
//!   step of the lease state machine;
//! - [`schema`]: the tables, the schema version and its migrations, and how to open a state;
//! - [`read`]: the result rows, and [`StateReader`], a read-only view for export and report.
//!
//! The transitions the store makes:
//!
//! ```text
//! from                               event                                 to
//! (none)                             submit, extend                        pending
//! pending, preempted                 lease                                 leased (attempt + 1)
//! leased                             epoch report                          running
//! leased, running                    complete: succeeded                   succeeded
//! leased, running                    complete: failed, not retryable       failed
//! leased, running                    complete: failed retryably; expiry    pending, or failed once
//!                                                                          out of attempts
//! leased, running                    complete: preempted                   preempted
//! pending, leased, running, preempted cancel                               cancelled
//! failed, cancelled                  resume                                pending (fresh attempts)
//! ```
//!
//! Fencing: every report names its lease token; only the trial's current token of an active
//! lease is accepted. A completion whose token already completed is acknowledged as a duplicate.

pub mod ops;
pub mod read;
pub mod schema;

pub use ops::{Completed, LeasePolicy, Write, Written};
pub use read::StateReader;
pub use schema::{DB_FILE, SCHEMA_VERSION};

use schema::state_of;

use std::path::{Path, PathBuf};

use convsweep_proto::{SweepId, TrialId, TrialSpec, TrialState, pb};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Trials in the sweep.
    pub trials: u32,
    /// Trials this submission created.
    pub new_trials: u32,
}

/// Failed trials a sweep's status lists (the counts cover all of them).
pub const MAX_LISTED_FAILURES: u32 = 1_000;

/// The SQLite store. Not `Sync`: the coordinator keeps it behind a mutex.
pub struct Store {
    conn: Connection,
    policy: LeasePolicy,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The canonical JSON of each trial and its id (a large sweep has them from
/// [`crate::sweep::SweepSpec::expand_canonical`], computed on every core).
fn canonical_ids(trials: &[TrialSpec]) -> Vec<(TrialId, String)> {
    trials
        .iter()
        .map(|t| {
            let json = t.canonical_json();
            (TrialId::of_canonical_json(&json), json)
        })
        .collect()
}

impl Store {
    /// Runs `writes` in one transaction. A refused write gets its error and the others are kept
    /// (see the module's rule); their results count only once the transaction committed. Any
    /// other error, or a failed commit, is `Err` for the whole batch: nothing of it was stored.
    pub fn write_batch(&mut self, writes: &[Write], now: i64) -> Result<Vec<Result<Written>>> {
        let policy = self.policy;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(writes.len());
        for write in writes {
            match ops::apply(&tx, policy, write, now) {
                Ok(done) => out.push(Ok(done)),
                Err(e) if e.is_refusal() => out.push(Err(e)),
                // Dropping the transaction rolls the batch back.
                Err(e) => return Err(e),
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// One write in a transaction of its own.
    pub fn write(&mut self, write: &Write, now: i64) -> Result<Written> {
        let policy = self.policy;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = ops::apply(&tx, policy, write, now)?;
        tx.commit()?;
        Ok(done)
    }
}

impl Store {
    /// Opens (creating or migrating when needed) the store in `dir`.
    pub fn open(dir: &Path, policy: LeasePolicy) -> Result<Store> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let conn = schema::open_writable(&path)?;
        Ok(Store { conn, policy, path })
    }

    /// A second, read-only connection to the store in `dir` that [`Store::open`] opened: status,
    /// snapshots and metrics read through it without waiting for the writer (WAL). Its write
    /// methods fail.
    pub fn open_reader(dir: &Path, policy: LeasePolicy) -> Result<Store> {
        let path = dir.join(DB_FILE);
        let conn = schema::open_read_only(&path)?;
        Ok(Store { conn, policy, path })
    }

    /// The lease rules in force.
    pub fn policy(&self) -> LeasePolicy {
        self.policy
    }

    /// Creates the sweep and its trials. Submitting the same trial set again changes nothing;
    /// a different trial set under an existing sweep name is refused.
    pub fn submit_sweep(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[TrialSpec],
        now: i64,
    ) -> Result<Submitted> {
        self.submit_canonical(sweep, spec_toml, &canonical_ids(trials), now)
    }

    /// [`Store::submit_sweep`] of trials given as id and canonical JSON
    /// ([`crate::sweep::SweepSpec::expand_canonical`]).
    pub fn submit_canonical(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[(TrialId, String)],
        now: i64,
    ) -> Result<Submitted> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if Self::sweep_exists(&tx, sweep.as_str())? {
            let mut stmt = tx.prepare("SELECT trial_id FROM sweep_trials WHERE sweep_id = ?1")?;
            let mut existing: Vec<String> = stmt
                .query_map([sweep.as_str()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut wanted: Vec<String> = trials.iter().map(|(id, _)| id.to_string()).collect();
            existing.sort();
            wanted.sort();
            if existing != wanted {
                return Err(Error::AlreadyExists(format!(
                    "sweep {sweep} already exists with {} trials and this spec expands to {} different ones; \
                     to add seeds or grid values use `convsweep extend`, otherwise give the sweep another name",
                    existing.len(),
                    wanted.len()
                )));
            }
            return Ok(Submitted {
                trials: existing.len() as u32,
                new_trials: 0,
            });
        }
        tx.execute(
            "INSERT INTO sweeps (id, spec_toml, created_ms) VALUES (?1, ?2, ?3)",
            params![sweep.as_str(), spec_toml, now],
        )?;
        let (created, _) = Self::add_trials(&tx, sweep, trials, now)?;
        tx.commit()?;
        Ok(Submitted {
            trials: trials.len() as u32,
            new_trials: created,
        })
    }

    /// Creates the trials that do not exist yet (any sweep's) and links those not yet in
    /// `sweep` after its last position, in expansion order. Returns (trials created, trials
    /// linked).
    ///
    /// Built for a million trials: rows go in chunk by chunk in id order (the id indexes are
    /// hashes: sorted inserts walk their pages once instead of at random), and the sweep's
    /// progress counts are added once at the end.
    fn add_trials(tx: &Connection, sweep: &SweepId, trials: &[(TrialId, String)], now: i64) -> Result<(u32, u32)> {
        const CHUNK: usize = 1 << 16;
        let mut seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM trials", [], |r| r.get(0))?;
        let mut position: i64 = tx.query_row(
            "SELECT COALESCE(MAX(position), -1) FROM sweep_trials WHERE sweep_id = ?1",
            [sweep.as_str()],
            |r| r.get(0),
        )?;
        let linked_before: std::collections::HashSet<String> = {
            let mut stmt = tx.prepare("SELECT trial_id FROM sweep_trials WHERE sweep_id = ?1")?;
            stmt.query_map([sweep.as_str()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let (mut created, mut linked) = (0u32, 0u32);
        // New links by the state their trial is in (new trials are pending).
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        let mut insert_trial = tx.prepare(
            "INSERT OR IGNORE INTO trials (id, seq, spec_json, state, created_ms) VALUES (?1, ?2, ?3, 'pending', ?4)",
        )?;
        let mut link =
            tx.prepare("INSERT OR IGNORE INTO sweep_trials (sweep_id, trial_id, position) VALUES (?1, ?2, ?3)")?;
        let mut state_of_trial = tx.prepare("SELECT state FROM trials WHERE id = ?1")?;
        for chunk in trials.chunks(CHUNK) {
            // (id, json, seq, position if it is to be linked), seq and position in expansion order.
            let mut rows: Vec<(&TrialId, &str, i64, Option<i64>)> = chunk
                .iter()
                .map(|(id, json)| {
                    seq += 1;
                    let at = (!linked_before.contains(id.as_str())).then(|| {
                        position += 1;
                        position
                    });
                    (id, json.as_str(), seq, at)
                })
                .collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (id, json, seq, at) in rows {
                let new = insert_trial.execute(params![id.as_str(), seq, json, now])? > 0;
                created += u32::from(new);
                let Some(at) = at else { continue };
                link.execute(params![sweep.as_str(), id.as_str(), at])?;
                linked += 1;
                let state = if new {
                    "pending".to_owned()
                } else {
                    state_of_trial.query_row([id.as_str()], |r| r.get(0))?
                };
                *counts.entry(state).or_default() += 1;
            }
        }
        let mut add = tx.prepare(
            "INSERT INTO sweep_progress (sweep_id, state, n) VALUES (?1, ?2, ?3) \
             ON CONFLICT (sweep_id, state) DO UPDATE SET n = n + excluded.n",
        )?;
        for (state, n) in counts {
            add.execute(params![sweep.as_str(), state, n])?;
        }
        Ok((created, linked))
    }

    /// Records a worker and returns its new id.
    pub fn register_worker(
        &mut self,
        name: &str,
        host: &str,
        devices: &[String],
        slots: u32,
        now: i64,
    ) -> Result<String> {
        let id = ops::new_token("w-");
        let devices = serde_json::to_string(devices).unwrap_or_default();
        self.conn.execute(
            "INSERT INTO workers (id, name, host, devices, slots, registered_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![id, name, host, devices, slots, now],
        )?;
        Ok(id)
    }

    /// Leases up to `max` trials to a worker (see [`Write::Lease`]), in a transaction of its own.
    pub fn lease(&mut self, worker_id: &str, max: u32, now: i64) -> Result<Vec<pb::TrialLease>> {
        let write = Write::Lease {
            worker_id: worker_id.to_owned(),
            max,
        };
        match self.write(&write, now)? {
            Written::Leased(leases) => Ok(leases),
            other => unreachable!("a lease wrote {other:?}"),
        }
    }

    /// Returns every lease whose deadline passed to the queue (or fails it after too many
    /// attempts). Returns the trials it touched.
    pub fn expire_leases(&mut self, now: i64) -> Result<Vec<(TrialId, TrialState)>> {
        let policy = self.policy;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let expired: Vec<(String, u32, Option<String>, i64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, attempt, worker_id, lease_deadline_ms FROM trials \
                 WHERE state IN ('leased', 'running') AND lease_deadline_ms < ?1",
            )?;
            stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut touched = Vec::with_capacity(expired.len());
        for (trial_id, attempt, worker, deadline) in expired {
            let reason = format!(
                "lease expired: no heartbeat from worker {} for {:.0} s",
                worker.as_deref().unwrap_or("?"),
                (now - deadline + policy.lease_timeout_ms) as f64 / 1000.0
            );
            ops::exec(
                &tx,
                "UPDATE attempts SET ended_ms = ?3, outcome = 'expired', reason = ?4 WHERE trial_id = ?1 AND attempt = ?2",
                params![trial_id, attempt, now, reason],
            )?;
            let state = ops::retry_or_fail(policy, &tx, &trial_id, now)?;
            touched.push((
                TrialId::parse(&trial_id).map_err(|e| Error::Corrupt(format!("stored trial id: {e}")))?,
                state,
            ));
        }
        tx.commit()?;
        Ok(touched)
    }

    /// Adds the trials of a grown spec to an existing sweep; existing trials are untouched.
    pub fn extend_sweep(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[TrialSpec],
        now: i64,
    ) -> Result<Submitted> {
        self.extend_canonical(sweep, spec_toml, &canonical_ids(trials), now)
    }

    /// [`Store::extend_sweep`] of trials given as id and canonical JSON.
    pub fn extend_canonical(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[(TrialId, String)],
        now: i64,
    ) -> Result<Submitted> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !Self::sweep_exists(&tx, sweep.as_str())? {
            return Err(Error::NotFound(format!(
                "no sweep named {sweep:?} to extend; submit it first"
            )));
        }
        tx.execute(
            "UPDATE sweeps SET spec_toml = ?2 WHERE id = ?1",
            params![sweep.as_str(), spec_toml],
        )?;
        let (_, linked) = Self::add_trials(&tx, sweep, trials, now)?;
        let total: u32 = tx.query_row(
            "SELECT COUNT(*) FROM sweep_trials WHERE sweep_id = ?1",
            [sweep.as_str()],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Submitted {
            trials: total,
            new_trials: linked,
        })
    }

    /// Cancels the unfinished trials of `sweep` (only `trial_ids` when given). Returns how
    /// many were cancelled. A trial shared with another sweep is cancelled there too.
    pub fn cancel(&mut self, sweep: &str, trial_ids: &[String], now: i64) -> Result<u32> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::require_sweep(&tx, sweep)?;
        let targets: Vec<(String, String, u32)> = {
            let mut stmt = tx.prepare(
                "SELECT t.id, t.state, t.attempt FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
                 WHERE s.sweep_id = ?1 AND t.state IN ('pending', 'leased', 'running', 'preempted')",
            )?;
            stmt.query_map([sweep], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        for id in trial_ids {
            let member = tx
                .query_row(
                    "SELECT 1 FROM sweep_trials WHERE sweep_id = ?1 AND trial_id = ?2",
                    params![sweep, id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !member {
                return Err(Error::NotFound(format!("trial {id} is not part of sweep {sweep}")));
            }
        }
        let mut n = 0;
        for (id, state, attempt) in targets {
            if !trial_ids.is_empty() && !trial_ids.contains(&id) {
                continue;
            }
            if state == "leased" || state == "running" {
                tx.execute(
                    "UPDATE attempts SET ended_ms = ?3, outcome = 'cancelled', reason = 'cancelled by a user' \
                     WHERE trial_id = ?1 AND attempt = ?2",
                    params![id, attempt, now],
                )?;
            }
            tx.execute(
                "UPDATE trials SET state = 'cancelled', lease_token = NULL, lease_deadline_ms = NULL, \
                 reason = 'cancelled by a user', finished_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            n += 1;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Puts the failed and cancelled trials of `sweep` back in the queue with a fresh set of
    /// attempts. Returns how many.
    pub fn resume(&mut self, sweep: &str) -> Result<u32> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::require_sweep(&tx, sweep)?;
        let n = tx.execute(
            "UPDATE trials SET state = 'pending', reason = NULL, finished_ms = NULL, resume_floor = attempt \
             WHERE state IN ('failed', 'cancelled') AND id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = ?1)",
            [sweep],
        )?;
        tx.commit()?;
        Ok(n as u32)
    }

    /// After a coordinator restart: every active lease gets at least `lease_timeout` from now,
    /// so that the time the coordinator was away does not count against its workers.
    pub fn grant_restart_grace(&mut self, now: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE trials SET lease_deadline_ms = MAX(COALESCE(lease_deadline_ms, 0), ?1) \
             WHERE state IN ('leased', 'running')",
            [now + self.policy.lease_timeout_ms],
        )?)
    }

    fn sweep_exists(conn: &Connection, sweep: &str) -> Result<bool> {
        Ok(conn
            .prepare_cached("SELECT 1 FROM sweeps WHERE id = ?1")?
            .query_row([sweep], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn require_sweep(tx: &Connection, sweep: &str) -> Result<()> {
        if Self::sweep_exists(tx, sweep)? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("no sweep named {sweep:?}")))
        }
    }

    /// The ids of every sweep, oldest first.
    pub fn sweep_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT id FROM sweeps ORDER BY created_ms, id")?;
        Ok(stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }

    /// Progress of one sweep.
    pub fn sweep_status(&self, sweep_id: &str, now: i64) -> Result<pb::SweepStatus> {
        Self::require_sweep(&self.conn, sweep_id)?;
        let mut counts = pb::StateCounts::default();
        let mut total = 0;
        {
            // Kept by triggers on every state change: no scan of the sweep's trials.
            let mut stmt = self
                .conn
                .prepare_cached("SELECT state, n FROM sweep_progress WHERE sweep_id = ?1 AND n > 0")?;
            let rows = stmt.query_map([sweep_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                total += n;
                let slot = match state_of(state)? {
                    TrialState::Pending => &mut counts.pending,
                    TrialState::Leased => &mut counts.leased,
                    TrialState::Running => &mut counts.running,
                    TrialState::Succeeded => &mut counts.succeeded,
                    TrialState::Failed => &mut counts.failed,
                    TrialState::Preempted => &mut counts.preempted,
                    TrialState::Cancelled => &mut counts.cancelled,
                };
                *slot = n;
            }
        }
        let first_start: Option<i64> = self
            .conn
            .prepare_cached("SELECT first_start_ms FROM sweep_started WHERE sweep_id = ?1")?
            .query_row([sweep_id], |r| r.get(0))
            .optional()?;
        let finished = counts.succeeded + counts.failed;
        let remaining = total - finished - counts.cancelled;
        let (trials_per_hour, eta_seconds) = match first_start {
            Some(start) if finished > 0 && now > start => {
                let rate = f64::from(finished) / ((now - start) as f64 / 3_600_000.0);
                (rate, f64::from(remaining) / rate * 3600.0)
            }
            _ if remaining == 0 => (0.0, 0.0),
            _ => (0.0, -1.0),
        };
        let failures = {
            let mut stmt = self.conn.prepare_cached(
                // CROSS JOIN keeps the failed trials (by their state index) the outer loop:
                // never a walk over every trial of a large sweep.
                "SELECT t.id, t.attempt, COALESCE(t.reason, '') FROM trials t CROSS JOIN sweep_trials s \
                 ON s.trial_id = t.id WHERE t.state = 'failed' AND s.sweep_id = ?1 ORDER BY s.position LIMIT ?2",
            )?;
            stmt.query_map(params![sweep_id, MAX_LISTED_FAILURES], |r| {
                Ok(pb::TrialFailure {
                    trial_id: r.get(0)?,
                    attempt: r.get(1)?,
                    reason: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        Ok(pb::SweepStatus {
            sweep_id: sweep_id.to_owned(),
            total,
            counts: Some(counts),
            trials_per_hour,
            eta_seconds,
            failures,
        })
    }

    /// Trials per sweep and state: `(sweep, state, count)`.
    pub fn state_counts(&self) -> Result<Vec<(String, String, u32)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT sweep_id, state, n FROM sweep_progress WHERE n > 0 ORDER BY sweep_id, state")?;
        Ok(stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The leased and running trials of `sweep` (every sweep when empty), with their last
    /// epoch, in sweep order.
    pub fn active_trials(&self, sweep: &str) -> Result<Vec<pb::ActiveTrial>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.sweep_id, t.id, t.spec_json, t.state, t.attempt, COALESCE(t.worker_id, ''), \
                    (SELECT e.epoch FROM epochs e WHERE e.trial_id = t.id ORDER BY e.epoch DESC LIMIT 1), \
                    (SELECT e.test_acc FROM epochs e WHERE e.trial_id = t.id ORDER BY e.epoch DESC LIMIT 1) \
             FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
             WHERE t.state IN ('leased', 'running') AND (?1 = '' OR s.sweep_id = ?1) \
             ORDER BY s.sweep_id, s.position",
        )?;
        let rows = stmt.query_map([sweep], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<u32>>(6)?,
                r.get::<_, Option<f64>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (sweep_id, trial_id, spec_json, state, attempt, worker_id, epoch, test_acc) = row?;
            let spec = schema::spec_of(&trial_id, &spec_json)?;
            out.push(pb::ActiveTrial {
                sweep_id,
                trial_id,
                label: spec.label(),
                state,
                attempt,
                worker_id,
                epoch: epoch.unwrap_or(0),
                epochs: spec.train.epochs,
                test_acc: test_acc.unwrap_or(0.0),
            });
        }
        Ok(out)
    }

    /// Mean final test accuracy so far of the succeeded trials of `sweep` (every sweep when
    /// empty), by kernel size and train mode.
    pub fn accuracy_so_far(&self, sweep: &str) -> Result<Vec<pb::AccuracyCell>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.sweep_id, json_extract(t.spec_json, '$.model.kernel_size'), \
                    json_extract(t.spec_json, '$.model.train_mode'), AVG(r.final_test_acc), COUNT(*) \
             FROM sweep_trials s JOIN trials t ON t.id = s.trial_id JOIN results r ON r.trial_id = t.id \
             WHERE t.state = 'succeeded' AND (?1 = '' OR s.sweep_id = ?1) \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )?;
        Ok(stmt
            .query_map([sweep], |r| {
                Ok(pb::AccuracyCell {
                    sweep_id: r.get(0)?,
                    kernel_size: r.get(1)?,
                    train_mode: r.get(2)?,
                    mean_test_acc: r.get(3)?,
                    trials: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The first sweep `trial` belongs to.
    pub fn sweep_of(&self, trial: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT sweep_id FROM sweep_trials WHERE trial_id = ?1 ORDER BY rowid LIMIT 1")?
            .query_row([trial], |r| r.get(0))
            .optional()?)
    }

    /// Every worker: `(id, name, last heard from in ms since the epoch)`.
    pub fn workers(&self) -> Result<Vec<(String, String, i64)>> {
        let mut stmt = self.conn.prepare_cached("SELECT id, name, last_seen_ms FROM workers")?;
        Ok(stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// When each worker was last heard from (ms since the epoch).
    pub fn worker_last_seen(&self) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached("SELECT last_seen_ms FROM workers")?;
        Ok(stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }

    /// Workers heard from since `since_ms`.
    pub fn workers_seen_since(&self, since_ms: i64) -> Result<u32> {
        Ok(ops::row(
            &self.conn,
            "SELECT COUNT(*) FROM workers WHERE last_seen_ms >= ?1",
            [since_ms],
            |r| r.get(0),
        )?)
    }

    /// Every result, read in one transaction.
    pub fn results(&self) -> Result<convsweep_proto::results::Results> {
        read::results(&self.conn)
    }
}
