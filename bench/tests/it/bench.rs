//! `convsweep-bench coordinator` and `convsweep-bench trial` end to end at a small size.

use crate::{BIN, convsweep_binary, stdout_of_success};

/// A coordinator process, simulated workers over loopback gRPC, and the bench's own check that
/// every trial succeeded once with all its epochs.

#[test]
fn the_coordinator_bench_runs_20_workers_through_200_trials() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(BIN)
        .args([
            "coordinator",
            "--workers",
            "20",
            "--trials",
            "200",
            "--epochs",
            "5",
            "--slots",
            "2",
        ])
        .args(["--no-peer", "--json"])
        .arg(&json)
        .arg("--dir")
        .arg(dir.path())
        .arg("--convsweep")
        .arg(convsweep_binary())
        .output()
        .unwrap();
    let stdout = stdout_of_success(&out);
    assert!(
        stdout.contains("trials/s") && stdout.contains("health_check"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let c = &v["convsweep"];
    assert_eq!(c["succeeded_once"], 200);
    assert_eq!(c["epoch_rows"], 1000);
    assert_eq!(c["false_expiries"], 0.0);
    assert_eq!(c["complete"]["calls"], 200);
    assert_eq!(c["report_epochs"]["calls"], 1000);
    assert_eq!(c["lease"]["calls"], 200, "one lease per trial brought work");
    assert!(c["trials_per_s"].as_f64().unwrap() > 0.0);
    assert!(c["coordinator_peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(c["health_check"]["calls"].as_u64().unwrap() >= 1);
    assert!(v["ray_tune"].is_null());
}

/// `convsweep-bench trial` end to end at a small size: 4 tiny trials through a real worker
/// process with 1 and then 2 slots; every trial's split is there, and the table, the ratio to
/// the step benchmark and the trials-per-hour comparison are printed.
#[test]
fn the_trial_bench_runs_the_spec_through_a_worker_and_splits_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tiny.toml");
    std::fs::write(
        &spec,
        r#"
name = "tiny-bench"
seeds = 2
[dataset]
name = "synthetic"
train_size = 96
test_size = 64
[model]
arch = "resnet"
depth = 8
width = 4
kernel_size = 3
init = "kaiming-uniform"
[train]
epochs = 2
batch_size = 32
[eval]
fgsm = []
corruptions = []
[grid]
train_mode = ["learned", "frozen"]
"#,
    )
    .unwrap();
    let json = dir.path().join("trial.json");
    let out = std::process::Command::new(BIN)
        .arg("trial")
        .arg(&spec)
        .args(["--configs", "1x1,2x1", "--steps", "2", "--json"])
        .arg(&json)
        .arg("--keep")
        .arg(dir.path().join("runs"))
        .arg("--convsweep")
        .arg(convsweep_binary())
        .env("RUST_LOG", "warn,convsweep_worker=info")
        .output()
        .unwrap();
    let stdout = stdout_of_success(&out);
    assert!(
        stdout.contains("| 2 slot(s) x 1 thread(s) |") && stdout.contains("x |"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let configs = v.as_array().unwrap();
    assert_eq!(configs.len(), 2);
    for c in configs {
        assert_eq!(c["failed"], 0, "{c}");
        let trials = c["per_trial"].as_array().unwrap();
        assert_eq!(trials.len(), 4, "{c}");
        for t in trials {
            for field in [
                "startup",
                "train",
                "epoch_eval",
                "checkpoint",
                "train_images_per_second",
                "ratio",
            ] {
                assert!(t[field].as_f64().unwrap() > 0.0, "{field} of {t}");
            }
        }
    }
    // The worker logged each trial's split.
    let log = std::fs::read_to_string(dir.path().join("runs/1-2x1/worker.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("trial cost")).collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("train_images_per_second=") && l.contains("epoch_eval_seconds="))
    );
}

/// The training-step benchmark: every round of ours paired with a round of the PyTorch-eager
/// reference of the same case.
#[test]
fn bench_pairs_every_round_with_the_pytorch_reference() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(BIN)
        .current_dir(root)
        .args([
            "--threads",
            "1",
            "--batch",
            "4",
            "--warmup",
            "1",
            "--rounds",
            "3",
            "--steps",
            "1",
        ])
        .args([
            "--only",
            "resnet-20-16 k3 learned",
            "--only",
            "resnet-20-16 k3 frozen",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = stdout_of_success(&out);
    assert!(stdout.contains("frozen / learned step speed at k3"), "{stdout}");
    assert!(stdout.contains("(PyTorch eager: "), "{stdout}");
    let rows: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let f = |key: &str| -> Vec<f64> {
            row[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let (mine, theirs, ratios) = (f("convsweep_rounds"), f("pytorch_rounds"), f("paired_ratios"));
        assert_eq!((mine.len(), theirs.len(), ratios.len()), (3, 3, 3), "{row}");
        for i in 0..3 {
            assert!(mine[i] > 0.0 && theirs[i] > 0.0, "{row}");
            assert!((ratios[i] - mine[i] / theirs[i]).abs() < 1e-9, "{row}");
        }
        assert!(stdout.contains(row["name"].as_str().unwrap()));
    }
}
