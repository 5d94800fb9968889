//! The read-only view of a state, on each store: no writes, no migration, no lock against the
//! writer.

use convsweep_coordinator::Error;
use convsweep_coordinator::store::{LeasePolicy, SCHEMA_VERSION, StoreWriter};
use convsweep_coordinator::sweep::SweepSpec;

use crate::common::{SPEC, State, Store};
use crate::on_both_stores;

/// A writer on a fresh state with the 4 trials of [`SPEC`] submitted.
fn submitted(state: &State) -> Box<dyn StoreWriter> {
    let spec = SweepSpec::from_toml(SPEC).unwrap();
    let trials = spec.expand_canonical().unwrap();
    let mut store = state.backend().open_writer(LeasePolicy::default()).unwrap();
    store.submit(&spec.id, SPEC, &trials, 1_000).unwrap();
    store
}

fn version(state: &State) -> String {
    state.query("SELECT value FROM meta WHERE key = 'schema_version'")
}

on_both_stores! {
#[tokio::test]
async fn a_state_of_another_version_is_refused_by_name_and_left_as_it_was(store: Store) {
    let state = State::new(store);
    drop(submitted(&state));
    // SQLite: an older state a reader must not migrate; PostgreSQL: a version it never wrote.
    let older = match store {
        Store::Sqlite => "ALTER TABLE trials DROP COLUMN resume_floor; UPDATE meta SET value = '2' WHERE key = 'schema_version';",
        Store::Postgres => "UPDATE meta SET value = '2' WHERE key = 'schema_version';",
    };
    state.sql(older);
    let err = state.backend().open_reader().unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 2") && msg.contains(&format!("reads version {SCHEMA_VERSION}")),
        "{msg}"
    );
    assert_eq!(version(&state), "2", "reading never migrates");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
    if store == Store::Postgres {
        // A newer state is refused by the writer too, naming both versions, and left alone.
        state.sql("UPDATE meta SET value = '99' WHERE key = 'schema_version';");
        let err = state.backend().open_writer(LeasePolicy::default()).unwrap_err().to_string();
        assert!(err.contains("schema version 99") && err.contains(&format!("reads version {SCHEMA_VERSION}")), "{err}");
        assert!(!err.contains("password"), "{err}");
        assert_eq!(version(&state), "99");
    }
}
}

on_both_stores! {
#[tokio::test]
async fn a_missing_or_foreign_state_is_named(store: Store) {
    let state = State::new(store);
    let err = state.backend().open_reader().unwrap_err().to_string();
    match store {
        Store::Sqlite => {
            assert!(err.contains("no coordinator state at") && err.contains("state.db"), "{err}");
            assert!(!state.dir.path().join("state.db").exists(), "reading creates nothing");
        }
        Store::Postgres => {
            assert!(err.contains("no coordinator state in postgres://postgres@127.0.0.1:"), "{err}");
            assert_eq!(
                state.query("SELECT COUNT(*)::text FROM pg_tables WHERE schemaname = 'public'"),
                "0",
                "reading creates nothing"
            );
        }
    }
    // Another program's tables: SQLite's without a meta table, PostgreSQL's with one of its own.
    state.sql(match store {
        Store::Sqlite => "CREATE TABLE other (x INTEGER);",
        Store::Postgres => "CREATE TABLE meta (x INTEGER);",
    });
    let err = state.backend().open_reader().unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("not a convsweep state"), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::DataLoss);
    if store == Store::Postgres {
        let err = state.backend().open_writer(LeasePolicy::default()).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "the writer creates nothing beside it: {err:?}");
    }
}
}

on_both_stores! {
#[tokio::test]
async fn reading_beside_a_writer_with_an_open_transaction(store: Store) {
    let state = State::new(store);
    let mut writer = submitted(&state);
    let reader = state.backend().open_reader().unwrap();
    // Another connection deletes every link, uncommitted, while the reader reads.
    let other = std::thread::scope(|scope| {
        let (opened, open) = std::sync::mpsc::channel();
        let (done, finish) = std::sync::mpsc::channel::<()>();
        let url = state.url();
        let dir = state.dir.path().to_owned();
        let h = scope.spawn(move || match url {
            Some(url) => {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let mut tx = c.transaction().unwrap();
                tx.batch_execute("DELETE FROM sweep_trials").unwrap();
                opened.send(()).unwrap();
                finish.recv().unwrap();
                tx.rollback().unwrap();
            }
            None => {
                let c = rusqlite::Connection::open(dir.join("state.db")).unwrap();
                c.execute_batch("BEGIN IMMEDIATE; DELETE FROM sweep_trials;").unwrap();
                opened.send(()).unwrap();
                finish.recv().unwrap();
                c.execute_batch("ROLLBACK;").unwrap();
            }
        });
        open.recv().unwrap();
        let results = reader.results(None).unwrap();
        done.send(()).unwrap();
        h.join().unwrap();
        results
    });
    assert_eq!(other.trials.len(), 4, "the last committed state, not the open transaction");
    // The reader took no lock that stops the store from writing.
    let worker = writer.register_worker("w", "h", &[], 2, 2_000, "").unwrap();
    assert_eq!(crate::common::store_lease(writer.as_mut(), &worker, 2, 2_000).len(), 2);
    let again = reader.results(None).unwrap();
    assert_eq!(again.trials.iter().filter(|t| t.attempts == 1).count(), 2, "sees new commits");
    drop(reader);
    assert_eq!(version(&state), SCHEMA_VERSION.to_string());
}
}

on_both_stores! {
#[tokio::test]
async fn corrupt_rows_are_data_loss_not_bad_requests(store: Store) {
    let state = State::new(store);
    let _writer = submitted(&state);
    state.sql("UPDATE trials SET state = 'exploded' WHERE seq = 1;");
    let err = state.backend().open_reader().unwrap().results(None).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("exploded"), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::DataLoss);
}
}
