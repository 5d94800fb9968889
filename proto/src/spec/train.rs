//! `[train]`: the recipe (optimiser, schedule, augmentation); defaults are the paper's.

use serde::{Deserialize, Serialize};

use super::dataset::DatasetName;
use super::error::FieldError;

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
    /// Imagefolder only: torchvision's RandomResizedCrop (scale 0.08-1, aspect ratio 3/4-4/3)
    /// to `dataset.image_size`, then a random horizontal flip; done as the files are decoded.
    RandomResizedCrop,
}

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// SGD with `momentum`, `nesterov` and `weight_decay` (the paper's CIFAR recipe).
    #[default]
    Sgd,
    /// AdamW (torch.optim.AdamW: betas 0.9 and 0.999, eps 1e-8, `weight_decay` decoupled);
    /// `momentum` and `nesterov` do not apply.
    Adamw,
    /// LAMB as timm's `Lamb` (timm's A2 recipe): Adam moments (betas 0.9 and 0.999, eps 1e-6,
    /// bias correction), the gradients first clipped to a global norm of 1, `weight_decay`
    /// added to the update, and each parameter's step scaled by `||p|| / ||update||` (timm
    /// leaves biases and norms out of weight decay, and so out of the scaling; here every
    /// parameter has both). `momentum` and `nesterov` do not apply.
    Lamb,
}

impl Optimizer {
    fn is_sgd(&self) -> bool {
        *self == Optimizer::Sgd
    }
}

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Cross-entropy with `label_smoothing` (the paper's CIFAR recipe).
    #[default]
    Ce,
    /// Binary cross-entropy of each class's logit against the smoothed (and mixed) one-hot
    /// target, averaged over images and classes (timm's A2 recipe).
    Bce,
}

impl Loss {
    fn is_ce(&self) -> bool {
        *self == Loss::Ce
    }
}

/// The arithmetic of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// float32 throughout (the only choice on the CPU).
    #[default]
    Fp32,
    /// CUDA autocast to bfloat16 (float32 weights, optimiser and loss).
    Bf16,
    /// CUDA autocast to float16, with a dynamic loss scale as torch.cuda.amp.GradScaler keeps
    /// it (start 2^16, halved on an overflow, whose step is skipped; doubled after 2000 steps
    /// without one).
    Fp16,
}

impl Precision {
    fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
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
    /// Epochs of linear warm-up at the start (0, none): the learning rate climbs from
    /// `lr / steps` to `lr` over the warm-up's iterations, and the schedule runs over the rest.
    /// Left out of the canonical form at 0, so that earlier trials keep their ids.
    #[serde(skip_serializing_if = "is_zero")]
    pub warmup_epochs: u32,
    /// The optimiser (sgd).
    #[serde(skip_serializing_if = "Optimizer::is_sgd")]
    pub optimizer: Optimizer,
    /// The training loss (ce).
    #[serde(skip_serializing_if = "Loss::is_ce")]
    pub loss: Loss,
    /// Mixup: each batch becomes `lam * x + (1 - lam) * x` in mirror order, `lam ~
    /// Beta(mixup, mixup)`, targets mixed alike (0, off; timm's A2: 0.1).
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub mixup: f64,
    /// CutMix: a box of the mirror-order image pasted in, its area `1 - lam`, `lam ~
    /// Beta(cutmix, cutmix)` (0, off; timm's A2: 1.0). With mixup too, each batch gets one of
    /// the two at even odds.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub cutmix: f64,
    /// Mixed precision on CUDA (fp32): `bf16` or `fp16` autocast. A worker without CUDA
    /// refuses such a trial (retryable: a GPU worker can take it).
    #[serde(skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
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
            warmup_epochs: 0,
            optimizer: Optimizer::Sgd,
            loss: Loss::Ce,
            mixup: 0.0,
            cutmix: 0.0,
            precision: Precision::Fp32,
        }
    }
}

impl TrainSpec {
    /// Resolves `augment = "auto"` for `dataset`, and `nesterov` without momentum (which means
    /// nothing). Idempotent.
    pub fn canonicalize(&mut self, dataset: DatasetName) {
        let t = self;
        if t.augment == Augment::Auto {
            t.augment = match dataset {
                DatasetName::Synthetic | DatasetName::Cifar10 | DatasetName::Cifar100 => Augment::CropFlip,
                DatasetName::FashionMnist | DatasetName::Svhn | DatasetName::Tensor => Augment::None,
                DatasetName::Imagefolder => Augment::RandomResizedCrop,
            };
        }
        if t.optimizer != Optimizer::Sgd {
            // Momentum and Nesterov are SGD's: whatever was written, one AdamW or LAMB trial.
            let sgd = TrainSpec::default();
            t.momentum = sgd.momentum;
            t.nesterov = sgd.nesterov;
        }
        if t.momentum == 0.0 {
            t.nesterov = false;
        }
    }
}

/// Most epochs one trial may train for (the paper's longest runs have 300).
pub const MAX_EPOCHS: u32 = 100_000;

impl TrainSpec {
    /// Checks the recipe. Call on canonical specs.
    pub fn validate(&self) -> Result<(), FieldError> {
        let t = self;
        if t.epochs == 0 {
            return Err(FieldError::new("train.epochs", "must be at least 1"));
        }
        if t.epochs > MAX_EPOCHS {
            return Err(FieldError::new(
                "train.epochs",
                format!("{} is over the limit of {MAX_EPOCHS} epochs per trial", t.epochs),
            ));
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
        if t.warmup_epochs >= t.epochs {
            return Err(FieldError::new(
                "train.warmup_epochs",
                format!(
                    "must be fewer than the {} epochs (0 for none), got {}",
                    t.epochs, t.warmup_epochs
                ),
            ));
        }
        for (field, v) in [("train.mixup", t.mixup), ("train.cutmix", t.cutmix)] {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return Err(FieldError::new(
                    field,
                    format!("must be a Beta alpha in [0, 100] (0 for off; timm's A2: mixup 0.1, cutmix 1.0), got {v}"),
                ));
            }
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return Err(FieldError::new(
                "train.label_smoothing",
                format!("must be in [0, 1), got {}", t.label_smoothing),
            ));
        }
        Ok(())
    }
}
