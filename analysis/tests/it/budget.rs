//! A sweep with a stopping rule as the report sees it: stopped trials censored (never in a
//! mean, their cells marked), the budget spent against the full grid, the decisions, and rank
//! fidelity computed by hand.

use convsweep_analysis::{Frames, Report};
use convsweep_proto::results::{EpochRow, Results, StopCell, TrialRow};
use convsweep_proto::{TrialSpec, TrialState, pb};

/// One group (k = 3), learning rates 0.01 / 0.02 / 0.05 x 2 seeds, 4 epochs of 10 s; lr 0.05
/// stopped at rung 2 on both seeds. Validation accuracy at epoch 2: 0.6, 0.5, 0.4; final test
/// accuracy 0.70, 0.75: the rung's order of the two finishers is the reverse of the final one.
fn results() -> Results {
    let mut r = Results::default();
    for (lr, val2, last, stopped) in [
        (0.01, 0.6, 0.70, false),
        (0.02, 0.5, 0.75, false),
        (0.05, 0.4, 0.30, true),
    ] {
        for seed in 0..2u64 {
            let json = format!(
                r#"{{"dataset":{{"name":"synthetic","val_fraction":0.2}},"model":{{"arch":"resnet","depth":8,"width":4,"kernel_size":3,"train_mode":"frozen","init":"kaiming-uniform"}},"train":{{"epochs":4,"lr":{lr}}},"seed":{seed}}}"#
            );
            let mut spec = TrialSpec::from_json(&json).unwrap();
            spec.canonicalize();
            spec.validate().unwrap();
            let id = spec.id().to_string();
            let reached = if stopped { 2 } else { 4 };
            for e in 1..=reached {
                r.epochs.push(EpochRow {
                    trial_id: id.clone(),
                    attempt: 1,
                    metrics: pb::EpochMetrics {
                        epoch: e,
                        test_acc: if e == reached { last } else { 0.1 },
                        seconds: 10.0,
                        val_acc: Some(if e == 2 { val2 } else { 0.1 }),
                        val_loss: Some(1.0),
                        ..Default::default()
                    },
                });
            }
            r.trials.push(TrialRow {
                sweep_id: "budget".into(),
                trial_id: id,
                spec,
                state: if stopped {
                    TrialState::Stopped
                } else {
                    TrialState::Succeeded
                },
                attempts: 1,
                reason: None,
                worker_id: None,
                result: (!stopped).then(|| pb::TrialResult {
                    final_test_acc: last,
                    best_test_acc: last,
                    best_epoch: 4,
                    ..Default::default()
                }),
                cell: Some(StopCell {
                    group: "kernel_size=3".into(),
                    config: format!("train.lr={lr}"),
                    exempt: false,
                }),
            });
        }
    }
    for (rank, (lr, v)) in [(0.01, 0.6), (0.02, 0.5), (0.05, 0.4)].into_iter().enumerate() {
        r.decisions.push(pb::ExportDecision {
            sweep_id: "budget".into(),
            rule: "successive-halving".into(),
            group: "kernel_size=3".into(),
            config: format!("train.lr={lr}"),
            rung: 2,
            kept: rank < 2,
            metric: "val_acc".into(),
            value: v,
            seeds: 2,
            rank: rank as u32 + 1,
            ranked: 3,
            ..Default::default()
        });
    }
    r
}

#[test]
fn the_report_censors_stopped_trials_and_measures_budget_and_rank_fidelity() {
    let frames = Frames::from_results(&results()).unwrap();
    let report = Report::build(&frames, "budget").unwrap();
    assert!(
        report.summary.contains("2 stopped by the stopping rule (censored)"),
        "{}",
        report.summary
    );

    // The accuracy table: lr 0.05 has no mean, and its cell says where it stopped.
    let acc = report.table("accuracy").unwrap();
    let lr = acc.column("lr").unwrap().f64().unwrap();
    let row = (0..acc.height()).find(|&i| lr.get(i) == Some(0.05)).unwrap();
    assert_eq!(acc.column("mean").unwrap().f64().unwrap().get(row), None);
    let flag = acc.column("flag").unwrap().str().unwrap().get(row).unwrap();
    assert!(flag.contains("2 stopped at 2: >= 30.0%"), "{flag}");

    // The paper's layouts say so too, where a cell has no finished trial.
    let table1 = report.table("table1").unwrap();
    let shown: Vec<String> = table1
        .columns()
        .iter()
        .flat_map(|c| (0..table1.height()).map(move |i| c.get(i).unwrap().to_string()))
        .collect();
    assert!(shown.iter().any(|v| v.contains("2 stopped at 2: >= 30.0%")), "{table1}");

    // 2 x 4 x 10 s x 2 finishers + 2 x 2 x 10 s stopped = 200 s spent; the full grid 240 s.
    let budget = report.table("budget").unwrap();
    let f = |c: &str| budget.column(c).unwrap().f64().unwrap().get(0).unwrap();
    assert_eq!((f("trial_seconds"), f("full_grid_seconds")), (200.0, 240.0));
    assert!((f("saved_pct") - 100.0 / 6.0).abs() < 1e-9);
    assert_eq!(report.table("stopping_decisions").unwrap().height(), 3);

    // Fidelity at rung 2 among the two finishers: reversed order, tau -1; the rule kept 2 of 3,
    // so k = round(2/3 * 2) = 1, and the rung's top 1 (lr 0.01) is not the final top 1.
    let fidelity = report.table("rank_fidelity").unwrap();
    assert_eq!(fidelity.height(), 1);
    let get = |c: &str| fidelity.column(c).unwrap().get(0).unwrap().to_string();
    assert_eq!(get("kendall_tau"), "-1.0");
    assert_eq!((get("top_k"), get("top_k_recall")), ("1".to_owned(), "0.0".to_owned()));

    // The paper check and the claims say they use finished trials only.
    for id in ["paper", "claims"] {
        let s = report.sections.iter().find(|s| s.id == id).unwrap();
        assert!(s.text.contains("Finished trials only"), "{id}: {}", s.text);
    }
    // The export round trip keeps the decisions and the design.
    let dir = tempfile::tempdir().unwrap();
    frames.write_parquet(dir.path()).unwrap();
    let back = Frames::read_parquet(dir.path()).unwrap();
    assert_eq!(back.decisions.height(), 3);
    assert_eq!(
        back.trials.column("stop_config").unwrap().str().unwrap().get(0),
        Some("train.lr=0.01")
    );
    assert!(back.epochs.column("val_acc").is_ok() && back.trials.column("epochs_reached").is_ok());
}
