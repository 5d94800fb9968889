//! Building blocks shared by the model families, created through a [`Builder`] that applies the
//! spec's init scheme and freezing rule and counts parameters and multiply-accumulates: convs
//! ([`super::conv`]), BatchNorm, linear heads, and the spec's spatial convs (plain or LC-blocks,
//! [`super::lc`]).

use convsweep_proto::spec::{InterOp, ModelSpec, TrainMode};
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::conv::{Conv2d, ConvRecord};
use super::init::{self, Correlation};
use super::lc::{Between, Spatial, SpatialLayer};

/// Where and how a model computes: the device, and whether large-kernel convs may go through
/// the FFT on the CPU. Configuration the CLI passes down; a bare [`Device`] converts with the
/// FFT allowed (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    /// The device every tensor lives on.
    pub device: Device,
    /// Stride-1 convs with `k >= 9` on the CPU go through the FFT where it
    /// [applies](super::fftconv::applies).
    pub fft_conv: bool,
}

impl From<Device> for Compute {
    fn from(device: Device) -> Compute {
        Compute { device, fft_conv: true }
    }
}

/// Parameters and compute of a model, counted while it is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Every parameter (BatchNorm running statistics are buffers, not parameters).
    pub params_total: u64,
    /// Parameters the optimiser updates.
    pub params_learnable: u64,
    /// Multiply-accumulates of convs and linear layers for one image, forward pass.
    pub macs_per_image: u64,
}

/// Creates layers under a var store, applying the spec's init scheme and freezing rule.
pub struct Builder<'a> {
    spec: &'a ModelSpec,
    seed: u64,
    device: Device,
    fft_conv: bool,
    /// Only count: weights are not drawn (empty placeholders), so any size can be costed.
    count_only: bool,
    /// What has been built so far.
    pub cost: Cost,
    /// Every spatial layer built so far.
    pub spatial_layers: Vec<SpatialLayer>,
    /// Where every conv built so far records its algorithm.
    pub conv_records: Vec<ConvRecord>,
    /// Random draws the model makes in training (dropout), shared with the [`super::Net`].
    pub draws: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Output side of a `k x k` conv with the given padding and stride.
pub fn conv_out(size: i64, k: i64, stride: i64, padding: i64) -> i64 {
    (size + 2 * padding - k) / stride + 1
}

/// The shape of one conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub c_in: i64,
    /// Output channels.
    pub c_out: i64,
    /// Kernel side.
    pub k: i64,
    /// Stride.
    pub stride: i64,
    /// Groups (`c_in` for a depthwise conv).
    pub groups: i64,
    /// Whether it has a bias.
    pub bias: bool,
    /// Zero padding on each side (default `k/2`, which keeps the side at stride 1).
    pub padding: i64,
}

impl ConvShape {
    /// A plain conv without bias.
    pub fn new(c_in: i64, c_out: i64, k: i64, stride: i64) -> Self {
        ConvShape {
            c_in,
            c_out,
            k,
            stride,
            groups: 1,
            bias: false,
            padding: k / 2,
        }
    }

    /// The same without padding (patch embeddings).
    pub fn unpadded(self) -> Self {
        ConvShape { padding: 0, ..self }
    }

    /// The same with `groups`.
    pub fn groups(self, groups: i64) -> Self {
        ConvShape { groups, ..self }
    }

    /// The same with a bias.
    pub fn with_bias(self) -> Self {
        ConvShape { bias: true, ..self }
    }
}

impl<'a> Builder<'a> {
    /// A builder for `spec`'s layers on `compute`, seeded by the trial seed.
    pub fn new(spec: &'a ModelSpec, seed: u64, compute: impl Into<Compute>) -> Self {
        let compute = compute.into();
        Builder {
            spec,
            seed,
            device: compute.device,
            fft_conv: compute.fft_conv,
            count_only: false,
            cost: Cost::default(),
            spatial_layers: Vec::new(),
            conv_records: Vec::new(),
            draws: Default::default(),
        }
    }

    /// A builder that only counts (weights are empty placeholders).
    pub fn counting(spec: &'a ModelSpec) -> Self {
        Builder {
            count_only: true,
            ..Builder::new(spec, 0, Device::Cpu)
        }
    }

    /// Kernel size of spatial convs.
    pub fn k(&self) -> i64 {
        i64::from(self.spec.kernel_size)
    }

    fn count(&mut self, numel: i64, learnable: bool) {
        self.cost.params_total += numel as u64;
        if learnable {
            self.cost.params_learnable += numel as u64;
        }
    }

    fn correlation(&self) -> Option<Correlation> {
        match (self.spec.init_length, self.spec.init_decay) {
            (Some(length), Some(decay)) => Some(Correlation { length, decay }),
            _ => None,
        }
    }

    /// A conv of shape `s` on an input of side `size`. Returns the conv and
    /// its output side.
    pub fn conv_shaped(&mut self, p: &nn::Path, s: ConvShape, size: i64) -> (Conv2d, i64) {
        let shape = [s.c_out, s.c_in / s.groups, s.k, s.k];
        let numel: i64 = shape.iter().product();
        let learnable = !(self.spec.train_mode == TrainMode::Frozen && s.k * s.k > 1);
        let w = if self.count_only {
            Tensor::empty([0], (Kind::Float, Device::Cpu))
        } else {
            init::conv_weight(self.spec.init, &shape, self.seed, &p.path("weight"), self.correlation())
                .to_device(self.device)
        };
        let weight = p.add("weight", w, learnable);
        self.count(numel, learnable);
        let bias = s.bias.then(|| {
            let b = if self.count_only {
                Tensor::empty([0], (Kind::Float, Device::Cpu))
            } else {
                init::fan_in_uniform(&[s.c_out], numel / s.c_out, self.seed, &p.path("bias")).to_device(self.device)
            };
            self.count(s.c_out, true);
            p.add("bias", b, true)
        });
        let out = conv_out(size, s.k, s.stride, s.padding);
        self.cost.macs_per_image += (numel * out * out) as u64;
        let record = ConvRecord::default();
        self.conv_records.push(record.clone());
        (
            Conv2d {
                weight,
                bias,
                stride: s.stride,
                padding: s.padding,
                groups: s.groups,
                fft: self.fft_conv,
                spectrum: Default::default(),
                record,
            },
            out,
        )
    }

    /// A conv `c_in -> c_out` without bias.
    pub fn conv(&mut self, p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, size: i64) -> (Conv2d, i64) {
        self.conv_shaped(p, ConvShape::new(c_in, c_out, k, stride), size)
    }

    /// BatchNorm over `c` channels (weight 1, bias 0, PyTorch's momentum and eps).
    ///
    /// tch's default config draws the weight from U(0, 1) (with the unseeded global
    /// generator); PyTorch starts it at 1, so the config is spelled out.
    pub fn bn(&mut self, p: &nn::Path, c: i64) -> nn::BatchNorm {
        self.count(2 * c, true);
        let config = nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.0),
            bs_init: nn::Init::Const(0.0),
            momentum: 0.1,
            eps: 1e-5,
            ..Default::default()
        };
        nn::batch_norm2d(p, c, config)
    }

    /// A conv of shape `s` as the spec asks for spatial convs: plain, or an LC-block when the
    /// spec sets an expansion and the kernel has more than one element.
    pub fn spatial_shaped(&mut self, p: &nn::Path, s: ConvShape, size: i64) -> (Spatial, i64) {
        let (spatial, out) = self.spatial_unrecorded(p, s, size);
        if s.k > 1 && !self.count_only {
            let name = p.components().collect::<Vec<_>>().join(".");
            let layer = SpatialLayer::of(name, &spatial);
            self.spatial_layers.push(layer);
        }
        (spatial, out)
    }

    fn spatial_unrecorded(&mut self, p: &nn::Path, s: ConvShape, size: i64) -> (Spatial, i64) {
        match self.spec.expansion {
            Some(e) if s.k > 1 => {
                let mid = s.c_out * i64::from(e);
                let spatial_shape = ConvShape {
                    c_out: mid,
                    bias: false,
                    ..s
                };
                let (spatial, out) = self.conv_shaped(&(p / "spatial"), spatial_shape, size);
                let between = match self.spec.inter_op {
                    InterOp::None => Between::Nothing,
                    InterOp::Relu => Between::Relu,
                    InterOp::Bn => Between::Bn(self.bn(&(p / "bn"), mid)),
                    InterOp::BnRelu => Between::BnRelu(self.bn(&(p / "bn"), mid)),
                };
                let combine_shape = ConvShape {
                    bias: s.bias,
                    ..ConvShape::new(mid, s.c_out, 1, 1)
                };
                let (combine, out) = self.conv_shaped(&(p / "combine"), combine_shape, out);
                (
                    Spatial::Lc {
                        spatial,
                        between,
                        combine,
                    },
                    out,
                )
            }
            _ => {
                let (conv, out) = self.conv_shaped(p, s, size);
                (Spatial::Plain(conv), out)
            }
        }
    }

    /// The spec's k x k spatial conv (plain or LC-block) `c_in -> c_out`.
    pub fn spatial(&mut self, p: &nn::Path, c_in: i64, c_out: i64, stride: i64, size: i64) -> (Spatial, i64) {
        let k = self.k();
        self.spatial_shaped(p, ConvShape::new(c_in, c_out, k, stride), size)
    }

    /// A linear layer with PyTorch's default init.
    pub fn linear(&mut self, p: &nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
        let (ws, bs) = if self.count_only {
            let empty = || Tensor::empty([0], (Kind::Float, Device::Cpu));
            (empty(), empty())
        } else {
            (
                init::fan_in_uniform(&[c_out, c_in], c_in, self.seed, &p.path("weight")).to_device(self.device),
                init::fan_in_uniform(&[c_out], c_in, self.seed, &p.path("bias")).to_device(self.device),
            )
        };
        self.count(c_out * c_in + c_out, true);
        self.cost.macs_per_image += (c_in * c_out) as u64;
        nn::Linear {
            ws: p.add("weight", ws, true),
            bs: Some(p.add("bias", bs, true)),
        }
    }
}
