//! A small, fully deterministic sweep written through the coordinator's store as workers would:
//! CIFAR-10 ResNet-20-16 with the paper's recipe, k in {3, 5} x learned/frozen x 3 seeds; one
//! trial failed, one left unfinished.

use std::path::Path;

use convsweep_coordinator::store::{LeasePolicy, Store};
use convsweep_coordinator::sweep::SweepSpec;
use convsweep_proto::{Outcome, TrialSpec, pb};

pub const SPEC: &str = r#"
name = "fixture"
seeds = 3
[dataset]
name = "cifar10"
root = "/data/cifar10"
[model]
arch = "resnet"
depth = 20
width = 16
init = "kaiming-uniform"
[grid]
kernel_size = [3, 5]
train_mode = ["learned", "frozen"]
"#;

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
    }
}

/// Writes the fixture sweep into `dir` (a coordinator state folder).
pub fn write(dir: &Path) {
    let spec = SweepSpec::from_toml(SPEC).unwrap();
    let trials = spec.expand().unwrap();
    let mut store = Store::open(dir, LeasePolicy::default()).unwrap();
    store.submit_sweep(&spec.id, SPEC, &trials, 1_000).unwrap();
    let worker = store
        .register_worker("fixture", "host", &["cuda:0".into()], 1, 1_000)
        .unwrap();
    let leases = store.lease(&worker, 100, 2_000).unwrap();
    for lease in leases {
        let trial = TrialSpec::from_json(&lease.spec_json).unwrap();
        let (k, mode, seed) = (trial.model.kernel_size, trial.model.train_mode.as_str(), trial.seed);
        if (k, mode, seed) == (5, "frozen", 2) {
            continue; // unfinished: stays leased
        }
        let acc = accuracy(&trial);
        let epochs: Vec<pb::EpochMetrics> = (1..=3)
            .map(|e| pb::EpochMetrics {
                epoch: e,
                lr: 0.01 / f64::from(e),
                train_loss: 1.0 / f64::from(e),
                train_acc: acc + 0.05 - 0.1 * f64::from(3 - e),
                test_loss: 1.1 / f64::from(e),
                test_acc: acc - 0.1 * f64::from(3 - e),
                seconds: 30.0,
            })
            .collect();
        store
            .report_epochs(&worker, &lease.trial_id, &lease.lease_token, &epochs, 3_000)
            .unwrap();
        let outcome = if (k, mode, seed) == (3, "frozen", 2) {
            Outcome::Failed {
                retryable: false,
                reason: "non-finite training loss (NaN) in epoch 3".into(),
            }
        } else {
            Outcome::Succeeded(result(&trial))
        };
        store
            .complete(&worker, &lease.trial_id, &lease.lease_token, &outcome, 4_000)
            .unwrap();
    }
}
