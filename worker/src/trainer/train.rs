//! The training loop of one trial: the paper's recipe (SGD with Nesterov momentum, weight
//! decay, label-smoothed cross-entropy, cosine learning rate stepped per iteration) on the
//! batch pipeline of [`crate::data`].

use std::time::Instant;

use convsweep_proto::spec::TrialSpec;
use convsweep_proto::{Outcome, pb};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

use super::schedule::lr_at;
use super::{Signal, TrialControl};
use crate::data::{Dataset, augment};
use crate::model::{InputShape, Net};
use crate::rng::{Rng, derive_seed};

/// Batch size of evaluation passes.
const EVAL_BATCH: i64 = 1000;

/// Why training stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite: the same spec would diverge again.
    #[error("non-finite training loss ({loss}) in epoch {epoch}")]
    NonFinite {
        /// Epoch (1-based).
        epoch: u32,
        /// The loss.
        loss: f64,
    },
    /// The device ran out of memory: the same spec needs a bigger device.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The dataset could not be loaded.
    #[error("dataset: {0}")]
    Data(String),
    /// Stopped on the agent's request (cancel or lost lease).
    #[error("stopped")]
    Stopped,
    /// Stopped by the worker's shutdown.
    #[error("preempted by worker shutdown after epoch {0}")]
    Preempted(u32),
    /// libtorch or the trainer failed otherwise.
    #[error("{0}")]
    Internal(String),
}

impl TrainError {
    /// Classifies a panic message from libtorch or the trainer.
    pub fn from_panic_message(msg: &str) -> TrainError {
        let first_line = msg.lines().next().unwrap_or(msg).to_owned();
        if msg.contains("out of memory") || msg.contains("CUDA_ERROR_OUT_OF_MEMORY") {
            TrainError::OutOfMemory(first_line)
        } else {
            TrainError::Internal(format!("trainer panicked: {first_line}"))
        }
    }

    /// Whether another attempt of the same spec could succeed.
    pub fn retryable(&self) -> bool {
        match self {
            TrainError::NonFinite { .. } | TrainError::OutOfMemory(_) => false,
            TrainError::Data(_) | TrainError::Internal(_) | TrainError::Stopped | TrainError::Preempted(_) => true,
        }
    }

    /// The outcome to report.
    pub fn into_outcome(self) -> Outcome {
        match self {
            TrainError::Preempted(_) => Outcome::Preempted {
                reason: self.to_string(),
            },
            other => Outcome::Failed {
                retryable: other.retryable(),
                reason: other.to_string(),
            },
        }
    }
}

/// Loss and accuracy of `net` on a split, in eval mode, without gradients.
pub fn evaluate(net: &Net, images: &Tensor, labels: &Tensor, label_smoothing: f64) -> (f64, f64) {
    tch::no_grad(|| {
        let n = labels.size()[0];
        let device = images.device();
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = 0;
        while start < n {
            let len = EVAL_BATCH.min(n - start);
            let x = images.narrow(0, start, len).to_kind(Kind::Float) / 255.0;
            let y = labels.narrow(0, start, len);
            let logits = net.forward_t(&x, false);
            let loss = logits.cross_entropy_loss(&y, None::<Tensor>, Reduction::Sum, -100, label_smoothing);
            loss_sum += loss.to_kind(Kind::Double);
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            start += len;
        }
        let n = n.max(1) as f64;
        (loss_sum.double_value(&[]) / n, correct.int64_value(&[]) as f64 / n)
    })
}

/// One optimisation step on a batch: forward in train mode, label-smoothed cross-entropy,
/// backward, SGD step. Returns the loss and the logits (both detached from the graph's use).
pub fn train_step(
    net: &Net,
    opt: &mut nn::Optimizer,
    x: &Tensor,
    y: &Tensor,
    label_smoothing: f64,
) -> (Tensor, Tensor) {
    let logits = net.forward_t(x, true);
    let loss = logits.cross_entropy_loss(y, None::<Tensor>, Reduction::Mean, -100, label_smoothing);
    opt.backward_step(&loss);
    (loss.detach(), logits.detach())
}

/// An SGD optimiser over the trainable variables of `net` with the recipe's settings.
pub fn optimizer(net: &Net, t: &convsweep_proto::spec::TrainSpec) -> Result<nn::Optimizer, TrainError> {
    nn::Sgd {
        momentum: t.momentum,
        dampening: 0.0,
        wd: t.weight_decay,
        nesterov: t.nesterov,
    }
    .build(&net.vs, t.lr)
    .map_err(|e| TrainError::Internal(format!("optimiser: {e}")))
}

/// One trial in progress: the model, its optimiser and where the schedule and the data order
/// stand. [`TrialRun::train_epoch`] advances it by one epoch.
pub struct TrialRun<'a> {
    spec: &'a TrialSpec,
    data: &'a Dataset,
    /// The model being trained.
    pub net: Net,
    opt: nn::Optimizer,
    rng: Rng,
    step: u64,
    epoch: u32,
    batch: i64,
    batches_per_epoch: i64,
    used_per_epoch: i64,
    best: (f64, u32),
    last: pb::EpochMetrics,
    started: Instant,
    init_filters: Vec<pb::FilterStats>,
    final_filters: Vec<pb::FilterStats>,
    robustness: Vec<pb::RobustnessResult>,
    eval_errors: Vec<String>,
    eval_seconds: f64,
}

impl<'a> TrialRun<'a> {
    /// Builds the model (initialised from the trial seed) and its optimiser.
    pub fn new(spec: &'a TrialSpec, device: Device, data: &'a Dataset) -> Result<TrialRun<'a>, TrainError> {
        let (channels, size) = data.image_shape();
        let input = InputShape {
            channels,
            size,
            classes: data.classes,
        };
        crate::device::reset_peak(device);
        let net = Net::new(&spec.model, input, spec.seed, device, &data.mean, &data.std);
        let t = &spec.train;
        let opt = optimizer(&net, t)?;
        let mut eval_errors = Vec::new();
        let init_filters = if spec.eval.filters {
            crate::eval::filter_stats(&net, "init").unwrap_or_else(|e| {
                eval_errors.push(e);
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let n = data.train.len();
        if n == 0 {
            return Err(TrainError::Data("the training split is empty".into()));
        }
        let batch = i64::from(t.batch_size).min(n);
        // A last batch of one image cannot be batch-normalised in train mode: it is dropped.
        let drop_last = n % batch == 1 && n > 1;
        Ok(TrialRun {
            spec,
            data,
            net,
            opt,
            rng: Rng::new(derive_seed(spec.seed, "data")),
            step: 0,
            epoch: 0,
            batch,
            batches_per_epoch: if drop_last { n / batch } else { (n + batch - 1) / batch },
            used_per_epoch: if drop_last { n - 1 } else { n },
            best: (f64::NEG_INFINITY, 0),
            last: pb::EpochMetrics::default(),
            started: Instant::now(),
            init_filters,
            final_filters: Vec::new(),
            robustness: Vec::new(),
            eval_errors,
            eval_seconds: 0.0,
        })
    }

    /// Epochs finished so far.
    pub fn epochs_done(&self) -> u32 {
        self.epoch
    }

    /// Trains one epoch, evaluates, and returns the epoch's metrics. Checks `ctl` between
    /// batches.
    pub fn train_epoch(&mut self, ctl: &TrialControl) -> Result<pb::EpochMetrics, TrainError> {
        let t = &self.spec.train;
        let device = self.net.vs.device();
        let epoch_start = Instant::now();
        let epoch = self.epoch + 1;
        let total_steps = u64::from(t.epochs) * self.batches_per_epoch as u64;
        let n = self.data.train.len();
        let order = Tensor::from_slice(&self.rng.permutation(n as usize)).to_device(device);
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut lr = t.lr;
        for b in 0..self.batches_per_epoch {
            match ctl.signal() {
                Signal::Run => {}
                Signal::Stop => return Err(TrainError::Stopped),
                Signal::Preempt => return Err(TrainError::Preempted(self.epoch)),
            }
            let start = b * self.batch;
            let len = self.batch.min(n - start);
            let idx = order.narrow(0, start, len);
            let x = augment(&self.data.train.images.index_select(0, &idx), t.augment, &mut self.rng);
            let y = self.data.train.labels.index_select(0, &idx);
            lr = lr_at(t.schedule, t.lr, self.step, total_steps);
            self.opt.set_lr(lr);
            let (loss, logits) = train_step(&self.net, &mut self.opt, &x, &y, t.label_smoothing);
            tch::no_grad(|| {
                loss_sum += loss.to_kind(Kind::Double) * len as f64;
                correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            });
            self.step += 1;
        }
        let train_loss = loss_sum.double_value(&[]) / self.used_per_epoch as f64;
        if !train_loss.is_finite() {
            return Err(TrainError::NonFinite {
                epoch,
                loss: train_loss,
            });
        }
        let train_acc = correct.int64_value(&[]) as f64 / self.used_per_epoch as f64;
        let (test_loss, test_acc) = evaluate(
            &self.net,
            &self.data.test.images,
            &self.data.test.labels,
            t.label_smoothing,
        );
        let metrics = pb::EpochMetrics {
            epoch,
            lr,
            train_loss,
            train_acc,
            test_loss,
            test_acc,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch,
            train_loss = format!("{train_loss:.4}"),
            train_acc = format!("{train_acc:.4}"),
            test_loss = format!("{test_loss:.4}"),
            test_acc = format!("{test_acc:.4}"),
            lr = format!("{lr:.5}"),
            seconds = format!("{:.1}", metrics.seconds),
            "epoch"
        );
        if test_acc > self.best.0 {
            self.best = (test_acc, epoch);
        }
        self.epoch = epoch;
        self.last = metrics;
        Ok(metrics)
    }

    /// Runs the spec's evaluations on the trained model (robustness, final filter statistics).
    /// A failing measurement is recorded, not fatal; a stop request is.
    pub fn evaluate(&mut self, ctl: &TrialControl) -> Result<(), TrainError> {
        let started = Instant::now();
        let spec = &self.spec.eval;
        match crate::eval::robustness(
            &self.net,
            &self.data.test,
            spec,
            derive_seed(self.spec.seed, "eval"),
            ctl,
        ) {
            Ok(e) => {
                self.robustness = e.robustness;
                self.eval_errors.extend(e.errors);
            }
            Err(crate::eval::Interrupted(Signal::Preempt)) => return Err(TrainError::Preempted(self.epoch)),
            Err(crate::eval::Interrupted(_)) => return Err(TrainError::Stopped),
        }
        if spec.filters {
            match crate::eval::filter_stats(&self.net, "final") {
                Ok(f) => self.final_filters = f,
                Err(e) => self.eval_errors.push(e),
            }
        }
        self.eval_seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            seconds = format!("{:.1}", self.eval_seconds),
            errors = self.eval_errors.len(),
            "evaluations done"
        );
        Ok(())
    }

    /// Final metrics, cost and evaluations.
    pub fn result(&self) -> pb::TrialResult {
        pb::TrialResult {
            final_train_loss: self.last.train_loss,
            final_train_acc: self.last.train_acc,
            final_test_loss: self.last.test_loss,
            final_test_acc: self.last.test_acc,
            best_test_acc: self.best.0.max(0.0),
            best_epoch: self.best.1,
            params_total: self.net.cost.params_total,
            params_learnable: self.net.cost.params_learnable,
            flops_per_image: self.net.cost.macs_per_image,
            wall_seconds: self.started.elapsed().as_secs_f64(),
            peak_memory_bytes: crate::device::peak_memory_bytes(self.net.vs.device()),
            device: super::describe_device(self.net.vs.device()),
            robustness: self.robustness.clone(),
            filters: self.init_filters.iter().chain(&self.final_filters).cloned().collect(),
            eval_error: self.eval_errors.join("; "),
            eval_seconds: self.eval_seconds,
        }
    }
}

/// Trains `spec` on `data` to the end and returns its final metrics. Reports each epoch
/// through `ctl` and stops between batches when `ctl` asks.
pub fn train_trial(
    spec: &TrialSpec,
    device: Device,
    data: &Dataset,
    ctl: &TrialControl,
) -> Result<pb::TrialResult, TrainError> {
    let mut run = TrialRun::new(spec, device, data)?;
    while run.epochs_done() < spec.train.epochs {
        let metrics = run.train_epoch(ctl)?;
        ctl.epoch(metrics);
    }
    run.evaluate(ctl)?;
    Ok(run.result())
}
