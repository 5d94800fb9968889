//! torchvision's MobileNetV2 (width multiplier 1), with its ImageNet stem (stride-2 first conv)
//! or a low-resolution one (stride 1) for 32x32 inputs.
//!
//! Inverted residual blocks `(t, c, n, s)`: (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2)
//! (6,96,3,1) (6,160,3,2) (6,320,1,1); each expands by t with a 1x1 conv, filters with a
//! depthwise conv (3x3 in the original, k x k here), projects with a linear 1x1 conv, and adds
//! the input when shapes allow. Then a 1x1 conv to 1280 channels, global pooling, dropout 0.2,
//! linear head. Parameter paths are torchvision's (`features.N...`, `classifier.1`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use convsweep_proto::spec::Stem;
use tch::Tensor;
use tch::nn::{self, Module, ModuleT};

use super::conv::Conv2d;
use super::init::with_torch_seed;
use super::layers::{Builder, ConvShape};
use super::lc::Spatial;
use crate::rng::derive_seed;

const SETTINGS: [(i64, i64, i64, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

fn relu6(xs: &Tensor) -> Tensor {
    xs.clamp(0.0, 6.0)
}

#[derive(Debug)]
struct InvertedResidual {
    expand: Option<(Conv2d, nn::BatchNorm)>,
    depthwise: Spatial,
    dw_bn: nn::BatchNorm,
    project: Conv2d,
    project_bn: nn::BatchNorm,
    residual: bool,
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        if let Some((conv, bn)) = &self.expand {
            ys = relu6(&conv.forward(&ys).apply_t(bn, train));
        }
        ys = relu6(&self.depthwise.forward_t(&ys, train).apply_t(&self.dw_bn, train));
        ys = self.project.forward(&ys).apply_t(&self.project_bn, train);
        if self.residual { ys + xs } else { ys }
    }
}

/// MobileNetV2.
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: Spatial,
    stem_bn: nn::BatchNorm,
    blocks: Vec<InvertedResidual>,
    last: Conv2d,
    last_bn: nn::BatchNorm,
    classifier: nn::Linear,
    /// Dropout masks are drawn from (seed, number of draws so far): reproducible per trial and
    /// resumable from a checkpoint.
    seed: u64,
    draws: Arc<AtomicU64>,
}

impl MobileNetV2 {
    /// Builds MobileNetV2 with `stem` for `classes` classes; `seed` drives dropout.
    pub fn new(
        b: &mut Builder,
        p: &nn::Path,
        stem: Stem,
        in_channels: i64,
        classes: i64,
        size: i64,
        seed: u64,
    ) -> Self {
        let f = p / "features";
        let stride = if stem == Stem::Imagenet { 2 } else { 1 };
        let (stem_conv, mut side) = b.spatial(&(&f / "0" / "0"), in_channels, 32, stride, size);
        let stem_bn = b.bn(&(&f / "0" / "1"), 32);
        let mut c_in = 32;
        let mut index = 1;
        let mut blocks = Vec::new();
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = c_in * t;
                let q = &f / index / "conv";
                let mut layer = 0;
                let expand = (t != 1).then(|| {
                    let (conv, _) = b.conv(&(&q / "0" / "0"), c_in, hidden, 1, 1, side);
                    let bn = b.bn(&(&q / "0" / "1"), hidden);
                    layer = 1;
                    (conv, bn)
                });
                let dw = &q / layer;
                let k = b.k();
                let (depthwise, s_out) = b.spatial_shaped(
                    &(&dw / "0"),
                    ConvShape::new(hidden, hidden, k, stride).groups(hidden),
                    side,
                );
                let dw_bn = b.bn(&(&dw / "1"), hidden);
                let (project, _) = b.conv(&(&q / (layer + 1)), hidden, c, 1, 1, s_out);
                let project_bn = b.bn(&(&q / (layer + 2)), c);
                blocks.push(InvertedResidual {
                    expand,
                    depthwise,
                    dw_bn,
                    project,
                    project_bn,
                    residual: stride == 1 && c_in == c,
                });
                side = s_out;
                c_in = c;
                index += 1;
            }
        }
        let (last, _) = b.conv(&(&f / index / "0"), c_in, 1280, 1, 1, side);
        let last_bn = b.bn(&(&f / index / "1"), 1280);
        let classifier = b.linear(&(p / "classifier" / "1"), 1280, classes);
        MobileNetV2 {
            stem: stem_conv,
            stem_bn,
            blocks,
            last,
            last_bn,
            classifier,
            seed,
            draws: b.draws.clone(),
        }
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = relu6(&self.stem.forward_t(xs, train).apply_t(&self.stem_bn, train));
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        ys = relu6(&self.last.forward(&ys).apply_t(&self.last_bn, train));
        ys = ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        if train {
            let n = self.draws.fetch_add(1, Ordering::Relaxed);
            let seed = derive_seed(self.seed, &format!("dropout/{n}"));
            ys = with_torch_seed(seed, || ys.dropout(0.2, true));
        }
        ys.apply(&self.classifier)
    }
}
