//! [`PgReader`]: a read-only connection to a PostgreSQL state behind status, snapshots,
//! metrics and export. Each call is one `READ ONLY` transaction (an export one `REPEATABLE
//! READ` snapshot), so it sees committed transactions only and never holds a writer up.

use std::sync::Mutex;

use convsweep_proto::results::{EpochRow, FilterRow, Results, RobustnessRow, TrialRow};
use convsweep_proto::{TrialState, pb};

use super::conn::{Conn, Session, u32_of};
use super::schema::{self, require_sweep};
use crate::error::{Error, Result};
use crate::store::contract::{MAX_LISTED_FAILURES, StoreReader, WorkerSeen, rate};
use crate::store::curves::{self, CurveRow};
use crate::store::lease::{spec_of, state_of};

/// A read-only connection to a coordinator's PostgreSQL state.
#[derive(Debug)]
pub struct PgReader {
    conn: Mutex<Conn>,
}

impl PgReader {
    /// Connects to the state at `url`. Fails when there is none, or when its schema version
    /// is not this convsweep's ([`Error::SchemaMismatch`] names both).
    pub fn open(url: &str) -> Result<PgReader> {
        Ok(PgReader {
            conn: Mutex::new(schema::open_read_only(url)?),
        })
    }

    /// Runs `f` in one transaction that starts with `begin`.
    fn in_transaction<R: Send>(
        &self,
        begin: &'static str,
        f: impl FnOnce(&mut Session<'_>) -> Result<R> + Send,
    ) -> Result<R> {
        // A panic in an earlier call left the connection usable (its transaction is rolled back
        // before the next).
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.transaction(begin, f)
    }

    fn read<R: Send>(&self, f: impl FnOnce(&mut Session<'_>) -> Result<R> + Send) -> Result<R> {
        self.in_transaction("BEGIN READ ONLY", f)
    }
}

impl StoreReader for PgReader {
    fn sweep_ids(&self) -> Result<Vec<String>> {
        self.read(|s| {
            Ok(s.rows("SELECT id FROM sweeps ORDER BY created_ms, id", &[])?
                .into_iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn not_in_sweep(&self, sweep: &str, trial_ids: &[String]) -> Result<Option<String>> {
        self.read(|s| {
            require_sweep(s, sweep)?;
            for id in trial_ids {
                if s.opt(
                    "SELECT 1 FROM sweep_trials WHERE sweep_id = $1 AND trial_id = $2",
                    &[&sweep, id],
                )?
                .is_none()
                {
                    return Ok(Some(id.clone()));
                }
            }
            Ok(None)
        })
    }

    fn sweep_status(&self, sweep_id: &str, now: i64) -> Result<pb::SweepStatus> {
        self.read(|s| {
            require_sweep(s, sweep_id)?;
            let mut counts = pb::StateCounts::default();
            let mut total = 0;
            for r in s.rows(
                "SELECT state, SUM(n)::bigint FROM sweep_progress WHERE sweep_id = $1 GROUP BY state HAVING SUM(n) > 0",
                &[&sweep_id],
            )? {
                let n = u32_of(r.get(1), "progress count")?;
                total += n;
                *counts.get_mut(state_of(r.get(0))?) = n;
            }
            let first_start: Option<i64> = s
                .opt(
                    "SELECT first_start_ms FROM sweep_started WHERE sweep_id = $1",
                    &[&sweep_id],
                )?
                .map(|r| r.get(0));
            let (trials_per_hour, eta_seconds) = rate(&counts, total, first_start, now);
            let failures = s
                .rows(
                    "SELECT t.id, t.attempt, COALESCE(t.reason, '') FROM trials t JOIN sweep_trials s \
                     ON s.trial_id = t.id WHERE t.state = 'failed' AND s.sweep_id = $1 ORDER BY s.position LIMIT $2",
                    &[&sweep_id, &i64::from(MAX_LISTED_FAILURES)],
                )?
                .into_iter()
                .map(|r| {
                    Ok(pb::TrialFailure {
                        trial_id: r.get(0),
                        attempt: u32_of(r.get(1), "attempt")?,
                        reason: r.get(2),
                    })
                })
                .collect::<Result<_>>()?;
            Ok(pb::SweepStatus {
                sweep_id: sweep_id.to_owned(),
                total,
                counts: Some(counts),
                trials_per_hour,
                eta_seconds,
                failures,
            })
        })
    }

    fn state_counts(&self) -> Result<Vec<(String, TrialState, u32)>> {
        self.read(|s| {
            s.rows(
                "SELECT sweep_id, state, SUM(n)::bigint FROM sweep_progress GROUP BY sweep_id, state HAVING SUM(n) > 0 \
                 ORDER BY sweep_id, state",
                &[],
            )?
            .into_iter()
            .map(|r| Ok((r.get(0), state_of(r.get(1))?, u32_of(r.get(2), "progress count")?)))
            .collect()
        })
    }

    fn workers(&self) -> Result<Vec<WorkerSeen>> {
        self.read(|s| {
            Ok(s.rows("SELECT id, name, last_seen_ms FROM workers", &[])?
                .into_iter()
                .map(|r| WorkerSeen {
                    id: r.get(0),
                    name: r.get(1),
                    last_seen_ms: r.get(2),
                })
                .collect())
        })
    }

    fn workers_seen_since(&self, since_ms: i64) -> Result<u32> {
        self.read(|s| {
            u32_of(
                s.one("SELECT COUNT(*) FROM workers WHERE last_seen_ms >= $1", &[&since_ms])?
                    .get(0),
                "worker count",
            )
        })
    }

    fn active_trials(&self, sweep: &str) -> Result<Vec<pb::ActiveTrial>> {
        self.read(|s| {
            let rows = s.rows(
                "SELECT s.sweep_id, t.id, t.spec_json, t.state, t.attempt, COALESCE(t.worker_id, ''), e.epoch, e.test_acc \
                 FROM sweep_trials s JOIN trials t ON t.id = s.trial_id \
                 LEFT JOIN LATERAL (SELECT epoch, test_acc FROM epochs WHERE trial_id = t.id ORDER BY epoch DESC LIMIT 1) e \
                 ON TRUE \
                 WHERE t.state IN ('leased', 'running') AND ($1 = '' OR s.sweep_id = $1) \
                 ORDER BY s.sweep_id, s.position",
                &[&sweep],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let trial_id: String = r.get(1);
                let spec = spec_of(&trial_id, r.get(2))?;
                let epoch: Option<i64> = r.get(6);
                out.push(pb::ActiveTrial {
                    sweep_id: r.get(0),
                    label: spec.label(),
                    state: state_of(r.get(3))?.to_wire(),
                    attempt: u32_of(r.get(4), "attempt")?,
                    worker_id: r.get(5),
                    epoch: u32_of(epoch.unwrap_or(0), "epoch")?,
                    epochs: spec.train.epochs,
                    test_acc: r.get::<_, Option<f64>>(7).unwrap_or(0.0),
                    trial_id,
                    curve: Vec::new(),
                });
            }
            let mut points = Vec::new();
            for r in s.rows(
                "SELECT e.trial_id, e.epoch, e.test_acc, e.train_acc FROM epochs e JOIN trials t ON t.id = e.trial_id \
                 WHERE t.state IN ('leased', 'running') \
                   AND ($1 = '' OR t.id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = $1)) \
                 ORDER BY e.trial_id, e.epoch",
                &[&sweep],
            )? {
                points.push((
                    r.get(0),
                    pb::CurvePoint {
                        epoch: u32_of(r.get(1), "epoch")?,
                        test_acc: r.get(2),
                        train_acc: r.get(3),
                    },
                ));
            }
            curves::attach(&mut out, points);
            Ok(out)
        })
    }

    fn config_curves(&self, sweep: &str) -> Result<(Vec<pb::ConfigCurve>, u32)> {
        self.read(|s| {
            let mut rows = Vec::new();
            for r in s.rows(
                "SELECT s.sweep_id, (t.spec_json::jsonb - 'seed')::text, e.epoch, AVG(e.test_acc), MIN(e.test_acc), \
                        MAX(e.test_acc), COUNT(*), AVG(e.train_acc) \
                 FROM sweep_trials s JOIN trials t ON t.id = s.trial_id JOIN epochs e ON e.trial_id = t.id \
                 WHERE ($1 = '' OR s.sweep_id = $1) \
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                &[&sweep],
            )? {
                rows.push(CurveRow {
                    sweep_id: r.get(0),
                    config_json: r.get(1),
                    epoch: u32_of(r.get(2), "epoch")?,
                    mean: r.get(3),
                    lo: r.get(4),
                    hi: r.get(5),
                    seeds: u32_of(r.get(6), "seeds")?,
                    train_mean: r.get(7),
                });
            }
            Ok(curves::config_curves(rows))
        })
    }

    fn accuracy_so_far(&self, sweep: &str) -> Result<Vec<pb::AccuracyCell>> {
        self.read(|s| {
            s.rows(
                "SELECT s.sweep_id, (t.spec_json::json -> 'model' ->> 'kernel_size')::bigint AS k, \
                        t.spec_json::json -> 'model' ->> 'train_mode' AS mode, AVG(r.final_test_acc), COUNT(*) \
                 FROM sweep_trials s JOIN trials t ON t.id = s.trial_id JOIN results r ON r.trial_id = t.id \
                 WHERE t.state = 'succeeded' AND ($1 = '' OR s.sweep_id = $1) \
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                &[&sweep],
            )?
            .into_iter()
            .map(|r| {
                Ok(pb::AccuracyCell {
                    sweep_id: r.get(0),
                    kernel_size: u32_of(r.get::<_, Option<i64>>(1).unwrap_or(0), "kernel size")?,
                    train_mode: r.get::<_, Option<String>>(2).unwrap_or_default(),
                    mean_test_acc: r.get(3),
                    trials: u32_of(r.get(4), "trial count")?,
                })
            })
            .collect()
        })
    }

    fn sweep_spec(&self, sweep: &str) -> Result<String> {
        self.read(|s| {
            s.opt("SELECT spec_toml FROM sweeps WHERE id = $1", &[&sweep])?
                .map(|r| r.get(0))
                .ok_or_else(|| Error::NotFound(format!("no sweep named {sweep:?}")))
        })
    }

    fn results(&self, sweep: Option<&str>) -> Result<Results> {
        self.in_transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", |s| {
            if let Some(sweep) = sweep {
                require_sweep(s, sweep)?;
            }
            let mut results = Results {
                trials: trial_rows(s, sweep)?,
                epochs: epoch_rows(s, sweep)?,
                robustness: robustness_rows(s, sweep)?,
                filters: filter_rows(s, sweep)?,
                decisions: decision_rows(s, sweep)?,
            };
            let specs: Vec<(String, String)> = s
                .rows(
                    "SELECT id, spec_toml FROM sweeps WHERE $1::text IS NULL OR id = $1",
                    &[&sweep],
                )?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            crate::store::cells::place(&mut results, &specs)?;
            Ok(results)
        })
    }
}

/// The rows of trials in `sweep` (every trial when `NULL`): `$1` of the statements below.
const OF_SWEEP: &str = "($1::text IS NULL OR trial_id IN (SELECT trial_id FROM sweep_trials WHERE sweep_id = $1))";

fn trial_rows(s: &mut Session<'_>, sweep: Option<&str>) -> Result<Vec<TrialRow>> {
    let rows = s.rows(
        "SELECT s.sweep_id, t.id, t.spec_json, t.state, t.attempt, t.reason, \
                r.worker_id, r.final_train_loss, r.final_train_acc, r.final_test_loss, r.final_test_acc, \
                r.best_test_acc, r.best_epoch, r.params_total, r.params_learnable, r.flops_per_image, \
                r.wall_seconds, r.peak_memory_bytes, r.device, r.eval_error, r.eval_seconds, r.conv_algorithm, \
                r.startup_seconds, r.train_seconds, r.epoch_eval_seconds, r.checkpoint_seconds, r.report_seconds, \
                r.train_images \
         FROM sweep_trials s JOIN sweeps w ON w.id = s.sweep_id JOIN trials t ON t.id = s.trial_id \
         LEFT JOIN results r ON r.trial_id = t.id \
         WHERE ($1::text IS NULL OR s.sweep_id = $1) \
         ORDER BY w.created_ms, s.sweep_id, s.position",
        &[&sweep],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let trial_id: String = r.get(1);
        let worker_id: Option<String> = r.get(6);
        let result = match worker_id {
            None => None,
            Some(_) => Some(pb::TrialResult {
                final_train_loss: r.get(7),
                final_train_acc: r.get(8),
                final_test_loss: r.get(9),
                final_test_acc: r.get(10),
                best_test_acc: r.get(11),
                best_epoch: u32_of(r.get(12), "best epoch")?,
                params_total: r.get::<_, i64>(13) as u64,
                params_learnable: r.get::<_, i64>(14) as u64,
                flops_per_image: r.get::<_, i64>(15) as u64,
                wall_seconds: r.get(16),
                peak_memory_bytes: r.get::<_, i64>(17) as u64,
                device: r.get(18),
                eval_error: r.get(19),
                eval_seconds: r.get(20),
                conv_algorithm: r.get(21),
                times: Some(pb::TrialTimes {
                    startup_seconds: r.get(22),
                    train_seconds: r.get(23),
                    epoch_eval_seconds: r.get(24),
                    checkpoint_seconds: r.get(25),
                    report_seconds: r.get(26),
                    train_images: r.get::<_, i64>(27).max(0) as u64,
                }),
                robustness: Vec::new(),
                filters: Vec::new(),
            }),
        };
        out.push(TrialRow {
            sweep_id: r.get(0),
            spec: spec_of(&trial_id, r.get(2))?,
            state: state_of(r.get(3))?,
            attempts: u32_of(r.get(4), "attempt")?,
            reason: r.get(5),
            worker_id,
            result,
            trial_id,
            cell: None,
        });
    }
    Ok(out)
}

fn robustness_rows(s: &mut Session<'_>, sweep: Option<&str>) -> Result<Vec<RobustnessRow>> {
    s.rows(
        &format!(
            "SELECT trial_id, kind, name, eps, severity, accuracy, images FROM robustness WHERE {OF_SWEEP} \
             ORDER BY trial_id, kind, name, eps, severity"
        ),
        &[&sweep],
    )?
    .into_iter()
    .map(|r| {
        Ok(RobustnessRow {
            trial_id: r.get(0),
            result: pb::RobustnessResult {
                kind: r.get(1),
                name: r.get(2),
                eps: r.get(3),
                severity: u32_of(r.get(4), "severity")?,
                accuracy: r.get(5),
                images: u32_of(r.get(6), "image count")?,
            },
        })
    })
    .collect()
}

fn filter_rows(s: &mut Session<'_>, sweep: Option<&str>) -> Result<Vec<FilterRow>> {
    let rows = s.rows(
        &format!(
            "SELECT trial_id, stage, layer, kernel_size, filters, fve, fve_norm, sparsity, orthogonality, heatmap, \
             folded FROM filters WHERE {OF_SWEEP} ORDER BY trial_id, stage DESC, seq"
        ),
        &[&sweep],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let trial_id: String = r.get(0);
        let layer: String = r.get(2);
        let heatmap: String = r.get(9);
        let heatmap = serde_json::from_str(&heatmap)
            .map_err(|e| Error::Corrupt(format!("stored heatmap of trial {trial_id} layer {layer}: {e}")))?;
        out.push(FilterRow {
            stats: pb::FilterStats {
                stage: r.get(1),
                layer,
                kernel_size: u32_of(r.get(3), "kernel size")?,
                filters: r.get::<_, i64>(4) as u64,
                fve: r.get(5),
                fve_norm: r.get(6),
                sparsity: r.get(7),
                orthogonality: r.get(8),
                heatmap,
                folded: r.get(10),
            },
            trial_id,
        });
    }
    Ok(out)
}

fn epoch_rows(s: &mut Session<'_>, sweep: Option<&str>) -> Result<Vec<EpochRow>> {
    s.rows(
        &format!(
            "SELECT trial_id, attempt, epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds, val_loss, \
             val_acc FROM epochs WHERE {OF_SWEEP} ORDER BY trial_id, epoch"
        ),
        &[&sweep],
    )?
    .into_iter()
    .map(|r| {
        Ok(EpochRow {
            trial_id: r.get(0),
            attempt: u32_of(r.get(1), "attempt")?,
            metrics: pb::EpochMetrics {
                epoch: u32_of(r.get(2), "epoch")?,
                lr: r.get(3),
                train_loss: r.get(4),
                train_acc: r.get(5),
                test_loss: r.get(6),
                test_acc: r.get(7),
                seconds: r.get(8),
                val_loss: r.get(9),
                val_acc: r.get(10),
            },
        })
    })
    .collect()
}

/// Every stopping decision of one sweep (or all), by sweep, rung, group and configuration.
fn decision_rows(s: &mut Session<'_>, sweep: Option<&str>) -> Result<Vec<pb::ExportDecision>> {
    s.rows(
        "SELECT sweep_id, rule, group_key, config, rung, kept, metric, value, seeds, rank, ranked, trials, inputs, \
         decided_ms FROM decisions WHERE ($1::text IS NULL OR sweep_id = $1) ORDER BY sweep_id, rung, group_key, config",
        &[&sweep],
    )?
    .into_iter()
    .map(|r| {
        Ok(pb::ExportDecision {
            sweep_id: r.get(0),
            rule: r.get(1),
            group: r.get(2),
            config: r.get(3),
            rung: u32_of(r.get(4), "rung")?,
            kept: r.get(5),
            metric: r.get(6),
            value: r.get(7),
            seeds: u32_of(r.get(8), "seeds")?,
            rank: u32_of(r.get(9), "rank")?,
            ranked: u32_of(r.get(10), "ranked")?,
            trials: r.get(11),
            inputs: r.get(12),
            decided_ms: r.get(13),
        })
    })
    .collect()
}
