//! Reading results out of a state: the rows of every exported table, for the coordinator's own
//! [`Store`](super::Store) and for a read-only [`StateReader`] beside a live coordinator.

use std::path::{Path, PathBuf};

use convsweep_proto::pb;
use convsweep_proto::results::{EpochRow, FilterRow, Results, RobustnessRow, TrialRow};
use rusqlite::Connection;

use super::schema::{self, DB_FILE, state_of};
use crate::error::{Error, Result};

/// A read-only view of a coordinator's state folder, safe beside a live coordinator: it
/// opens SQLite read-only, never writes, never migrates, and holds no write lock.
pub struct StateReader {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").field("path", &self.path).finish()
    }
}

impl StateReader {
    /// Opens the state in `dir` read-only. Fails when there is none, or when its schema
    /// version is not this convsweep's ([`Error::SchemaMismatch`] names both).
    pub fn open(dir: &Path) -> Result<StateReader> {
        let path = dir.join(DB_FILE);
        let conn = schema::open_read_only(&path)?;
        Ok(StateReader { conn, path })
    }

    /// Every result, read in one transaction: a consistent snapshot even while the
    /// coordinator writes.
    pub fn results(&self) -> Result<Results> {
        results(&self.conn)
    }
}

/// Every result of the state behind `conn`, in one read transaction.
pub(super) fn results(conn: &Connection) -> Result<Results> {
    conn.execute_batch("BEGIN DEFERRED")?;
    let read = || -> Result<Results> {
        Ok(Results {
            trials: trial_rows(conn)?,
            epochs: epoch_rows(conn)?,
            robustness: robustness_rows(conn)?,
            filters: filter_rows(conn)?,
        })
    };
    let out = read();
    conn.execute_batch("COMMIT")?;
    out
}

/// Every (sweep, trial) pair with its spec, state and result, sweeps oldest first.
pub(super) fn trial_rows(conn: &Connection) -> Result<Vec<TrialRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.sweep_id, t.id, t.spec_json, t.state, t.attempt, t.reason, \
                r.worker_id, r.final_train_loss, r.final_train_acc, r.final_test_loss, r.final_test_acc, \
                r.best_test_acc, r.best_epoch, r.params_total, r.params_learnable, r.flops_per_image, \
                r.wall_seconds, r.peak_memory_bytes, r.device, r.eval_error, r.eval_seconds, r.conv_algorithm, \
                r.startup_seconds, r.train_seconds, r.epoch_eval_seconds, r.checkpoint_seconds, r.report_seconds, \
                r.train_images \
         FROM sweep_trials s JOIN sweeps w ON w.id = s.sweep_id JOIN trials t ON t.id = s.trial_id \
         LEFT JOIN results r ON r.trial_id = t.id \
         ORDER BY w.created_ms, s.sweep_id, s.position",
    )?;
    let rows = stmt.query_map([], |r| {
        let result = match r.get::<_, Option<String>>(6)? {
            None => None,
            Some(_) => Some(pb::TrialResult {
                final_train_loss: r.get(7)?,
                final_train_acc: r.get(8)?,
                final_test_loss: r.get(9)?,
                final_test_acc: r.get(10)?,
                best_test_acc: r.get(11)?,
                best_epoch: r.get(12)?,
                params_total: r.get::<_, i64>(13)? as u64,
                params_learnable: r.get::<_, i64>(14)? as u64,
                flops_per_image: r.get::<_, i64>(15)? as u64,
                wall_seconds: r.get(16)?,
                peak_memory_bytes: r.get::<_, i64>(17)? as u64,
                device: r.get(18)?,
                eval_error: r.get(19)?,
                eval_seconds: r.get(20)?,
                conv_algorithm: r.get(21)?,
                times: Some(pb::TrialTimes {
                    startup_seconds: r.get(22)?,
                    train_seconds: r.get(23)?,
                    epoch_eval_seconds: r.get(24)?,
                    checkpoint_seconds: r.get(25)?,
                    report_seconds: r.get(26)?,
                    train_images: r.get::<_, i64>(27)?.max(0) as u64,
                }),
                robustness: Vec::new(),
                filters: Vec::new(),
            }),
        };
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, u32>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<String>>(6)?,
            result,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (sweep_id, trial_id, spec_json, state, attempts, reason, worker_id, result) = row?;
        let spec = schema::spec_of(&trial_id, &spec_json)?;
        out.push(TrialRow {
            sweep_id,
            trial_id,
            spec,
            state: state_of(state)?,
            attempts,
            reason,
            worker_id,
            result,
        });
    }
    Ok(out)
}

/// Every stored robustness measurement.
pub(super) fn robustness_rows(conn: &Connection) -> Result<Vec<RobustnessRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT trial_id, kind, name, eps, severity, accuracy, images FROM robustness \
         ORDER BY trial_id, kind, name, eps, severity",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RobustnessRow {
            trial_id: r.get(0)?,
            result: pb::RobustnessResult {
                kind: r.get(1)?,
                name: r.get(2)?,
                eps: r.get(3)?,
                severity: r.get(4)?,
                accuracy: r.get(5)?,
                images: r.get(6)?,
            },
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every stored filter statistic.
pub(super) fn filter_rows(conn: &Connection) -> Result<Vec<FilterRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT trial_id, stage, layer, kernel_size, filters, fve, fve_norm, sparsity, orthogonality, heatmap, folded \
         FROM filters ORDER BY trial_id, stage DESC, rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(9)?,
            FilterRow {
                trial_id: r.get(0)?,
                stats: pb::FilterStats {
                    stage: r.get(1)?,
                    layer: r.get(2)?,
                    kernel_size: r.get(3)?,
                    filters: r.get::<_, i64>(4)? as u64,
                    fve: r.get(5)?,
                    fve_norm: r.get(6)?,
                    sparsity: r.get(7)?,
                    orthogonality: r.get(8)?,
                    heatmap: Vec::new(),
                    folded: r.get(10)?,
                },
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (heatmap, mut row) = row?;
        row.stats.heatmap = serde_json::from_str(&heatmap).map_err(|e| {
            Error::Corrupt(format!(
                "stored heatmap of trial {} layer {}: {e}",
                row.trial_id, row.stats.layer
            ))
        })?;
        out.push(row);
    }
    Ok(out)
}

/// Every stored epoch, by trial and epoch.
pub(super) fn epoch_rows(conn: &Connection) -> Result<Vec<EpochRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT trial_id, attempt, epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds \
         FROM epochs ORDER BY trial_id, epoch",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(EpochRow {
            trial_id: r.get(0)?,
            attempt: r.get(1)?,
            metrics: pb::EpochMetrics {
                epoch: r.get(2)?,
                lr: r.get(3)?,
                train_loss: r.get(4)?,
                train_acc: r.get(5)?,
                test_loss: r.get(6)?,
                test_acc: r.get(7)?,
                seconds: r.get(8)?,
            },
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
