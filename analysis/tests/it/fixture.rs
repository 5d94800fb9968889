//! A small, fully deterministic sweep's result rows, as a coordinator's store holds them once
//! workers reported: CIFAR-10 ResNet-20-16 with the paper's recipe, k in {3, 5} x
//! learned/frozen x 3 seeds; one trial failed, one left unfinished (leased).

use convsweep_proto::results::{EpochRow, FilterRow, Results, RobustnessRow, TrialRow};
use convsweep_proto::{TrialSpec, TrialState, pb};

/// The trials in the order the sweep `fixture` expands them: seeds outermost, then kernel size,
/// then train mode.
fn trials() -> Vec<TrialSpec> {
    let mut out = Vec::new();
    for seed in 0..3u64 {
        for k in [3u32, 5] {
            for mode in ["learned", "frozen"] {
                let json = format!(
                    r#"{{"dataset":{{"name":"cifar10","root":"/data/cifar10"}},"model":{{"arch":"resnet","depth":20,"width":16,"kernel_size":{k},"train_mode":"{mode}","init":"kaiming-uniform"}},"seed":{seed}}}"#
                );
                let mut spec = TrialSpec::from_json(&json).unwrap();
                spec.canonicalize();
                spec.validate().unwrap();
                out.push(spec);
            }
        }
    }
    out
}

/// Final test accuracy of a trial (fraction).
pub fn accuracy(spec: &TrialSpec) -> f64 {
    let base = match (spec.model.kernel_size, spec.model.train_mode.as_str()) {
        (3, "learned") => 0.912,
        (5, "learned") => 0.890,
        (3, "frozen") => 0.800,
        _ => 0.700,
    };
    base + 0.004 * spec.seed as f64
}

fn result(spec: &TrialSpec) -> pb::TrialResult {
    let acc = accuracy(spec);
    let k = spec.model.kernel_size as usize;
    let frozen = spec.model.train_mode.as_str() == "frozen";
    let filters = ["init", "final"]
        .iter()
        .flat_map(|stage| {
            ["conv1", "layer3.2.conv2"]
                .iter()
                .enumerate()
                .map(move |(l, layer)| pb::FilterStats {
                    stage: (*stage).into(),
                    layer: (*layer).into(),
                    kernel_size: k as u32,
                    filters: if l == 0 { 48 } else { 4096 },
                    fve: 0.9 - 0.1 * l as f64 - if *stage == "final" && !frozen { 0.2 } else { 0.0 },
                    fve_norm: (k == 3).then_some(0.95),
                    sparsity: 0.0,
                    orthogonality: 0.8,
                    heatmap: (0..k * k).map(|i| 1.0 + 0.01 * i as f64).collect(),
                    folded: false,
                })
        })
        .collect();
    // The clean accuracy on the evaluated images, measured before the attacks.
    let mut robustness = vec![pb::RobustnessResult {
        kind: "clean".into(),
        name: "clean".into(),
        eps: 0.0,
        severity: 0,
        accuracy: acc,
        images: 10000,
    }];
    for (kind, eps) in [("fgsm", 1.0 / 255.0), ("fgsm", 4.0 / 255.0), ("pgd", 4.0 / 255.0)] {
        let drop = if kind == "pgd" { 0.5 } else { eps * 20.0 };
        robustness.push(pb::RobustnessResult {
            kind: kind.into(),
            name: kind.into(),
            eps,
            severity: 0,
            accuracy: (acc - drop).max(0.0),
            images: 10000,
        });
    }
    for name in ["contrast", "pixelate"] {
        for severity in [1u32, 2] {
            robustness.push(pb::RobustnessResult {
                kind: "corruption".into(),
                name: name.into(),
                eps: 0.0,
                severity,
                accuracy: acc - 0.05 * f64::from(severity),
                images: 10000,
            });
        }
    }
    pb::TrialResult {
        final_train_loss: 0.3,
        final_train_acc: acc + 0.05,
        final_test_loss: 0.4,
        final_test_acc: acc,
        best_test_acc: acc + 0.002,
        best_epoch: 2,
        params_total: if k == 3 { 272_474 } else { 748_634 },
        params_learnable: if frozen {
            4_778
        } else if k == 3 {
            272_474
        } else {
            748_634
        },
        flops_per_image: 40_813_184,
        wall_seconds: 100.0,
        peak_memory_bytes: 1 << 30,
        device: "cuda:0".into(),
        robustness,
        filters,
        eval_error: String::new(),
        eval_seconds: 10.0,
        conv_algorithm: "direct".into(),
        times: Some(pb::TrialTimes {
            startup_seconds: 2.0,
            train_seconds: 80.0,
            epoch_eval_seconds: 8.0,
            checkpoint_seconds: 0.5,
            report_seconds: 0.01,
            train_images: 100_000,
        }),
    }
}

/// The fixture's rows, ordered as the store reads them out.
pub fn results() -> Results {
    let mut r = Results::default();
    for trial in trials() {
        let trial_id = trial.id().to_string();
        let (k, mode, seed) = (trial.model.kernel_size, trial.model.train_mode.as_str(), trial.seed);
        let mut row = TrialRow {
            sweep_id: "fixture".into(),
            trial_id: trial_id.clone(),
            spec: trial.clone(),
            state: TrialState::Leased,
            attempts: 1,
            reason: None,
            worker_id: None,
            result: None,
            cell: None,
        };
        if (k, mode, seed) == (5, "frozen", 2) {
            r.trials.push(row); // unfinished: stays leased
            continue;
        }
        let acc = accuracy(&trial);
        r.epochs.extend((1..=3).map(|e| EpochRow {
            trial_id: trial_id.clone(),
            attempt: 1,
            metrics: pb::EpochMetrics {
                epoch: e,
                lr: 0.01 / f64::from(e),
                train_loss: 1.0 / f64::from(e),
                train_acc: acc + 0.05 - 0.1 * f64::from(3 - e),
                test_loss: 1.1 / f64::from(e),
                test_acc: acc - 0.1 * f64::from(3 - e),
                seconds: 30.0,
                val_loss: None,
                val_acc: None,
            },
        }));
        if (k, mode, seed) == (3, "frozen", 2) {
            row.state = TrialState::Failed;
            row.reason = Some("attempt 1 failed (not retryable): non-finite training loss (NaN) in epoch 3".into());
        } else {
            let mut res = result(&trial);
            r.robustness
                .extend(res.robustness.drain(..).map(|result| RobustnessRow {
                    trial_id: trial_id.clone(),
                    result,
                }));
            r.filters.extend(res.filters.drain(..).map(|stats| FilterRow {
                trial_id: trial_id.clone(),
                stats,
            }));
            row.state = TrialState::Succeeded;
            row.worker_id = Some("w-fixture".into());
            row.result = Some(res);
        }
        r.trials.push(row);
    }
    // The store's orders: epochs by trial and epoch; robustness by trial, kind, name, eps and
    // severity; filters by trial, stage (init after final) and insertion.
    r.epochs
        .sort_by(|a, b| (&a.trial_id, a.metrics.epoch).cmp(&(&b.trial_id, b.metrics.epoch)));
    r.robustness.sort_by(|a, b| {
        let key = |x: &RobustnessRow| (x.trial_id.clone(), x.result.kind.clone(), x.result.name.clone());
        key(a)
            .cmp(&key(b))
            .then(a.result.eps.total_cmp(&b.result.eps))
            .then(a.result.severity.cmp(&b.result.severity))
    });
    r.filters
        .sort_by(|a, b| a.trial_id.cmp(&b.trial_id).then(b.stats.stage.cmp(&a.stats.stage)));
    r
}
