//! Training-throughput benchmark: images per second of the training step (forward, backward,
//! SGD step) that trials use, for the paper's reference configurations. Paired with
//! `bench/pytorch_reference.py`, which times the same models in PyTorch eager mode, so that
//! both are measured on the same machine with the same thread count.

use std::time::Instant;

use convsweep_proto::spec::{Arch, InitScheme, InterOp, ModelSpec, TrainMode, TrainSpec};
use tch::{Device, Kind, Tensor};

use crate::model::{InputShape, Net};
use crate::trainer::{optimizer, train_step};

/// One configuration to time.
#[derive(Debug, Clone)]
pub struct BenchCase {
    /// Row name, shared with the reference script.
    pub name: &'static str,
    /// The model.
    pub model: ModelSpec,
}

fn resnet20(k: u32, mode: TrainMode, expansion: Option<u32>) -> ModelSpec {
    ModelSpec {
        arch: Arch::Resnet,
        depth: Some(20),
        width: Some(16),
        stem: None,
        patch_size: None,
        kernel_size: k,
        expansion,
        inter_op: InterOp::None,
        train_mode: mode,
        init: InitScheme::KaimingUniform,
        init_length: None,
        init_decay: None,
    }
}

/// The rows of docs/BENCHMARKS.md: ResNet-20-16 at k = 3 and 9, learned and frozen, and
/// ResNet-LC-20-16x8 at k = 3, learned and frozen.
pub fn default_cases() -> Vec<BenchCase> {
    vec![
        BenchCase {
            name: "resnet-20-16 k3 learned",
            model: resnet20(3, TrainMode::Learned, None),
        },
        BenchCase {
            name: "resnet-20-16 k3 frozen",
            model: resnet20(3, TrainMode::Frozen, None),
        },
        BenchCase {
            name: "resnet-20-16 k9 learned",
            model: resnet20(9, TrainMode::Learned, None),
        },
        BenchCase {
            name: "resnet-20-16 k9 frozen",
            model: resnet20(9, TrainMode::Frozen, None),
        },
        BenchCase {
            name: "resnet-lc-20-16x8 k3 learned",
            model: resnet20(3, TrainMode::Learned, Some(8)),
        },
        BenchCase {
            name: "resnet-lc-20-16x8 k3 frozen",
            model: resnet20(3, TrainMode::Frozen, Some(8)),
        },
    ]
}

/// How to time.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Images per step.
    pub batch: i64,
    /// Untimed steps first.
    pub warmup: u32,
    /// Timed steps per round.
    pub steps: u32,
    /// Rounds; the median round is reported.
    pub rounds: u32,
    /// Device.
    pub device: Device,
}

/// The throughput of one case.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Row name.
    pub name: &'static str,
    /// Median images per second over the rounds.
    pub images_per_sec: f64,
    /// Every round's images per second.
    pub rounds: Vec<f64>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `case`: a fixed random batch of `[0, 1]` images, the paper's optimiser and loss.
pub fn run_case(case: &BenchCase, config: BenchConfig) -> BenchResult {
    let input = InputShape {
        channels: 3,
        size: 32,
        classes: 10,
    };
    let net = Net::new(
        &case.model,
        input,
        0,
        config.device,
        &[0.49, 0.48, 0.45],
        &[0.25, 0.24, 0.26],
    );
    let recipe = TrainSpec::default();
    let mut opt = optimizer(&net, &recipe).expect("SGD builds");
    let x = Tensor::rand([config.batch, 3, 32, 32], (Kind::Float, config.device));
    let y = Tensor::randint(10, [config.batch], (Kind::Int64, config.device));
    for _ in 0..config.warmup {
        let _ = train_step(&net, &mut opt, &x, &y, recipe.label_smoothing);
    }
    sync(config.device);
    let mut rounds: Vec<f64> = (0..config.rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..config.steps {
                let _ = train_step(&net, &mut opt, &x, &y, recipe.label_smoothing);
            }
            sync(config.device);
            (config.steps as f64 * config.batch as f64) / start.elapsed().as_secs_f64()
        })
        .collect();
    let reported = rounds.clone();
    rounds.sort_by(f64::total_cmp);
    BenchResult {
        name: case.name,
        images_per_sec: rounds[rounds.len() / 2],
        rounds: reported,
    }
}
