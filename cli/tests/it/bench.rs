//! `convsweep bench coordinator` end to end at a small size: a coordinator process, simulated
//! workers over loopback gRPC, and the bench's own check that every trial succeeded once with
//! all its epochs.

use crate::common::BIN;

#[test]
fn the_coordinator_bench_runs_20_workers_through_200_trials() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(BIN)
        .args([
            "bench",
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
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
