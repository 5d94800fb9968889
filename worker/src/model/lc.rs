//! LC-blocks, the paper's linear combinations of spatial filters: a `k x k` conv to `c_out * E`
//! channels, an optional op in between, and a learned `1 x 1` conv back to `c_out` ([`Spatial`],
//! built by [`Builder::spatial`](super::layers::Builder::spatial)); the handles that filter
//! statistics read ([`SpatialLayer`]); and [`fold`], the one function that folds a block into
//! the single conv it is equivalent to (the paper's Lemma):
//! `conv1x1(convkxk(x)) == convkxk'(x)` with `W'[o] = sum_j P[o, j] * W[j]`.
//!
//! Only blocks without an in-between op are linear and fold; with ReLU or BN in between they
//! do not. Grouped (e.g. depthwise) spatial convs fold into a dense conv.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::conv::Conv2d;

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
#[allow(clippy::large_enum_variant)] // one per layer, built once
pub enum Spatial {
    /// One conv.
    Plain(Conv2d),
    /// Spatial conv, in-between op, combining 1x1 conv.
    Lc {
        /// `k x k`, `c_in -> c_out * E` (same groups as the conv it replaces), carries the stride.
        spatial: Conv2d,
        /// Op between the two convs.
        between: Between,
        /// `1 x 1`, `c_out * E -> c_out`: the learned linear combinations (and the bias, if any).
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

/// A spatial layer (kernel > 1) as built, for filter statistics: handles to its weights,
/// which keep following the values as the model trains.
#[derive(Debug)]
pub struct SpatialLayer {
    /// Parameter path of the layer, e.g. `layer1.0.conv1`.
    pub name: String,
    /// The k x k conv's weight `[c_out (x E), c_in/groups, k, k]`.
    pub weight: Tensor,
    /// Its groups.
    pub groups: i64,
    /// The LC-block's 1x1 combination `[c_out, c_out*E, 1, 1]`, if any.
    pub combine: Option<Tensor>,
    /// Whether nothing non-linear sits between the two convs (so the block folds).
    pub linear: bool,
}

impl SpatialLayer {
    /// The handles of `spatial`, named `name`.
    pub fn of(name: String, spatial: &Spatial) -> SpatialLayer {
        match spatial {
            Spatial::Plain(conv) => SpatialLayer {
                name,
                weight: conv.weight.shallow_clone(),
                groups: conv.groups(),
                combine: None,
                linear: true,
            },
            Spatial::Lc {
                spatial,
                between,
                combine,
            } => SpatialLayer {
                name,
                weight: spatial.weight.shallow_clone(),
                groups: spatial.groups(),
                combine: Some(combine.weight.shallow_clone()),
                linear: matches!(between, Between::Nothing),
            },
        }
    }
}

/// A grouped conv weight `[c_out, c_in/groups, k, k]` as the dense `[c_out, c_in, k, k]` it
/// acts as (zeros outside each output channel's group).
fn densify(weight: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return weight.shallow_clone();
    }
    let [c_out, c_in_g, k, k2] = weight.size()[..] else {
        panic!("a conv weight is 4-d, got {:?}", weight.size());
    };
    let per_group_out = c_out / groups;
    let dense = Tensor::zeros([c_out, c_in_g * groups, k, k2], (weight.kind(), weight.device()));
    for g in 0..groups {
        dense
            .narrow(0, g * per_group_out, per_group_out)
            .narrow(1, g * c_in_g, c_in_g)
            .copy_(&weight.narrow(0, g * per_group_out, per_group_out));
    }
    dense
}

/// `W'[o] = sum_j P[o, j] * W[j]` for a dense spatial weight `w` `[m, c_in, k, k]` and a 1x1
/// combination `p` `[c_out, m, 1, 1]`.
fn fold_weights(w: &Tensor, p: &Tensor) -> Tensor {
    let [m, c_in, k, k2] = w.size()[..] else {
        panic!("a conv weight is 4-d, got {:?}", w.size());
    };
    let c_out = p.size()[0];
    p.view([c_out, m])
        .matmul(&w.view([m, c_in * k * k2]))
        .view([c_out, c_in, k, k2])
}

/// The one dense `[c_out, c_in, k, k]` conv weight a linear LC-block computes, or `None` for a
/// plain conv (its filters are its own) or a block with a non-linear op between its convs.
pub fn fold(layer: &SpatialLayer) -> Option<Tensor> {
    let combine = layer.combine.as_ref().filter(|_| layer.linear)?;
    Some(tch::no_grad(|| {
        fold_weights(&densify(&layer.weight, layer.groups), combine)
    }))
}
