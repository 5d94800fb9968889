//! ResNet-D-W: the CIFAR "basic block" ResNet of OpenLTH, as used by Gavrikov & Keuper,
//! "The Power of Linear Combinations: Learning with Random Convolutions" (arXiv 2301.11360).
//!
//! Shapes for a 32x32 input, W = 16, any kernel size k (padding k/2 keeps sides):
//!
//! ```text
//! conv1  k x k, 3 -> W, stride 1 (no max-pool)         32x32
//! layer1 n basic blocks, W                              32x32
//! layer2 n basic blocks, 2W, stride 2 in the first      16x16
//! layer3 n basic blocks, 4W, stride 2 in the first       8x8
//! global average pool, fc 4W -> classes
//! ```
//!
//! with n = (D - 2) / 6. A block is `conv-bn-relu-conv-bn (+ shortcut), relu`; the shortcut
//! is a 1x1 stride-s conv + BN where the shape changes. Every spatial conv, the stem's too,
//! is an LC-block when the spec sets an expansion. Parameter paths follow torchvision
//! (`conv1`, `bn1`, `layer2.0.downsample.0`, `fc`).

use tch::Tensor;
use tch::nn::{self, Module, ModuleT};

use super::conv::Conv2d;
use super::layers::Builder;
use super::lc::Spatial;

#[derive(Debug)]
struct BasicBlock {
    conv1: Spatial,
    bn1: nn::BatchNorm,
    conv2: Spatial,
    bn2: nn::BatchNorm,
    downsample: Option<(Conv2d, nn::BatchNorm)>,
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.conv1.forward_t(xs, train).apply_t(&self.bn1, train).relu();
        let ys = self.conv2.forward_t(&ys, train).apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => conv.forward(xs).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

fn basic_block(b: &mut Builder, p: &nn::Path, c_in: i64, c_out: i64, stride: i64, size: i64) -> (BasicBlock, i64) {
    let (conv1, mid) = b.spatial(&(p / "conv1"), c_in, c_out, stride, size);
    let bn1 = b.bn(&(p / "bn1"), c_out);
    let (conv2, out) = b.spatial(&(p / "conv2"), c_out, c_out, 1, mid);
    let bn2 = b.bn(&(p / "bn2"), c_out);
    let downsample = (stride != 1 || c_in != c_out).then(|| {
        let d = p / "downsample";
        let (conv, _) = b.conv(&(&d / "0"), c_in, c_out, 1, stride, size);
        (conv, b.bn(&(&d / "1"), c_out))
    });
    (
        BasicBlock {
            conv1,
            bn1,
            conv2,
            bn2,
            downsample,
        },
        out,
    )
}

/// The CIFAR ResNet-D-W.
#[derive(Debug)]
pub struct CifarResNet {
    conv1: Spatial,
    bn1: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    fc: nn::Linear,
}

impl CifarResNet {
    /// Builds ResNet-`depth`-`width` for `classes` classes on `size`x`size` images with
    /// `in_channels` channels. `depth` must be 6n+2 (checked by the spec).
    pub fn new(
        b: &mut Builder,
        p: &nn::Path,
        depth: i64,
        width: i64,
        in_channels: i64,
        classes: i64,
        size: i64,
    ) -> Self {
        let n = (depth - 2) / 6;
        let (conv1, mut side) = b.spatial(&(p / "conv1"), in_channels, width, 1, size);
        let bn1 = b.bn(&(p / "bn1"), width);
        let mut blocks = Vec::new();
        let mut c_in = width;
        for stage in 0..3 {
            let c_out = width << stage;
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let (block, out) = basic_block(b, &(p / format!("layer{}", stage + 1) / i), c_in, c_out, stride, side);
                blocks.push(block);
                side = out;
                c_in = c_out;
            }
        }
        let fc = b.linear(&(p / "fc"), c_in, classes);
        CifarResNet { conv1, bn1, blocks, fc }
    }
}

impl ModuleT for CifarResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.conv1.forward_t(xs, train).apply_t(&self.bn1, train).relu();
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}
