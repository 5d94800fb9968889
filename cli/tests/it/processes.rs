//! Whole-system tests with worker processes.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use convsweep_analysis::Frames;
use convsweep_coordinator::store::{SqliteReader, StoreReader};
use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::TrialState;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_finish_a_sweep_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: dir.path().to_owned(),
        heartbeat_interval: Duration::from_millis(500),
        lease_timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(convsweep_coordinator::serve(listener, coordinator.clone(), {
        let s = stop.clone();
        async move { s.cancelled().await }
    }));

    let mut workers = vec![spawn_worker(&url, "a"), spawn_worker(&url, "b")];
    // Both registered and waiting before there is work, so both get some.
    for _ in 0..600 {
        if coordinator.status("").unwrap().workers_alive == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(coordinator.status("").unwrap().workers_alive, 2);
    let (sweep, submitted) = coordinator.submit(&tiny_spec("pair")).unwrap();
    assert_eq!(submitted.trials, 8);
    wait_done(&coordinator, sweep.as_str(), Duration::from_secs(240)).await;

    coordinator.set_drain(true);
    for w in &mut workers {
        assert!(
            wait_exit(w, Duration::from_secs(30)).success(),
            "worker exits cleanly when drained"
        );
    }
    stop.cancel();
    server.await.unwrap().unwrap();

    let results = SqliteReader::open(dir.path()).unwrap().results(None).unwrap();
    let rows = results.trials;
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r.state == TrialState::Succeeded), "{rows:?}");
    let workers_used: HashSet<_> = rows.iter().filter_map(|r| r.worker_id.clone()).collect();
    assert_eq!(workers_used.len(), 2, "both workers trained");
    for r in &rows {
        let result = r.result.as_ref().unwrap();
        assert!(result.params_total > 0 && result.flops_per_image > 0);
        assert!((0.0..=1.0).contains(&result.final_test_acc));
        assert_eq!(result.device, "cpu (1 threads)");
        assert_eq!(result.conv_algorithm, "direct", "k < 9: no conv through the FFT");
    }
    let epochs = results.epochs;
    assert_eq!(epochs.len(), 8, "one epoch per trial, streamed");
}

#[test]
fn run_executes_a_sweep_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "local");
    let runs = dir.path().join("runs");
    let out = Command::new(BIN)
        .args([
            "run",
            spec.to_str().unwrap(),
            "--workers",
            "2",
            "--threads",
            "1",
            "--device",
            "cpu",
        ])
        .arg("--runs-dir")
        .arg(&runs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("8 succeeded, 0 failed"), "{stderr}");
    // The headline table with every column (Polars' own display elided the middle ones).
    for column in [
        "kernel_size",
        "train_mode",
        "init",
        "n",
        "failed",
        "unfinished",
        "mean",
        "std",
        "ci95",
        "flag",
    ] {
        assert!(stdout.contains(column), "{column} is printed: {stdout}");
    }
    assert!(!stdout.contains('…'), "no column elided: {stdout}");

    let run_dir = runs.join("local");
    for f in [
        "state.db",
        "trials.parquet",
        "epochs.parquet",
        "report.md",
        "logs/worker-0.log",
        "logs/worker-1.log",
    ] {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
    let frames = Frames::read_parquet(&run_dir).unwrap();
    assert_eq!(frames.trials.height(), 8);
    assert_eq!(frames.epochs.height(), 8);
    // Default evaluations: FGSM at 1/255 and 7 corruptions x 5 severities per trial; filter
    // statistics of ResNet-8's 7 spatial layers at init and at the end.
    assert!(run_dir.join("robustness.parquet").exists() && run_dir.join("filters.parquet").exists());
    assert_eq!(
        frames.robustness.height(),
        8 * (1 + 1 + 35),
        "clean, FGSM, 7 corruptions x 5 severities"
    );
    assert_eq!(frames.filters.height(), 8 * 7 * 2);
    let errors = frames.trials.column("eval_error").unwrap().str().unwrap().clone();
    assert!(
        (0..errors.len()).all(|i| errors.get(i) == Some("")),
        "no evaluation failed"
    );
    let eval_seconds = frames.trials.column("eval_seconds").unwrap().f64().unwrap().clone();
    assert!((0..eval_seconds.len()).all(|i| eval_seconds.get(i).unwrap() > 0.0));
    for c in ["gap_acc", "gap_loss", "final_minus_best", "mean_corruption_acc"] {
        assert!(frames.trials.column(c).is_ok(), "{c}");
    }
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(
        report.contains("8 trials: 8 succeeded, 0 failed, 0 unfinished"),
        "{report}"
    );
    assert!(
        report.contains("Test accuracy by kernel size x train mode x init"),
        "{report}"
    );
    assert!(run_dir.join("report.html").exists() && run_dir.join("tables/accuracy.csv").exists());

    // Running the same spec again resumes: nothing is trained twice.
    let again = Command::new(BIN)
        .args([
            "run",
            spec.to_str().unwrap(),
            "--workers",
            "1",
            "--threads",
            "1",
            "--device",
            "cpu",
        ])
        .arg("--runs-dir")
        .arg(&runs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("8 trials (0 new)"), "{stderr}");
}

#[test]
fn the_commands_work_as_separate_processes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let main = loopback().unwrap();
    let url = url(&main);
    let mut cmd = Command::new(BIN);
    // This test's clients carry no token (the default token is security.rs's to test).
    cmd.args(["coordinator", "--insecure"]);
    let mut coordinator = listen_on(&mut cmd, &main)
        .args(["--ops-listen", "127.0.0.1:0", "--heartbeat-secs", "1"])
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();

    let spec = write_spec(dir.path(), "procs");
    // The coordinator may still be starting: submit retries until it answers.
    let mut submitted = None;
    for _ in 0..100 {
        let out = Command::new(BIN)
            .args(["submit", spec.to_str().unwrap(), "--coordinator", &url])
            .output()
            .unwrap();
        if out.status.success() {
            submitted = Some(String::from_utf8(out.stdout).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(submitted.expect("submit succeeded").trim(), "procs");

    let mut worker = spawn_worker(&url, "solo");
    let mut done = false;
    for _ in 0..1200 {
        if let Some(status) = worker.try_wait().unwrap() {
            panic!("the worker exited early ({status}) with the sweep unfinished");
        }
        let out = Command::new(BIN)
            .args(["status", "--coordinator", &url, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let sweep = &v["sweeps"][0];
        assert_eq!(sweep["sweep"], "procs");
        assert_eq!(sweep["total"], 8);
        if sweep["counts"]["succeeded"] == 8 {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(done, "the sweep finished");
    let text = Command::new(BIN)
        .args(["status", "--coordinator", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("sweep procs: 8/8 done"), "{text}");

    // SIGTERM stops a worker cleanly.
    let term = |child: &mut std::process::Child| assert!(terminate(child, Duration::from_secs(30)).success());
    term(&mut worker);

    // Lifecycle: extend with another kernel size (only the new trials), cancel them, resume.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--coordinator", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let grown = dir.path().join("grown.toml");
    std::fs::write(
        &grown,
        tiny_spec("procs").replace("kernel_size = [3, 5]", "kernel_size = [3, 5, 7]"),
    )
    .unwrap();
    let (_, err) = cli(&["extend", grown.to_str().unwrap()]);
    assert!(err.contains("12 trials (4 new)"), "{err}");
    let (out, _) = cli(&["cancel", "procs"]);
    assert!(out.contains("cancelled 4 trials"), "{out}");
    let (out, _) = cli(&["status"]);
    assert!(out.contains("succeeded 8") && out.contains("cancelled 4"), "{out}");
    let (out, _) = cli(&["resume", "procs"]);
    assert!(out.contains("re-queued 4 trials"), "{out}");
    term(&mut coordinator);

    let out_dir = dir.path().join("export");
    let out = Command::new(BIN)
        .args(["export"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let frames = Frames::read_parquet(&out_dir).unwrap();
    assert_eq!(frames.trials.height(), 12, "8 done, 4 pending again");
    assert_eq!(frames.epochs.height(), 8);
    assert_eq!(frames.robustness.height(), 8 * 37);
    assert_eq!(frames.filters.height(), 8 * 14);

    // Reports from the export and straight from the state folder.
    for (source, out) in [
        (&out_dir, dir.path().join("report-export")),
        (&state, dir.path().join("report-state")),
    ] {
        let run = Command::new(BIN)
            .arg("report")
            .arg(source)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        assert!(html.contains("<svg") && html.contains("Paper check"));
        assert!(out.join("report.md").exists() && out.join("tables/cost.parquet").exists());
    }
    let wrong = Command::new(BIN)
        .arg("report")
        .arg(&state)
        .args(["--out", "/tmp/x", "--sweep", "nope"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no sweep \"nope\""));
}

#[test]
fn a_bad_spec_names_the_field_and_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(&spec, tiny_spec("bad").replace("\"kaiming-normal\"]", "\"kaiming\"]")).unwrap();
    let out = Command::new(BIN)
        .args(["run", spec.to_str().unwrap()])
        .arg("--runs-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.init"), "{stderr}");
    assert!(stderr.contains("kaiming-uniform"), "{stderr}");
    let missing = Command::new(BIN).args(["run", "/nonexistent.toml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent.toml"));
}

#[test]
fn model_info_counts_any_model_the_spec_language_expresses() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("model-info").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, _) = run(&[]);
    assert!(ok);
    assert!(
        stdout.contains("resnet-20-16") && stdout.contains("272,474"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&[
        "arch=mobilenet-v2",
        "stem=imagenet",
        "--classes",
        "1000",
        "--image-size",
        "224",
    ]);
    assert!(ok && stdout.contains("3,504,872"), "{stdout}");
    let (ok, stdout, _) = run(&["kernel_size=[3,9]", "expansion=128", "train_mode=frozen", "--json"]);
    assert!(ok);
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows[1]["params_total"], 312_552_106);
    assert_eq!(rows[1]["params_learnable"], 4_166_314);
    let (ok, _, stderr) = run(&["depth=21"]);
    assert!(
        !ok && stderr.contains("model.depth") && stderr.contains("6n+2"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["dataset=tensor", "dataset.root=/x"]);
    assert!(!ok && stderr.contains("--classes"), "{stderr}");
}
