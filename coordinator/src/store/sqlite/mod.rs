//! The embedded backend: SQLite in WAL mode with `synchronous = FULL` in the coordinator's
//! state folder, so that every transaction that returned is on disk before the RPC that caused
//! it is acknowledged.
//!
//! - this module: [`SqliteBackend`] (the state folder) and [`SqliteStore`], the writer, whose
//!   methods are each one transaction;
//! - [`lease`]: the lease state machine's writes and expiry in SQL;
//! - [`read`]: [`SqliteReader`], the read-only connection behind status, snapshots, metrics and
//!   export (safe beside a live coordinator: it never writes, migrates or locks);
//! - [`schema`]: the tables, the schema version and its migrations, and how to open a state.

mod lease;
mod read;
mod schema;

pub use read::SqliteReader;
pub use schema::{DB_FILE, SCHEMA_VERSION};

use schema::state_of;

use std::path::{Path, PathBuf};

use convsweep_proto::{SweepId, TrialId, TrialState, pb};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};
use crate::store::contract::{Backend, CancelChunk, StoreReader, StoreWriter, Submitted};
use crate::store::lease::{Expired, LeaseOps, LeasePolicy};

/// A coordinator's state folder.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    dir: PathBuf,
}

impl SqliteBackend {
    /// The state in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> SqliteBackend {
        SqliteBackend { dir: dir.into() }
    }
}

impl Backend for SqliteBackend {
    fn open_writer(&self, policy: LeasePolicy) -> Result<Box<dyn StoreWriter>> {
        Ok(Box::new(SqliteStore::open(&self.dir, policy)?))
    }

    fn open_reader(&self) -> Result<Box<dyn StoreReader>> {
        Ok(Box::new(SqliteReader::open(&self.dir)?))
    }

    fn describe(&self) -> String {
        self.dir.join(DB_FILE).display().to_string()
    }
}

/// The writer of a state folder. Not `Sync`: the coordinator keeps it behind a mutex.
pub struct SqliteStore {
    conn: Connection,
    policy: LeasePolicy,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating or migrating when needed) the state in `dir`. A new folder is made
    /// 0700 and a new database 0600 (SQLite gives its WAL and shared-memory files the
    /// database's mode): a state holds every spec, result and failure reason.
    pub fn open(dir: &Path, policy: LeasePolicy) -> Result<SqliteStore> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let path = dir.join(DB_FILE);
        // Created empty with its mode before SQLite opens it (SQLite would use the umask).
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "the state database is readable by others (an older convsweep made it so); chmod 600 it, and its -wal and -shm files"
            );
        }
        let conn = schema::open_writable(&path)?;
        Ok(SqliteStore { conn, policy, path })
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
                    TrialState::Pending.as_str().to_owned()
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
}

impl StoreWriter for SqliteStore {
    fn batch(&mut self, now: i64, f: &mut (dyn FnMut(&mut dyn LeaseOps) -> Result<()> + Send)) -> Result<()> {
        let policy = self.policy;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        f(&mut lease::SqliteLeaseOps { tx: &tx, policy, now })?;
        // An `Err` above drops the transaction, which rolls the batch back.
        tx.commit()?;
        Ok(())
    }

    fn submit(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[(TrialId, String)],
        now: i64,
    ) -> Result<Submitted> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if schema::sweep_exists(&tx, sweep.as_str())? {
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
        let (created, _) = SqliteStore::add_trials(&tx, sweep, trials, now)?;
        tx.commit()?;
        Ok(Submitted {
            trials: trials.len() as u32,
            new_trials: created,
        })
    }

    fn extend(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[(TrialId, String)],
        now: i64,
        max_trials: u64,
    ) -> Result<Submitted> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !schema::sweep_exists(&tx, sweep.as_str())? {
            return Err(Error::NotFound(format!(
                "no sweep named {sweep:?} to extend; submit it first"
            )));
        }
        tx.execute(
            "UPDATE sweeps SET spec_toml = ?2 WHERE id = ?1",
            params![sweep.as_str(), spec_toml],
        )?;
        let (_, linked) = SqliteStore::add_trials(&tx, sweep, trials, now)?;
        let total: u32 = tx.query_row(
            "SELECT COUNT(*) FROM sweep_trials WHERE sweep_id = ?1",
            [sweep.as_str()],
            |r| r.get(0),
        )?;
        if u64::from(total) > max_trials {
            // Dropping the transaction undoes the links.
            return Err(Error::InvalidSpec(convsweep_proto::FieldError::new(
                "grid",
                format!(
                    "extending sweep {sweep} by {linked} trials would make it {total}, over the limit of \
                     {max_trials} trials per sweep (the coordinator's --max-trials-per-sweep); nothing was added"
                ),
            )));
        }
        tx.commit()?;
        Ok(Submitted {
            trials: total,
            new_trials: linked,
        })
    }

    // A trial shared with another sweep is cancelled there too.
    fn cancel(
        &mut self,
        sweep: &str,
        trial_ids: &[String],
        after: &str,
        limit: usize,
        now: i64,
    ) -> Result<CancelChunk> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        schema::require_sweep(&tx, sweep)?;
        let mut targets: Vec<(String, TrialState, u32)> = Vec::new();
        let mut next = None;
        if trial_ids.is_empty() {
            // Keyset order over the sweep's primary key: each chunk reads only its own rows.
            let mut stmt = tx.prepare_cached(
                "SELECT s.trial_id, t.state, t.attempt FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
                 WHERE s.sweep_id = ?1 AND s.trial_id > ?2 AND t.state IN ('pending', 'leased', 'running', 'preempted') \
                 ORDER BY s.trial_id LIMIT ?3",
            )?;
            let rows: Vec<(String, String, u32)> = stmt
                .query_map(params![sweep, after, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            for (id, state, attempt) in rows {
                targets.push((id, state_of(state)?, attempt));
            }
            if targets.len() == limit {
                next = targets.last().map(|(id, _, _)| id.clone());
            }
        } else {
            let mut member = tx.prepare_cached(
                "SELECT t.state, t.attempt FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
                 WHERE s.sweep_id = ?1 AND s.trial_id = ?2",
            )?;
            // A trial named twice is cancelled (and counted) once.
            let mut seen = std::collections::HashSet::new();
            for id in trial_ids {
                let Some((state, attempt)) = member
                    .query_row(params![sweep, id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
                    })
                    .optional()?
                else {
                    return Err(Error::NotFound(format!("trial {id} is not part of sweep {sweep}")));
                };
                let state = state_of(state)?;
                if !state.is_done() && seen.insert(id.as_str()) {
                    targets.push((id.clone(), state, attempt));
                }
            }
        }
        let mut cancelled = 0;
        for (id, state, attempt) in targets {
            if state.is_active() {
                lease::exec(
                    &tx,
                    "UPDATE attempts SET ended_ms = ?3, outcome = 'cancelled', reason = 'cancelled by a user' \
                     WHERE trial_id = ?1 AND attempt = ?2",
                    params![id, attempt, now],
                )?;
            }
            lease::exec(
                &tx,
                "UPDATE trials SET state = 'cancelled', lease_token = NULL, lease_deadline_ms = NULL, \
                 reason = 'cancelled by a user', finished_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            cancelled += 1;
        }
        tx.commit()?;
        Ok(CancelChunk { cancelled, next })
    }

    fn resume(&mut self, sweep: &str) -> Result<u32> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        schema::require_sweep(&tx, sweep)?;
        let n = tx.execute(
            "UPDATE trials SET state = 'pending', reason = NULL, finished_ms = NULL, resume_floor = attempt \
             WHERE state IN ('failed', 'cancelled') AND id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = ?1)",
            [sweep],
        )?;
        tx.commit()?;
        Ok(n as u32)
    }

    fn resume_stopped(&mut self, sweep: &str, trial_ids: &[String]) -> Result<u32> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        schema::require_sweep(&tx, sweep)?;
        let of_sweep = "state = 'stopped' AND id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = ?1)";
        let set = "UPDATE trials SET state = 'pending', reason = NULL, finished_ms = NULL, resume_floor = attempt, stop_rung = -1";
        let mut n = 0;
        if trial_ids.is_empty() {
            n += tx.execute(&format!("{set} WHERE {of_sweep}"), [sweep])?;
        } else {
            for id in trial_ids {
                n += tx.execute(&format!("{set} WHERE {of_sweep} AND id = ?2"), params![sweep, id])?;
            }
        }
        tx.commit()?;
        Ok(n as u32)
    }

    fn record_decisions(
        &mut self,
        decisions: &[pb::ExportDecision],
        stops: &[(String, u32)],
        now: i64,
    ) -> Result<Vec<String>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for d in decisions {
            lease::exec(
                &tx,
                "INSERT OR IGNORE INTO decisions (sweep_id, config, rung, group_key, rule, kept, metric, value, seeds, \
                 rank, ranked, trials, inputs, decided_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    d.sweep_id,
                    d.config,
                    d.rung,
                    d.group,
                    d.rule,
                    d.kept,
                    d.metric,
                    d.value,
                    d.seeds,
                    d.rank,
                    d.ranked,
                    d.trials,
                    d.inputs,
                    d.decided_ms
                ],
            )?;
        }
        let mut ended = Vec::new();
        for (trial, rung) in stops {
            lease::exec(
                &tx,
                "UPDATE trials SET stop_rung = ?2 WHERE id = ?1 AND stop_rung IS NULL",
                params![trial, rung],
            )?;
            let n = lease::exec(
                &tx,
                "UPDATE trials SET state = 'stopped', lease_token = NULL, lease_deadline_ms = NULL, finished_ms = ?3, \
                 reason = 'stopped before it ran further by the sweep''s stopping rule (its configuration was stopped at rung ' || ?2 || ')' \
                 WHERE id = ?1 AND stop_rung = ?2 AND state IN ('pending', 'preempted')",
                params![trial, rung, now],
            )?;
            if n > 0 {
                ended.push(trial.clone());
            }
        }
        tx.commit()?;
        Ok(ended)
    }

    fn register_worker(
        &mut self,
        name: &str,
        host: &str,
        devices: &[String],
        slots: u32,
        now: i64,
        instance: &str,
    ) -> Result<String> {
        let devices = serde_json::to_string(devices).unwrap_or_default();
        let instance = (!instance.is_empty()).then_some(instance);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: Option<String> = match instance {
            Some(i) => tx
                .query_row("SELECT id FROM workers WHERE instance = ?1", [i], |r| r.get(0))
                .optional()?,
            None => None,
        };
        let id = match known {
            Some(id) => {
                tx.execute(
                    "UPDATE workers SET name = ?2, host = ?3, devices = ?4, slots = ?5, last_seen_ms = ?6 WHERE id = ?1",
                    params![id, name, host, devices, slots, now],
                )?;
                id
            }
            None => {
                let id = lease::new_token("w-");
                tx.execute(
                    "INSERT INTO workers (id, name, host, devices, slots, registered_ms, last_seen_ms, instance) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                    params![id, name, host, devices, slots, now, instance],
                )?;
                id
            }
        };
        tx.commit()?;
        Ok(id)
    }

    fn prune_workers(&mut self, seen_before: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM workers WHERE last_seen_ms < ?1 AND NOT EXISTS \
             (SELECT 1 FROM trials t WHERE t.worker_id = workers.id AND t.state IN ('leased', 'running'))",
            [seen_before],
        )?)
    }

    fn expire_leases(&mut self, now: i64) -> Result<Vec<Expired>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let touched = lease::expire_leases(&tx, self.policy, now)?;
        tx.commit()?;
        Ok(touched)
    }

    fn extend_leases(&mut self, by_ms: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE trials SET lease_deadline_ms = lease_deadline_ms + ?1 WHERE state IN ('leased', 'running')",
            [by_ms],
        )?)
    }

    fn grant_restart_grace(&mut self, now: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE trials SET lease_deadline_ms = MAX(COALESCE(lease_deadline_ms, 0), ?1) \
             WHERE state IN ('leased', 'running')",
            [now + self.policy.lease_timeout_ms],
        )?)
    }
}
