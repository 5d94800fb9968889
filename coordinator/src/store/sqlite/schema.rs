//! The state folder's SQLite schema, its version and the two ways to open it: writable by the
//! coordinator (creating or migrating the schema) and read-only for export and report (no DDL, no
//! migration, no write lock; a state of another schema version is refused, naming both).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};

/// File name of the database inside the state folder.
pub const DB_FILE: &str = "state.db";

/// The schema version this convsweep writes and reads.
pub const SCHEMA_VERSION: i64 = 9;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    spec_toml TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    worker_id TEXT,
    lease_deadline_ms INTEGER,
    reason TEXT,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    resume_floor INTEGER NOT NULL DEFAULT 0,
    lease_heard INTEGER NOT NULL DEFAULT 1,
    planned_epochs INTEGER,
    stop_rung INTEGER
);
-- trials.stop_rung: the rung at which a stopping rule stopped the trial's configuration (a
-- worker holding it is told to stop; a queued one ends `stopped` at once); -1 once a user
-- resumed it past that decision; NULL otherwise.
-- trials.planned_epochs: train.epochs of spec_json, copied when the trial is leased, so that
-- every epoch report is checked without parsing the JSON (NULL before a lease, and for a lease
-- a version 7 coordinator granted).
CREATE INDEX IF NOT EXISTS trials_by_state ON trials(state, seq);
-- The lease queue in order, and the active leases by deadline: a lease or an expiry pass reads
-- the few rows it needs, never the whole queue, nor sorts it.
CREATE INDEX IF NOT EXISTS trials_leasable ON trials(seq) WHERE state IN ('pending', 'preempted');
CREATE INDEX IF NOT EXISTS trials_active ON trials(lease_deadline_ms) WHERE state IN ('leased', 'running');
-- The leases a worker holds, for its free slots.
CREATE INDEX IF NOT EXISTS trials_by_worker ON trials(worker_id) WHERE state IN ('leased', 'running');
CREATE TABLE IF NOT EXISTS sweep_trials (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    trial_id TEXT NOT NULL REFERENCES trials(id),
    position INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, trial_id)
);
CREATE INDEX IF NOT EXISTS sweep_trials_by_trial ON sweep_trials(trial_id);
CREATE TABLE IF NOT EXISTS attempts (
    trial_id TEXT NOT NULL REFERENCES trials(id),
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    lease_token TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    outcome TEXT,
    reason TEXT,
    PRIMARY KEY (trial_id, attempt)
);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_by_token ON attempts(lease_token);
CREATE TABLE IF NOT EXISTS epochs (
    trial_id TEXT NOT NULL REFERENCES trials(id),
    epoch INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    lr REAL NOT NULL,
    train_loss REAL NOT NULL,
    train_acc REAL NOT NULL,
    test_loss REAL NOT NULL,
    test_acc REAL NOT NULL,
    seconds REAL NOT NULL,
    val_loss REAL,
    val_acc REAL,
    PRIMARY KEY (trial_id, epoch)
);
-- A stopping rule's decisions: one per configuration (a grid point over its seeds) and rung.
CREATE TABLE IF NOT EXISTS decisions (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    config TEXT NOT NULL,
    rung INTEGER NOT NULL,
    group_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    kept INTEGER NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    seeds INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    ranked INTEGER NOT NULL,
    trials TEXT NOT NULL,
    inputs TEXT NOT NULL,
    decided_ms INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, group_key, config, rung)
);
CREATE TABLE IF NOT EXISTS results (
    trial_id TEXT PRIMARY KEY REFERENCES trials(id),
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    final_train_loss REAL NOT NULL,
    final_train_acc REAL NOT NULL,
    final_test_loss REAL NOT NULL,
    final_test_acc REAL NOT NULL,
    best_test_acc REAL NOT NULL,
    best_epoch INTEGER NOT NULL,
    params_total INTEGER NOT NULL,
    params_learnable INTEGER NOT NULL,
    flops_per_image INTEGER NOT NULL,
    wall_seconds REAL NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    device TEXT NOT NULL,
    completed_ms INTEGER NOT NULL,
    eval_error TEXT NOT NULL DEFAULT '',
    eval_seconds REAL NOT NULL DEFAULT 0,
    conv_algorithm TEXT NOT NULL DEFAULT '',
    startup_seconds REAL NOT NULL DEFAULT 0,
    train_seconds REAL NOT NULL DEFAULT 0,
    epoch_eval_seconds REAL NOT NULL DEFAULT 0,
    checkpoint_seconds REAL NOT NULL DEFAULT 0,
    report_seconds REAL NOT NULL DEFAULT 0,
    train_images INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS robustness (
    trial_id TEXT NOT NULL REFERENCES trials(id),
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    eps REAL NOT NULL,
    severity INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    images INTEGER NOT NULL,
    PRIMARY KEY (trial_id, kind, name, eps, severity)
);
CREATE TABLE IF NOT EXISTS filters (
    trial_id TEXT NOT NULL REFERENCES trials(id),
    stage TEXT NOT NULL,
    layer TEXT NOT NULL,
    kernel_size INTEGER NOT NULL,
    filters INTEGER NOT NULL,
    fve REAL NOT NULL,
    fve_norm REAL,
    sparsity REAL NOT NULL,
    orthogonality REAL NOT NULL,
    heatmap TEXT NOT NULL,
    folded INTEGER NOT NULL,
    PRIMARY KEY (trial_id, stage, layer)
);
-- Trials per sweep and state, and when each sweep's first attempt started: kept in the
-- transaction of every change (by the triggers below, and for new links by the store's
-- add_trials), so that a status needs no scan.
CREATE TABLE IF NOT EXISTS sweep_progress (
    sweep_id TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sweep_started (
    sweep_id TEXT PRIMARY KEY,
    first_start_ms INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS progress_on_state AFTER UPDATE OF state ON trials
WHEN old.state <> new.state BEGIN
    UPDATE sweep_progress SET n = n - 1
        WHERE state = old.state AND sweep_id IN (SELECT sweep_id FROM sweep_trials WHERE trial_id = new.id);
    INSERT INTO sweep_progress (sweep_id, state, n)
        SELECT sweep_id, new.state, 1 FROM sweep_trials WHERE trial_id = new.id
        ON CONFLICT (sweep_id, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS started_on_attempt AFTER INSERT ON attempts BEGIN
    INSERT OR IGNORE INTO sweep_started (sweep_id, first_start_ms)
        SELECT sweep_id, new.started_ms FROM sweep_trials WHERE trial_id = new.trial_id;
END;
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    devices TEXT NOT NULL,
    slots INTEGER NOT NULL,
    registered_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    instance TEXT
);
"#;

/// Settings of every connection: room for the statements the coordinator caches, a page cache
/// that holds the hot part of a large state (64 MiB instead of 2), and reads through mmap.
fn tune(conn: &Connection) -> Result<()> {
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn stored_version(conn: &Connection) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .optional()?)
}

fn mismatch(path: &Path, found: &str) -> Error {
    Error::SchemaMismatch {
        path: path.display().to_string(),
        found: found.to_owned(),
        expected: SCHEMA_VERSION,
    }
}

/// Opens the database at `path` for the coordinator, creating the schema or migrating an older
/// one; WAL, `synchronous = FULL`, foreign keys on.
pub(super) fn open_writable(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    tune(&conn)?;
    // The writer's page cache holds the indexes a large submit inserts into at random (trial
    // ids are hashes): 256 MiB, against SQLite's default of 2.
    conn.pragma_update(None, "cache_size", -262_144)?;
    conn.execute_batch(SCHEMA)?;
    match stored_version(&conn)?.as_deref() {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(v @ ("1" | "2" | "3" | "4" | "5" | "6" | "7" | "8")) => {
            // v6 -> v7: whether a lease was confirmed by its worker (leases of an older state
            // count as confirmed), and the instance a worker registered with.
            // v7 -> v8: the epochs a leased trial trains (NULL: read from its spec).
            // v8 -> v9: validation metrics per epoch (NULL where none was held out), the rung
            // a stopping rule stopped a trial at (the decisions table came with SCHEMA).
            let mut steps = String::from("BEGIN;");
            if !matches!(v, "6" | "7" | "8") {
                steps.push_str(&steps_to_6(v));
            }
            if !matches!(v, "7" | "8") {
                steps.push_str(
                    "ALTER TABLE trials ADD COLUMN lease_heard INTEGER NOT NULL DEFAULT 1;
                     ALTER TABLE workers ADD COLUMN instance TEXT;",
                );
            }
            if v != "8" {
                steps.push_str("ALTER TABLE trials ADD COLUMN planned_epochs INTEGER;");
            }
            steps.push_str(
                "ALTER TABLE epochs ADD COLUMN val_loss REAL;
                 ALTER TABLE epochs ADD COLUMN val_acc REAL;
                 ALTER TABLE trials ADD COLUMN stop_rung INTEGER;
                 UPDATE meta SET value = '9' WHERE key = 'schema_version';
                 COMMIT;",
            );
            conn.execute_batch(&steps)?;
        }
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(v) => return Err(mismatch(path, v)),
    }
    // Indexes on columns a migration adds come after it.
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS workers_by_instance ON workers(instance) WHERE instance IS NOT NULL;",
    )?;
    Ok(conn)
}

/// The migration steps from version `v` (1 to 5) to version 6, without a transaction.
fn steps_to_6(v: &str) -> String {
    // v1 -> v2: evaluation columns on results (the new tables came with SCHEMA).
    // v2 -> v3: attempts before a resume no longer count against max_attempts.
    // v3 -> v4: the conv algorithm a result was computed with (empty: not recorded).
    // v4 -> v5: per-sweep progress counts and start times (tables and triggers came
    // with SCHEMA), filled from the trials once.
    // v5 -> v6: where each result's time went (0 where not recorded).
    let mut steps = String::new();
    if v == "1" {
        steps.push_str(
            "ALTER TABLE results ADD COLUMN eval_error TEXT NOT NULL DEFAULT '';
             ALTER TABLE results ADD COLUMN eval_seconds REAL NOT NULL DEFAULT 0;",
        );
    }
    if v == "1" || v == "2" {
        steps.push_str("ALTER TABLE trials ADD COLUMN resume_floor INTEGER NOT NULL DEFAULT 0;");
    }
    if !matches!(v, "4" | "5") {
        steps.push_str("ALTER TABLE results ADD COLUMN conv_algorithm TEXT NOT NULL DEFAULT '';");
    }
    steps.push_str(
        "ALTER TABLE results ADD COLUMN startup_seconds REAL NOT NULL DEFAULT 0;
         ALTER TABLE results ADD COLUMN train_seconds REAL NOT NULL DEFAULT 0;
         ALTER TABLE results ADD COLUMN epoch_eval_seconds REAL NOT NULL DEFAULT 0;
         ALTER TABLE results ADD COLUMN checkpoint_seconds REAL NOT NULL DEFAULT 0;
         ALTER TABLE results ADD COLUMN report_seconds REAL NOT NULL DEFAULT 0;
         ALTER TABLE results ADD COLUMN train_images INTEGER NOT NULL DEFAULT 0;",
    );
    steps.push_str(
        "DELETE FROM sweep_progress;
         INSERT INTO sweep_progress (sweep_id, state, n)
             SELECT s.sweep_id, t.state, COUNT(*) FROM sweep_trials s JOIN trials t ON t.id = s.trial_id
             GROUP BY s.sweep_id, t.state;
         DELETE FROM sweep_started;
         INSERT INTO sweep_started (sweep_id, first_start_ms)
             SELECT s.sweep_id, MIN(a.started_ms) FROM attempts a JOIN sweep_trials s ON s.trial_id = a.trial_id
             GROUP BY s.sweep_id;
         UPDATE meta SET value = '6' WHERE key = 'schema_version';",
    );
    steps
}

/// Opens the database at `path` read-only: a reader beside a live coordinator (WAL readers
/// never block its writes, nor wait for them). Fails when there is none, when it is not a
/// convsweep state, or when its schema version is not this convsweep's.
pub(super) fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::NotFound(format!(
            "no coordinator state at {} (expected {} there)",
            path.parent().unwrap_or(path).display(),
            DB_FILE
        )));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    tune(&conn)?;
    let has_meta = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_meta {
        return Err(Error::Corrupt(format!(
            "{} is not a convsweep state (it has no meta table)",
            path.display()
        )));
    }
    match stored_version(&conn)? {
        Some(v) if v == SCHEMA_VERSION.to_string() => Ok(conn),
        Some(v) => Err(mismatch(path, &v)),
        None => Err(Error::Corrupt(format!(
            "{} has no schema version in its meta table",
            path.display()
        ))),
    }
}

pub(super) use crate::store::lease::{spec_of, state_of};

/// Whether a sweep of that name exists.
pub(super) fn sweep_exists(conn: &Connection, sweep: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sweeps WHERE id = ?1")?
        .query_row([sweep], |_| Ok(()))
        .optional()?
        .is_some())
}

/// `NotFound` naming the sweep when there is none of that name.
pub(super) fn require_sweep(tx: &Connection, sweep: &str) -> Result<()> {
    if sweep_exists(tx, sweep)? {
        Ok(())
    } else {
        Err(Error::NotFound(format!("no sweep named {sweep:?}")))
    }
}
