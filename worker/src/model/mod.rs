//! Models built from a [`ModelSpec`]: the architecture, the LC-blocks, the init scheme and the
//! freezing rule of the paper, plus the input normalisation (inside the model, so that
//! attacks and corruptions work on `[0, 1]` images).

pub mod conv;
pub mod convmixer;
pub mod fftconv;
pub mod init;
pub mod layers;
pub mod lc;
pub mod mobilenet;
pub mod resnet;
pub mod torchvision;

use convsweep_proto::spec::{Arch, ModelSpec, Stem};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

pub use conv::ConvPath;
pub use layers::{Compute, Cost};

/// What the model is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    /// Channels (3 for every dataset we load).
    pub channels: i64,
    /// Side of the square images.
    pub size: i64,
    /// Classes of the head.
    pub classes: i64,
}

/// A built model: its variables, its forward pass and its cost.
pub struct Net {
    /// Every variable; frozen ones are in it but not trainable.
    pub vs: nn::VarStore,
    body: Box<dyn ModuleT + Send>,
    mean: Tensor,
    std: Tensor,
    /// Parameters and compute.
    pub cost: Cost,
    /// The spatial layers, for filter statistics.
    pub spatial: Vec<lc::SpatialLayer>,
    convs: Vec<conv::ConvRecord>,
    draws: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("cost", &self.cost).finish_non_exhaustive()
    }
}

impl Net {
    /// Builds the model of `spec` on `compute` (a [`Device`] or a [`Compute`]), initialised from
    /// `seed`. `mean`/`std` are the per-channel statistics of `[0, 1]` inputs that the model
    /// normalises with.
    pub fn new(
        spec: &ModelSpec,
        input: InputShape,
        seed: u64,
        compute: impl Into<Compute>,
        mean: &[f64],
        std: &[f64],
    ) -> Net {
        let compute = compute.into();
        let device = compute.device;
        let vs = nn::VarStore::new(device);
        let mut builder = layers::Builder::new(spec, seed, compute);
        let body = build_body(&mut builder, &vs.root(), spec, input, seed);
        let stat = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .view([1, -1, 1, 1])
                .to_device(device)
        };
        Net {
            cost: builder.cost,
            spatial: std::mem::take(&mut builder.spatial_layers),
            convs: std::mem::take(&mut builder.conv_records),
            draws: builder.draws.clone(),
            mean: stat(mean),
            std: stat(std),
            vs,
            body,
        }
    }

    /// Random draws the model has made (dropout masks), for checkpoints.
    pub fn draws(&self) -> u64 {
        self.draws.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Continues the model's random draws from `n` (a checkpoint's [`Net::draws`]).
    pub fn set_draws(&self, n: u64) {
        self.draws.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Which conv algorithm the last forward pass used, for provenance: `direct` when every
    /// conv went through libtorch's `conv2d`, else `fft:F/N` (F of the N convs that ran went
    /// through the FFT).
    pub fn conv_algorithm(&self) -> String {
        let ran = self.convs.iter().filter(|c| c.get() != ConvPath::NotRun).count();
        let fft = self.convs.iter().filter(|c| c.get() == ConvPath::Fft).count();
        if fft == 0 {
            "direct".to_owned()
        } else {
            format!("fft:{fft}/{ran}")
        }
    }

    /// Logits for `[0, 1]` images `[N, C, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let normalised = (xs - &self.mean) / &self.std;
        self.body.forward_t(&normalised, train)
    }

    /// Parameters and compute of `spec`, counted without drawing any weight (any size is cheap).
    pub fn cost_of(spec: &ModelSpec, input: InputShape) -> Cost {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut builder = layers::Builder::counting(spec);
        let _ = build_body(&mut builder, &vs.root(), spec, input, 0);
        builder.cost
    }
}

fn build_body(
    b: &mut layers::Builder,
    root: &nn::Path,
    spec: &ModelSpec,
    input: InputShape,
    seed: u64,
) -> Box<dyn ModuleT + Send> {
    let stem = spec.stem.unwrap_or(Stem::LowRes);
    let InputShape {
        channels,
        size,
        classes,
    } = input;
    match spec.arch {
        Arch::Resnet => Box::new(resnet::CifarResNet::new(
            b,
            root,
            i64::from(spec.depth.unwrap_or(20)),
            i64::from(spec.width.unwrap_or(16)),
            channels,
            classes,
            size,
        )),
        Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 | Arch::Resnet18d | Arch::Resnet50d | Arch::WideResnet50_2 => {
            Box::new(torchvision::TorchvisionResNet::new(
                b, root, spec.arch, stem, channels, classes, size,
            ))
        }
        Arch::MobilenetV2 => Box::new(mobilenet::MobileNetV2::new(
            b, root, stem, channels, classes, size, seed,
        )),
        Arch::Convmixer => Box::new(convmixer::ConvMixer::new(
            b,
            root,
            i64::from(spec.width.unwrap_or(256)),
            i64::from(spec.depth.unwrap_or(8)),
            i64::from(spec.patch_size.unwrap_or(2)),
            channels,
            classes,
            size,
        )),
    }
}
