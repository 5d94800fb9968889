//! The read-only view of a state folder: no writes, no migration, no lock against the writer.

use convsweep_coordinator::Error;
use convsweep_coordinator::store::{LeasePolicy, SCHEMA_VERSION, SqliteReader, SqliteStore, StoreReader, StoreWriter};
use convsweep_coordinator::sweep::SweepSpec;

use crate::common::SPEC;

fn version(dir: &std::path::Path) -> String {
    rusqlite::Connection::open(dir.join("state.db"))
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap()
}

/// A store in a fresh folder with the 4 trials of [`SPEC`] submitted.
fn submitted() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let spec = SweepSpec::from_toml(SPEC).unwrap();
    let trials = spec.expand_canonical().unwrap();
    let mut store = SqliteStore::open(dir.path(), LeasePolicy::default()).unwrap();
    store.submit(&spec.id, SPEC, &trials, 1_000).unwrap();
    (dir, store)
}

#[test]
fn an_older_state_is_refused_by_name_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path(), LeasePolicy::default()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(
        "ALTER TABLE trials DROP COLUMN resume_floor; UPDATE meta SET value = '2' WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(conn);
    let err = SqliteReader::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 2") && msg.contains(&format!("reads version {SCHEMA_VERSION}")),
        "{msg}"
    );
    assert_eq!(version(dir.path()), "2", "reading never migrates");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
}

#[test]
fn a_missing_or_foreign_state_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteReader::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("no coordinator state at") && err.contains("state.db"),
        "{err}"
    );
    assert!(!dir.path().join("state.db").exists(), "reading creates nothing");
    rusqlite::Connection::open(dir.path().join("state.db"))
        .unwrap()
        .execute_batch("CREATE TABLE other (x INTEGER);")
        .unwrap();
    let err = SqliteReader::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("not a convsweep state"), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::DataLoss);
}

#[test]
fn reading_beside_a_writer_that_holds_the_write_lock() {
    let (dir, mut store) = submitted();
    // Another writer holds SQLite's write lock with uncommitted rows.
    let writer = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    writer
        .execute_batch("BEGIN IMMEDIATE; DELETE FROM sweep_trials;")
        .unwrap();
    let reader = SqliteReader::open(dir.path()).unwrap();
    let results = reader.results(None).unwrap();
    assert_eq!(
        results.trials.len(),
        4,
        "the last committed state, not the open transaction"
    );
    // The reader took no lock that stops the writer from committing, nor the store from writing.
    writer.execute_batch("ROLLBACK;").unwrap();
    let worker = store.register_worker("w", "h", &[], 2, 2_000, "").unwrap();
    assert_eq!(crate::common::store_lease(&mut store, &worker, 2, 2_000).len(), 2);
    let again = reader.results(None).unwrap();
    assert_eq!(
        again.trials.iter().filter(|t| t.attempts == 1).count(),
        2,
        "sees new commits"
    );
    drop(reader);
    assert_eq!(version(dir.path()), SCHEMA_VERSION.to_string());
}

#[test]
fn corrupt_rows_are_data_loss_not_bad_requests() {
    let (dir, _store) = submitted();
    rusqlite::Connection::open(dir.path().join("state.db"))
        .unwrap()
        .execute_batch("UPDATE trials SET state = 'exploded' WHERE seq = 1;")
        .unwrap();
    let err = SqliteReader::open(dir.path()).unwrap().results(None).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("exploded"), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::DataLoss);
}
