//! Moving a state: a (stopped) coordinator's SQLite state folder copied into an empty
//! PostgreSQL database, every table in one transaction, then verified: the rows of every table,
//! read back from PostgreSQL, have the same count and the same SHA-256 over their values in key
//! order as the SQLite original.
//!
//! The order SQLite keeps in `rowid` (which sweep a shared trial was linked to first, the order
//! of a result's layers) goes into PostgreSQL's serial columns (`sweep_trials.link`,
//! `filters.seq`), so that readers of the copy list rows as readers of the original do.

use std::path::Path;

use postgres::types::ToSql;
use sha2::{Digest, Sha256};

use super::conn::Session;
use super::schema;
use crate::error::{Error, Result};
use crate::store::sqlite::{DB_FILE, SqliteReader};

/// A column's type, as both databases store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Text,
    Int,
    Real,
    /// `BOOLEAN` in PostgreSQL, 0 or 1 in SQLite.
    Bool,
}

/// One column: its name in PostgreSQL, the expression that reads it in SQLite, its type.
type Column = (&'static str, &'static str, Ty);

/// A table: its name, columns, and the key order its rows are compared in.
struct Table {
    name: &'static str,
    columns: &'static [Column],
    order: &'static str,
}

use Ty::{Bool, Int, Real, Text};

/// Every table but `meta` (the copy's schema version is its own), in an order that keeps the
/// foreign keys and lets the copied `sweep_started` rows win over the ones the attempts'
/// trigger would make.
const TABLES: &[Table] = &[
    Table {
        name: "sweeps",
        columns: &[
            ("id", "id", Text),
            ("spec_toml", "spec_toml", Text),
            ("created_ms", "created_ms", Int),
        ],
        order: "id",
    },
    Table {
        name: "trials",
        columns: &[
            ("id", "id", Text),
            ("seq", "seq", Int),
            ("spec_json", "spec_json", Text),
            ("state", "state", Text),
            ("attempt", "attempt", Int),
            ("lease_token", "lease_token", Text),
            ("worker_id", "worker_id", Text),
            ("lease_deadline_ms", "lease_deadline_ms", Int),
            ("reason", "reason", Text),
            ("created_ms", "created_ms", Int),
            ("finished_ms", "finished_ms", Int),
            ("resume_floor", "resume_floor", Int),
            ("lease_heard", "lease_heard", Bool),
            ("planned_epochs", "planned_epochs", Int),
            ("stop_rung", "stop_rung", Int),
        ],
        order: "id",
    },
    Table {
        name: "sweep_trials",
        columns: &[
            ("sweep_id", "sweep_id", Text),
            ("trial_id", "trial_id", Text),
            ("position", "position", Int),
            ("link", "rowid", Int),
        ],
        order: "sweep_id, trial_id",
    },
    Table {
        name: "sweep_started",
        columns: &[
            ("sweep_id", "sweep_id", Text),
            ("first_start_ms", "first_start_ms", Int),
        ],
        order: "sweep_id",
    },
    Table {
        name: "sweep_progress",
        columns: &[
            ("sweep_id", "sweep_id", Text),
            ("state", "state", Text),
            ("n", "n", Int),
        ],
        order: "sweep_id, state",
    },
    Table {
        name: "attempts",
        columns: &[
            ("trial_id", "trial_id", Text),
            ("attempt", "attempt", Int),
            ("worker_id", "worker_id", Text),
            ("lease_token", "lease_token", Text),
            ("started_ms", "started_ms", Int),
            ("ended_ms", "ended_ms", Int),
            ("outcome", "outcome", Text),
            ("reason", "reason", Text),
        ],
        order: "trial_id, attempt",
    },
    Table {
        name: "epochs",
        columns: &[
            ("trial_id", "trial_id", Text),
            ("epoch", "epoch", Int),
            ("attempt", "attempt", Int),
            ("lr", "lr", Real),
            ("train_loss", "train_loss", Real),
            ("train_acc", "train_acc", Real),
            ("test_loss", "test_loss", Real),
            ("test_acc", "test_acc", Real),
            ("seconds", "seconds", Real),
            ("val_loss", "val_loss", Real),
            ("val_acc", "val_acc", Real),
        ],
        order: "trial_id, epoch",
    },
    Table {
        name: "decisions",
        columns: &[
            ("sweep_id", "sweep_id", Text),
            ("config", "config", Text),
            ("rung", "rung", Int),
            ("group_key", "group_key", Text),
            ("rule", "rule", Text),
            ("kept", "kept", Bool),
            ("metric", "metric", Text),
            ("value", "value", Real),
            ("seeds", "seeds", Int),
            ("rank", "rank", Int),
            ("ranked", "ranked", Int),
            ("trials", "trials", Text),
            ("inputs", "inputs", Text),
            ("decided_ms", "decided_ms", Int),
        ],
        order: "sweep_id, group_key, config, rung",
    },
    Table {
        name: "results",
        columns: &[
            ("trial_id", "trial_id", Text),
            ("attempt", "attempt", Int),
            ("worker_id", "worker_id", Text),
            ("final_train_loss", "final_train_loss", Real),
            ("final_train_acc", "final_train_acc", Real),
            ("final_test_loss", "final_test_loss", Real),
            ("final_test_acc", "final_test_acc", Real),
            ("best_test_acc", "best_test_acc", Real),
            ("best_epoch", "best_epoch", Int),
            ("params_total", "params_total", Int),
            ("params_learnable", "params_learnable", Int),
            ("flops_per_image", "flops_per_image", Int),
            ("wall_seconds", "wall_seconds", Real),
            ("peak_memory_bytes", "peak_memory_bytes", Int),
            ("device", "device", Text),
            ("completed_ms", "completed_ms", Int),
            ("eval_error", "eval_error", Text),
            ("eval_seconds", "eval_seconds", Real),
            ("conv_algorithm", "conv_algorithm", Text),
            ("startup_seconds", "startup_seconds", Real),
            ("train_seconds", "train_seconds", Real),
            ("epoch_eval_seconds", "epoch_eval_seconds", Real),
            ("checkpoint_seconds", "checkpoint_seconds", Real),
            ("report_seconds", "report_seconds", Real),
            ("train_images", "train_images", Int),
        ],
        order: "trial_id",
    },
    Table {
        name: "robustness",
        columns: &[
            ("trial_id", "trial_id", Text),
            ("kind", "kind", Text),
            ("name", "name", Text),
            ("eps", "eps", Real),
            ("severity", "severity", Int),
            ("accuracy", "accuracy", Real),
            ("images", "images", Int),
        ],
        order: "trial_id, kind, name, eps, severity",
    },
    Table {
        name: "filters",
        columns: &[
            ("trial_id", "trial_id", Text),
            ("stage", "stage", Text),
            ("layer", "layer", Text),
            ("kernel_size", "kernel_size", Int),
            ("filters", "filters", Int),
            ("fve", "fve", Real),
            ("fve_norm", "fve_norm", Real),
            ("sparsity", "sparsity", Real),
            ("orthogonality", "orthogonality", Real),
            ("heatmap", "heatmap", Text),
            ("folded", "folded", Bool),
            ("seq", "rowid", Int),
        ],
        order: "trial_id, stage, layer",
    },
    Table {
        name: "workers",
        columns: &[
            ("id", "id", Text),
            ("name", "name", Text),
            ("host", "host", Text),
            ("devices", "devices", Text),
            ("slots", "slots", Int),
            ("registered_ms", "registered_ms", Int),
            ("last_seen_ms", "last_seen_ms", Int),
            ("instance", "instance", Text),
        ],
        order: "id",
    },
];

/// Rows inserted per statement.
const CHUNK: usize = 5_000;

/// One value, as both databases give it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// What the copy did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// The table.
    pub table: String,
    /// Rows copied (equal on both sides).
    pub rows: u64,
    /// SHA-256 of its rows' values in key order (equal on both sides), hex.
    pub sha256: String,
}

/// Adds one row's values to a table's checksum.
fn hash_row(h: &mut Sha256, row: &[Value]) {
    for v in row {
        match v {
            Value::Null => h.update([0u8]),
            Value::Int(n) => {
                h.update([1u8]);
                h.update(n.to_le_bytes());
            }
            Value::Real(x) => {
                h.update([2u8]);
                h.update(x.to_bits().to_le_bytes());
            }
            Value::Text(s) => {
                h.update([3u8]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    }
}

fn sqlite_value(table: &str, column: &str, ty: Ty, v: rusqlite::types::ValueRef<'_>) -> Result<Value> {
    use rusqlite::types::ValueRef;
    Ok(match (ty, v) {
        (_, ValueRef::Null) => Value::Null,
        (Ty::Int | Ty::Bool, ValueRef::Integer(n)) => Value::Int(n),
        (Ty::Real, ValueRef::Real(x)) => Value::Real(x),
        (Ty::Real, ValueRef::Integer(n)) => Value::Real(n as f64),
        (Ty::Text, ValueRef::Text(t)) => Value::Text(
            String::from_utf8(t.to_vec())
                .map_err(|_| Error::Corrupt(format!("{table}.{column} holds text that is not UTF-8")))?,
        ),
        (ty, other) => {
            return Err(Error::Corrupt(format!(
                "{table}.{column} holds {:?} where {ty:?} belongs",
                other.data_type()
            )));
        }
    })
}

fn pg_value(row: &postgres::Row, i: usize, ty: Ty) -> Value {
    match ty {
        Ty::Text => row.get::<_, Option<String>>(i).map_or(Value::Null, Value::Text),
        Ty::Int => row.get::<_, Option<i64>>(i).map_or(Value::Null, Value::Int),
        Ty::Real => row.get::<_, Option<f64>>(i).map_or(Value::Null, Value::Real),
        Ty::Bool => row
            .get::<_, Option<bool>>(i)
            .map_or(Value::Null, |b| Value::Int(i64::from(b))),
    }
}

/// Inserts `rows` of `table` in one statement (a column of arrays per column).
fn insert(s: &mut Session<'_>, table: &Table, rows: &[Vec<Value>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::with_capacity(table.columns.len());
    let mut casts = Vec::with_capacity(table.columns.len());
    for (i, (_, _, ty)) in table.columns.iter().enumerate() {
        let column = rows.iter().map(|r| &r[i]);
        let (param, cast): (Box<dyn ToSql + Sync>, &str) = match ty {
            Ty::Text => (
                Box::new(
                    column
                        .map(|v| match v {
                            Value::Text(t) => Some(t.clone()),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                "text",
            ),
            Ty::Int => (
                Box::new(
                    column
                        .map(|v| match v {
                            Value::Int(n) => Some(*n),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                "bigint",
            ),
            Ty::Real => (
                Box::new(
                    column
                        .map(|v| match v {
                            Value::Real(x) => Some(*x),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                "double precision",
            ),
            Ty::Bool => (
                Box::new(
                    column
                        .map(|v| match v {
                            Value::Int(n) => Some(*n != 0),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                "boolean",
            ),
        };
        params.push(param);
        casts.push(format!("${}::{cast}[]", i + 1));
    }
    let names: Vec<&str> = table.columns.iter().map(|(name, _, _)| *name).collect();
    let sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({})",
        table.name,
        names.join(", "),
        casts.join(", ")
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
    s.exec(&sql, &refs)?;
    Ok(())
}

/// Copies the SQLite state in `from` (a folder) into the empty PostgreSQL database at `to`,
/// in one transaction, and verifies every table. Returns what each table holds.
pub fn copy_sqlite_to_postgres(from: &Path, to: &str) -> Result<Vec<TableCopy>> {
    // Refuses a missing state, or one of another schema version, naming both.
    drop(SqliteReader::open(from)?);
    let source = rusqlite::Connection::open_with_flags(
        from.join(DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    // One snapshot of the source for the copy and its check.
    source.execute_batch("BEGIN DEFERRED")?;
    let mut conn = schema::open_writable(to)?;
    let source = std::sync::Mutex::new(source);
    let target = super::conn::redact(to);
    let copied = conn.transaction("BEGIN", |s| {
        let held: i64 = s
            .one(
                "SELECT (SELECT COUNT(*) FROM sweeps) + (SELECT COUNT(*) FROM trials) + (SELECT COUNT(*) FROM workers)",
                &[],
            )?
            .get(0);
        if held > 0 {
            return Err(Error::AlreadyExists(format!(
                "{target} already holds a coordinator state ({held} sweeps, trials and workers); copy into an empty \
                 database"
            )));
        }
        let source = source.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let exprs: Vec<&str> = table.columns.iter().map(|(_, expr, _)| *expr).collect();
            let mut stmt = source.prepare(&format!(
                "SELECT {} FROM {} ORDER BY {}",
                exprs.join(", "),
                table.name,
                table.order
            ))?;
            let mut rows = stmt.query([])?;
            let mut hash = Sha256::new();
            let (mut chunk, mut count) = (Vec::with_capacity(CHUNK), 0u64);
            while let Some(row) = rows.next()? {
                let mut values = Vec::with_capacity(table.columns.len());
                for (i, (name, _, ty)) in table.columns.iter().enumerate() {
                    values.push(sqlite_value(table.name, name, *ty, row.get_ref(i)?)?);
                }
                hash_row(&mut hash, &values);
                chunk.push(values);
                count += 1;
                if chunk.len() == CHUNK {
                    insert(s, table, &chunk)?;
                    chunk.clear();
                }
            }
            insert(s, table, &chunk)?;
            out.push(TableCopy {
                table: table.name.to_owned(),
                rows: count,
                sha256: format!("{:x}", hash.finalize()),
            });
        }
        // The serial columns go on after the copied values.
        for (table, column) in [("sweep_trials", "link"), ("filters", "seq")] {
            s.exec(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
                     (SELECT COALESCE(MAX({column}), 0) + 1 FROM {table}), false)"
                ),
                &[],
            )?;
        }
        // The check, inside the transaction: what PostgreSQL now holds, read back.
        for (table, copied) in TABLES.iter().zip(&out) {
            let names: Vec<&str> = table.columns.iter().map(|(name, _, _)| *name).collect();
            let rows = s.rows(
                &format!(
                    "SELECT {} FROM {} ORDER BY {}",
                    names.join(", "),
                    table.name,
                    table.order
                ),
                &[],
            )?;
            let mut hash = Sha256::new();
            for row in &rows {
                let values: Vec<Value> = table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, _, ty))| pg_value(row, i, *ty))
                    .collect();
                hash_row(&mut hash, &values);
            }
            let sha256 = format!("{:x}", hash.finalize());
            if rows.len() as u64 != copied.rows || sha256 != copied.sha256 {
                return Err(Error::Corrupt(format!(
                    "the copy of table {} does not match its original ({} rows, sha256 {} in SQLite; {} rows, sha256 \
                     {sha256} in PostgreSQL); nothing was copied",
                    table.name,
                    copied.rows,
                    copied.sha256,
                    rows.len()
                )));
            }
        }
        Ok(out)
    })?;
    Ok(copied)
}
