//! Building blocks shared by the model families: convs that know whether they are frozen,
//! LC-blocks, BatchNorm and the linear head, created through a [`Builder`] that also counts
//! parameters and multiply-accumulates.

use convsweep_proto::spec::{InterOp, ModelSpec, TrainMode};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::init;

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
    /// What has been built so far.
    pub cost: Cost,
}

/// A conv without bias. Frozen (not in the optimiser, no gradient) when the trial freezes
/// spatial filters and its kernel has more than one element.
#[derive(Debug)]
pub struct Conv2d {
    /// `[c_out, c_in, k, k]`.
    pub weight: Tensor,
    stride: i64,
    padding: i64,
}

impl nn::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// What an LC-block puts between its two convs.
#[derive(Debug)]
pub enum Between {
    /// Identity.
    Nothing,
    /// ReLU.
    Relu,
    /// BatchNorm.
    Bn(nn::BatchNorm),
    /// BatchNorm then ReLU.
    BnRelu(nn::BatchNorm),
}

/// A spatial conv as the spec asks for it: plain, or an LC-block (`k x k conv c_in -> c_out*E`,
/// optional in-between op, `1x1 conv c_out*E -> c_out`).
#[derive(Debug)]
pub enum Spatial {
    /// One conv.
    Plain(Conv2d),
    /// Spatial conv, in-between op, combining 1x1 conv.
    Lc {
        /// `k x k`, `c_in -> c_out * E`, carries the stride.
        spatial: Conv2d,
        /// Op between the two convs.
        between: Between,
        /// `1 x 1`, `c_out * E -> c_out`: the learned linear combinations.
        combine: Conv2d,
    },
}

impl ModuleT for Between {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Between::Nothing => xs.shallow_clone(),
            Between::Relu => xs.relu(),
            Between::Bn(bn) => bn.forward_t(xs, train),
            Between::BnRelu(bn) => bn.forward_t(xs, train).relu(),
        }
    }
}

impl ModuleT for Spatial {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        use nn::Module;
        match self {
            Spatial::Plain(conv) => conv.forward(xs),
            Spatial::Lc {
                spatial,
                between,
                combine,
            } => combine.forward(&between.forward_t(&spatial.forward(xs), train)),
        }
    }
}

/// Output side of a `k x k` conv with padding `k/2` and the given stride.
pub fn conv_out(size: i64, k: i64, stride: i64) -> i64 {
    (size + 2 * (k / 2) - k) / stride + 1
}

impl<'a> Builder<'a> {
    /// A builder for `spec`'s layers, seeded by the trial seed.
    pub fn new(spec: &'a ModelSpec, seed: u64, device: Device) -> Self {
        Builder {
            spec,
            seed,
            device,
            cost: Cost::default(),
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

    /// A conv `c_in -> c_out`, `k x k`, padding `k/2`, on an input of side `size`. Returns the
    /// conv and its output side.
    pub fn conv(&mut self, p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, size: i64) -> (Conv2d, i64) {
        let shape = [c_out, c_in, k, k];
        let path = p.path("weight");
        let w = init::conv_weight(self.spec.init, &shape, self.seed, &path).to_device(self.device);
        let learnable = !(self.spec.train_mode == TrainMode::Frozen && k * k > 1);
        let weight = p.add("weight", w, learnable);
        self.count(c_out * c_in * k * k, learnable);
        let out = conv_out(size, k, stride);
        self.cost.macs_per_image += (c_out * c_in * k * k * out * out) as u64;
        (
            Conv2d {
                weight,
                stride,
                padding: k / 2,
            },
            out,
        )
    }

    /// BatchNorm over `c` channels (weight 1, bias 0, PyTorch's momentum and eps).
    pub fn bn(&mut self, p: &nn::Path, c: i64) -> nn::BatchNorm {
        self.count(2 * c, true);
        nn::batch_norm2d(p, c, Default::default())
    }

    /// The spec's spatial conv (plain or LC-block) `c_in -> c_out` with kernel `k`.
    pub fn spatial(&mut self, p: &nn::Path, c_in: i64, c_out: i64, stride: i64, size: i64) -> (Spatial, i64) {
        let k = self.k();
        match self.spec.expansion {
            None => {
                let (conv, out) = self.conv(p, c_in, c_out, k, stride, size);
                (Spatial::Plain(conv), out)
            }
            Some(e) => {
                let mid = c_out * i64::from(e);
                let (spatial, out) = self.conv(&(p / "spatial"), c_in, mid, k, stride, size);
                let between = match self.spec.inter_op {
                    InterOp::None => Between::Nothing,
                    InterOp::Relu => Between::Relu,
                    InterOp::Bn => Between::Bn(self.bn(&(p / "bn"), mid)),
                    InterOp::BnRelu => Between::BnRelu(self.bn(&(p / "bn"), mid)),
                };
                let (combine, out) = self.conv(&(p / "combine"), mid, c_out, 1, 1, out);
                (
                    Spatial::Lc {
                        spatial,
                        between,
                        combine,
                    },
                    out,
                )
            }
        }
    }

    /// A linear layer with PyTorch's default init.
    pub fn linear(&mut self, p: &nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
        let ws = init::linear_uniform(&[c_out, c_in], c_in, self.seed, &p.path("weight")).to_device(self.device);
        let bs = init::linear_uniform(&[c_out], c_in, self.seed, &p.path("bias")).to_device(self.device);
        self.count(c_out * c_in + c_out, true);
        self.cost.macs_per_image += (c_in * c_out) as u64;
        nn::Linear {
            ws: p.add("weight", ws, true),
            bs: Some(p.add("bias", bs, true)),
        }
    }
}
