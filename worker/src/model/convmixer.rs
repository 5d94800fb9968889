//! ConvMixer-W/D (Trockman & Kolter, "Patches Are All You Need?"): a patch embedding
//! (p x p conv with stride p, GELU, BN), then D blocks of a residual depthwise k x k conv
//! (GELU, BN) and a pointwise 1x1 conv (GELU, BN), global pooling and a linear head. Convs
//! have biases (which always learn; frozen mode freezes the weights of convs with k > 1,
//! the patch embedding's included).

use tch::Tensor;
use tch::nn::{self, Module, ModuleT};

use super::conv::Conv2d;
use super::layers::{Builder, ConvShape};
use super::lc::Spatial;

#[derive(Debug)]
struct MixerBlock {
    depthwise: Spatial,
    bn1: nn::BatchNorm,
    pointwise: Conv2d,
    bn2: nn::BatchNorm,
}

/// ConvMixer.
#[derive(Debug)]
pub struct ConvMixer {
    stem: Spatial,
    stem_bn: nn::BatchNorm,
    blocks: Vec<MixerBlock>,
    head: nn::Linear,
}

impl ConvMixer {
    /// Builds ConvMixer with `width` channels, `depth` blocks and patch size `patch`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut Builder,
        p: &nn::Path,
        width: i64,
        depth: i64,
        patch: i64,
        in_channels: i64,
        classes: i64,
        size: i64,
    ) -> Self {
        let shape = ConvShape::new(in_channels, width, patch, patch).with_bias().unpadded();
        let (stem, side) = b.spatial_shaped(&(p / "stem" / "conv"), shape, size);
        let stem_bn = b.bn(&(p / "stem" / "bn"), width);
        let k = b.k();
        let blocks = (0..depth)
            .map(|i| {
                let q = p / "blocks" / i;
                let (depthwise, _) = b.spatial_shaped(
                    &(&q / "depthwise"),
                    ConvShape::new(width, width, k, 1).groups(width).with_bias(),
                    side,
                );
                let bn1 = b.bn(&(&q / "bn1"), width);
                let (pointwise, _) = b.conv_shaped(
                    &(&q / "pointwise"),
                    ConvShape::new(width, width, 1, 1).with_bias(),
                    side,
                );
                let bn2 = b.bn(&(&q / "bn2"), width);
                MixerBlock {
                    depthwise,
                    bn1,
                    pointwise,
                    bn2,
                }
            })
            .collect();
        let head = b.linear(&(p / "head"), width, classes);
        ConvMixer {
            stem,
            stem_bn,
            blocks,
            head,
        }
    }
}

impl ModuleT for ConvMixer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self
            .stem
            .forward_t(xs, train)
            .gelu("none")
            .apply_t(&self.stem_bn, train);
        for block in &self.blocks {
            ys = block
                .depthwise
                .forward_t(&ys, train)
                .gelu("none")
                .apply_t(&block.bn1, train)
                + &ys;
            ys = block.pointwise.forward(&ys).gelu("none").apply_t(&block.bn2, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.head)
    }
}
