//! Folding an LC-block into the one conv it is equivalent to (the paper's Lemma):
//! `conv1x1(convkxk(x)) == convkxk'(x)` with `W'[o] = sum_j P[o, j] * W[j]`.
//!
//! Only blocks without an in-between op are linear and fold; with ReLU or BN in between they
//! do not. Grouped (e.g. depthwise) spatial convs fold into a dense conv.

use tch::Tensor;

use super::layers::{Between, Spatial};

/// A grouped conv weight `[c_out, c_in/groups, k, k]` as the dense `[c_out, c_in, k, k]` it
/// acts as (zeros outside each output channel's group).
pub fn densify(weight: &Tensor, groups: i64) -> Tensor {
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
pub fn fold_weights(w: &Tensor, p: &Tensor) -> Tensor {
    let [m, c_in, k, k2] = w.size()[..] else {
        panic!("a conv weight is 4-d, got {:?}", w.size());
    };
    let c_out = p.size()[0];
    p.view([c_out, m])
        .matmul(&w.view([m, c_in * k * k2]))
        .view([c_out, c_in, k, k2])
}

/// The single dense conv weight an LC-block (or a plain conv) computes, or `None` when the
/// block has a non-linear op between its convs.
pub fn effective_weight(spatial: &Spatial) -> Option<Tensor> {
    tch::no_grad(|| match spatial {
        Spatial::Plain(conv) => Some(densify(&conv.weight, conv.groups())),
        Spatial::Lc {
            spatial,
            between: Between::Nothing,
            combine,
        } => Some(fold_weights(
            &densify(&spatial.weight, spatial.groups()),
            &combine.weight,
        )),
        Spatial::Lc { .. } => None,
    })
}
