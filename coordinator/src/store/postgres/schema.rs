//! The PostgreSQL schema: the SQLite backend's tables with PostgreSQL's types, versioned alike
//! (the same [`SCHEMA_VERSION`] in a `meta` table), and how a coordinator or a reader opens it.
//!
//! Differences from SQLite, none visible through the store's contract: integers are `BIGINT`
//! and flags `BOOLEAN`; the insertion order SQLite keeps in `rowid` is a `BIGSERIAL` column
//! (`sweep_trials.link`, which sweep a shared trial was linked to first, and `filters.seq`, the
//! order a result listed its layers in); the progress triggers are PL/pgSQL functions.

use crate::error::{Error, Result};
use crate::store::sqlite::SCHEMA_VERSION;

use super::conn::{Conn, Session, redact};

/// Every `CREATE` of version 9, idempotent. Run under an advisory lock, so that replicas
/// starting together do not race over the catalog.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT COLLATE "C" NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT COLLATE "C" PRIMARY KEY,
    spec_toml TEXT COLLATE "C" NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    id TEXT COLLATE "C" PRIMARY KEY,
    seq BIGINT NOT NULL,
    spec_json TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 0,
    lease_token TEXT COLLATE "C",
    worker_id TEXT COLLATE "C",
    lease_deadline_ms BIGINT,
    reason TEXT COLLATE "C",
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    resume_floor BIGINT NOT NULL DEFAULT 0,
    lease_heard BOOLEAN NOT NULL DEFAULT TRUE,
    planned_epochs BIGINT,
    stop_rung BIGINT
);
CREATE INDEX IF NOT EXISTS trials_by_state ON trials(state, seq);
CREATE INDEX IF NOT EXISTS trials_leasable ON trials(seq) WHERE state IN ('pending', 'preempted');
CREATE INDEX IF NOT EXISTS trials_active ON trials(lease_deadline_ms) WHERE state IN ('leased', 'running');
CREATE INDEX IF NOT EXISTS trials_by_worker ON trials(worker_id) WHERE state IN ('leased', 'running');
CREATE TABLE IF NOT EXISTS sweep_trials (
    sweep_id TEXT COLLATE "C" NOT NULL REFERENCES sweeps(id),
    trial_id TEXT COLLATE "C" NOT NULL REFERENCES trials(id),
    position BIGINT NOT NULL,
    link BIGSERIAL NOT NULL,
    PRIMARY KEY (sweep_id, trial_id)
);
CREATE INDEX IF NOT EXISTS sweep_trials_by_trial ON sweep_trials(trial_id, link);
CREATE TABLE IF NOT EXISTS attempts (
    trial_id TEXT COLLATE "C" NOT NULL REFERENCES trials(id),
    attempt BIGINT NOT NULL,
    worker_id TEXT COLLATE "C" NOT NULL,
    lease_token TEXT COLLATE "C" NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    outcome TEXT COLLATE "C",
    reason TEXT COLLATE "C",
    PRIMARY KEY (trial_id, attempt)
);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_by_token ON attempts(lease_token);
CREATE TABLE IF NOT EXISTS epochs (
    trial_id TEXT COLLATE "C" NOT NULL REFERENCES trials(id),
    epoch BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    lr DOUBLE PRECISION NOT NULL,
    train_loss DOUBLE PRECISION NOT NULL,
    train_acc DOUBLE PRECISION NOT NULL,
    test_loss DOUBLE PRECISION NOT NULL,
    test_acc DOUBLE PRECISION NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    val_loss DOUBLE PRECISION,
    val_acc DOUBLE PRECISION,
    PRIMARY KEY (trial_id, epoch)
);
CREATE TABLE IF NOT EXISTS decisions (
    sweep_id TEXT COLLATE "C" NOT NULL REFERENCES sweeps(id),
    config TEXT COLLATE "C" NOT NULL,
    rung BIGINT NOT NULL,
    group_key TEXT COLLATE "C" NOT NULL,
    rule TEXT COLLATE "C" NOT NULL,
    kept BOOLEAN NOT NULL,
    metric TEXT COLLATE "C" NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    seeds BIGINT NOT NULL,
    rank BIGINT NOT NULL,
    ranked BIGINT NOT NULL,
    trials TEXT COLLATE "C" NOT NULL,
    inputs TEXT COLLATE "C" NOT NULL,
    decided_ms BIGINT NOT NULL,
    PRIMARY KEY (sweep_id, group_key, config, rung)
);
CREATE TABLE IF NOT EXISTS results (
    trial_id TEXT COLLATE "C" PRIMARY KEY REFERENCES trials(id),
    attempt BIGINT NOT NULL,
    worker_id TEXT COLLATE "C" NOT NULL,
    final_train_loss DOUBLE PRECISION NOT NULL,
    final_train_acc DOUBLE PRECISION NOT NULL,
    final_test_loss DOUBLE PRECISION NOT NULL,
    final_test_acc DOUBLE PRECISION NOT NULL,
    best_test_acc DOUBLE PRECISION NOT NULL,
    best_epoch BIGINT NOT NULL,
    params_total BIGINT NOT NULL,
    params_learnable BIGINT NOT NULL,
    flops_per_image BIGINT NOT NULL,
    wall_seconds DOUBLE PRECISION NOT NULL,
    peak_memory_bytes BIGINT NOT NULL,
    device TEXT COLLATE "C" NOT NULL,
    completed_ms BIGINT NOT NULL,
    eval_error TEXT COLLATE "C" NOT NULL DEFAULT '',
    eval_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    conv_algorithm TEXT COLLATE "C" NOT NULL DEFAULT '',
    startup_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    train_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    epoch_eval_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    checkpoint_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    report_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    train_images BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS robustness (
    trial_id TEXT COLLATE "C" NOT NULL REFERENCES trials(id),
    kind TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    eps DOUBLE PRECISION NOT NULL,
    severity BIGINT NOT NULL,
    accuracy DOUBLE PRECISION NOT NULL,
    images BIGINT NOT NULL,
    PRIMARY KEY (trial_id, kind, name, eps, severity)
);
CREATE TABLE IF NOT EXISTS filters (
    trial_id TEXT COLLATE "C" NOT NULL REFERENCES trials(id),
    stage TEXT COLLATE "C" NOT NULL,
    layer TEXT COLLATE "C" NOT NULL,
    kernel_size BIGINT NOT NULL,
    filters BIGINT NOT NULL,
    fve DOUBLE PRECISION NOT NULL,
    fve_norm DOUBLE PRECISION,
    sparsity DOUBLE PRECISION NOT NULL,
    orthogonality DOUBLE PRECISION NOT NULL,
    heatmap TEXT COLLATE "C" NOT NULL,
    folded BOOLEAN NOT NULL,
    seq BIGSERIAL NOT NULL,
    PRIMARY KEY (trial_id, stage, layer)
);
-- Trials per sweep and state, as counts per shard that add up: each connection writes its own
-- shard (its backend pid), so that coordinators writing at once never wait on, or deadlock over,
-- one hot counter row. Readers sum the shards.
CREATE TABLE IF NOT EXISTS sweep_progress (
    sweep_id TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    shard BIGINT NOT NULL DEFAULT 0,
    n BIGINT NOT NULL,
    PRIMARY KEY (sweep_id, state, shard)
);
CREATE TABLE IF NOT EXISTS sweep_started (
    sweep_id TEXT COLLATE "C" PRIMARY KEY,
    first_start_ms BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION convsweep_progress_on_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sweep_progress (sweep_id, state, shard, n)
        SELECT sweep_id, OLD.state, pg_backend_pid(), -1 FROM sweep_trials WHERE trial_id = NEW.id
        ON CONFLICT (sweep_id, state, shard) DO UPDATE SET n = sweep_progress.n - 1;
    INSERT INTO sweep_progress (sweep_id, state, shard, n)
        SELECT sweep_id, NEW.state, pg_backend_pid(), 1 FROM sweep_trials WHERE trial_id = NEW.id
        ON CONFLICT (sweep_id, state, shard) DO UPDATE SET n = sweep_progress.n + 1;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER progress_on_state AFTER UPDATE OF state ON trials
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION convsweep_progress_on_state();
CREATE OR REPLACE FUNCTION convsweep_started_on_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sweep_started (sweep_id, first_start_ms)
        SELECT sweep_id, NEW.started_ms FROM sweep_trials WHERE trial_id = NEW.trial_id
        ON CONFLICT (sweep_id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER started_on_attempt AFTER INSERT ON attempts
    FOR EACH ROW EXECUTE FUNCTION convsweep_started_on_attempt();
CREATE TABLE IF NOT EXISTS workers (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    host TEXT COLLATE "C" NOT NULL,
    devices TEXT COLLATE "C" NOT NULL,
    slots BIGINT NOT NULL,
    registered_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    instance TEXT COLLATE "C"
);
CREATE UNIQUE INDEX IF NOT EXISTS workers_by_instance ON workers(instance) WHERE instance IS NOT NULL;
"#;

/// The advisory lock key that serializes schema changes and admin writes (submit, extend)
/// across coordinator replicas: "convswee" in ASCII.
pub(super) const ADMIN_LOCK: i64 = 0x636f_6e76_7377_6565;

fn mismatch(url: &str, found: &str) -> Error {
    Error::SchemaMismatch {
        path: redact(url),
        found: found.to_owned(),
        expected: SCHEMA_VERSION,
    }
}

/// Whether the database holds a convsweep state's `meta` table; `Corrupt` when it has a `meta`
/// table of something else.
fn has_meta(s: &mut Session<'_>, url: &str) -> Result<bool> {
    let columns: i64 = s
        .one(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name = 'meta' AND column_name IN ('key', 'value')",
            &[],
        )?
        .get(0);
    let exists: bool = s.one("SELECT to_regclass('meta') IS NOT NULL", &[])?.get(0);
    match (exists, columns) {
        (false, _) => Ok(false),
        (true, 2) => Ok(true),
        (true, _) => Err(Error::Corrupt(format!(
            "{} is not a convsweep state (its meta table is not convsweep's); give the coordinator a database of its own",
            redact(url)
        ))),
    }
}

fn stored_version(s: &mut Session<'_>) -> Result<Option<String>> {
    Ok(s.opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?
        .map(|r| r.get(0)))
}

/// Opens the database at `url` for a coordinator: creates the schema in an empty database,
/// accepts this version's, refuses any other naming both versions.
pub(super) fn open_writable(url: &str) -> Result<Conn> {
    let mut conn = Conn::connect(url)?;
    let url = url.to_owned();
    conn.transaction("BEGIN", move |s| {
        s.exec("SELECT pg_advisory_xact_lock($1)", &[&ADMIN_LOCK])?;
        // Refuse another version, or another program's tables, before touching anything.
        if has_meta(s, &url)? {
            match stored_version(s)?.as_deref() {
                Some(v) if v == SCHEMA_VERSION.to_string() => {}
                // v8 -> v9: validation metrics per epoch, the rung a stopping rule stopped a
                // trial at (the decisions table comes with SCHEMA).
                Some("8") => s.batch(
                    "ALTER TABLE epochs ADD COLUMN IF NOT EXISTS val_loss DOUBLE PRECISION;
                     ALTER TABLE epochs ADD COLUMN IF NOT EXISTS val_acc DOUBLE PRECISION;
                     ALTER TABLE trials ADD COLUMN IF NOT EXISTS stop_rung BIGINT;
                     UPDATE meta SET value = '9' WHERE key = 'schema_version';",
                )?,
                Some(v) => return Err(mismatch(&url, v)),
                None => {}
            }
        }
        s.batch(SCHEMA)?;
        if stored_version(s)?.is_none() {
            s.exec(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1)",
                &[&SCHEMA_VERSION.to_string()],
            )?;
        }
        Ok(())
    })?;
    Ok(conn)
}

/// Opens the database at `url` for reading: refuses one without a convsweep state, or with
/// another schema version, and never writes.
pub(super) fn open_read_only(url: &str) -> Result<Conn> {
    let mut conn = Conn::connect(url)?;
    let url = url.to_owned();
    conn.transaction("BEGIN READ ONLY", move |s| {
        if !has_meta(s, &url)? {
            return Err(Error::NotFound(format!(
                "no coordinator state in {} (it has no meta table; a coordinator creates it on its first start)",
                redact(&url)
            )));
        }
        match stored_version(s)? {
            Some(v) if v == SCHEMA_VERSION.to_string() => Ok(()),
            Some(v) => Err(mismatch(&url, &v)),
            None => Err(Error::Corrupt(format!(
                "{} has no schema version in its meta table",
                redact(&url)
            ))),
        }
    })?;
    Ok(conn)
}

/// Whether a sweep of that name exists.
pub(super) fn sweep_exists(s: &mut Session<'_>, sweep: &str) -> Result<bool> {
    Ok(s.opt("SELECT 1 FROM sweeps WHERE id = $1", &[&sweep])?.is_some())
}

/// `NotFound` naming the sweep when there is none of that name.
pub(super) fn require_sweep(s: &mut Session<'_>, sweep: &str) -> Result<()> {
    if sweep_exists(s, sweep)? {
        Ok(())
    } else {
        Err(Error::NotFound(format!("no sweep named {sweep:?}")))
    }
}
