//! `convsweep export --tensorboard`: the logs TensorBoard's own reader (the `tensorboard`
//! package from PyPI, in .deps/tb) reads back with every value, the same from a coordinator
//! as from its state folder, and a real `tensorboard --logdir` in headless Chromium showing the
//! scalars and the hyper-parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use convsweep_coordinator::{Coordinator, CoordinatorConfig};
use convsweep_proto::pb;
use convsweep_testkit::browser::{KillOnDrop, browser};
use serde_json::Value as Json;

use crate::common::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

const SPEC: &str = r#"
name = "tb"
seeds = 2
[dataset]
name = "synthetic"
train_size = 96
test_size = 64
[model]
arch = "resnet"
depth = 8
width = 4
init = "kaiming-uniform"
[train]
epochs = 3
batch_size = 32
lr = 0.05
[grid]
kernel_size = [3, 5]
train_mode = ["learned", "frozen"]
expansion = ["none", 4]
"#;

/// Trial `i`'s epoch `e`: distinct values everywhere, so that a mix-up shows.
fn epoch(i: usize, e: u32) -> pb::EpochMetrics {
    let (i, ef) = (i as f64, f64::from(e));
    pb::EpochMetrics {
        epoch: e,
        lr: 0.05 / ef,
        train_loss: 2.0 - 0.1 * ef - 0.01 * i,
        train_acc: 0.1 * ef + 0.011 * i,
        test_loss: 2.1 - 0.1 * ef - 0.012 * i,
        test_acc: 0.09 * ef + 0.013 * i,
        seconds: 1.0 + 0.1 * i,
        val_loss: None,
        val_acc: None,
    }
}

fn result(i: usize) -> pb::TrialResult {
    let acc = 0.3 + 0.013 * i as f64;
    let robust = |kind: &str, name: &str, eps: f64, severity: u32, accuracy: f64| pb::RobustnessResult {
        kind: kind.into(),
        name: name.into(),
        eps,
        severity,
        accuracy,
        images: 64,
    };
    pb::TrialResult {
        final_train_loss: 0.5 + 0.001 * i as f64,
        final_train_acc: acc + 0.05,
        final_test_loss: 0.6 + 0.002 * i as f64,
        final_test_acc: acc,
        best_test_acc: acc + 0.01,
        best_epoch: 3,
        wall_seconds: 3.0 + i as f64,
        device: "cpu".into(),
        robustness: vec![
            robust("clean", "clean", 0.0, 0, acc),
            robust("fgsm", "fgsm", 1.0 / 255.0, 0, acc - 0.1),
            robust("corruption", "contrast", 0.0, 2, acc - 0.2),
        ],
        ..Default::default()
    }
}

/// What TensorBoard's reader makes of `logdir` (cli/tests/tensorboard/read_logs.py).
fn read_back(tb: &Path, logdir: &Path) -> Json {
    let out = Command::new("python3")
        .arg(workspace().join("cli/tests/tensorboard/read_logs.py"))
        .arg(logdir)
        .env("PYTHONPATH", tb)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every file under `dir` (relative path -> bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    // TensorBoard keeps scalars as 32-bit floats.
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensorboard_reads_back_every_value_and_shows_the_scalars_and_hparams() {
    let tb = workspace().join(".deps/tb");
    if !tb.join("tensorboard").exists() {
        // scripts/test.sh installs it (scripts/tensorboard-deps.sh), so CI always runs this.
        eprintln!(
            "SKIPPED tensorboard_reads_back_every_value: no tensorboard in {}; run scripts/tensorboard-deps.sh",
            tb.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let coordinator = Coordinator::open(CoordinatorConfig {
        state_dir: state.clone(),
        ..Default::default()
    })
    .unwrap();
    coordinator.submit(SPEC).unwrap();
    let worker = scripted_worker(&coordinator, 16);
    let leases = lease_now(&coordinator, &worker, 16).await;
    assert_eq!(leases.len(), 16);
    // 14 trials finish; the 15th runs (2 epochs so far); the 16th has reported nothing.
    let mut expected = BTreeMap::new();
    for (i, l) in leases.iter().enumerate() {
        let epochs: Vec<pb::EpochMetrics> = match i {
            0..14 => (1..=3).map(|e| epoch(i, e)).collect(),
            14 => (1..=2).map(|e| epoch(i, e)).collect(),
            _ => Vec::new(),
        };
        if !epochs.is_empty() {
            coordinator
                .report_epochs(pb::ReportEpochsRequest {
                    worker_id: worker.clone(),
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                    epochs: epochs.clone(),
                })
                .await
                .unwrap();
        }
        if i < 14 {
            coordinator
                .complete(pb::CompleteRequest {
                    worker_id: worker.clone(),
                    trial_id: l.trial_id.clone(),
                    lease_token: l.lease_token.clone(),
                    outcome: Some(pb::complete_request::Outcome::Succeeded(pb::Succeeded {
                        result: Some(result(i)),
                    })),
                })
                .await
                .unwrap();
        }
        let spec = convsweep_proto::TrialSpec::from_json(&l.spec_json).unwrap();
        let run = format!(
            "k={}/{}/{}/seed={}",
            spec.model.kernel_size,
            spec.model.train_mode.as_str(),
            spec.model.expansion.map_or("plain".to_owned(), |e| format!("E={e}")),
            spec.seed
        );
        expected.insert(run, (i, spec, epochs));
    }

    // From the state folder, and from the coordinator over gRPC: the same files.
    let token = convsweep_proto::client::Secret::new("tb-test-token", "test").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let (c, s) = (coordinator.clone(), stop.clone());
        let serve = convsweep_coordinator::ServeConfig {
            token: Some(token),
            ..Default::default()
        };
        async move { convsweep_coordinator::serve_with(listener, c, &serve, async move { s.cancelled().await }).await }
    });
    let (local, remote) = (dir.path().join("tb-local"), dir.path().join("tb-remote"));
    let exports = [
        vec![
            "export".into(),
            "--state-dir".into(),
            state.clone(),
            "--tensorboard".into(),
            local.clone(),
        ],
        vec![
            "export".into(),
            "--coordinator".into(),
            url.clone().into(),
            "--tensorboard".into(),
            remote.clone(),
        ],
    ];
    let outputs = tokio::task::spawn_blocking(move || {
        exports
            .into_iter()
            .map(|args| {
                let out = Command::new(BIN)
                    .args(args)
                    .env("CONVSWEEP_TOKEN", "tb-test-token")
                    .env_remove("CONVSWEEP_TOKEN_FILE")
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stderr).into_owned()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    stop.cancel();
    server.await.unwrap().unwrap();
    assert!(outputs[0].contains("15 runs"), "{outputs:?}");
    assert_eq!(
        files(&local),
        files(&remote),
        "the same logs from the coordinator as from its state"
    );

    let seen = read_back(&tb, &local);
    let runs = seen["runs"].as_object().unwrap();
    let mut names: Vec<&str> = runs.keys().map(String::as_str).filter(|r| *r != ".").collect();
    names.sort();
    let mut want: Vec<&str> = expected
        .iter()
        .filter(|(_, (_, _, e))| !e.is_empty())
        .map(|(r, _)| r.as_str())
        .collect();
    want.sort();
    assert_eq!(names, want, "one run per trial that reported, named by its factors");

    let series = |run: &str, tag: &str| -> Vec<(u64, f64)> {
        runs[run]["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("{run} has no {tag}: {}", runs[run]))
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    let mut checked = 0;
    for (run, (i, _, epochs)) in &expected {
        if epochs.is_empty() {
            continue;
        }
        for (tag, f) in [
            (
                "train/loss",
                (|m: &pb::EpochMetrics| m.train_loss) as fn(&pb::EpochMetrics) -> f64,
            ),
            ("train/acc", |m| m.train_acc),
            ("test/loss", |m| m.test_loss),
            ("test/acc", |m| m.test_acc),
            ("lr", |m| m.lr),
            ("epoch/seconds", |m| m.seconds),
        ] {
            let got = series(run, tag);
            assert_eq!(got.len(), epochs.len(), "{run} {tag}");
            for ((step, v), m) in got.iter().zip(epochs) {
                assert_eq!(*step, u64::from(m.epoch), "{run} {tag}");
                assert!(close(*v, f(m)), "{run} {tag} epoch {step}: {v} against {}", f(m));
                checked += 1;
            }
        }
        if *i < 14 {
            let r = result(*i);
            for (tag, v) in [
                ("final/test_acc", r.final_test_acc),
                ("final/train_acc", r.final_train_acc),
                ("final/best_test_acc", r.best_test_acc),
                ("final/test_loss", r.final_test_loss),
                ("final/train_loss", r.final_train_loss),
                ("final/wall_seconds", r.wall_seconds),
                ("robustness/clean", r.robustness[0].accuracy),
                ("robustness/fgsm/eps_x255=1", r.robustness[1].accuracy),
                ("robustness/corruption/contrast/severity=2", r.robustness[2].accuracy),
            ] {
                let got = series(run, tag);
                assert_eq!(got.len(), 1, "{run} {tag}");
                assert_eq!(got[0].0, 3, "{run} {tag}: at the last epoch");
                assert!(close(got[0].1, v), "{run} {tag}: {} against {v}", got[0].1);
                checked += 1;
            }
        } else {
            assert!(
                runs[run]["scalars"].get("final/test_acc").is_none(),
                "a running trial has no final figures"
            );
        }
    }
    assert_eq!(checked, 14 * (6 * 3 + 9) + 6 * 2);

    // The hparams plugin: the experiment and one session per run.
    let hp = &seen["hparams"];
    let experiment = &hp["experiment"];
    assert_eq!(
        experiment["run"], ".",
        "the experiment summary sits at the log folder's root"
    );
    let infos: BTreeMap<&str, &Json> = experiment["hparamInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h))
        .collect();
    assert_eq!(
        infos.keys().copied().collect::<Vec<_>>(),
        ["expansion", "kernel_size", "seed", "train_mode"]
    );
    assert_eq!(infos["kernel_size"]["type"], "DATA_TYPE_FLOAT64");
    assert_eq!(infos["kernel_size"]["domainDiscrete"], serde_json::json!([3.0, 5.0]));
    assert_eq!(infos["train_mode"]["type"], "DATA_TYPE_STRING");
    // Plain convs have no expansion: the column is text, "none" for them.
    assert_eq!(infos["expansion"]["type"], "DATA_TYPE_STRING");
    let metrics: Vec<&str> = experiment["metricInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"]["tag"].as_str().unwrap())
        .collect();
    for m in ["final/test_acc", "final/best_test_acc", "robustness/fgsm/eps_x255=1"] {
        assert!(metrics.contains(&m), "{m} in {metrics:?}");
    }
    let sessions = hp["sessions"].as_object().unwrap();
    assert_eq!(sessions.len(), 15);
    for (run, (i, spec, epochs)) in &expected {
        if epochs.is_empty() {
            continue;
        }
        let s = &sessions[run.as_str()];
        assert_eq!(s["hparams"]["kernel_size"], f64::from(spec.model.kernel_size), "{run}");
        assert_eq!(s["hparams"]["train_mode"], spec.model.train_mode.as_str(), "{run}");
        assert_eq!(
            s["hparams"]["expansion"],
            spec.model.expansion.map_or("none".to_owned(), |e| e.to_string()),
            "{run}"
        );
        assert_eq!(s["hparams"]["seed"], spec.seed as f64, "{run}");
        assert_eq!(s["group"], run.as_str(), "a row of its own in the HPARAMS table");
        // 1: success; a running trial has no end yet.
        assert_eq!(s.get("status").and_then(Json::as_u64), (*i < 14).then_some(1), "{run}");
    }

    screenshot(&tb, &local, dir.path());
}

/// Serves `logdir` with `tensorboard --logdir` and looks at it in headless Chromium: the
/// scalars dashboard shows the tags and runs, the HPARAMS dashboard the hyper-parameters. The
/// screenshots stay in `target/tensorboard-screenshots/`.
fn screenshot(tb: &Path, logdir: &Path, tmp: &Path) {
    use std::io::BufRead;
    let Some(browser) = browser(&workspace(), "the TensorBoard screenshot") else {
        return;
    };
    let mut server = KillOnDrop(
        Command::new("python3")
            .args([
                "-m",
                "tensorboard.main",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--load_fast=false",
            ])
            .arg("--logdir")
            .arg(logdir)
            .env("PYTHONPATH", tb)
            .env("HOME", tmp)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tensorboard starts"),
    );
    // It says where it listens: "TensorBoard 2.21.0 at http://127.0.0.1:PORT/ (Press CTRL+C to quit)".
    let stderr = server.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://127.0.0.1:")) {
                let _ = tx.send(url.trim_end_matches('/').to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("tensorboard says where it listens within a minute");
    let shots = workspace().join("target/tensorboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(workspace().join("cli/tests/tensorboard/screenshot.cjs"))
        .args([
            url.as_str(),
            shots.to_str().unwrap(),
            r#"{"scalars": ["test/acc", "train/loss", "final/test_acc"], "hparams": ["kernel_size", "train_mode", "expansion", "final/test_acc"]}"#,
        ])
        .env("NODE_PATH", &browser.node_modules)
        .env("CHROMIUM", &browser.chromium)
        .output()
        .expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Json = serde_json::from_slice(&out.stdout).unwrap();
    for (dashboard, names) in seen.as_object().unwrap() {
        for (name, count) in names.as_object().unwrap() {
            assert!(
                count.as_u64().unwrap() >= 1,
                "the {dashboard} dashboard shows {name}: {seen}"
            );
        }
    }
    for png in ["tensorboard-scalars.png", "tensorboard-hparams.png"] {
        let bytes = std::fs::read(shots.join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{png}: a real screenshot"
        );
    }
}
