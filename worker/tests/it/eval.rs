//! Evaluations: attacks on a trained model, filter statistics against an independent Python
//! computation, failures recorded rather than fatal.

use convsweep_proto::spec::{Corruption, Eps, EvalSpec, PgdSpec, TrainMode};
use convsweep_worker::control::TrialControl;
use convsweep_worker::data::DataCache;
use convsweep_worker::eval::{self, attacks, filters};
use convsweep_worker::model::{InputShape, Net};
use convsweep_worker::trainer::TrialRun;
use tch::{Device, Kind, Tensor};

use crate::common::{model, trial};

#[test]
fn attacks_on_a_trained_model() {
    let mut spec = trial(model(8, 8, 3, TrainMode::Learned), 1000, 4);
    spec.dataset.test_size = Some(200);
    spec.dataset.noise = Some(0.3);
    spec.train.batch_size = 64;
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let mut run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    let (ctl, _signal, _events) = TrialControl::new();
    let mut clean = 0.0;
    for _ in 0..4 {
        clean = run.train_epoch(&ctl).unwrap().test_acc;
    }
    assert!(clean > 0.3, "the model learned something: {clean}");

    let eval = EvalSpec {
        fgsm: [0.0, 1.0, 4.0, 16.0].iter().map(|e| Eps(e / 255.0)).collect(),
        pgd: Some(PgdSpec {
            eps: vec![Eps(4.0 / 255.0)],
            steps: 10,
            step_size: None,
            random_start: true,
        }),
        corruptions: vec![],
        filters: false,
        ..EvalSpec::default()
    };
    let result = eval::robustness(&run.net, &data.test, &eval, 7, &ctl).unwrap();
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    let fgsm: Vec<f64> = result
        .robustness
        .iter()
        .filter(|r| r.kind == "fgsm")
        .map(|r| r.accuracy)
        .collect();
    let pgd = result.robustness.iter().find(|r| r.kind == "pgd").unwrap().accuracy;
    // eps = 0 is the clean accuracy, and so is the clean row measured first.
    assert!((fgsm[0] - clean).abs() < 1e-9, "{} vs {clean}", fgsm[0]);
    assert_eq!(result.robustness[0].kind, "clean");
    assert!((result.robustness[0].accuracy - clean).abs() < 1e-9);
    // Accuracy falls as eps grows.
    for w in fgsm.windows(2) {
        assert!(w[1] <= w[0] + 0.01, "{fgsm:?}");
    }
    assert!(fgsm[3] < fgsm[0] - 0.1, "{fgsm:?}");
    // PGD is no weaker than FGSM at the same eps.
    assert!(pgd <= fgsm[2], "pgd {pgd} vs fgsm {}", fgsm[2]);
    assert!(result.robustness.iter().all(|r| r.images == 200));

    // Gradients were taken with respect to the input only: training takes parameter gradients
    // with run_backward, so .grad is never populated, and an attack must not populate it.
    let x = data.test.images.narrow(0, 0, 16).to_kind(Kind::Float) / 255.0;
    let y = data.test.labels.narrow(0, 0, 16);
    let _ = attacks::fgsm(&run.net, &x, &y, 8.0 / 255.0);
    for p in run.net.vs.trainable_variables() {
        assert!(!p.grad().defined(), "an attack touched a parameter gradient");
    }
}

#[test]
fn corruption_evaluation_covers_every_corruption_and_severity() {
    let spec = trial(model(8, 4, 3, TrainMode::Learned), 64, 1);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    let (ctl, _signal, _events) = TrialControl::new();
    let eval = EvalSpec {
        fgsm: vec![],
        images: Some(20),
        ..EvalSpec::default()
    };
    let result = eval::robustness(&run.net, &data.test, &eval, 1, &ctl).unwrap();
    assert_eq!(result.robustness.len(), 1 + 7 * 5);
    assert_eq!(result.robustness[0].kind, "clean");
    for c in Corruption::ALL {
        let sev: Vec<u32> = result
            .robustness
            .iter()
            .filter(|r| r.name == c.as_str())
            .map(|r| r.severity)
            .collect();
        assert_eq!(sev, vec![1, 2, 3, 4, 5], "{c:?}");
    }
    assert!(
        result
            .robustness
            .iter()
            .all(|r| r.images == 20 && (0.0..=1.0).contains(&r.accuracy))
    );
}

#[test]
fn a_failing_measurement_is_recorded_not_fatal() {
    // A one-channel model on three-channel images: every forward pass fails.
    let mut m = model(8, 4, 3, TrainMode::Learned);
    m.expansion = None;
    let input = InputShape {
        channels: 1,
        size: 32,
        classes: 10,
    };
    let net = Net::new(&m, input, 0, Device::Cpu, &[0.5], &[0.25]);
    let spec = trial(model(8, 4, 3, TrainMode::Learned), 64, 1);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let (ctl, _signal, _events) = TrialControl::new();
    let eval = EvalSpec {
        corruptions: vec![Corruption::Contrast],
        severities: vec![1],
        ..EvalSpec::default()
    };
    let result = eval::robustness(&net, &data.test, &eval, 1, &ctl).unwrap();
    assert!(result.robustness.is_empty());
    assert_eq!(result.errors.len(), 3, "{:?}", result.errors);
    assert!(result.errors[0].starts_with("clean accuracy"), "{:?}", result.errors);
    assert!(result.errors[1].starts_with("fgsm eps="), "{:?}", result.errors);
    assert!(
        result.errors[2].starts_with("contrast severity 1"),
        "{:?}",
        result.errors
    );
}

/// The weights the Python reference builds too: a deterministic pattern with a few
/// near-zero filters.
fn fixed_weight(shape: [i64; 4]) -> Tensor {
    let n: i64 = shape.iter().product();
    let idx = Tensor::arange(n, (Kind::Double, Device::Cpu));
    let w = ((&idx * 0.37).sin() * (&idx * &idx * 0.011).cos()).reshape(shape);
    let k2 = shape[2] * shape[3];
    let flat = w.reshape([-1, k2]);
    let _ = flat.narrow(0, 0, 2).g_mul_scalar_(1e-4);
    flat.reshape(shape)
}

const PYTHON_REFERENCE: &str = r#"
import json, math, torch
def fixed(shape):
    n = math.prod(shape)
    idx = torch.arange(n, dtype=torch.float64)
    w = (torch.sin(idx * 0.37) * torch.cos(idx * idx * 0.011)).reshape(shape)
    flat = w.reshape(-1, shape[2] * shape[3])
    flat[:2] *= 1e-4
    return flat.reshape(shape)
out = []
for shape in [(8, 4, 3, 3), (6, 5, 5, 5)]:
    w = fixed(shape)
    o, i, k, _ = shape
    n = o * i
    x = w.reshape(n, k * k)
    s = torch.linalg.svdvals(x - x.mean(0))
    v = s ** 2 / (n - 1)
    r = v / v.sum()
    r = r[r > 0]
    fve = float(-(r * torch.log10(r)).sum())
    t = 1.2618047 / (1 + math.exp(-0.88767525 * (math.log2(n) - 2.30436435))) - 0.31050834
    sparsity = float((x.abs().amax(1) < 0.01 * x.abs().max()).double().mean())
    f = w.reshape(o, -1)
    f = f / f.norm(dim=1, keepdim=True)
    c = (f @ f.T).abs()
    orth = float(1 - (c.sum() - c.trace()) / (o * (o - 1)))
    heat = (w / w.std()).reshape(-1, k * k).var(dim=0, unbiased=False).tolist()
    out.append({"fve": fve, "fve_norm": fve / t if k == 3 else None, "sparsity": sparsity, "orth": orth, "heat": heat})
print(json.dumps(out))
"#;

#[test]
fn filter_statistics_match_an_independent_python_computation() {
    let site = concat!(env!("CARGO_MANIFEST_DIR"), "/../.deps/py");
    let out = std::process::Command::new("python3")
        .args(["-W", "ignore", "-c", PYTHON_REFERENCE])
        .env("PYTHONPATH", site)
        .output()
        .expect("python3 runs (the project's PyTorch is in .deps/py; scripts/libtorch.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, shape) in [[8i64, 4, 3, 3], [6, 5, 5, 5]].into_iter().enumerate() {
        let s = filters::stats(&fixed_weight(shape));
        let e = &expected[i];
        let close = |a: f64, b: f64, what: &str| {
            assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "{shape:?} {what}: {a} vs {b}")
        };
        close(s.fve, e["fve"].as_f64().unwrap(), "fve");
        match e["fve_norm"].as_f64() {
            Some(n) => close(s.fve_norm.unwrap(), n, "fve_norm"),
            None => assert!(s.fve_norm.is_none()),
        }
        close(s.sparsity, e["sparsity"].as_f64().unwrap(), "sparsity");
        assert!(s.sparsity > 0.0, "two filters were made near-zero");
        close(s.orthogonality, e["orth"].as_f64().unwrap(), "orthogonality");
        let heat: Vec<f64> = e["heat"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(s.heatmap.len(), heat.len());
        for (a, b) in s.heatmap.iter().zip(heat) {
            close(*a, b, "heatmap");
        }
        assert_eq!(s.filters, (shape[0] * shape[1]) as u64);
    }
}

#[test]
fn every_spatial_layer_is_measured_and_lc_blocks_are_folded() {
    let input = InputShape {
        channels: 3,
        size: 32,
        classes: 10,
    };
    let net = Net::new(
        &model(20, 16, 3, TrainMode::Frozen),
        input,
        0,
        Device::Cpu,
        &[0.5; 3],
        &[0.25; 3],
    );
    let stats = filters::measure(&net, "init");
    assert_eq!(stats.len(), 19, "stem + 18 block convs of ResNet-20");
    assert!(
        stats
            .iter()
            .all(|s| !s.folded && s.kernel_size == 3 && s.fve_norm.is_some())
    );
    assert_eq!(stats[0].layer, "conv1");
    let mut lc = model(8, 8, 5, TrainMode::Frozen);
    lc.expansion = Some(4);
    let net = Net::new(&lc, input, 0, Device::Cpu, &[0.5; 3], &[0.25; 3]);
    let stats = filters::measure(&net, "final");
    assert_eq!(stats.len(), 7);
    // Folded filters: c_out * c_in of the equivalent conv, not of the expanded one.
    assert!(
        stats
            .iter()
            .all(|s| s.folded && s.kernel_size == 5 && s.fve_norm.is_none())
    );
    assert_eq!(stats[0].filters, 8 * 3);
    assert_eq!(stats[0].heatmap.len(), 25);
}
