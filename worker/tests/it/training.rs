//! Training: the loss goes down, frozen filters stay bit-identical, runs are deterministic.

use std::collections::HashMap;

use convsweep_proto::spec::TrainMode;
use convsweep_worker::control::TrialControl;
use convsweep_worker::data::DataCache;
use convsweep_worker::trainer::TrialRun;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Reduction, Tensor, nn};

use crate::common::{model, trial, whole_and_resumed};

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

fn is_spatial(t: &Tensor) -> bool {
    let s = t.size();
    s.len() == 4 && s[2] * s[3] > 1
}

#[test]
fn a_few_steps_lower_the_loss() {
    let spec = trial(model(8, 8, 3, TrainMode::Learned), 128, 1);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    let mut opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(&run.net.vs, 0.1)
    .unwrap();
    let x = data.train.images.to_kind(Kind::Float) / 255.0;
    let y = &data.train.labels;
    let loss_of = |train: bool| {
        run.net
            .forward_t(&x, train)
            .cross_entropy_loss(y, None::<Tensor>, Reduction::Mean, -100, 0.0)
    };
    let before = tch::no_grad(|| loss_of(true)).double_value(&[]);
    for _ in 0..30 {
        opt.backward_step(&loss_of(true));
    }
    let after = tch::no_grad(|| loss_of(true)).double_value(&[]);
    assert!(after < 0.7 * before, "loss {before} -> {after}");
}

fn train_one_epoch(mode: TrainMode) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let spec = trial(model(8, 8, 3, mode), 96, 1);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let mut run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    let before = snapshot(&run.net.vs);
    let (ctl, _signal, _events) = TrialControl::new();
    run.train_epoch(&ctl).unwrap();
    (before, snapshot(&run.net.vs))
}

#[test]
fn frozen_spatial_filters_stay_bit_identical_while_the_rest_learns() {
    let (before, after) = train_one_epoch(TrainMode::Frozen);
    let mut spatial = 0;
    for (name, b) in &before {
        let a = &after[name];
        if is_spatial(b) {
            spatial += 1;
            assert!(a.equal(b), "{name} (frozen) changed");
        } else {
            assert!(!a.equal(b), "{name} did not change");
        }
    }
    assert_eq!(spatial, 7, "stem + 6 block convs of ResNet-8");
}

#[test]
fn learned_spatial_filters_change() {
    let (before, after) = train_one_epoch(TrainMode::Learned);
    for (name, b) in &before {
        assert!(!after[name].equal(b), "{name} did not change");
    }
}

#[test]
fn cpu_training_is_deterministic_for_a_seed() {
    let spec = trial(model(8, 8, 3, TrainMode::Learned), 96, 2);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let (ctl, _signal, _events) = TrialControl::new();
    let run = |ctl: &TrialControl| {
        let mut run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
        let m: Vec<_> = (0..2).map(|_| run.train_epoch(ctl).unwrap()).collect();
        (m, snapshot(&run.net.vs))
    };
    let (m1, w1) = run(&ctl);
    let (m2, w2) = run(&ctl);
    for (a, b) in m1.iter().zip(&m2) {
        assert_eq!((a.train_loss, a.test_acc), (b.train_loss, b.test_acc));
    }
    for (name, t) in &w1 {
        assert!(t.equal(&w2[name]), "{name}");
    }
}

#[test]
fn adamw_warmup_mixup_cutmix_and_bce_train_deterministically_and_resume_exactly() {
    use convsweep_proto::spec::Loss;

    let plain = trial(model(8, 8, 3, TrainMode::Learned), 128, 3);
    let mut spec = plain.clone();
    spec.train.mixup = 0.2;
    spec.train.cutmix = 1.0;
    spec.train.loss = Loss::Bce;
    // timm-style: AdamW with a warm-up.
    spec.train.optimizer = convsweep_proto::spec::Optimizer::Adamw;
    spec.train.lr = 2e-3;
    spec.train.warmup_epochs = 1;
    spec.canonicalize();
    spec.validate().unwrap();
    assert_ne!(spec.id(), plain.id());
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let run = |spec: &convsweep_proto::spec::TrialSpec, epochs: usize| {
        let (ctl, _signal, _events) = TrialControl::new();
        let mut run = TrialRun::new(spec, Device::Cpu, &data).unwrap();
        (0..epochs).map(|_| run.train_epoch(&ctl).unwrap()).collect::<Vec<_>>()
    };
    let (a, b, p) = (run(&spec, 2), run(&spec, 2), run(&plain, 2));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.train_loss, x.test_acc),
            (y.train_loss, y.test_acc),
            "same seed, same run"
        );
    }
    assert!(a.iter().all(|m| m.train_loss.is_finite() && m.train_loss > 0.0));
    assert_ne!(a[0].train_loss, p[0].train_loss, "the recipe changes the run");
    assert!(a[1].train_loss < a[0].train_loss, "it learns: {a:?}");
    // BCE over 10 classes of soft targets starts near ln 2, far below CE's ln 10.
    assert!(a[0].train_loss < 1.0, "{}", a[0].train_loss);

    // A run cut after epoch 1 and restored from its checkpoint ends where a whole one does:
    // the mixing draws come from the checkpointed generator.
    let (whole, resumed) = whole_and_resumed(&spec, &data);
    for (x, y) in whole.iter().zip(&resumed) {
        assert_eq!(
            (x.train_loss, x.test_loss, x.test_acc),
            (y.train_loss, y.test_loss, y.test_acc)
        );
    }
}

#[test]
fn mixed_precision_is_refused_on_the_cpu_and_fp32_is_the_run_it_always_was() {
    use convsweep_proto::spec::Precision;

    let spec = trial(model(8, 8, 3, TrainMode::Learned), 64, 1);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    for (precision, name) in [(Precision::Bf16, "bf16"), (Precision::Fp16, "fp16")] {
        let mut mixed = spec.clone();
        mixed.train.precision = precision;
        assert_ne!(mixed.id(), spec.id());
        let e = TrialRun::new(&mixed, Device::Cpu, &data)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains(&format!("train.precision = \"{name}\" needs a CUDA device")) && e.contains("only \"fp32\""),
            "{e}"
        );
        let outcome = convsweep_worker::control::TrainError::Device(e).into_outcome();
        assert!(
            format!("{outcome:?}").contains("retryable: true"),
            "another worker may have a GPU"
        );
    }
    // `precision = "fp32"` written out is the default: the same trial, the same numbers.
    let mut explicit = spec.clone();
    explicit.train.precision = Precision::Fp32;
    assert_eq!(explicit.id(), spec.id());
    assert!(
        !spec.canonical_json().contains("precision"),
        "left out of the canonical form"
    );
    let (ctl, _s, _e) = TrialControl::new();
    let a = TrialRun::new(&spec, Device::Cpu, &data)
        .unwrap()
        .train_epoch(&ctl)
        .unwrap();
    let b = TrialRun::new(&explicit, Device::Cpu, &data)
        .unwrap()
        .train_epoch(&ctl)
        .unwrap();
    assert_eq!((a.train_loss, a.test_acc), (b.train_loss, b.test_acc));
}

#[test]
fn lamb_trains_and_resumes_exactly() {
    let mut spec = trial(model(8, 8, 3, TrainMode::Learned), 128, 3);
    spec.train.optimizer = convsweep_proto::spec::Optimizer::Lamb;
    spec.train.lr = 5e-3;
    spec.train.weight_decay = 0.02;
    spec.canonicalize();
    spec.validate().unwrap();
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let (whole, resumed) = whole_and_resumed(&spec, &data);
    assert!(whole[1].train_loss < whole[0].train_loss, "it learns: {whole:?}");
    for (x, y) in whole.iter().zip(&resumed) {
        assert_eq!((x.train_loss, x.test_acc), (y.train_loss, y.test_acc));
    }
}

/// The loop reads the device once per epoch for its loss and accuracy and once for the test
/// pass's (4 reads), and uploads twice (the epoch's order and its crop draws), however many
/// batches the epoch has, with mixing or without; robustness reads once per measurement.
#[test]
fn host_reads_per_epoch_do_not_grow_with_the_batches() {
    use convsweep_worker::readback;

    let per_epoch = |batch_size: u32, cutmix: f64| {
        let mut spec = trial(model(8, 4, 3, TrainMode::Learned), 256, 2);
        spec.train.batch_size = batch_size;
        spec.train.cutmix = cutmix;
        spec.canonicalize();
        let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
        let (ctl, _s, _e) = TrialControl::new();
        let mut run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
        (0..2)
            .map(|_| {
                let (reads, uploads) = (readback::count(), readback::uploads());
                run.train_epoch(&ctl).unwrap();
                (readback::count() - reads, readback::uploads() - uploads)
            })
            .collect::<Vec<(u64, u64)>>()
    };
    // 4 batches an epoch, then 32: the same 4 reads and 2 uploads each epoch.
    assert_eq!(per_epoch(64, 0.0), [(4, 2), (4, 2)]);
    assert_eq!(per_epoch(8, 0.0), [(4, 2), (4, 2)]);
    assert_eq!(per_epoch(8, 1.0), [(4, 2), (4, 2)]);

    // FGSM on 600 test images, 3 attack batches of 250: one read per measurement.
    let mut spec = trial(model(8, 4, 3, TrainMode::Learned), 64, 1);
    spec.dataset.test_size = Some(600);
    spec.eval.fgsm = vec![convsweep_proto::spec::Eps(1.0 / 255.0)];
    spec.eval.corruptions = vec![];
    spec.canonicalize();
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let (ctl, _s, _e) = TrialControl::new();
    let mut run = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    run.train_epoch(&ctl).unwrap();
    let before = readback::count();
    run.evaluate(&ctl).unwrap();
    let measurements = run.result().robustness.len() as u64;
    assert!(measurements >= 2, "clean and FGSM: {measurements}");
    assert_eq!(readback::count() - before, measurements);
}

/// A trial's time split: every training image counted once, each span recorded, the spans
/// inside the trial's wall time; a resumed attempt adds its start-up and its own epochs to
/// what the checkpoint carried.
#[test]
fn where_the_time_went_is_recorded_and_carried_through_a_checkpoint() {
    use convsweep_worker::trainer::{CheckpointStore, train_trial};

    let mut spec = trial(model(8, 4, 3, TrainMode::Learned), 256, 2);
    spec.train.batch_size = 64;
    spec.eval.filters = true;
    spec.canonicalize();
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), 1).unwrap();
    let (ctl, _s, _e) = TrialControl::new();
    let result = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&store, "split"))).unwrap();
    let t = result.times.unwrap();
    assert_eq!(t.train_images, 2 * 256, "two epochs of 256 images");
    for (name, v) in [
        ("startup", t.startup_seconds),
        ("train", t.train_seconds),
        ("epoch eval", t.epoch_eval_seconds),
        ("final eval", result.eval_seconds),
        ("checkpoint", t.checkpoint_seconds),
    ] {
        assert!(v > 0.0, "{name}: {v}");
    }
    assert_eq!(t.report_seconds, 0.0, "reporting is the agent's to add");
    let spans = t.train_seconds + t.epoch_eval_seconds + result.eval_seconds + t.checkpoint_seconds;
    assert!(
        spans <= result.wall_seconds,
        "{spans} s of spans in {} s",
        result.wall_seconds
    );

    let mut first = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    first.set_attempt_startup(1.0);
    first.train_epoch(&ctl).unwrap();
    first.add_checkpoint_seconds(0.5);
    let before = first.times();
    let mut second = TrialRun::new(&spec, Device::Cpu, &data).unwrap();
    second.restore(first.checkpoint()).unwrap();
    second.set_attempt_startup(2.0);
    second.train_epoch(&ctl).unwrap();
    let after = second.times();
    assert_eq!(after.train_images, 2 * 256);
    assert_eq!(after.startup_seconds, 3.0, "both attempts' start-up");
    assert_eq!(after.checkpoint_seconds, 0.5);
    assert!(after.train_seconds > before.train_seconds);
    assert!(after.epoch_eval_seconds > before.epoch_eval_seconds);
}

/// A stopping rule's halt: the trial finishes the epoch under way, checkpoints and ends
/// `Halted` with its epochs so far (each with its validation figures); resumed later, it
/// continues from that checkpoint to its full budget.
#[test]
fn a_halted_trial_ends_at_its_epoch_with_a_checkpoint_and_resumes_to_its_budget() {
    use std::sync::atomic::Ordering;

    use convsweep_worker::control::{Signal, TrainError, TrialEvent};
    use convsweep_worker::trainer::{CheckpointStore, train_trial};

    let mut spec = trial(model(8, 4, 3, TrainMode::Frozen), 128, 3);
    spec.dataset.val_fraction = Some(0.25);
    spec.canonicalize();
    spec.validate().unwrap();
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    assert_eq!((data.train.len(), data.val.as_ref().unwrap().len()), (96, 32));
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints every 5 epochs: the halt writes one of its own.
    let store = CheckpointStore::new(dir.path(), 5).unwrap();
    let (ctl, signal, mut events) = TrialControl::new();
    signal.store(Signal::Halt as u8, Ordering::Relaxed);
    let ended = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&store, "halted")));
    assert!(matches!(ended, Err(TrainError::Halted(1))), "{ended:?}");
    let mut reported = Vec::new();
    while let Ok(TrialEvent::Epoch(m)) = events.try_recv() {
        reported.push(m);
    }
    assert_eq!(reported.len(), 1, "the epoch under way, no more");
    let (val_loss, val_acc) = (reported[0].val_loss.unwrap(), reported[0].val_acc.unwrap());
    assert!(
        val_loss.is_finite() && (0.0..=1.0).contains(&val_acc),
        "{val_loss} {val_acc}"
    );
    assert_eq!(
        store.load("halted").unwrap().unwrap().state.epoch,
        1,
        "checkpointed at the halt"
    );

    let (ctl, _signal, mut events) = TrialControl::new();
    let result = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&store, "halted"))).unwrap();
    let mut epochs = Vec::new();
    while let Ok(TrialEvent::Epoch(m)) = events.try_recv() {
        epochs.push(m.epoch);
    }
    assert_eq!(
        epochs,
        vec![1, 2, 3],
        "epoch 1 again from the checkpoint's history, then 2 and 3"
    );
    assert_eq!(
        result.times.unwrap().train_images,
        3 * 96,
        "three epochs of the 96 training images"
    );
}
