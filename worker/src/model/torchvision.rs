//! The torchvision ResNets (18, 34, 50, Wide-ResNet-50-2), with either their ImageNet stem
//! (7x7 stride-2 conv, 3x3 max-pool) or a low-resolution stem for 32x32 inputs (k x k stride-1
//! conv, no max-pool), as in the paper's first experiment; and timm's ResNet-18d and -50d, the
//! models of the paper's Table 2: a deep stem of three 3x3 convs (32, 32, 64 channels, BN and
//! ReLU between them; the first of stride 2 with the ImageNet stem) and shortcuts that average-
//! pool 2x2 (ceil mode, padding not counted) before a stride-1 1x1 conv where they downsample.
//!
//! Stages of 64, 128, 256, 512 planes; stride 2 in the first block of stages 2 to 4 (in the
//! k x k conv of a bottleneck, as torchvision's "v1.5"); projection shortcuts (1x1 conv + BN)
//! where the shape changes. Every 3x3 conv becomes k x k, the deep stem's included. Parameter
//! paths are torchvision's (timm's for the -d models).

use convsweep_proto::spec::{Arch, Stem};
use tch::Tensor;
use tch::nn::{self, Module, ModuleT};

use super::conv::Conv2d;
use super::layers::{Builder, ConvShape};
use super::lc::Spatial;

#[derive(Debug)]
enum Block {
    Basic {
        conv1: Spatial,
        bn1: nn::BatchNorm,
        conv2: Spatial,
        bn2: nn::BatchNorm,
    },
    Bottleneck {
        conv1: Conv2d,
        bn1: nn::BatchNorm,
        conv2: Spatial,
        bn2: nn::BatchNorm,
        conv3: Conv2d,
        bn3: nn::BatchNorm,
    },
}

/// A projection shortcut: 1x1 conv and BN, after a 2x2 average pool in the -d models.
#[derive(Debug)]
struct Downsample {
    pool: bool,
    conv: Conv2d,
    bn: nn::BatchNorm,
}

#[derive(Debug)]
struct Residual {
    block: Block,
    downsample: Option<Downsample>,
}

impl ModuleT for Residual {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = match &self.block {
            Block::Basic { conv1, bn1, conv2, bn2 } => {
                let ys = conv1.forward_t(xs, train).apply_t(bn1, train).relu();
                conv2.forward_t(&ys, train).apply_t(bn2, train)
            }
            Block::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
            } => {
                let ys = conv1.forward(xs).apply_t(bn1, train).relu();
                let ys = conv2.forward_t(&ys, train).apply_t(bn2, train).relu();
                conv3.forward(&ys).apply_t(bn3, train)
            }
        };
        let shortcut = match &self.downsample {
            Some(Downsample { pool: true, conv, bn }) => conv
                .forward(&xs.avg_pool2d([2, 2], [2, 2], [0, 0], true, false, None))
                .apply_t(bn, train),
            Some(Downsample { pool: false, conv, bn }) => conv.forward(xs).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// A torchvision ResNet (or timm's -d variant).
#[derive(Debug)]
pub struct TorchvisionResNet {
    /// The stem's convs, each but the last followed by its BN and a ReLU (one conv, or the
    /// -d models' three).
    conv1: Vec<(Spatial, Option<nn::BatchNorm>)>,
    bn1: nn::BatchNorm,
    maxpool: bool,
    blocks: Vec<Residual>,
    fc: nn::Linear,
}

impl TorchvisionResNet {
    /// Builds `arch` (resnet18/34/50 or wide-resnet50-2) with `stem` for `classes` classes on
    /// `size`x`size` images with `in_channels` channels.
    pub fn new(
        b: &mut Builder,
        p: &nn::Path,
        arch: Arch,
        stem: Stem,
        in_channels: i64,
        classes: i64,
        size: i64,
    ) -> Self {
        let (layers, bottleneck, width_factor): ([i64; 4], bool, i64) = match arch {
            Arch::Resnet18 | Arch::Resnet18d => ([2, 2, 2, 2], false, 1),
            Arch::Resnet34 => ([3, 4, 6, 3], false, 1),
            Arch::Resnet50 | Arch::Resnet50d => ([3, 4, 6, 3], true, 1),
            Arch::WideResnet50_2 => ([3, 4, 6, 3], true, 2),
            other => unreachable!("not a torchvision ResNet: {other:?}"),
        };
        let deep = matches!(arch, Arch::Resnet18d | Arch::Resnet50d);
        let expansion = if bottleneck { 4 } else { 1 };
        let (conv1, mut side) = if deep {
            let stride = if stem == Stem::Imagenet { 2 } else { 1 };
            let q = p / "conv1";
            let (c0, s0) = b.spatial(&(&q / "0"), in_channels, 32, stride, size);
            let bn0 = b.bn(&(&q / "1"), 32);
            let (c3, s3) = b.spatial(&(&q / "3"), 32, 32, 1, s0);
            let bn3 = b.bn(&(&q / "4"), 32);
            let (c6, s6) = b.spatial(&(&q / "6"), 32, 64, 1, s3);
            (vec![(c0, Some(bn0)), (c3, Some(bn3)), (c6, None)], s6)
        } else {
            let (conv, side) = match stem {
                Stem::Imagenet => b.spatial_shaped(&(p / "conv1"), ConvShape::new(in_channels, 64, 7, 2), size),
                Stem::LowRes => b.spatial(&(p / "conv1"), in_channels, 64, 1, size),
            };
            (vec![(conv, None)], side)
        };
        let bn1 = b.bn(&(p / "bn1"), 64);
        let maxpool = stem == Stem::Imagenet;
        if maxpool {
            side = (side + 2 - 3) / 2 + 1;
        }
        let mut c_in = 64;
        let mut blocks = Vec::new();
        for (stage, &n) in layers.iter().enumerate() {
            let planes = 64 << stage;
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let q = p / format!("layer{}", stage + 1) / i;
                let c_out = planes * expansion;
                let (block, out) = if bottleneck {
                    let width = planes * width_factor;
                    let (conv1, s1) = b.conv(&(&q / "conv1"), c_in, width, 1, 1, side);
                    let bn1 = b.bn(&(&q / "bn1"), width);
                    let (conv2, s2) = b.spatial(&(&q / "conv2"), width, width, stride, s1);
                    let bn2 = b.bn(&(&q / "bn2"), width);
                    let (conv3, s3) = b.conv(&(&q / "conv3"), width, c_out, 1, 1, s2);
                    let bn3 = b.bn(&(&q / "bn3"), c_out);
                    (
                        Block::Bottleneck {
                            conv1,
                            bn1,
                            conv2,
                            bn2,
                            conv3,
                            bn3,
                        },
                        s3,
                    )
                } else {
                    let (conv1, s1) = b.spatial(&(&q / "conv1"), c_in, planes, stride, side);
                    let bn1 = b.bn(&(&q / "bn1"), planes);
                    let (conv2, s2) = b.spatial(&(&q / "conv2"), planes, planes, 1, s1);
                    let bn2 = b.bn(&(&q / "bn2"), planes);
                    (Block::Basic { conv1, bn1, conv2, bn2 }, s2)
                };
                let downsample = (stride != 1 || c_in != c_out).then(|| {
                    let d = &q / "downsample";
                    if deep {
                        let pool = stride != 1;
                        let pooled = if pool { (side + 1) / 2 } else { side };
                        let (conv, _) = b.conv(&(&d / "1"), c_in, c_out, 1, 1, pooled);
                        let bn = b.bn(&(&d / "2"), c_out);
                        Downsample { pool, conv, bn }
                    } else {
                        let (conv, _) = b.conv(&(&d / "0"), c_in, c_out, 1, stride, side);
                        let bn = b.bn(&(&d / "1"), c_out);
                        Downsample { pool: false, conv, bn }
                    }
                });
                blocks.push(Residual { block, downsample });
                side = out;
                c_in = c_out;
            }
        }
        let fc = b.linear(&(p / "fc"), c_in, classes);
        TorchvisionResNet {
            conv1,
            bn1,
            maxpool,
            blocks,
            fc,
        }
    }
}

impl ModuleT for TorchvisionResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for (conv, bn) in &self.conv1 {
            ys = conv.forward_t(&ys, train);
            if let Some(bn) = bn {
                ys = ys.apply_t(bn, train).relu();
            }
        }
        let mut ys = ys.apply_t(&self.bn1, train).relu();
        if self.maxpool {
            ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}
