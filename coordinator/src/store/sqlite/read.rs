//! [`SqliteReader`]: the read-only connection to a state folder behind status, snapshots,
//! metrics and export. It opens SQLite read-only, never writes, never migrates and holds no
//! write lock, so it is safe beside a live coordinator (or on a stopped one's folder); WAL
//! readers see committed transactions only and neither wait for the writer nor hold it up.

use std::path::{Path, PathBuf};

use convsweep_proto::results::{EpochRow, FilterRow, Results, RobustnessRow, TrialRow};
use convsweep_proto::{TrialState, pb};
use rusqlite::{Connection, OptionalExtension, params};

use super::lease;
use super::schema::{self, DB_FILE, state_of};
use crate::error::{Error, Result};
use crate::store::contract::{MAX_LISTED_FAILURES, StoreReader, WorkerSeen, rate};
use crate::store::curves::{self, CurveRow};

/// A read-only connection to a coordinator's state folder.
pub struct SqliteReader {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReader").field("path", &self.path).finish()
    }
}

impl SqliteReader {
    /// Opens the state in `dir` read-only. Fails when there is none, or when its schema
    /// version is not this convsweep's ([`Error::SchemaMismatch`] names both).
    pub fn open(dir: &Path) -> Result<SqliteReader> {
        let path = dir.join(DB_FILE);
        let conn = schema::open_read_only(&path)?;
        Ok(SqliteReader { conn, path })
    }
}

impl StoreReader for SqliteReader {
    /// The ids of every sweep, oldest first.
    fn sweep_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT id FROM sweeps ORDER BY created_ms, id")?;
        Ok(stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }

    fn not_in_sweep(&self, sweep: &str, trial_ids: &[String]) -> Result<Option<String>> {
        schema::require_sweep(&self.conn, sweep)?;
        let mut member = self
            .conn
            .prepare("SELECT 1 FROM sweep_trials WHERE sweep_id = ?1 AND trial_id = ?2")?;
        for id in trial_ids {
            if !member.exists(params![sweep, id])? {
                return Ok(Some(id.clone()));
            }
        }
        Ok(None)
    }

    /// Progress of one sweep.
    fn sweep_status(&self, sweep_id: &str, now: i64) -> Result<pb::SweepStatus> {
        schema::require_sweep(&self.conn, sweep_id)?;
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
                *counts.get_mut(state_of(state)?) = n;
            }
        }
        let first_start: Option<i64> = self
            .conn
            .prepare_cached("SELECT first_start_ms FROM sweep_started WHERE sweep_id = ?1")?
            .query_row([sweep_id], |r| r.get(0))
            .optional()?;
        let (trials_per_hour, eta_seconds) = rate(&counts, total, first_start, now);
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

    fn state_counts(&self) -> Result<Vec<(String, TrialState, u32)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT sweep_id, state, n FROM sweep_progress WHERE n > 0 ORDER BY sweep_id, state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (sweep, state, n) = row?;
            out.push((sweep, state_of(state)?, n));
        }
        Ok(out)
    }

    /// The leased and running trials of `sweep` (every sweep when empty), with their last
    /// epoch, in sweep order.
    fn active_trials(&self, sweep: &str) -> Result<Vec<pb::ActiveTrial>> {
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
                state: state_of(state)?.to_wire(),
                attempt,
                worker_id,
                epoch: epoch.unwrap_or(0),
                epochs: spec.train.epochs,
                test_acc: test_acc.unwrap_or(0.0),
                curve: Vec::new(),
            });
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.trial_id, e.epoch, e.test_acc, e.train_acc FROM epochs e JOIN trials t ON t.id = e.trial_id \
             WHERE t.state IN ('leased', 'running') \
               AND (?1 = '' OR t.id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = ?1)) \
             ORDER BY e.trial_id, e.epoch",
        )?;
        let points = stmt
            .query_map([sweep], |r| {
                Ok((
                    r.get(0)?,
                    pb::CurvePoint {
                        epoch: r.get(1)?,
                        test_acc: r.get(2)?,
                        train_acc: r.get(3)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        curves::attach(&mut out, points);
        Ok(out)
    }

    fn config_curves(&self, sweep: &str) -> Result<(Vec<pb::ConfigCurve>, u32)> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.sweep_id, json_remove(t.spec_json, '$.seed'), e.epoch, AVG(e.test_acc), MIN(e.test_acc), \
                    MAX(e.test_acc), COUNT(*), AVG(e.train_acc) \
             FROM sweep_trials s JOIN trials t ON t.id = s.trial_id JOIN epochs e ON e.trial_id = t.id \
             WHERE (?1 = '' OR s.sweep_id = ?1) \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )?;
        let rows = stmt
            .query_map([sweep], |r| {
                Ok(CurveRow {
                    sweep_id: r.get(0)?,
                    config_json: r.get(1)?,
                    epoch: r.get(2)?,
                    mean: r.get(3)?,
                    lo: r.get(4)?,
                    hi: r.get(5)?,
                    seeds: r.get(6)?,
                    train_mean: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(curves::config_curves(rows))
    }

    /// Mean final test accuracy so far of the succeeded trials of `sweep` (every sweep when
    /// empty), by kernel size and train mode.
    fn accuracy_so_far(&self, sweep: &str) -> Result<Vec<pb::AccuracyCell>> {
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

    fn workers(&self) -> Result<Vec<WorkerSeen>> {
        let mut stmt = self.conn.prepare_cached("SELECT id, name, last_seen_ms FROM workers")?;
        Ok(stmt
            .query_map([], |r| {
                Ok(WorkerSeen {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    last_seen_ms: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Workers heard from since `since_ms`.
    fn workers_seen_since(&self, since_ms: i64) -> Result<u32> {
        Ok(lease::row(
            &self.conn,
            "SELECT COUNT(*) FROM workers WHERE last_seen_ms >= ?1",
            [since_ms],
            |r| r.get(0),
        )?)
    }

    fn results(&self, sweep: Option<&str>) -> Result<Results> {
        results(&self.conn, sweep)
    }

    fn sweep_spec(&self, sweep: &str) -> Result<String> {
        lease::row(&self.conn, "SELECT spec_toml FROM sweeps WHERE id = ?1", [sweep], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("no sweep named {sweep:?}")))
    }
}

/// Every result of one sweep (or all) of the state behind `conn`, in one read transaction.
fn results(conn: &Connection, sweep: Option<&str>) -> Result<Results> {
    conn.execute_batch("BEGIN DEFERRED")?;
    let read = || -> Result<Results> {
        if let Some(sweep) = sweep {
            schema::require_sweep(conn, sweep)?;
        }
        let mut results = Results {
            trials: trial_rows(conn, sweep)?,
            epochs: epoch_rows(conn, sweep)?,
            robustness: robustness_rows(conn, sweep)?,
            filters: filter_rows(conn, sweep)?,
            decisions: decision_rows(conn, sweep)?,
        };
        let specs: Vec<(String, String)> = conn
            .prepare_cached("SELECT id, spec_toml FROM sweeps WHERE ?1 IS NULL OR id = ?1")?
            .query_map([sweep], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        crate::store::cells::place(&mut results, &specs)?;
        Ok(results)
    };
    let out = read();
    conn.execute_batch("COMMIT")?;
    out
}

/// The rows of trials in `sweep` (every trial when `None`): `?1` of the statements below.
const OF_SWEEP: &str = "(?1 IS NULL OR trial_id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = ?1))";

/// Every (sweep, trial) pair with its spec, state and result, sweeps oldest first.
fn trial_rows(conn: &Connection, sweep: Option<&str>) -> Result<Vec<TrialRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.sweep_id, t.id, t.spec_json, t.state, t.attempt, t.reason, \
                r.worker_id, r.final_train_loss, r.final_train_acc, r.final_test_loss, r.final_test_acc, \
                r.best_test_acc, r.best_epoch, r.params_total, r.params_learnable, r.flops_per_image, \
                r.wall_seconds, r.peak_memory_bytes, r.device, r.eval_error, r.eval_seconds, r.conv_algorithm, \
                r.startup_seconds, r.train_seconds, r.epoch_eval_seconds, r.checkpoint_seconds, r.report_seconds, \
                r.train_images \
         FROM sweep_trials s JOIN sweeps w ON w.id = s.sweep_id JOIN trials t ON t.id = s.trial_id \
         LEFT JOIN results r ON r.trial_id = t.id \
         WHERE (?1 IS NULL OR s.sweep_id = ?1) \
         ORDER BY w.created_ms, s.sweep_id, s.position",
    )?;
    let rows = stmt.query_map([sweep], |r| {
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
            cell: None,
        });
    }
    Ok(out)
}

/// Every stored robustness measurement.
fn robustness_rows(conn: &Connection, sweep: Option<&str>) -> Result<Vec<RobustnessRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT trial_id, kind, name, eps, severity, accuracy, images FROM robustness WHERE {OF_SWEEP} \
         ORDER BY trial_id, kind, name, eps, severity"
    ))?;
    let rows = stmt.query_map([sweep], |r| {
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
fn filter_rows(conn: &Connection, sweep: Option<&str>) -> Result<Vec<FilterRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT trial_id, stage, layer, kernel_size, filters, fve, fve_norm, sparsity, orthogonality, heatmap, folded \
         FROM filters WHERE {OF_SWEEP} ORDER BY trial_id, stage DESC, rowid"
    ))?;
    let rows = stmt.query_map([sweep], |r| {
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
fn epoch_rows(conn: &Connection, sweep: Option<&str>) -> Result<Vec<EpochRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT trial_id, attempt, epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds, val_loss, val_acc \
         FROM epochs WHERE {OF_SWEEP} ORDER BY trial_id, epoch"
    ))?;
    let rows = stmt.query_map([sweep], |r| {
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
                val_loss: r.get(9)?,
                val_acc: r.get(10)?,
            },
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every stopping decision of one sweep (or all), by sweep, rung, group and configuration.
fn decision_rows(conn: &Connection, sweep: Option<&str>) -> Result<Vec<pb::ExportDecision>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sweep_id, rule, group_key, config, rung, kept, metric, value, seeds, rank, ranked, trials, inputs, \
         decided_ms FROM decisions WHERE (?1 IS NULL OR sweep_id = ?1) ORDER BY sweep_id, rung, group_key, config",
    )?;
    let rows = stmt.query_map([sweep], |r| {
        Ok(pb::ExportDecision {
            sweep_id: r.get(0)?,
            rule: r.get(1)?,
            group: r.get(2)?,
            config: r.get(3)?,
            rung: r.get(4)?,
            kept: r.get(5)?,
            metric: r.get(6)?,
            value: r.get(7)?,
            seeds: r.get(8)?,
            rank: r.get(9)?,
            ranked: r.get(10)?,
            trials: r.get(11)?,
            inputs: r.get(12)?,
            decided_ms: r.get(13)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
