//! Training-throughput benchmark: images per second of the training step (forward, backward,
//! SGD step) that trials use, for the paper's reference configurations. Paired with
//! `bench/pytorch_reference.py`, which times the same models in PyTorch eager mode, so that
//! both are measured on the same machine with the same thread count.

use std::time::Instant;

use convsweep_proto::spec::{Arch, InitScheme, InterOp, ModelSpec, TrainMode, TrainSpec};
use tch::{Device, Kind, Tensor};

use crate::model::{Compute, InputShape, Net};
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
    /// Device and conv algorithms.
    pub compute: Compute,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A case ready to be timed: model, optimiser and a fixed random batch of `[0, 1]` images.
pub struct BenchRun {
    net: Net,
    opt: crate::trainer::sgd::Sgd,
    x: Tensor,
    y: Tensor,
    label_smoothing: f64,
    batch: i64,
    device: Device,
}

impl BenchRun {
    /// Builds `model` with the paper's optimiser and loss and runs `warmup` untimed steps.
    pub fn new(model: &ModelSpec, batch: i64, warmup: u32, compute: impl Into<Compute>) -> BenchRun {
        let input = InputShape {
            channels: 3,
            size: 32,
            classes: 10,
        };
        BenchRun::with_recipe(model, &TrainSpec::default(), input, batch, warmup, compute)
    }

    /// [`BenchRun::new`] for `model` trained by `recipe` (its optimiser, precision and label
    /// smoothing) on images of `input`: the step of a trial, for `convsweep bench trial`.
    pub fn with_recipe(
        model: &ModelSpec,
        recipe: &TrainSpec,
        input: InputShape,
        batch: i64,
        warmup: u32,
        compute: impl Into<Compute>,
    ) -> BenchRun {
        let compute = compute.into();
        let device = compute.device;
        let c = input.channels;
        let (mean, std) = (vec![0.5; c as usize], vec![0.25; c as usize]);
        let net = Net::new(model, input, 0, compute, &mean, &std);
        let opt = optimizer(&net, recipe);
        let side = input.size;
        let mut run = BenchRun {
            x: Tensor::rand([batch, c, side, side], (Kind::Float, device)),
            y: Tensor::randint(input.classes, [batch], (Kind::Int64, device)),
            net,
            opt,
            label_smoothing: recipe.label_smoothing,
            batch,
            device,
        };
        for _ in 0..warmup {
            run.step();
        }
        sync(device);
        run
    }

    fn step(&mut self) {
        let _ = train_step(&self.net, &mut self.opt, &self.x, &self.y, self.label_smoothing);
    }

    /// Times `steps` training steps; returns images per second.
    pub fn round(&mut self, steps: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..steps {
            self.step();
        }
        sync(self.device);
        (f64::from(steps) * self.batch as f64) / start.elapsed().as_secs_f64()
    }
}

/// The median of `values` (upper median for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `num[i] / den[i]` for each round the two share: ratios of rounds run back to back.
pub fn paired_ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    num.iter().zip(den).map(|(a, b)| a / b).collect()
}
