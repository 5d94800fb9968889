//! The coordinator on PostgreSQL as a process: its store flags, a sweep run by a worker process,
//! and export and report reading the database directly.

use std::process::{Command, Output};
use std::time::Duration;

use convsweep_coordinator::store::{Backend, PostgresBackend};
use convsweep_proto::TrialState;

use crate::common::*;

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn store_flags_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // Not a PostgreSQL URL.
    let out = run(&["coordinator", "--insecure", "--store", "sqlite:///tmp/x.db"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--store must be a postgres:// (or postgresql://) URL")
            && stderr(&out).contains("--state-dir"),
        "{}",
        stderr(&out)
    );
    // Neither a state folder nor a store.
    let out = run(&["coordinator", "--insecure"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--state-dir"), "{}", stderr(&out));
    // A shared store and no token to share: refused before anything starts.
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, "postgres://nobody@127.0.0.1:1/none\n").unwrap();
    let out = run(&["coordinator", "--store-url-file", url_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
    // A database that cannot be reached is named, without its password.
    std::fs::write(
        &url_file,
        "postgres://convsweep:s3cret@127.0.0.1:1/none?connect_timeout=2\n",
    )
    .unwrap();
    let out = run(&[
        "coordinator",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--store-url-file",
        url_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot connect to postgres://convsweep@127.0.0.1:1/none"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "the password is never printed: {err}");
}

#[test]
fn a_coordinator_on_postgres_runs_a_sweep_that_export_and_report_read() {
    let pg = convsweep_testkit::postgres::shared();
    let store = pg.url(&pg.fresh_database());
    let dir = tempfile::tempdir().unwrap();
    // The URL from a file, as a mounted Secret gives it; no state folder.
    let url_file = dir.path().join("store-url");
    std::fs::write(&url_file, format!("{store}\n")).unwrap();
    let main = loopback().unwrap();
    let url = url(&main);
    let mut cmd = Command::new(BIN);
    cmd.args(["coordinator", "--insecure"]);
    let mut coordinator = listen_on(&mut cmd, &main)
        .args(["--ops-listen", "127.0.0.1:0", "--heartbeat-secs", "1"])
        .arg("--store-url-file")
        .arg(&url_file)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();

    let spec = write_spec(dir.path(), "onpg");
    let mut submitted = false;
    for _ in 0..100 {
        if run(&["submit", spec.to_str().unwrap(), "--coordinator", &url])
            .status
            .success()
        {
            submitted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(submitted, "submit succeeded");
    let mut worker = spawn_worker(&url, "solo");
    let backend = PostgresBackend::new(store.clone());
    let mut done = false;
    for _ in 0..1200 {
        if let Some(status) = worker.try_wait().unwrap() {
            panic!("the worker exited early ({status}) with the sweep unfinished");
        }
        let status = backend.open_reader().unwrap().sweep_status("onpg", 0).unwrap();
        if status.counts.unwrap().succeeded == status.total {
            assert_eq!(status.total, 8);
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(done, "the sweep finished");
    // The worker is idle now; its exit status after SIGTERM is the worker tests' concern.
    terminate(&mut worker, Duration::from_secs(30));
    assert!(
        terminate(&mut coordinator, Duration::from_secs(30)).success(),
        "a clean stop"
    );

    // Read straight from the database: every trial succeeded with its epochs.
    let results = backend.open_reader().unwrap().results(None).unwrap();
    assert_eq!(results.trials.len(), 8);
    assert!(results.trials.iter().all(|t| t.state == TrialState::Succeeded));
    assert_eq!(results.epochs.len(), 8, "one epoch per trial");

    let export = dir.path().join("export");
    let out = run(&["export", "--store", &store, "--out", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let frames = convsweep_analysis::Frames::read_parquet(&export).unwrap();
    assert_eq!(frames.trials.height(), 8);
    let report = dir.path().join("report");
    let out = run(&["report", "--store", &store, "--out", report.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        report.join("report.md").exists(),
        "{:?}",
        std::fs::read_dir(&report).unwrap().collect::<Vec<_>>()
    );
}
