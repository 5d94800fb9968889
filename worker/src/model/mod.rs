//! Models built from a [`ModelSpec`]: the architecture, the LC-blocks, the init scheme and the
//! freezing rule of the paper, plus the input normalisation (inside the model, so that
//! attacks and corruptions work on `[0, 1]` images).

pub mod init;
pub mod layers;
pub mod resnet;

use convsweep_proto::spec::{Arch, ModelSpec};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

pub use layers::Cost;

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
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("cost", &self.cost).finish_non_exhaustive()
    }
}

impl Net {
    /// Builds the model of `spec` on `device`, initialised from `seed`. `mean`/`std` are the
    /// per-channel statistics of `[0, 1]` inputs that the model normalises with.
    pub fn new(spec: &ModelSpec, input: InputShape, seed: u64, device: Device, mean: &[f64], std: &[f64]) -> Net {
        let vs = nn::VarStore::new(device);
        let mut builder = layers::Builder::new(spec, seed, device);
        let body: Box<dyn ModuleT + Send> = match spec.arch {
            Arch::Resnet => Box::new(resnet::CifarResNet::new(
                &mut builder,
                &vs.root(),
                i64::from(spec.depth.unwrap_or(20)),
                i64::from(spec.width.unwrap_or(16)),
                input.channels,
                input.classes,
                input.size,
            )),
        };
        let stat = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .view([1, -1, 1, 1])
                .to_device(device)
        };
        Net {
            cost: builder.cost,
            mean: stat(mean),
            std: stat(std),
            vs,
            body,
        }
    }

    /// Logits for `[0, 1]` images `[N, C, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let normalised = (xs - &self.mean) / &self.std;
        self.body.forward_t(&normalised, train)
    }

    /// Builds only to count parameters and compute (on the CPU).
    pub fn cost_of(spec: &ModelSpec, input: InputShape) -> Cost {
        let ones = vec![1.0; input.channels as usize];
        tch::no_grad(|| Net::new(spec, input, 0, Device::Cpu, &ones, &ones).cost)
    }
}
