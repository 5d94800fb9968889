//! The training loop of one trial: the paper's recipe (SGD with Nesterov momentum, weight
//! decay, label-smoothed cross-entropy, cosine learning rate stepped per iteration) on the
//! batch pipeline of [`crate::data`].

use std::time::Instant;

use convsweep_proto::pb;
use convsweep_proto::spec::{Augment, Loss, TrialSpec};
use tch::{Device, Kind, Reduction, Tensor};

use super::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use super::draws::{EpochDraws, Plan};
use super::mix;
use super::optim::FlatOptimizer;
use super::schedule::lr_at;
use crate::control::{Signal, TrainError, TrialControl};
use crate::data::Dataset;
use crate::data::folder::EpochPlan;
use crate::model::{Compute, InputShape, Net};
use crate::readback;
use crate::rng::{Rng, derive_seed};

/// Batch size of evaluation passes.
const EVAL_BATCH: i64 = 1000;

/// Loss and accuracy of `net` on a split, in eval mode, without gradients.
pub fn evaluate(net: &Net, images: &Tensor, labels: &Tensor, label_smoothing: f64) -> (f64, f64) {
    tch::no_grad(|| {
        let n = labels.size()[0];
        let device = images.device();
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = 0;
        let batch = crate::data::batch_for(images, EVAL_BATCH);
        while start < n {
            let len = batch.min(n - start);
            let x = images.narrow(0, start, len).to_kind(Kind::Float) / 255.0;
            let y = labels.narrow(0, start, len);
            let logits = net.forward_t(&x, false);
            let loss = logits.cross_entropy_loss(&y, None::<Tensor>, Reduction::Sum, -100, label_smoothing);
            loss_sum += loss.to_kind(Kind::Double);
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            start += len;
        }
        let n = n.max(1) as f64;
        (readback::f64(&loss_sum) / n, readback::i64(&correct) as f64 / n)
    })
}

/// One optimisation step on a batch: forward in train mode, label-smoothed cross-entropy,
/// backward to the trainable parameters, SGD step. Returns the loss and the logits.
pub fn train_step(
    net: &Net,
    opt: &mut FlatOptimizer,
    x: &Tensor,
    y: &Tensor,
    label_smoothing: f64,
) -> (Tensor, Tensor) {
    step(net, opt, x, |logits| {
        logits.cross_entropy_loss(y, None::<Tensor>, Reduction::Mean, -100, label_smoothing)
    })
}

/// [`train_step`] against soft targets (mixed, or for the binary cross-entropy).
pub fn soft_train_step(
    net: &Net,
    opt: &mut FlatOptimizer,
    x: &Tensor,
    targets: &Tensor,
    loss: Loss,
) -> (Tensor, Tensor) {
    step(net, opt, x, |logits| mix::soft_loss(logits, targets, loss))
}

/// Forward in train mode, `loss_of` the logits, backward and one optimiser step.
fn step(net: &Net, opt: &mut FlatOptimizer, x: &Tensor, loss_of: impl FnOnce(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    // Forward and loss under autocast at the recipe's precision; backward outside, as in
    // PyTorch's AMP recipe (the gradients of the float32 weights are float32).
    let (logits, loss) = crate::device::with_precision(x.device(), opt.precision(), || {
        let logits = net.forward_t(x, true);
        let loss = loss_of(&logits).to_kind(Kind::Float);
        (logits, loss)
    });
    opt.backward_step(&loss);
    (loss.detach(), logits.detach())
}

/// An SGD optimiser over the trainable variables of `net` with the recipe's settings.
pub fn optimizer(net: &Net, t: &convsweep_proto::spec::TrainSpec) -> FlatOptimizer {
    let trainable: Vec<Tensor> = net.vs.trainable_variables();
    let mut named: Vec<(String, Tensor)> = net
        .vs
        .variables()
        .into_iter()
        .filter(|(_, v)| trainable.iter().any(|t| t.data_ptr() == v.data_ptr()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    FlatOptimizer::new(named, t)
}

/// An epoch in progress: its data order and draws, and what the finished batches added up to.
struct Cursor {
    order: Tensor,
    draws: EpochDraws,
    /// The generator's state the draws were made from.
    draws_rng: [u64; 4],
    next_batch: i64,
    loss_sum: Tensor,
    correct: Tensor,
    /// Seconds this epoch ran before the current session.
    seconds: f64,
    /// A streamed training split's batches, decoding ahead (made on the session's first batch).
    stream: Option<crate::data::folder::Stream>,
}

/// One trial in progress: the model, its optimiser and where the schedule and the data order
/// stand. [`TrialRun::train_epoch`] advances it by one epoch; [`TrialRun::checkpoint`] and
/// [`TrialRun::restore`] capture and reinstate all of it, mid-epoch included, so that a resumed
/// trial computes exactly what an uninterrupted one would have.
pub struct TrialRun<'a> {
    spec: &'a TrialSpec,
    data: &'a Dataset,
    /// The model being trained.
    pub net: Net,
    opt: FlatOptimizer,
    rng: Rng,
    step: u64,
    epoch: u32,
    batch: i64,
    batches_per_epoch: i64,
    used_per_epoch: i64,
    cursor: Option<Cursor>,
    best: (f64, u32),
    last: pb::EpochMetrics,
    history: Vec<pb::EpochMetrics>,
    started: Instant,
    seconds_before: f64,
    init_filters: Vec<pb::FilterStats>,
    final_filters: Vec<pb::FilterStats>,
    robustness: Vec<pb::RobustnessResult>,
    eval_errors: Vec<String>,
    eval_seconds: f64,
    /// Where the time went: earlier attempts' (restored), then this one's added as it goes.
    times: pb::TrialTimes,
    /// This attempt's start-up (lease to first batch), once known.
    attempt_startup: f64,
}

impl<'a> TrialRun<'a> {
    /// Builds the model (initialised from the trial seed) and its optimiser.
    pub fn new(
        spec: &'a TrialSpec,
        compute: impl Into<Compute>,
        data: &'a Dataset,
    ) -> Result<TrialRun<'a>, TrainError> {
        let compute = compute.into();
        let device = compute.device;
        if let Some(why) = crate::device::precision_unsupported(device, spec.train.precision) {
            return Err(TrainError::Device(why));
        }
        let (channels, size) = data.image_shape();
        let input = InputShape {
            channels,
            size,
            classes: data.classes,
        };
        crate::device::reset_peak(device);
        let net = Net::new(&spec.model, input, spec.seed, compute, &data.mean, &data.std);
        let t = &spec.train;
        let opt = optimizer(&net, t);
        let mut eval_errors = Vec::new();
        let init_filters = if spec.eval.filters {
            crate::eval::filter_stats(&net, "init").unwrap_or_else(|e| {
                eval_errors.push(e.to_string());
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
            cursor: None,
            best: (f64::NEG_INFINITY, 0),
            last: pb::EpochMetrics::default(),
            history: Vec::new(),
            started: Instant::now(),
            seconds_before: 0.0,
            init_filters,
            final_filters: Vec::new(),
            robustness: Vec::new(),
            eval_errors,
            eval_seconds: 0.0,
            times: pb::TrialTimes::default(),
            attempt_startup: 0.0,
        })
    }

    /// Epochs finished so far.
    pub fn epochs_done(&self) -> u32 {
        self.epoch
    }

    /// What this epoch's batches are.
    fn plan(&self) -> Plan {
        let t = &self.spec.train;
        let (_, size) = self.data.image_shape();
        Plan {
            images: self.data.train.len(),
            batch: self.batch,
            batches: self.batches_per_epoch,
            crop: t.augment == Augment::CropFlip,
            mixup: t.mixup,
            cutmix: t.cutmix,
            size: (size, size),
        }
    }

    /// Where the time went so far, this attempt's start-up and checkpoints included.
    pub fn times(&self) -> pb::TrialTimes {
        pb::TrialTimes {
            startup_seconds: self.times.startup_seconds + self.attempt_startup,
            ..self.times
        }
    }

    /// Records this attempt's start-up: its lease to its first batch.
    pub fn set_attempt_startup(&mut self, seconds: f64) {
        self.attempt_startup = seconds;
    }

    /// Adds the time a checkpoint took to write.
    pub fn add_checkpoint_seconds(&mut self, seconds: f64) {
        self.times.checkpoint_seconds += seconds;
    }

    /// Trains one epoch (or the rest of an interrupted one), evaluates, and returns the epoch's
    /// metrics. Checks `ctl` between batches; on a preemption request it stops with the epoch's
    /// progress kept, ready for [`TrialRun::checkpoint`].
    pub fn train_epoch(&mut self, ctl: &TrialControl) -> Result<pb::EpochMetrics, TrainError> {
        let t = &self.spec.train;
        let device = self.net.vs.device();
        let session = Instant::now();
        let epoch = self.epoch + 1;
        let total_steps = u64::from(t.epochs) * self.batches_per_epoch as u64;
        let n = self.data.train.len();
        if self.cursor.is_none() {
            let order = readback::upload(&Tensor::from_slice(&self.rng.permutation(n as usize)), device);
            let draws_rng = self.rng.state();
            let plan = self.plan();
            let draws = EpochDraws::new(&mut self.rng, plan, device);
            self.cursor = Some(Cursor {
                order,
                draws,
                draws_rng,
                next_batch: 0,
                loss_sum: Tensor::zeros([], (Kind::Double, device)),
                correct: Tensor::zeros([], (Kind::Int64, device)),
                seconds: 0.0,
                stream: None,
            });
        }
        let cursor = self.cursor.as_mut().expect("set above");
        let warmup = u64::from(t.warmup_epochs) * self.batches_per_epoch as u64;
        let mut lr = lr_at(t.schedule, t.lr, self.step.saturating_sub(1), total_steps, warmup);
        for b in cursor.next_batch..self.batches_per_epoch {
            match ctl.signal() {
                // A stopping rule's halt waits for the epoch's end.
                Signal::Run | Signal::Halt => {}
                Signal::Stop => return Err(TrainError::Stopped),
                Signal::Preempt => {
                    cursor.seconds += session.elapsed().as_secs_f64();
                    self.times.train_seconds += session.elapsed().as_secs_f64();
                    return Err(TrainError::Preempted(self.epoch));
                }
            }
            let start = b * self.batch;
            let len = self.batch.min(n - start);
            let idx = cursor.order.narrow(0, start, len);
            let x = match &self.data.train.files {
                None => cursor
                    .draws
                    .augment(&self.data.train.images.index_select(0, &idx), start),
                Some(files) => {
                    let stream = cursor.stream.get_or_insert_with(|| {
                        files.stream(EpochPlan {
                            order: readback::i64s(&cursor.order),
                            batch: self.batch as usize,
                            from_batch: b as usize,
                            batches: self.batches_per_epoch as usize,
                            augment: t.augment == Augment::RandomResizedCrop,
                            seed: self.spec.seed,
                            epoch,
                        })
                    });
                    let images = stream.next_batch().map_err(|e| TrainError::Data(e.to_string()))?;
                    crate::data::to_unit(&readback::upload_async(&images, device))
                }
            };
            let y = self.data.train.labels.index_select(0, &idx);
            lr = lr_at(t.schedule, t.lr, self.step, total_steps, warmup);
            self.opt.set_lr(lr);
            let (loss, logits) = match cursor.draws.mix(b) {
                // The paper's path, unchanged: hard labels, smoothed cross-entropy.
                None if t.loss == Loss::Ce => train_step(&self.net, &mut self.opt, &x, &y, t.label_smoothing),
                drawn => {
                    let (x, lam) = drawn.map_or((x.shallow_clone(), 1.0), |m| mix::apply(&x, m));
                    let targets = mix::soft_targets(&y, self.data.classes, t.label_smoothing, lam);
                    soft_train_step(&self.net, &mut self.opt, &x, &targets, t.loss)
                }
            };
            tch::no_grad(|| {
                cursor.loss_sum += loss.to_kind(Kind::Double) * len as f64;
                cursor.correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            });
            self.step += 1;
            self.times.train_images += len as u64;
            cursor.next_batch = b + 1;
        }
        let cursor = self.cursor.take().expect("set above");
        let train_loss = readback::f64(&cursor.loss_sum) / self.used_per_epoch as f64;
        // The read waited for the epoch's last batch: the training span ends here.
        self.times.train_seconds += session.elapsed().as_secs_f64();
        if !train_loss.is_finite() {
            return Err(TrainError::NonFinite {
                epoch,
                loss: train_loss,
            });
        }
        let train_acc = readback::i64(&cursor.correct) as f64 / self.used_per_epoch as f64;
        let test_started = Instant::now();
        let (test_loss, test_acc) = evaluate(
            &self.net,
            &self.data.test.images,
            &self.data.test.labels,
            t.label_smoothing,
        );
        let val = self
            .data
            .val
            .as_ref()
            .map(|v| evaluate(&self.net, &v.images, &v.labels, t.label_smoothing));
        self.times.epoch_eval_seconds += test_started.elapsed().as_secs_f64();
        let metrics = pb::EpochMetrics {
            epoch,
            lr,
            train_loss,
            train_acc,
            test_loss,
            test_acc,
            seconds: cursor.seconds + session.elapsed().as_secs_f64(),
            val_loss: val.map(|v| v.0),
            val_acc: val.map(|v| v.1),
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
        self.history.push(metrics);
        Ok(metrics)
    }

    /// Metrics of every finished epoch (restored ones included).
    pub fn history(&self) -> &[pb::EpochMetrics] {
        &self.history
    }

    /// Everything needed to continue this run later, mid-epoch included.
    pub fn checkpoint(&self) -> Checkpoint {
        tch::no_grad(|| {
            let mut tensors: Vec<(String, Tensor)> = self
                .net
                .vs
                .variables()
                .into_iter()
                .map(|(name, t)| (format!("var/{name}"), t.to_device(Device::Cpu)))
                .collect();
            tensors.extend(
                self.opt
                    .state()
                    .into_iter()
                    .map(|(name, t)| (format!("momentum/{name}"), t.to_device(Device::Cpu))),
            );
            let cursor = self.cursor.as_ref().map(|c| {
                tensors.push(("cursor/order".into(), c.order.to_device(Device::Cpu)));
                pb::EpochCursor {
                    next_batch: c.next_batch,
                    loss_sum: readback::f64(&c.loss_sum),
                    correct: readback::i64(&c.correct),
                    seconds: c.seconds,
                    draws_rng: c.draws_rng.to_vec(),
                }
            });
            Checkpoint {
                state: pb::CheckpointState {
                    trial_id: String::new(),
                    generation: 0,
                    epoch: self.epoch,
                    step: self.step,
                    rng: self.rng.state().to_vec(),
                    best_test_acc: self.best.0.max(0.0),
                    best_epoch: self.best.1,
                    last: Some(self.last),
                    init_filters: self.init_filters.clone(),
                    cursor,
                    model_draws: self.net.draws(),
                    seconds: self.seconds_before + self.started.elapsed().as_secs_f64(),
                    history: self.history.clone(),
                    checksum: Vec::new(),
                    times: Some(self.times()),
                },
                tensors,
            }
        })
    }

    /// Continues from `ck` (taken by [`TrialRun::checkpoint`] of the same spec). On an error
    /// nothing is half-restored that matters: the caller starts the trial afresh.
    pub fn restore(&mut self, ck: Checkpoint) -> Result<(), CheckpointError> {
        let state = ck.state;
        let rng: [u64; 4] = state.rng.as_slice().try_into().map_err(|_| {
            CheckpointError::Mismatch(format!("checkpoint rng state has {} words, not 4", state.rng.len()))
        })?;
        let mut tensors: std::collections::HashMap<String, Tensor> = ck.tensors.into_iter().collect();
        let device = self.net.vs.device();
        let vars = self.net.vs.variables();
        tch::no_grad(|| -> Result<(), CheckpointError> {
            for (name, var) in &vars {
                let saved = tensors
                    .remove(&format!("var/{name}"))
                    .ok_or_else(|| CheckpointError::Mismatch(format!("checkpoint lacks variable {name}")))?;
                if saved.size() != var.size() {
                    return Err(CheckpointError::Mismatch(format!(
                        "variable {name}: checkpoint shape {:?}, model {:?}",
                        saved.size(),
                        var.size()
                    )));
                }
                var.shallow_clone().copy_(&saved);
            }
            Ok(())
        })?;
        let momentum: Vec<(String, Tensor)> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("momentum/").map(|n| (n.to_owned(), v.shallow_clone())))
            .collect();
        self.opt.load_state(momentum)?;
        self.cursor = match state.cursor {
            None => None,
            Some(c) => {
                let order = tensors
                    .remove("cursor/order")
                    .ok_or_else(|| CheckpointError::Mismatch("checkpoint has a cursor but no order".into()))?;
                let draws_rng: [u64; 4] = c.draws_rng.as_slice().try_into().map_err(|_| {
                    CheckpointError::Mismatch(format!(
                        "checkpoint cursor has {} words of draw state, not 4 (written by an older convsweep, \
                         whose mid-epoch draws cannot be replayed)",
                        c.draws_rng.len()
                    ))
                })?;
                let draws = EpochDraws::new(&mut Rng::from_state(draws_rng), self.plan(), device);
                Some(Cursor {
                    order: order.to_device(device),
                    draws,
                    draws_rng,
                    next_batch: c.next_batch,
                    loss_sum: Tensor::from(c.loss_sum).to_device(device),
                    correct: Tensor::from(c.correct).to_device(device),
                    seconds: c.seconds,
                    stream: None,
                })
            }
        };
        self.rng = Rng::from_state(rng);
        self.epoch = state.epoch;
        self.step = state.step;
        self.best = if state.best_epoch == 0 {
            (f64::NEG_INFINITY, 0)
        } else {
            (state.best_test_acc, state.best_epoch)
        };
        self.last = state.last.unwrap_or_default();
        self.history = state.history;
        self.init_filters = state.init_filters;
        self.net.set_draws(state.model_draws);
        self.seconds_before = state.seconds;
        self.times = state.times.unwrap_or_default();
        self.started = Instant::now();
        Ok(())
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
                Err(e) => self.eval_errors.push(e.to_string()),
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
            wall_seconds: self.seconds_before + self.started.elapsed().as_secs_f64(),
            peak_memory_bytes: crate::device::peak_memory_bytes(self.net.vs.device()),
            device: crate::device::describe_device(self.net.vs.device()),
            robustness: self.robustness.clone(),
            filters: self.init_filters.iter().chain(&self.final_filters).cloned().collect(),
            eval_error: self.eval_errors.join("; "),
            eval_seconds: self.eval_seconds,
            conv_algorithm: self.net.conv_algorithm(),
            times: Some(self.times()),
        }
    }
}

/// Trains `spec` on `data` to the end and returns its final metrics. Reports each epoch
/// through `ctl` and stops between batches when `ctl` asks. With `checkpoints`, resumes from the
/// trial's latest checkpoint, writes one every few epochs and one when preempted.
pub fn train_trial(
    spec: &TrialSpec,
    compute: impl Into<Compute>,
    data: &Dataset,
    ctl: &TrialControl,
    checkpoints: Option<(&CheckpointStore, &str)>,
) -> Result<pb::TrialResult, TrainError> {
    let compute = compute.into();
    let mut run = TrialRun::new(spec, compute, data)?;
    if let Some((store, trial)) = checkpoints {
        match store.load(trial) {
            Ok(None) => {}
            Ok(Some(ck)) => match run.restore(ck) {
                Ok(()) => {
                    tracing::info!(epoch = run.epochs_done(), "resumed from checkpoint");
                    // The previous worker may have died before these reports went out.
                    for m in run.history() {
                        ctl.epoch(*m);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint unusable; starting afresh");
                    run = TrialRun::new(spec, compute, data)?;
                }
            },
            Err(e) => tracing::warn!(error = %e, "checkpoint unreadable; starting afresh"),
        }
    }
    // This attempt's start-up, once the trainer has looked at its signal (before its first
    // batch, or its first evaluation when only those were left).
    let note_startup = |run: &mut TrialRun| {
        if let Some(d) = ctl.first_step().get() {
            run.set_attempt_startup(d.as_secs_f64());
        }
    };
    let save = |run: &mut TrialRun| {
        if let Some((store, trial)) = checkpoints {
            let started = Instant::now();
            let saved = store.save(trial, run.checkpoint());
            run.add_checkpoint_seconds(started.elapsed().as_secs_f64());
            match saved {
                Ok(()) => tracing::debug!(epoch = run.epochs_done(), "checkpoint written"),
                Err(e) => tracing::warn!(
                    error = %e,
                    epoch = run.epochs_done(),
                    "checkpoint not written; training goes on (a restart resumes from the last checkpoint written, or from the start)"
                ),
            }
        }
    };
    let every = checkpoints.map_or(u32::MAX, |(s, _)| s.every());
    while run.epochs_done() < spec.train.epochs {
        let trained = run.train_epoch(ctl);
        note_startup(&mut run);
        match trained {
            Ok(metrics) => {
                ctl.epoch(metrics);
                let halted = ctl.peek_signal() == Signal::Halt && run.epochs_done() < spec.train.epochs;
                if halted || run.epochs_done() % every == 0 || run.epochs_done() == spec.train.epochs {
                    save(&mut run);
                }
                if halted {
                    tracing::info!(epoch = run.epochs_done(), "stopped by the sweep's stopping rule");
                    return Err(TrainError::Halted(run.epochs_done()));
                }
            }
            Err(TrainError::Preempted(epoch)) => {
                save(&mut run);
                return Err(TrainError::Preempted(epoch));
            }
            Err(e) => return Err(e),
        }
    }
    let evaluated = run.evaluate(ctl);
    note_startup(&mut run);
    match evaluated {
        Ok(()) => {
            let result = run.result();
            tracing::info!(
                precision = ?spec.train.precision,
                test_acc = format!("{:.4}", result.final_test_acc),
                wall_seconds = format!("{:.1}", result.wall_seconds),
                peak_memory_mib = result.peak_memory_bytes >> 20,
                device = %result.device,
                "trial trained"
            );
            Ok(result)
        }
        Err(TrainError::Preempted(epoch)) => {
            save(&mut run);
            Err(TrainError::Preempted(epoch))
        }
        Err(e) => Err(e),
    }
}
