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

/// A result with robustness rows and filter statistics (a layer without `fve_norm` among them).
fn rich_result(i: u32) -> convsweep_proto::pb::TrialResult {
    use convsweep_proto::pb;
    let mut r = convsweep_testkit::scripted::result(0.5 + f64::from(i) / 100.0);
    r.best_epoch = 1;
    r.params_total = 1_000 + u64::from(i);
    r.flops_per_image = 50_000;
    r.wall_seconds = 1.25;
    r.robustness = vec![
        pb::RobustnessResult {
            kind: "fgsm".into(),
            name: "fgsm".into(),
            eps: 1.0 / 255.0,
            severity: 0,
            accuracy: 0.3,
            images: 64,
        },
        pb::RobustnessResult {
            kind: "corruption".into(),
            name: "gaussian_noise".into(),
            eps: 0.0,
            severity: 3,
            accuracy: 0.4 + f64::from(i) / 1000.0,
            images: 64,
        },
    ];
    r.filters = vec![
        pb::FilterStats {
            stage: "init".into(),
            layer: "conv1".into(),
            kernel_size: 3,
            filters: 16,
            fve: 0.9,
            fve_norm: Some(0.8),
            sparsity: 0.1,
            orthogonality: 0.5,
            heatmap: (0..9).map(|c| f64::from(c) / 9.0).collect(),
            folded: false,
        },
        pb::FilterStats {
            stage: "final".into(),
            layer: "block0.conv1".into(),
            kernel_size: 3,
            filters: 16,
            fve: 0.7,
            fve_norm: None,
            sparsity: 0.2,
            orthogonality: 0.4,
            heatmap: vec![],
            folded: true,
        },
    ];
    r
}

/// A SQLite state of a finished sweep (scripted: every kind of row), with one trial failed and
/// one still leased.
async fn sqlite_state(dir: &std::path::Path) {
    use convsweep_coordinator::{Coordinator, CoordinatorConfig};
    use convsweep_proto::pb;
    use convsweep_testkit::scripted::{epoch_with_val, lease_now, scripted_worker};
    let c = Coordinator::open(CoordinatorConfig {
        state_dir: dir.to_owned(),
        ..Default::default()
    })
    .unwrap();
    c.submit(&tiny_spec("moved")).unwrap();
    let w = scripted_worker(&c, 8);
    let leases = lease_now(&c, &w, 8).await;
    assert_eq!(leases.len(), 8);
    for (i, l) in leases.iter().enumerate() {
        let i = i as u32;
        if i == 7 {
            break; // still leased
        }
        c.report_epochs(pb::ReportEpochsRequest {
            worker_id: w.clone(),
            trial_id: l.trial_id.clone(),
            lease_token: l.lease_token.clone(),
            epochs: vec![epoch_with_val(1, 0.4 + f64::from(i) / 100.0, 0.3)],
        })
        .await
        .unwrap();
        let outcome = if i == 6 {
            pb::complete_request::Outcome::Failed(pb::Failed {
                retryable: false,
                reason: "a scripted failure".into(),
            })
        } else {
            pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                result: Some(rich_result(i)),
            })
        };
        c.complete(pb::CompleteRequest {
            worker_id: w.clone(),
            trial_id: l.trial_id.clone(),
            lease_token: l.lease_token.clone(),
            outcome: Some(outcome),
        })
        .await
        .unwrap();
    }
    drop(c);
    // A stopping rule's rows (a decision, a trial marked at its rung) written as a coordinator
    // of a sweep with one would.
    let conn = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO decisions (sweep_id, config, rung, group_key, rule, kept, metric, value, seeds, rank, ranked, \
         trials, inputs, decided_ms) VALUES ('moved', 'kernel_size=5', 1, 'all', 'successive-halving', 0, 'val_acc', \
         0.3, 1, 2, 2, '{0}', '{{\"values\":{{}}}}', 7); UPDATE trials SET stop_rung = 1 WHERE id = '{0}';",
        leases[7].trial_id
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_copied_into_postgres_exports_and_reports_as_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    sqlite_state(&state).await;
    let pg = convsweep_testkit::postgres::shared();
    let store = pg.url(&pg.fresh_database());

    let out = run(&["store", "copy", "--from", state.to_str().unwrap(), "--to", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = |table: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(table))
            .unwrap_or_else(|| panic!("{table} in {stdout}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(
        (
            rows("trials"),
            rows("epochs"),
            rows("results"),
            rows("robustness"),
            rows("filters"),
            rows("decisions")
        ),
        (8, 7, 6, 12, 12, 1),
        "{stdout}"
    );
    assert!(stderr(&out).contains("match the original"), "{}", stderr(&out));

    // Export and report from the copy and from the original: the same files, byte for byte.
    for (what, source) in [
        ("sqlite", vec!["--state-dir", state.to_str().unwrap()]),
        ("pg", vec!["--store", &store]),
    ] {
        let out_dir = dir.path().join(format!("export-{what}"));
        let mut args = vec!["export"];
        args.extend(&source);
        args.extend(["--out", out_dir.to_str().unwrap()]);
        let out = run(&args);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
    }
    let files = |d: &str| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir.path().join(d))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (files("export-sqlite"), files("export-pg"));
    assert_eq!(a.len(), 5, "{:?}", a.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((name_a, bytes_a), (name_b, bytes_b)) in a.iter().zip(&b) {
        assert_eq!(name_a, name_b);
        assert!(bytes_a == bytes_b, "{name_a} differs between the original and the copy");
    }
    for (what, source) in [("sqlite", state.to_str().unwrap().to_owned()), ("pg", store.clone())] {
        let out_dir = dir.path().join(format!("report-{what}"));
        let args: Vec<&str> = if what == "pg" {
            vec!["report", "--store", &source, "--out", out_dir.to_str().unwrap()]
        } else {
            vec!["report", &source, "--out", out_dir.to_str().unwrap()]
        };
        let out = run(&args);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
    }
    let report = |w: &str| std::fs::read_to_string(dir.path().join(format!("report-{w}/report.md"))).unwrap();
    assert_eq!(report("sqlite"), report("pg"), "the same report from the copy");

    // A second copy into the same database is refused, naming it; nothing changes.
    let out = run(&["store", "copy", "--from", state.to_str().unwrap(), "--to", &store]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds a coordinator state"),
        "{}",
        stderr(&out)
    );
    // A folder without a state is named.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(&[
        "store",
        "copy",
        "--from",
        empty.to_str().unwrap(),
        "--to",
        &pg.url(&pg.fresh_database()),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no coordinator state at"), "{}", stderr(&out));
}
