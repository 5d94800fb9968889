//! Measurements after training: adversarial robustness (FGSM, PGD), common corruptions and
//! filter statistics. Each measurement is guarded: one that fails is recorded as the trial's
//! `eval_error` and the others, and the training results, are kept.

pub mod attacks;
pub mod corruptions;
pub mod filters;

use std::time::Instant;

use convsweep_proto::pb;
use convsweep_proto::spec::EvalSpec;
use tch::{Kind, Tensor};

use crate::control::{Panicked, Signal, TrialControl, catch_panic};
use crate::data::Split;
use crate::model::Net;
use crate::rng::derive_seed;

/// Images per attack batch (attacks keep a backward graph).
const ATTACK_BATCH: i64 = 250;
/// Images per corruption batch.
const CORRUPTION_BATCH: i64 = 1000;

/// What the evaluations produced.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Robust accuracies.
    pub robustness: Vec<pb::RobustnessResult>,
    /// Why measurements failed, `; `-joined (empty when all ran).
    pub errors: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Stopped between measurements on the agent's request.
#[derive(Debug)]
pub struct Interrupted(pub Signal);

/// A measurement that failed (libtorch raised inside it); the trial keeps its other results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message}")]
pub struct MeasurementFailed {
    /// Which measurement, e.g. `pgd eps=0.03`.
    pub what: String,
    /// The first line of what libtorch said.
    pub message: String,
}

impl MeasurementFailed {
    fn new(what: impl Into<String>, panic: Panicked) -> MeasurementFailed {
        MeasurementFailed {
            what: what.into(),
            message: panic.0.lines().next().unwrap_or_default().to_owned(),
        }
    }
}

/// Accuracy on the first `n` images of `test` after `transform` (which gets `[0, 1]` images
/// and their labels).
fn accuracy_after(
    net: &Net,
    test: &Split,
    n: i64,
    batch: i64,
    transform: &mut dyn FnMut(&Tensor, &Tensor, i64) -> Tensor,
) -> f64 {
    let mut correct = Tensor::zeros([], (Kind::Int64, test.labels.device()));
    let mut start = 0;
    let batch = crate::data::batch_for(&test.images, batch);
    while start < n {
        let len = batch.min(n - start);
        let x = test.images.narrow(0, start, len).to_kind(Kind::Float) / 255.0;
        let y = test.labels.narrow(0, start, len);
        let xt = transform(&x, &y, start);
        correct += attacks::correct(net, &xt, &y);
        start += len;
    }
    crate::readback::i64(&correct) as f64 / n.max(1) as f64
}

/// Runs the robustness evaluations of `spec` on `test`; `seed` drives random starts and
/// corruption noise.
pub fn robustness(
    net: &Net,
    test: &Split,
    spec: &EvalSpec,
    seed: u64,
    ctl: &TrialControl,
) -> Result<Evaluation, Interrupted> {
    let started = Instant::now();
    let n = spec.images.map_or(test.len(), |i| i64::from(i).min(test.len()));
    let mut out = Evaluation::default();
    let mut guarded = |what: String, f: &mut dyn FnMut() -> pb::RobustnessResult| -> Result<(), Interrupted> {
        match ctl.signal() {
            // A stopping rule's halt after the last epoch: the trial has its budget; finish.
            Signal::Run | Signal::Halt => {}
            other => return Err(Interrupted(other)),
        }
        match catch_panic(f) {
            Ok(r) => out.robustness.push(r),
            Err(p) => out.errors.push(MeasurementFailed::new(what, p).to_string()),
        }
        Ok(())
    };
    let row = |kind: &str, name: &str, eps: f64, severity: u32, accuracy: f64| pb::RobustnessResult {
        kind: kind.into(),
        name: name.into(),
        eps,
        severity,
        accuracy,
        images: n as u32,
    };

    // The clean accuracy on the same images, so attacks and corruptions read against it.
    if !spec.fgsm.is_empty() || spec.pgd.is_some() || !spec.corruptions.is_empty() {
        guarded("clean accuracy".into(), &mut || {
            let acc = accuracy_after(net, test, n, CORRUPTION_BATCH, &mut |x, _, _| x.shallow_clone());
            tracing::info!(
                images = n,
                accuracy = format!("{acc:.4}"),
                "clean accuracy on the evaluated images"
            );
            row("clean", "clean", 0.0, 0, acc)
        })?;
    }
    for eps in &spec.fgsm {
        let eps = eps.0;
        guarded(format!("fgsm eps={eps}"), &mut || {
            let acc = accuracy_after(net, test, n, ATTACK_BATCH, &mut |x, y, _| attacks::fgsm(net, x, y, eps));
            tracing::info!(eps, accuracy = format!("{acc:.4}"), "fgsm");
            row("fgsm", "fgsm", eps, 0, acc)
        })?;
    }
    if let Some(pgd) = &spec.pgd {
        for eps in &pgd.eps {
            let eps = eps.0;
            let step = pgd.step_size.unwrap_or(2.5 * eps / f64::from(pgd.steps));
            guarded(format!("pgd eps={eps}"), &mut || {
                let acc = accuracy_after(net, test, n, ATTACK_BATCH, &mut |x, y, start| {
                    let s = derive_seed(seed, &format!("pgd/{eps}/{start}"));
                    attacks::pgd(
                        net,
                        x,
                        y,
                        attacks::Pgd {
                            eps,
                            steps: pgd.steps,
                            step_size: step,
                            random_start: pgd.random_start,
                        },
                        s,
                    )
                });
                tracing::info!(eps, steps = pgd.steps, accuracy = format!("{acc:.4}"), "pgd");
                row("pgd", "pgd", eps, 0, acc)
            })?;
        }
    }
    for &c in &spec.corruptions {
        for &severity in &spec.severities {
            guarded(format!("{} severity {severity}", c.as_str()), &mut || {
                let acc = accuracy_after(net, test, n, CORRUPTION_BATCH, &mut |x, _, start| {
                    let s = derive_seed(seed, &format!("{}/{severity}/{start}", c.as_str()));
                    corruptions::corrupt(x, c, severity, s)
                });
                row("corruption", c.as_str(), 0.0, severity, acc)
            })?;
        }
    }
    if !spec.corruptions.is_empty() {
        let accs: Vec<f64> = out
            .robustness
            .iter()
            .filter(|r| r.kind == "corruption")
            .map(|r| r.accuracy)
            .collect();
        if !accs.is_empty() {
            let mean = accs.iter().sum::<f64>() / accs.len() as f64;
            tracing::info!(accuracy = format!("{mean:.4}"), "mean corruption accuracy");
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Filter statistics of `net` at `stage`, or why they failed.
pub fn filter_stats(net: &Net, stage: &str) -> Result<Vec<pb::FilterStats>, MeasurementFailed> {
    catch_panic(|| filters::measure(net, stage))
        .map_err(|p| MeasurementFailed::new(format!("filter statistics ({stage})"), p))
}
