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
