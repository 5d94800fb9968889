//! The PostgreSQL backend: a coordinator's state in a database that clusters already run, so
//! that no volume pins a coordinator to one node and several coordinators can share a state.
//!
//! - this module: [`PostgresBackend`] (a store URL) and [`PgStore`], the writer, whose methods
//!   are each one transaction, committed before they return (PostgreSQL's own durability:
//!   `synchronous_commit` as the server is configured, `on` by default);
//! - `conn`: one connection, kept off tokio's threads, reconnected after it broke;
//! - `lease`: the lease state machine's writes and expiry in SQL, with the row locks that
//!   replicas need;
//! - `read`: [`PgReader`], status, snapshots, metrics and export in read-only transactions;
//! - `schema`: the tables (the SQLite backend's, versioned alike) and how to open them;
//! - `copy`: a SQLite state folder copied into an empty database and verified table by table.
//!
//! A transaction that PostgreSQL aborts to break a conflict between replicas (a deadlock, a
//! serialization failure) runs again, a few times, before its error is returned.

mod conn;
mod copy;
mod lease;
mod read;
mod schema;

pub use copy::{TableCopy, copy_sqlite_to_postgres};
pub use read::PgReader;

use convsweep_proto::{SweepId, TrialId, TrialState, pb};

use crate::error::{Error, Result};
use crate::store::contract::{Backend, Bus, CancelChunk, StoreReader, StoreWriter, Submitted};
use crate::store::lease::{Expired, LeaseOps, LeasePolicy, new_token, state_of};
use conn::{Conn, Session, redact, u32_of};
use schema::{ADMIN_LOCK, require_sweep, sweep_exists};

/// Whether `s` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// A coordinator's state in the PostgreSQL database at a URL.
#[derive(Clone)]
pub struct PostgresBackend {
    url: String,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("url", &redact(&self.url))
            .finish()
    }
}

impl PostgresBackend {
    /// The state at `url` (`postgres://user:password@host:port/database?options`), its schema
    /// created on the first writer's start.
    pub fn new(url: impl Into<String>) -> PostgresBackend {
        PostgresBackend { url: url.into() }
    }
}

impl Backend for PostgresBackend {
    fn open_writer(&self, policy: LeasePolicy) -> Result<Box<dyn StoreWriter>> {
        Ok(Box::new(PgStore::open(&self.url, policy)?))
    }

    fn open_reader(&self) -> Result<Box<dyn StoreReader>> {
        Ok(Box::new(PgReader::open(&self.url)?))
    }

    fn describe(&self) -> String {
        redact(&self.url)
    }

    fn bus(&self) -> Result<Option<Box<dyn Bus>>> {
        Ok(Some(Box::new(PgBus {
            conn: Conn::connect(&self.url)?,
            listening: None,
            leading: None,
        })))
    }
}

/// The channel coordinators on one database talk over (`LISTEN`/`NOTIFY`).
const CHANNEL: &str = "convsweep";

/// The session advisory lock whose holder reports the state's gauges.
const GAUGE_LOCK: i64 = ADMIN_LOCK + 1;

/// [`Bus`] over PostgreSQL's `LISTEN`/`NOTIFY` on a connection of its own: notifications are
/// sent at commit, to every session listening. What a session held (its `LISTEN`, the gauge
/// lock) is taken again after a reconnect.
#[derive(Debug)]
struct PgBus {
    conn: Conn,
    /// The connection generation that listens.
    listening: Option<u64>,
    /// The connection generation that holds the gauge lock.
    leading: Option<u64>,
}

impl Bus for PgBus {
    fn publish(&mut self, messages: &[String]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        // One transaction: one round trip per message, delivered together at commit.
        self.conn.transaction("BEGIN", |s| {
            for m in messages {
                s.exec("SELECT pg_notify($1, $2)", &[&CHANNEL, m])?;
            }
            Ok(())
        })
    }

    fn receive(&mut self, timeout: std::time::Duration) -> Result<Vec<String>> {
        let listening = self.listening;
        let (generation, messages) = self.conn.run(move |s| {
            // A new connection listens first.
            if listening != Some(s.generation()) {
                s.batch(&format!("LISTEN {CHANNEL}"))?;
            }
            Ok((s.generation(), s.notifications(timeout, 4096)?))
        })?;
        self.listening = Some(generation);
        Ok(messages)
    }

    fn lead(&mut self) -> Result<bool> {
        let leading = self.leading;
        let (generation, lead) = self.conn.run(move |s| {
            // Held for as long as the session lives.
            if leading == Some(s.generation()) {
                return Ok((s.generation(), true));
            }
            let got: bool = s.one("SELECT pg_try_advisory_lock($1)", &[&GAUGE_LOCK])?.get(0);
            Ok((s.generation(), got))
        })?;
        self.leading = lead.then_some(generation);
        Ok(lead)
    }
}

/// How often a transaction aborted by a conflict runs again before its error is returned.
const CONFLICT_RETRIES: usize = 5;

/// The writer of a PostgreSQL state.
#[derive(Debug)]
pub struct PgStore {
    conn: Conn,
    policy: LeasePolicy,
}

impl PgStore {
    /// Connects to the state at `url`, creating its schema in an empty database; refuses a
    /// state of another schema version, naming both.
    pub fn open(url: &str, policy: LeasePolicy) -> Result<PgStore> {
        Ok(PgStore {
            conn: schema::open_writable(url)?,
            policy,
        })
    }

    /// Runs `f` as one transaction, again when PostgreSQL aborted it over a conflict.
    fn write<R: Send>(&mut self, mut f: impl FnMut(&mut Session<'_>) -> Result<R> + Send) -> Result<R> {
        let mut tries = 0;
        loop {
            match self.conn.transaction("BEGIN", &mut f) {
                Err(e) if e.is_conflict() && tries < CONFLICT_RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "a transaction met a conflict; it runs again");
                }
                done => return done,
            }
        }
    }

    /// Creates the trials that do not exist yet (any sweep's) and links those not yet in
    /// `sweep` after its last position, in expansion order, a chunk of rows per statement.
    /// Returns (trials created, trials linked).
    fn add_trials(s: &mut Session<'_>, sweep: &SweepId, trials: &[(TrialId, String)], now: i64) -> Result<(u32, u32)> {
        const CHUNK: usize = 1 << 14;
        let sweep = sweep.as_str();
        let mut seq: i64 = s.one("SELECT COALESCE(MAX(seq), 0) FROM trials", &[])?.get(0);
        let mut position: i64 = s
            .one(
                "SELECT COALESCE(MAX(position), -1) FROM sweep_trials WHERE sweep_id = $1",
                &[&sweep],
            )?
            .get(0);
        let linked_before: std::collections::HashSet<String> = s
            .rows("SELECT trial_id FROM sweep_trials WHERE sweep_id = $1", &[&sweep])?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let (mut created, mut linked) = (0u32, 0u32);
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        for chunk in trials.chunks(CHUNK) {
            let (mut ids, mut seqs, mut jsons) = (Vec::new(), Vec::new(), Vec::new());
            let (mut link_ids, mut link_at) = (Vec::new(), Vec::new());
            for (id, json) in chunk {
                seq += 1;
                ids.push(id.as_str());
                seqs.push(seq);
                jsons.push(json.as_str());
                if !linked_before.contains(id.as_str()) {
                    position += 1;
                    link_ids.push(id.as_str());
                    link_at.push(position);
                }
            }
            let new: std::collections::HashSet<String> = s
                .rows(
                    "INSERT INTO trials (id, seq, spec_json, state, created_ms) \
                     SELECT i, q, j, 'pending', $4 FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(i, q, j) \
                     ON CONFLICT (id) DO NOTHING RETURNING id",
                    &[&ids, &seqs, &jsons, &now],
                )?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            created += new.len() as u32;
            let n = s.exec(
                "INSERT INTO sweep_trials (sweep_id, trial_id, position) \
                 SELECT $1, t, p FROM unnest($2::text[], $3::bigint[]) AS u(t, p) ON CONFLICT DO NOTHING",
                &[&sweep, &link_ids, &link_at],
            )?;
            linked += n as u32;
            let old: Vec<&str> = link_ids.iter().copied().filter(|id| !new.contains(*id)).collect();
            *counts.entry(TrialState::Pending.as_str().to_owned()).or_default() += (link_ids.len() - old.len()) as i64;
            if !old.is_empty() {
                for r in s.rows(
                    "SELECT state, COUNT(*) FROM trials WHERE id = ANY($1) GROUP BY state",
                    &[&old],
                )? {
                    *counts.entry(r.get(0)).or_default() += r.get::<_, i64>(1);
                }
            }
        }
        for (state, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
            s.exec(
                "INSERT INTO sweep_progress (sweep_id, state, shard, n) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (sweep_id, state, shard) DO UPDATE SET n = sweep_progress.n + excluded.n",
                &[&sweep, &state, &n],
            )?;
        }
        Ok((created, linked))
    }
}

impl StoreWriter for PgStore {
    fn batch(&mut self, now: i64, f: &mut (dyn FnMut(&mut dyn LeaseOps) -> Result<()> + Send)) -> Result<()> {
        let policy = self.policy;
        self.write(|s| f(&mut lease::PgLeaseOps { s, policy, now }))
    }

    fn submit(
        &mut self,
        sweep: &SweepId,
        spec_toml: &str,
        trials: &[(TrialId, String)],
        now: i64,
    ) -> Result<Submitted> {
        self.write(|s| {
            // Submits and extends of every replica take turns.
            s.exec("SELECT pg_advisory_xact_lock($1)", &[&ADMIN_LOCK])?;
            if sweep_exists(s, sweep.as_str())? {
                let mut existing: Vec<String> = s
                    .rows(
                        "SELECT trial_id FROM sweep_trials WHERE sweep_id = $1",
                        &[&sweep.as_str()],
                    )?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
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
            s.exec(
                "INSERT INTO sweeps (id, spec_toml, created_ms) VALUES ($1, $2, $3)",
                &[&sweep.as_str(), &spec_toml, &now],
            )?;
            let (created, _) = PgStore::add_trials(s, sweep, trials, now)?;
            Ok(Submitted {
                trials: trials.len() as u32,
                new_trials: created,
            })
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
        self.write(|s| {
            s.exec("SELECT pg_advisory_xact_lock($1)", &[&ADMIN_LOCK])?;
            if !sweep_exists(s, sweep.as_str())? {
                return Err(Error::NotFound(format!(
                    "no sweep named {sweep:?} to extend; submit it first"
                )));
            }
            s.exec(
                "UPDATE sweeps SET spec_toml = $2 WHERE id = $1",
                &[&sweep.as_str(), &spec_toml],
            )?;
            let (_, linked) = PgStore::add_trials(s, sweep, trials, now)?;
            let total: i64 = s
                .one(
                    "SELECT COUNT(*) FROM sweep_trials WHERE sweep_id = $1",
                    &[&sweep.as_str()],
                )?
                .get(0);
            let total = u32_of(total, "trial count")?;
            if u64::from(total) > max_trials {
                // The error rolls the links back.
                return Err(Error::InvalidSpec(convsweep_proto::FieldError::new(
                    "grid",
                    format!(
                        "extending sweep {sweep} by {linked} trials would make it {total}, over the limit of \
                         {max_trials} trials per sweep (the coordinator's --max-trials-per-sweep); nothing was added"
                    ),
                )));
            }
            Ok(Submitted {
                trials: total,
                new_trials: linked,
            })
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
        self.write(|s| {
            require_sweep(s, sweep)?;
            let mut targets: Vec<(String, TrialState, i64)> = Vec::new();
            let mut next = None;
            if trial_ids.is_empty() {
                for r in s.rows(
                    "SELECT s.trial_id, t.state, t.attempt FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
                     WHERE s.sweep_id = $1 AND s.trial_id > $2 AND t.state IN ('pending', 'leased', 'running', 'preempted') \
                     ORDER BY s.trial_id LIMIT $3 FOR UPDATE OF t",
                    &[&sweep, &after, &(limit as i64)],
                )? {
                    targets.push((r.get(0), state_of(r.get(1))?, r.get(2)));
                }
                if targets.len() == limit {
                    next = targets.last().map(|(id, _, _)| id.clone());
                }
            } else {
                let mut seen = std::collections::HashSet::new();
                for id in trial_ids {
                    let Some(r) = s.opt(
                        "SELECT t.state, t.attempt FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
                         WHERE s.sweep_id = $1 AND s.trial_id = $2 FOR UPDATE OF t",
                        &[&sweep, id],
                    )?
                    else {
                        return Err(Error::NotFound(format!("trial {id} is not part of sweep {sweep}")));
                    };
                    let state = state_of(r.get(0))?;
                    if !state.is_done() && seen.insert(id.as_str()) {
                        targets.push((id.clone(), state, r.get(1)));
                    }
                }
            }
            let mut cancelled = 0;
            for (id, state, attempt) in targets {
                if state.is_active() {
                    s.exec(
                        "UPDATE attempts SET ended_ms = $3, outcome = 'cancelled', reason = 'cancelled by a user' \
                         WHERE trial_id = $1 AND attempt = $2",
                        &[&id, &attempt, &now],
                    )?;
                }
                s.exec(
                    "UPDATE trials SET state = 'cancelled', lease_token = NULL, lease_deadline_ms = NULL, \
                     reason = 'cancelled by a user', finished_ms = $2 WHERE id = $1",
                    &[&id, &now],
                )?;
                cancelled += 1;
            }
            Ok(CancelChunk { cancelled, next })
        })
    }

    fn resume(&mut self, sweep: &str) -> Result<u32> {
        self.write(|s| {
            require_sweep(s, sweep)?;
            let n = s.exec(
                "UPDATE trials SET state = 'pending', reason = NULL, finished_ms = NULL, resume_floor = attempt \
                 WHERE state IN ('failed', 'cancelled') AND id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = $1)",
                &[&sweep],
            )?;
            Ok(n as u32)
        })
    }

    fn resume_stopped(&mut self, sweep: &str, trial_ids: &[String]) -> Result<u32> {
        let trial_ids = trial_ids.to_vec();
        self.write(move |s| {
            require_sweep(s, sweep)?;
            let set = "UPDATE trials SET state = 'pending', reason = NULL, finished_ms = NULL, resume_floor = attempt, \
                       stop_rung = -1 WHERE state = 'stopped' AND id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = $1)";
            let mut n = 0;
            if trial_ids.is_empty() {
                n += s.exec(set, &[&sweep])?;
            } else {
                for id in &trial_ids {
                    n += s.exec(&format!("{set} AND id = $2"), &[&sweep, id])?;
                }
            }
            Ok(n as u32)
        })
    }

    fn record_decisions(
        &mut self,
        decisions: &[pb::ExportDecision],
        stops: &[(String, u32)],
        now: i64,
    ) -> Result<Vec<String>> {
        let (decisions, stops) = (decisions.to_vec(), stops.to_vec());
        self.write(move |s| {
            for d in &decisions {
                s.exec(
                    "INSERT INTO decisions (sweep_id, config, rung, group_key, rule, kept, metric, value, seeds, rank, \
                     ranked, trials, inputs, decided_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING",
                    &[
                        &d.sweep_id,
                        &d.config,
                        &i64::from(d.rung),
                        &d.group,
                        &d.rule,
                        &d.kept,
                        &d.metric,
                        &d.value,
                        &i64::from(d.seeds),
                        &i64::from(d.rank),
                        &i64::from(d.ranked),
                        &d.trials,
                        &d.inputs,
                        &d.decided_ms,
                    ],
                )?;
            }
            let mut ended = Vec::new();
            for (trial, rung) in &stops {
                let rung = i64::from(*rung);
                s.exec(
                    "UPDATE trials SET stop_rung = $2 WHERE id = $1 AND stop_rung IS NULL",
                    &[trial, &rung],
                )?;
                let n = s.exec(
                    "UPDATE trials SET state = 'stopped', lease_token = NULL, lease_deadline_ms = NULL, finished_ms = $3, \
                     reason = 'stopped before it ran further by the sweep''s stopping rule (its configuration was stopped at rung ' || $2::bigint || ')' \
                     WHERE id = $1 AND stop_rung = $2 AND state IN ('pending', 'preempted')",
                    &[trial, &rung, &now],
                )?;
                if n > 0 {
                    ended.push(trial.clone());
                }
            }
            Ok(ended)
        })
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
        let slots = i64::from(slots);
        self.write(|s| {
            let known: Option<String> = match instance {
                Some(i) => s
                    .opt("SELECT id FROM workers WHERE instance = $1 FOR UPDATE", &[&i])?
                    .map(|r| r.get(0)),
                None => None,
            };
            let id = match known {
                Some(id) => {
                    s.exec(
                        "UPDATE workers SET name = $2, host = $3, devices = $4, slots = $5, last_seen_ms = $6 WHERE id = $1",
                        &[&id, &name, &host, &devices, &slots, &now],
                    )?;
                    id
                }
                None => {
                    let id = new_token("w-");
                    s.exec(
                        "INSERT INTO workers (id, name, host, devices, slots, registered_ms, last_seen_ms, instance) \
                         VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
                        &[&id, &name, &host, &devices, &slots, &now, &instance],
                    )?;
                    id
                }
            };
            Ok(id)
        })
    }

    fn prune_workers(&mut self, seen_before: i64) -> Result<usize> {
        self.write(|s| {
            Ok(s.exec(
                "DELETE FROM workers WHERE last_seen_ms < $1 AND NOT EXISTS \
                 (SELECT 1 FROM trials t WHERE t.worker_id = workers.id AND t.state IN ('leased', 'running'))",
                &[&seen_before],
            )? as usize)
        })
    }

    fn expire_leases(&mut self, now: i64) -> Result<Vec<Expired>> {
        let policy = self.policy;
        self.write(|s| lease::expire_leases(s, policy, now))
    }

    fn extend_leases(&mut self, by_ms: i64) -> Result<usize> {
        self.write(|s| {
            Ok(s.exec(
                "UPDATE trials SET lease_deadline_ms = lease_deadline_ms + $1 WHERE state IN ('leased', 'running')",
                &[&by_ms],
            )? as usize)
        })
    }

    fn database_clock_ms(&mut self) -> Result<Option<i64>> {
        self.conn.run(|s| {
            Ok(Some(
                s.one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[])?
                    .get(0),
            ))
        })
    }

    fn grant_restart_grace(&mut self, now: i64) -> Result<usize> {
        let floor = now + self.policy.lease_timeout_ms;
        self.write(|s| {
            Ok(s.exec(
                "UPDATE trials SET lease_deadline_ms = GREATEST(COALESCE(lease_deadline_ms, 0), $1) \
                 WHERE state IN ('leased', 'running')",
                &[&floor],
            )? as usize)
        })
    }
}
