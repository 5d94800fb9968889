//! Checkpoints: a trial interrupted at an arbitrary moment and resumed from its checkpoint ends
//! exactly where an uninterrupted one does (CPU).

use std::sync::atomic::Ordering;
use std::time::Duration;

use convsweep_proto::spec::{Corruption, EvalSpec, TrainMode};
use convsweep_worker::control::{Signal, TrainError, TrialControl};
use convsweep_worker::data::DataCache;
use convsweep_worker::trainer::{CheckpointStore, train_trial};
use tch::Device;

use crate::common::{model, trial};

fn final_tensors(store: &CheckpointStore, id: &str) -> Vec<(String, tch::Tensor)> {
    let mut t = store.load(id).unwrap().expect("a final checkpoint").tensors;
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn a_resumed_trial_ends_exactly_like_an_uninterrupted_one() {
    let mut spec = trial(model(8, 8, 3, TrainMode::Learned), 512, 3);
    spec.eval = EvalSpec {
        corruptions: vec![Corruption::GaussianNoise],
        severities: vec![2],
        ..EvalSpec::default()
    };
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let whole = CheckpointStore::new(&dir.path().join("whole"), 1).unwrap();
    let (ctl, _signal, _events) = TrialControl::new();
    let reference = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&whole, "t"))).unwrap();

    // Interrupt at a moment that is not an epoch boundary (somewhere in epoch 2), resume.
    let parts = CheckpointStore::new(&dir.path().join("parts"), 1).unwrap();
    let mut delay = Duration::from_millis(1500);
    let resumed = loop {
        let (ctl, signal, _events) = TrialControl::new();
        let flip = std::thread::spawn({
            let signal = signal.clone();
            move || {
                std::thread::sleep(delay);
                signal.store(Signal::Preempt as u8, Ordering::Relaxed);
            }
        });
        let first = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&parts, "t")));
        flip.join().unwrap();
        match first {
            Err(TrainError::Preempted(_)) => {
                let state = parts.load("t").unwrap().unwrap().state;
                eprintln!(
                    "preempted after epoch {} at batch {:?}",
                    state.epoch,
                    state.cursor.map(|c| c.next_batch)
                );
                let (ctl, _signal, mut events) = TrialControl::new();
                let result = train_trial(&spec, Device::Cpu, &data, &ctl, Some((&parts, "t"))).unwrap();
                // Every epoch is reported again by the resumed run, restored ones included.
                let mut epochs = Vec::new();
                while let Ok(convsweep_worker::control::TrialEvent::Epoch(m)) = events.try_recv() {
                    epochs.push(m.epoch);
                }
                epochs.dedup();
                assert_eq!(epochs, vec![1, 2, 3]);
                break result;
            }
            Ok(_) => {
                // Too fast to interrupt: start over, interrupting sooner.
                parts.remove("t");
                delay /= 2;
                assert!(delay > Duration::from_millis(10), "could not interrupt the trial");
            }
            Err(e) => panic!("{e}"),
        }
    };

    assert_eq!(resumed.final_train_loss, reference.final_train_loss);
    assert_eq!(resumed.final_test_acc, reference.final_test_acc);
    assert_eq!(
        (resumed.best_test_acc, resumed.best_epoch),
        (reference.best_test_acc, reference.best_epoch)
    );
    assert_eq!(resumed.robustness, reference.robustness);
    assert_eq!(
        resumed.filters, reference.filters,
        "init statistics come from the checkpoint"
    );
    let (tr, tw) = (resumed.times.unwrap(), reference.times.unwrap());
    assert_eq!(
        tr.train_images, tw.train_images,
        "each image counted once across the attempts"
    );
    assert!(tr.startup_seconds > 0.0 && tw.startup_seconds > 0.0);
    let (a, b) = (final_tensors(&whole, "t"), final_tensors(&parts, "t"));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resuming");
    }
}

#[test]
fn checkpoints_survive_a_crash_between_writes_and_are_removed() {
    let spec = trial(model(8, 4, 3, TrainMode::Frozen), 64, 2);
    let data = DataCache::default().get(&spec.dataset, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("checkpoints");
    let store = CheckpointStore::new(&folder, 1).unwrap();
    let (ctl, _signal, _events) = TrialControl::new();
    train_trial(&spec, Device::Cpu, &data, &ctl, Some((&store, "x"))).unwrap();
    let state = store.load("x").unwrap().unwrap().state;
    assert_eq!((state.epoch, state.generation), (2, 2));
    // Only the latest generation's tensors are kept, no temporary file is left, and a
    // checkpoint (a model's weights) is readable by its owner only, in a folder that is too.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&folder), 0o700);
    let files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        assert_eq!(mode(&folder.join(f)), 0o600, "{f}");
    }
    // A half-written next generation (crash before the state rename) is ignored.
    std::fs::write(folder.join("x.3.ot"), b"partial").unwrap();
    assert_eq!(store.load("x").unwrap().unwrap().state.generation, 2);
    store.remove("x");
    assert!(store.load("x").unwrap().is_none());
}
