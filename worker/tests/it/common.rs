//! Spec builders shared by the tests.

use convsweep_proto::spec::{
    Arch, DatasetName, DatasetSpec, EvalSpec, InitScheme, InterOp, ModelSpec, TrainMode, TrainSpec, TrialSpec,
};

/// ResNet-`depth`-`width` at kernel size `k`.
pub fn model(depth: u32, width: u32, k: u32, mode: TrainMode) -> ModelSpec {
    ModelSpec {
        arch: Arch::Resnet,
        depth: Some(depth),
        width: Some(width),
        kernel_size: k,
        expansion: None,
        inter_op: InterOp::None,
        train_mode: mode,
        init: InitScheme::KaimingUniform,
        stem: None,
        patch_size: None,
        init_length: None,
        init_decay: None,
    }
}

/// A small synthetic trial.
pub fn trial(model: ModelSpec, train_size: u32, epochs: u32) -> TrialSpec {
    let mut spec = TrialSpec {
        dataset: DatasetSpec {
            name: DatasetName::Synthetic,
            root: None,
            train_size: Some(train_size),
            test_size: Some(64),
            noise: None,
            data_seed: None,
            image_size: None,
            classes: None,
            val_labels: None,
            val_fraction: None,
        },
        model,
        train: TrainSpec {
            epochs,
            batch_size: 32,
            lr: 0.05,
            ..TrainSpec::default()
        },
        seed: 1,
        eval: EvalSpec::default(),
    };
    spec.canonicalize();
    spec.validate().expect("test spec is valid");
    spec
}

/// Epochs 2 and 3 of `spec` trained whole, and of the same trial cut after epoch 1 and
/// restored from its checkpoint: `(whole, resumed)`, which should be equal.
pub fn whole_and_resumed(
    spec: &TrialSpec,
    data: &convsweep_worker::data::Dataset,
) -> (
    Vec<convsweep_proto::pb::EpochMetrics>,
    Vec<convsweep_proto::pb::EpochMetrics>,
) {
    use convsweep_worker::control::TrialControl;
    use convsweep_worker::trainer::TrialRun;
    use tch::Device;

    let (ctl, _s, _e) = TrialControl::new();
    let mut whole = TrialRun::new(spec, Device::Cpu, data).unwrap();
    let mut all: Vec<_> = (0..3).map(|_| whole.train_epoch(&ctl).unwrap()).collect();
    let mut first = TrialRun::new(spec, Device::Cpu, data).unwrap();
    first.train_epoch(&ctl).unwrap();
    let mut resumed = TrialRun::new(spec, Device::Cpu, data).unwrap();
    resumed.restore(first.checkpoint()).unwrap();
    let rest = (0..2).map(|_| resumed.train_epoch(&ctl).unwrap()).collect();
    all.remove(0);
    (all, rest)
}
