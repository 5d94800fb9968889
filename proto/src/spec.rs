//! `TrialSpec`: the complete, resolved description of one training run.
//!
//! A sweep expands into trial specs; each spec is [canonicalised](TrialSpec::canonicalize)
//! (defaults resolved, settings that cannot matter reset) and its canonical JSON hashed into the
//! [`TrialId`]. Two specs that train the same thing therefore always get the same id, however
//! they were written.
//!
//! Compatibility rule for later fields: a new field must have a default and be skipped when it
//! holds it (`skip_serializing_if`), so that the ids of existing trials do not change.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hex digits of SHA-256 kept in a trial id (64 bits: collisions are out of reach for any sweep).
pub const TRIAL_ID_HEX_LEN: usize = 16;

/// A spec value that is not allowed, with the field it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `model.kernel_size`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl FieldError {
    /// A new error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The dataset a trial trains and tests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// Deterministic CIFAR-shaped oriented textures (needs no files).
    Synthetic,
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version.
    Cifar100,
    /// Fashion-MNIST, IDX files (upscaled to 32x32).
    FashionMnist,
    /// SVHN cropped digits.
    Svhn,
    /// A plain tensor file (see the worker's data docs).
    Tensor,
}

impl DatasetName {
    /// Every accepted spelling, for error messages.
    pub const ALL: &'static str = "synthetic, cifar10, cifar100, fashion-mnist, svhn, tensor";

    /// Channels, side and classes of the images as the models see them (a tensor file declares
    /// its own).
    pub fn input_shape(self) -> Option<(u32, u32, u32)> {
        match self {
            DatasetName::Synthetic | DatasetName::Cifar10 | DatasetName::Svhn => Some((3, 32, 10)),
            DatasetName::Cifar100 => Some((3, 32, 100)),
            DatasetName::FashionMnist => Some((1, 32, 10)),
            DatasetName::Tensor => None,
        }
    }

    /// Whether the dataset is read from files under `dataset.root`.
    pub fn needs_root(self) -> bool {
        !matches!(self, DatasetName::Synthetic)
    }
}

/// Where a trial's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Which dataset.
    pub name: DatasetName,
    /// Folder holding the dataset's files (required for every dataset but `synthetic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Train on the first N training images only (all when absent; synthetic: how many to make).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_size: Option<u32>,
    /// Test on the first N test images only (all when absent; synthetic: how many to make).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_size: Option<u32>,
    /// Synthetic only: standard deviation of the pixel noise, in units of the texture amplitude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
    /// Synthetic only: seed of the generated images (shared by every trial, unlike `seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
}

/// Synthetic set defaults, applied by [`TrialSpec::canonicalize`].
pub mod synthetic_defaults {
    /// Training images.
    pub const TRAIN_SIZE: u32 = 5000;
    /// Test images.
    pub const TEST_SIZE: u32 = 1000;
    /// Noise standard deviation relative to the texture amplitude.
    pub const NOISE: f64 = 0.6;
    /// Seed of the images.
    pub const DATA_SEED: u64 = 0;
}

/// Model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// ResNet-D-W, the OpenLTH CIFAR ResNet (basic blocks, 3 stages, widths W, 2W, 4W).
    Resnet,
    /// torchvision ResNet-18 (basic blocks 2-2-2-2).
    Resnet18,
    /// torchvision ResNet-34 (basic blocks 3-4-6-3).
    Resnet34,
    /// torchvision ResNet-50 (bottlenecks 3-4-6-3).
    Resnet50,
    /// torchvision Wide-ResNet-50-2 (ResNet-50 with bottlenecks twice as wide).
    #[serde(rename = "wide-resnet50-2")]
    WideResnet50_2,
    /// torchvision MobileNetV2 (width multiplier 1).
    #[serde(rename = "mobilenet-v2")]
    MobilenetV2,
    /// ConvMixer-W/D (Trockman & Kolter): patch embedding, D depthwise-pointwise blocks.
    Convmixer,
}

impl Arch {
    /// Every accepted spelling, for error messages.
    pub const ALL: &'static str = "resnet, resnet18, resnet34, resnet50, wide-resnet50-2, mobilenet-v2, convmixer";

    /// Whether the family has a choice of stem (low-resolution or ImageNet).
    pub fn has_stem_choice(self) -> bool {
        matches!(
            self,
            Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 | Arch::WideResnet50_2 | Arch::MobilenetV2
        )
    }

    /// Whether `depth` and `width` mean something for the family.
    pub fn has_depth_and_width(self) -> bool {
        matches!(self, Arch::Resnet | Arch::Convmixer)
    }

    /// Name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Resnet => "resnet",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::WideResnet50_2 => "wide-resnet50-2",
            Arch::MobilenetV2 => "mobilenet-v2",
            Arch::Convmixer => "convmixer",
        }
    }
}

/// The first layers of the torchvision families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// For 32x32 inputs: the stem conv is k x k with stride 1 and there is no max-pool.
    LowRes,
    /// The original: ResNets 7x7 stride 2 then 3x3 max-pool; MobileNetV2 k x k stride 2.
    Imagenet,
}

/// Whether spatial filters learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMode {
    /// Every parameter learns.
    Learned,
    /// Every conv whose kernel has more than one element keeps its initial weights (stem
    /// included); 1x1 convs, BatchNorm and the head learn.
    Frozen,
}

impl TrainMode {
    /// Name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            TrainMode::Learned => "learned",
            TrainMode::Frozen => "frozen",
        }
    }
}

/// How conv weights are initialised. `fan_in = c_in/groups * k * k`, `fan_out = c_out * k * k`
/// (PyTorch's convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// PyTorch's default: Kaiming uniform with a = sqrt(5), i.e. `U[-b, b]`, `b = 1/sqrt(fan_in)`.
    KaimingUniform,
    /// Kaiming normal (He), fan_in, ReLU gain: `N(0, 2/fan_in)`.
    KaimingNormal,
    /// Kaiming normal, fan_out, ReLU gain: `N(0, 2/fan_out)` (torchvision's ResNet init).
    KaimingNormalFanOut,
    /// Glorot uniform: `U[-a, a]`, `a = sqrt(6/(fan_in + fan_out))`.
    XavierUniform,
    /// Glorot normal: `N(0, 2/(fan_in + fan_out))`.
    XavierNormal,
    /// `torch.nn.init.orthogonal_` (gain 1) on the weight flattened to `[c_out, fan_in]`.
    Orthogonal,
    /// Not i.i.d. over kernel positions: each k x k filter is drawn from `N(0, s^2 D R D)` with
    /// `R_ij = exp(-|p_i - p_j|^2 / (2 l^2))` (smooth filters), `D = diag(exp(-|p_i - c|^2 /
    /// (2 t^2)))` (variance decaying with the distance from the centre c), `l = init_length`,
    /// `t = init_decay`, and `s^2` making the mean variance `2/fan_in` as for kaiming-normal.
    Correlated,
}

impl InitScheme {
    /// Name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            InitScheme::KaimingUniform => "kaiming-uniform",
            InitScheme::KaimingNormal => "kaiming-normal",
            InitScheme::KaimingNormalFanOut => "kaiming-normal-fan-out",
            InitScheme::XavierUniform => "xavier-uniform",
            InitScheme::XavierNormal => "xavier-normal",
            InitScheme::Orthogonal => "orthogonal",
            InitScheme::Correlated => "correlated",
        }
    }
}

/// Default correlation length (pixels) of the correlated init.
pub const DEFAULT_INIT_LENGTH: f64 = 1.0;

/// Default centre-decay scale (pixels) of the correlated init: half the kernel size.
pub fn default_init_decay(kernel_size: u32) -> f64 {
    f64::from(kernel_size) / 2.0
}

/// The operation between the two convs of an LC-block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterOp {
    /// Nothing: the block is a linear combination of the spatial filters.
    #[default]
    None,
    /// ReLU.
    Relu,
    /// BatchNorm.
    Bn,
    /// BatchNorm then ReLU.
    BnRelu,
}

impl InterOp {
    fn is_none(&self) -> bool {
        *self == InterOp::None
    }
}

/// The architecture and how its spatial filters are treated.
///
/// Kernel size: every conv that is 3x3 in the reference architecture is k x k (with padding
/// k/2), the stems of ResNet-D-W and of the low-resolution torchvision models included;
/// ConvMixer's depthwise convs are k x k by definition. Convs of other fixed sizes keep them:
/// 1x1 convs, the 7x7 ImageNet ResNet stem and ConvMixer's patch embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model family.
    pub arch: Arch,
    /// Depth: ResNet-D-W's D (6n+2, default 20); ConvMixer's number of blocks (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Width: ResNet-D-W's W (default 16); ConvMixer's hidden channels (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Stem of the torchvision families (default low-res).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem: Option<Stem>,
    /// ConvMixer's patch size (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<u32>,
    /// Kernel size k of the spatial convs (odd).
    pub kernel_size: u32,
    /// LC-block expansion E; absent: plain convs (the paper's baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expansion: Option<u32>,
    /// Operation inside LC-blocks (only meaningful with `expansion`).
    #[serde(default, skip_serializing_if = "InterOp::is_none")]
    pub inter_op: InterOp,
    /// Learned or frozen spatial filters.
    pub train_mode: TrainMode,
    /// Initialisation of conv weights.
    pub init: InitScheme,
    /// Correlated init only: correlation length in pixels (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_length: Option<f64>,
    /// Correlated init only: scale in pixels of the variance's decay from the centre (default k/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_decay: Option<f64>,
}

impl ModelSpec {
    /// Short human name, e.g. `resnet-lc-20-16x8`, `resnet18-imagenet`, `convmixer-256/8-p2`.
    pub fn name(&self) -> String {
        let lc = if self.expansion.is_some() { "-lc" } else { "" };
        let x = self.expansion.map(|e| format!("x{e}")).unwrap_or_default();
        match self.arch {
            Arch::Resnet => format!(
                "resnet{lc}-{}-{}{x}",
                self.depth.unwrap_or(20),
                self.width.unwrap_or(16)
            ),
            Arch::Convmixer => format!(
                "convmixer{lc}-{}/{}-p{}{x}",
                self.width.unwrap_or(256),
                self.depth.unwrap_or(8),
                self.patch_size.unwrap_or(2)
            ),
            other => {
                let stem = match self.stem.unwrap_or(Stem::LowRes) {
                    Stem::LowRes => "",
                    Stem::Imagenet => "-imagenet",
                };
                format!("{}{lc}{stem}{x}", other.as_str())
            }
        }
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// Cosine annealing from `lr` to 0, stepped every iteration (the paper's).
    Cosine,
    /// `lr` throughout.
    Constant,
}

/// Data augmentation of training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// The paper's choice for the dataset: crop-flip for CIFAR and synthetic, none otherwise.
    Auto,
    /// None.
    None,
    /// Pad 4, random 32x32 crop, random horizontal flip.
    CropFlip,
}

/// Training hyper-parameters; defaults are the paper's recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    /// Epochs (75).
    pub epochs: u32,
    /// Batch size (256).
    pub batch_size: u32,
    /// Peak learning rate (1e-2).
    pub lr: f64,
    /// SGD momentum (0.9).
    pub momentum: f64,
    /// Nesterov momentum (true).
    pub nesterov: bool,
    /// Weight decay (1e-2).
    pub weight_decay: f64,
    /// Label smoothing of the cross-entropy (0.1).
    pub label_smoothing: f64,
    /// Learning-rate schedule (cosine, per iteration).
    pub schedule: LrSchedule,
    /// Augmentation (auto).
    pub augment: Augment,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            epochs: 75,
            batch_size: 256,
            lr: 1e-2,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-2,
            label_smoothing: 0.1,
            schedule: LrSchedule::Cosine,
            augment: Augment::Auto,
        }
    }
}

/// An L-inf radius on `[0, 1]` inputs, written as a number or as `"n/255"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Eps(pub f64);

impl<'de> Deserialize<'de> for Eps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let fraction = |s: &str| -> Option<f64> {
            let (a, b) = s.split_once('/')?;
            let (a, b): (f64, f64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (b != 0.0).then_some(a / b)
        };
        match Raw::deserialize(d)? {
            Raw::Number(x) => Ok(Eps(x)),
            Raw::Text(s) => fraction(&s)
                .or_else(|| s.trim().parse().ok())
                .map(Eps)
                .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a number or a fraction like \"1/255\""))),
        }
    }
}

/// A common corruption of CIFAR-10-C (Hendrycks & Dietterich), computed on the fly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Corruption {
    /// Additive Gaussian noise.
    GaussianNoise,
    /// Poisson (shot) noise.
    ShotNoise,
    /// Salt-and-pepper noise.
    ImpulseNoise,
    /// Gaussian blur.
    GaussianBlur,
    /// Contrast reduction.
    Contrast,
    /// Brightness increase (in HSV value).
    Brightness,
    /// Box down- and up-sampling.
    Pixelate,
}

impl Corruption {
    /// Every corruption, in CIFAR-10-C's order of groups (noise, blur, digital, weather).
    pub const ALL: [Corruption; 7] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::GaussianBlur,
        Corruption::Contrast,
        Corruption::Pixelate,
        Corruption::Brightness,
    ];

    /// Name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian-noise",
            Corruption::ShotNoise => "shot-noise",
            Corruption::ImpulseNoise => "impulse-noise",
            Corruption::GaussianBlur => "gaussian-blur",
            Corruption::Contrast => "contrast",
            Corruption::Brightness => "brightness",
            Corruption::Pixelate => "pixelate",
        }
    }
}

/// L-inf PGD (Madry et al.).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgdSpec {
    /// Radii.
    pub eps: Vec<Eps>,
    /// Iterations (10).
    #[serde(default = "default_pgd_steps")]
    pub steps: u32,
    /// Step size; default `2.5 * eps / steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_size: Option<f64>,
    /// Start from a uniformly random point in the eps-ball (true).
    #[serde(default = "default_true")]
    pub random_start: bool,
}

fn default_pgd_steps() -> u32 {
    10
}

fn default_true() -> bool {
    true
}

/// What a trial measures after training, besides clean accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// FGSM radii (default `[1/255]`, as the paper); empty for none.
    pub fgsm: Vec<Eps>,
    /// PGD, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgd: Option<PgdSpec>,
    /// Corruptions (default: all seven); empty for none.
    pub corruptions: Vec<Corruption>,
    /// Corruption severities (default 1 to 5).
    pub severities: Vec<u32>,
    /// Evaluate robustness on the first N test images (default: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<u32>,
    /// Filter statistics at initialisation and at the end (true).
    pub filters: bool,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec {
            fgsm: vec![Eps(1.0 / 255.0)],
            pgd: None,
            corruptions: Corruption::ALL.to_vec(),
            severities: vec![1, 2, 3, 4, 5],
            images: None,
            filters: true,
        }
    }
}

impl EvalSpec {
    fn is_default(&self) -> bool {
        *self == EvalSpec::default()
    }

    fn validate(&self) -> Result<(), FieldError> {
        let mut radii: Vec<(&str, f64)> = self.fgsm.iter().map(|e| ("eval.fgsm", e.0)).collect();
        if let Some(p) = &self.pgd {
            radii.extend(p.eps.iter().map(|e| ("eval.pgd.eps", e.0)));
            if p.eps.is_empty() {
                return Err(FieldError::new(
                    "eval.pgd.eps",
                    "give at least one radius, e.g. [\"8/255\"]",
                ));
            }
            if p.steps == 0 {
                return Err(FieldError::new("eval.pgd.steps", "must be at least 1"));
            }
            if let Some(a) = p.step_size
                && !(a.is_finite() && a > 0.0)
            {
                return Err(FieldError::new(
                    "eval.pgd.step_size",
                    format!("must be a number > 0, got {a}"),
                ));
            }
        }
        for (field, eps) in radii {
            if !(0.0..=1.0).contains(&eps) {
                return Err(FieldError::new(
                    field,
                    format!("radii are on [0, 1] inputs: 0 to 1, got {eps}"),
                ));
            }
        }
        for (i, s) in self.severities.iter().enumerate() {
            if !(1..=5).contains(s) || self.severities[..i].contains(s) {
                return Err(FieldError::new("eval.severities", "distinct severities from 1 to 5"));
            }
        }
        for (i, c) in self.corruptions.iter().enumerate() {
            if self.corruptions[..i].contains(c) {
                return Err(FieldError::new(
                    "eval.corruptions",
                    format!("{} is listed twice", c.as_str()),
                ));
            }
        }
        if self.images == Some(0) {
            return Err(FieldError::new(
                "eval.images",
                "must be at least 1 (leave it out for the whole test set)",
            ));
        }
        Ok(())
    }
}

/// One training run, completely described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialSpec {
    /// Data.
    pub dataset: DatasetSpec,
    /// Model.
    pub model: ModelSpec,
    /// Recipe.
    #[serde(default)]
    pub train: TrainSpec,
    /// Seed of initialisation, data order and augmentation.
    pub seed: u64,
    /// Measurements after training (the defaults are left out of the canonical form).
    #[serde(default, skip_serializing_if = "EvalSpec::is_default")]
    pub eval: EvalSpec,
}

/// Largest kernel size a spec may ask for.
pub const MAX_KERNEL_SIZE: u32 = 15;

impl TrialSpec {
    /// Resolves defaults (and `nesterov` without momentum, which means nothing), so that equal runs
    /// have equal canonical forms. Idempotent.
    pub fn canonicalize(&mut self) {
        let d = &mut self.dataset;
        if d.name == DatasetName::Synthetic {
            use synthetic_defaults as sd;
            d.train_size.get_or_insert(sd::TRAIN_SIZE);
            d.test_size.get_or_insert(sd::TEST_SIZE);
            d.noise.get_or_insert(sd::NOISE);
            d.data_seed.get_or_insert(sd::DATA_SEED);
        }
        let m = &mut self.model;
        match m.arch {
            Arch::Resnet => {
                m.depth.get_or_insert(20);
                m.width.get_or_insert(16);
            }
            Arch::Convmixer => {
                m.depth.get_or_insert(8);
                m.width.get_or_insert(256);
                m.patch_size.get_or_insert(2);
            }
            _ => {
                m.stem.get_or_insert(Stem::LowRes);
            }
        }
        if m.init == InitScheme::Correlated {
            m.init_length.get_or_insert(DEFAULT_INIT_LENGTH);
            m.init_decay.get_or_insert(default_init_decay(m.kernel_size));
        }
        let t = &mut self.train;
        if t.augment == Augment::Auto {
            t.augment = match self.dataset.name {
                DatasetName::Synthetic | DatasetName::Cifar10 | DatasetName::Cifar100 => Augment::CropFlip,
                DatasetName::FashionMnist | DatasetName::Svhn | DatasetName::Tensor => Augment::None,
            };
        }
        if t.momentum == 0.0 {
            t.nesterov = false;
        }
    }

    /// Checks every value against what the trainer supports. Call on canonical specs.
    pub fn validate(&self) -> Result<(), FieldError> {
        let d = &self.dataset;
        if d.name.needs_root() && d.root.as_deref().is_none_or(str::is_empty) {
            return Err(FieldError::new(
                "dataset.root",
                format!(
                    "required for dataset {:?}: the folder holding its files (nothing is downloaded)",
                    d.name
                ),
            ));
        }
        if d.name != DatasetName::Synthetic {
            if d.noise.is_some() {
                return Err(FieldError::new("dataset.noise", "only the synthetic dataset has noise"));
            }
            if d.data_seed.is_some() {
                return Err(FieldError::new(
                    "dataset.data_seed",
                    "only the synthetic dataset is generated from a seed",
                ));
            }
        }
        for (field, v) in [("dataset.train_size", d.train_size), ("dataset.test_size", d.test_size)] {
            if v == Some(0) {
                return Err(FieldError::new(field, "must be at least 1"));
            }
        }
        if let Some(noise) = d.noise
            && !(noise.is_finite() && noise >= 0.0)
        {
            return Err(FieldError::new(
                "dataset.noise",
                format!("must be a finite number >= 0, got {noise}"),
            ));
        }

        let m = &self.model;
        let k = m.kernel_size;
        if k % 2 == 0 || !(1..=MAX_KERNEL_SIZE).contains(&k) {
            return Err(FieldError::new(
                "model.kernel_size",
                format!("must be odd and in 1..={MAX_KERNEL_SIZE} (1, 3, 5, ...), got {k}"),
            ));
        }
        if m.arch == Arch::Resnet {
            let depth = m.depth.unwrap_or(20);
            if depth < 8 || (depth - 2) % 6 != 0 {
                return Err(FieldError::new(
                    "model.depth",
                    format!("ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 26, ...), got {depth}"),
                ));
            }
        }
        if m.arch.has_depth_and_width() {
            for (field, v) in [("model.depth", m.depth), ("model.width", m.width)] {
                if v == Some(0) {
                    return Err(FieldError::new(field, "must be at least 1"));
                }
            }
        } else {
            for (field, v) in [("model.depth", m.depth), ("model.width", m.width)] {
                if v.is_some() {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "{} has a fixed depth and width; only resnet and convmixer take one",
                            m.arch.as_str()
                        ),
                    ));
                }
            }
        }
        if m.stem.is_some() && !m.arch.has_stem_choice() {
            return Err(FieldError::new(
                "model.stem",
                format!(
                    "{} has no stem choice; resnet18, resnet34, resnet50, wide-resnet50-2 and mobilenet-v2 do",
                    m.arch.as_str()
                ),
            ));
        }
        match (m.arch, m.patch_size) {
            (Arch::Convmixer, Some(0)) => return Err(FieldError::new("model.patch_size", "must be at least 1")),
            (Arch::Convmixer, _) | (_, None) => {}
            (other, Some(_)) => {
                return Err(FieldError::new(
                    "model.patch_size",
                    format!("only convmixer has a patch size, not {}", other.as_str()),
                ));
            }
        }
        if m.init != InitScheme::Correlated {
            for (field, v) in [("model.init_length", m.init_length), ("model.init_decay", m.init_decay)] {
                if v.is_some() {
                    return Err(FieldError::new(field, "only the correlated init takes it"));
                }
            }
        }
        for (field, v) in [("model.init_length", m.init_length), ("model.init_decay", m.init_decay)] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(FieldError::new(field, format!("must be a finite number > 0, got {v}")));
            }
        }
        if m.expansion == Some(0) {
            return Err(FieldError::new(
                "model.expansion",
                "must be at least 1 (leave it out for plain convs, the baseline)",
            ));
        }
        if m.expansion.is_none() && m.inter_op != InterOp::None {
            return Err(FieldError::new(
                "model.inter_op",
                "only LC-blocks have an in-between op: set model.expansion too",
            ));
        }

        self.eval.validate()?;
        let t = &self.train;
        if t.epochs == 0 {
            return Err(FieldError::new("train.epochs", "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(FieldError::new("train.batch_size", "must be at least 1"));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(FieldError::new(
                "train.lr",
                format!("must be a finite number > 0, got {}", t.lr),
            ));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(FieldError::new(
                "train.momentum",
                format!("must be in [0, 1), got {}", t.momentum),
            ));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(FieldError::new(
                "train.weight_decay",
                format!("must be a finite number >= 0, got {}", t.weight_decay),
            ));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return Err(FieldError::new(
                "train.label_smoothing",
                format!("must be in [0, 1), got {}", t.label_smoothing),
            ));
        }
        Ok(())
    }

    /// The canonical serialisation: JSON with object keys sorted at every level and no
    /// whitespace. Independent of serde_json's map-ordering features.
    pub fn canonical_json(&self) -> String {
        let value = serde_json::to_value(self).expect("TrialSpec serialises to JSON");
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// The id of this spec: the SHA-256 of its canonical JSON, hex, first 16 digits.
    pub fn id(&self) -> TrialId {
        TrialId::of_canonical_json(&self.canonical_json())
    }

    /// Parses canonical JSON received over the wire, naming the field that does not fit.
    pub fn from_json(json: &str) -> Result<Self, FieldError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            FieldError::new(
                if path == "." { "spec".to_owned() } else { path },
                e.inner().to_string(),
            )
        })
    }

    /// Short human label, e.g. `resnet-20-16 k=3 frozen kaiming-uniform seed=0`.
    pub fn label(&self) -> String {
        let m = &self.model;
        format!(
            "{} k={} {} {} seed={}",
            m.name(),
            m.kernel_size,
            m.train_mode.as_str(),
            m.init.as_str(),
            self.seed
        )
    }
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A trial's id: the hex prefix of the SHA-256 of its canonical spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrialId(String);

impl TrialId {
    /// The id of a canonical JSON text.
    pub fn of_canonical_json(json: &str) -> Self {
        let digest = Sha256::digest(json.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex.truncate(TRIAL_ID_HEX_LEN);
        TrialId(hex)
    }

    /// Parses an id received from outside, checking its shape.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if s.len() == TRIAL_ID_HEX_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(TrialId(s.to_owned()))
        } else {
            Err(FieldError::new(
                "trial_id",
                format!("must be {TRIAL_ID_HEX_LEN} lowercase hex digits, got {s:?}"),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sweep's id: its name from the spec (`[a-z0-9_-]`, 1 to 64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SweepId(String);

impl SweepId {
    /// Parses a sweep name, which becomes a folder name under `runs/`.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !s.starts_with('-');
        if ok {
            Ok(SweepId(s.to_owned()))
        } else {
            Err(FieldError::new(
                "name",
                format!(
                    "a sweep name is 1 to 64 characters of a-z, 0-9, '-' and '_' (not starting with '-'), got {s:?}"
                ),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SweepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    type Change = Box<dyn Fn(&mut TrialSpec)>;

    pub(crate) fn demo_spec() -> TrialSpec {
        TrialSpec {
            dataset: DatasetSpec {
                name: DatasetName::Synthetic,
                root: None,
                train_size: Some(100),
                test_size: Some(50),
                noise: None,
                data_seed: None,
            },
            model: ModelSpec {
                arch: Arch::Resnet,
                depth: Some(8),
                width: Some(8),
                kernel_size: 3,
                expansion: None,
                inter_op: InterOp::None,
                train_mode: TrainMode::Frozen,
                init: InitScheme::KaimingUniform,
                stem: None,
                patch_size: None,
                init_length: None,
                init_decay: None,
            },
            train: TrainSpec::default(),
            seed: 7,
            eval: EvalSpec::default(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_is_compact() {
        let mut spec = demo_spec();
        spec.canonicalize();
        let json = spec.canonical_json();
        assert!(
            json.starts_with(r#"{"dataset":{"data_seed":0,"name":"synthetic","noise":0.6"#),
            "{json}"
        );
        assert!(!json.contains(' '));
        assert!(json.contains(r#""augment":"crop-flip""#));
    }

    #[test]
    fn id_is_stable_and_pinned() {
        let mut spec = demo_spec();
        spec.canonicalize();
        // Pinned: if this changes, every stored trial id changes. Only change it on purpose.
        assert_eq!(spec.id().as_str(), "d25e735756dcbc3e");
        assert_eq!(spec.id(), spec.clone().id());
    }

    #[test]
    fn canonicalisation_makes_defaults_explicit_and_is_idempotent() {
        let mut implicit = demo_spec();
        implicit.model.depth = None;
        implicit.model.width = None;
        let mut explicit = demo_spec();
        explicit.model.depth = Some(20);
        explicit.model.width = Some(16);
        implicit.canonicalize();
        explicit.canonicalize();
        assert_eq!(implicit.id(), explicit.id());
        let once = implicit.clone();
        implicit.canonicalize();
        assert_eq!(once, implicit);
    }

    #[test]
    fn every_setting_changes_the_id() {
        let base = {
            let mut s = demo_spec();
            s.canonicalize();
            s
        };
        let variants: Vec<Change> = vec![
            Box::new(|s| s.seed += 1),
            Box::new(|s| s.model.kernel_size = 5),
            Box::new(|s| s.model.train_mode = TrainMode::Learned),
            Box::new(|s| s.model.init = InitScheme::KaimingNormal),
            Box::new(|s| s.model.expansion = Some(2)),
            Box::new(|s| s.train.lr = 0.02),
            Box::new(|s| s.dataset.train_size = Some(101)),
        ];
        for change in variants {
            let mut s = base.clone();
            change(&mut s);
            s.canonicalize();
            assert_ne!(s.id(), base.id(), "{}", s.canonical_json());
        }
    }

    #[test]
    fn json_round_trip_keeps_the_id() {
        let mut spec = demo_spec();
        spec.canonicalize();
        let back = TrialSpec::from_json(&spec.canonical_json()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.id(), spec.id());
    }

    #[test]
    fn from_json_names_the_bad_field() {
        let mut spec = demo_spec();
        spec.canonicalize();
        let json = spec
            .canonical_json()
            .replace(r#""kernel_size":3"#, r#""kernel_size":"big""#);
        let err = TrialSpec::from_json(&json).unwrap_err();
        assert_eq!(err.field, "model.kernel_size");
    }

    #[test]
    fn validate_rejects_with_field_and_allowed_values() {
        let cases: Vec<(Change, &str, &str)> = vec![
            (Box::new(|s| s.model.kernel_size = 4), "model.kernel_size", "odd"),
            (Box::new(|s| s.model.kernel_size = 17), "model.kernel_size", "1..=15"),
            (Box::new(|s| s.model.depth = Some(21)), "model.depth", "6n+2"),
            (Box::new(|s| s.model.width = Some(0)), "model.width", "at least 1"),
            (
                Box::new(|s| s.model.expansion = Some(0)),
                "model.expansion",
                "at least 1",
            ),
            (Box::new(|s| s.train.epochs = 0), "train.epochs", "at least 1"),
            (Box::new(|s| s.train.lr = -1.0), "train.lr", "> 0"),
            (Box::new(|s| s.train.momentum = 1.0), "train.momentum", "[0, 1)"),
            (
                Box::new(|s| s.train.label_smoothing = 1.5),
                "train.label_smoothing",
                "[0, 1)",
            ),
            (
                Box::new(|s| s.dataset.name = DatasetName::Cifar10),
                "dataset.root",
                "required",
            ),
            (
                Box::new(|s| s.dataset.train_size = Some(0)),
                "dataset.train_size",
                "at least 1",
            ),
        ];
        for (change, field, needle) in cases {
            let mut s = demo_spec();
            s.canonicalize();
            change(&mut s);
            let err = s.validate().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.contains(needle), "{err}");
        }
        let mut ok = demo_spec();
        ok.canonicalize();
        ok.validate().unwrap();
    }

    #[test]
    fn inter_op_needs_an_lc_block() {
        let mut s = demo_spec();
        s.model.inter_op = InterOp::Relu;
        assert_eq!(s.validate().unwrap_err().field, "model.inter_op");
        s.model.expansion = Some(4);
        s.validate().unwrap();
    }

    #[test]
    fn architecture_defaults_are_resolved() {
        let mut s = demo_spec();
        s.model.arch = Arch::Resnet50;
        s.model.depth = None;
        s.model.width = None;
        s.model.init = InitScheme::Correlated;
        s.canonicalize();
        s.validate().unwrap();
        assert_eq!(s.model.stem, Some(Stem::LowRes));
        assert_eq!((s.model.init_length, s.model.init_decay), (Some(1.0), Some(1.5)));
        assert_eq!(s.model.name(), "resnet50");
        let mut c = demo_spec();
        c.model.arch = Arch::Convmixer;
        c.model.depth = None;
        c.model.width = None;
        c.model.expansion = Some(4);
        c.canonicalize();
        c.validate().unwrap();
        assert_eq!(c.model.name(), "convmixer-lc-256/8-p2x4");
    }

    #[test]
    fn the_default_recipe_is_the_papers() {
        let t = TrainSpec::default();
        assert_eq!((t.epochs, t.batch_size), (75, 256));
        assert_eq!((t.lr, t.momentum, t.nesterov), (1e-2, 0.9, true));
        assert_eq!((t.weight_decay, t.label_smoothing), (1e-2, 0.1));
        assert_eq!(t.schedule, LrSchedule::Cosine);
        // Augmentation: crop and flip for CIFAR, none for SVHN and Fashion-MNIST.
        for (name, want) in [
            (DatasetName::Cifar10, Augment::CropFlip),
            (DatasetName::Cifar100, Augment::CropFlip),
            (DatasetName::Svhn, Augment::None),
            (DatasetName::FashionMnist, Augment::None),
        ] {
            let mut s = demo_spec();
            s.dataset.name = name;
            s.dataset.root = Some("/data".into());
            s.dataset.noise = None;
            s.dataset.data_seed = None;
            s.canonicalize();
            s.validate().unwrap();
            assert_eq!(s.train.augment, want, "{name:?}");
        }
    }

    #[test]
    fn eval_settings_parse_fractions_and_keep_old_ids() {
        let mut s = demo_spec();
        s.canonicalize();
        let before = s.id();
        let json = s.canonical_json();
        assert!(
            !json.contains("eval"),
            "default evaluations stay out of the canonical form"
        );
        let with = json.replace(
            r#""seed":7"#,
            r#""seed":7,"eval":{"fgsm":["1/255","8/255",0.1],"pgd":{"eps":["8/255"]}}"#,
        );
        let parsed = TrialSpec::from_json(&with).unwrap();
        assert_eq!(parsed.eval.fgsm, vec![Eps(1.0 / 255.0), Eps(8.0 / 255.0), Eps(0.1)]);
        let pgd = parsed.eval.pgd.clone().unwrap();
        assert_eq!((pgd.steps, pgd.random_start, pgd.step_size), (10, true, None));
        assert_eq!(parsed.eval.severities, vec![1, 2, 3, 4, 5]);
        assert_ne!(parsed.id(), before);
        parsed.validate().unwrap();
        let bad = json.replace(r#""seed":7"#, r#""seed":7,"eval":{"fgsm":["one/255"]}"#);
        assert!(TrialSpec::from_json(&bad).unwrap_err().to_string().contains("fraction"));
        let mut s2 = parsed.clone();
        s2.eval.severities = vec![1, 6];
        assert_eq!(s2.validate().unwrap_err().field, "eval.severities");
        s2.eval.severities = vec![1];
        s2.eval.fgsm = vec![Eps(2.0)];
        assert_eq!(s2.validate().unwrap_err().field, "eval.fgsm");
    }

    #[test]
    fn ids_parse_and_reject() {
        assert!(TrialId::parse("0123456789abcdef").is_ok());
        assert!(TrialId::parse("0123456789ABCDEF").is_err());
        assert!(TrialId::parse("abc").is_err());
        assert!(SweepId::parse("demo_1-a").is_ok());
        for bad in ["", "Demo", "a b", "-x", "../x"] {
            assert!(SweepId::parse(bad).is_err(), "{bad}");
        }
    }
}
