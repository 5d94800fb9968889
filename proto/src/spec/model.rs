//! `[model]`: architecture, kernel size, LC-blocks, train mode and init scheme.

use serde::{Deserialize, Serialize};

use super::error::FieldError;

/// Largest kernel size a spec may ask for.
pub const MAX_KERNEL_SIZE: u32 = 15;

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
    /// timm ResNet-18d: ResNet-18 with a deep stem and average-pool shortcuts (Table 2).
    Resnet18d,
    /// timm ResNet-50d: ResNet-50 with a deep stem and average-pool shortcuts.
    Resnet50d,
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
    pub const ALL: &'static str =
        "resnet, resnet18, resnet34, resnet50, resnet18d, resnet50d, wide-resnet50-2, mobilenet-v2, convmixer";

    /// Whether the family has a choice of stem (low-resolution or ImageNet).
    pub fn has_stem_choice(self) -> bool {
        matches!(
            self,
            Arch::Resnet18
                | Arch::Resnet34
                | Arch::Resnet50
                | Arch::Resnet18d
                | Arch::Resnet50d
                | Arch::WideResnet50_2
                | Arch::MobilenetV2
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
            Arch::Resnet18d => "resnet18d",
            Arch::Resnet50d => "resnet50d",
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

impl ModelSpec {
    /// Resolves the architecture's defaults and the correlated init's. Idempotent.
    pub fn canonicalize(&mut self) {
        let m = self;
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
    }
}

impl ModelSpec {
    /// Checks the model fields. Call on canonical specs.
    pub fn validate(&self) -> Result<(), FieldError> {
        let m = self;
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
                    "{} has no stem choice; resnet18, resnet34, resnet50, resnet18d, resnet50d, wide-resnet50-2 and mobilenet-v2 do",
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
        Ok(())
    }
}
