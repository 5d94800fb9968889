//! Model construction: parameter and compute counts, freezing rule, initialisation.

use convsweep_proto::spec::{Arch, InitScheme, InterOp, Stem, TrainMode};
use convsweep_worker::model::{InputShape, Net, init};
use tch::{Device, Kind, Tensor};

use crate::common::model;

const CIFAR10: InputShape = InputShape {
    channels: 3,
    size: 32,
    classes: 10,
};

/// Weights of the k x k convs of ResNet-20-16 (stem 3->16, then 6 convs per stage, widths 16,
/// 32, 64, the first conv of stages 2 and 3 widening), per k^2.
const RESNET20_SPATIAL_PER_K2: i64 = 3 * 16 + 6 * 16 * 16 + (16 * 32 + 5 * 32 * 32) + (32 * 64 + 5 * 64 * 64);
/// BatchNorm (19 of them, 2 parameters per channel) + 1x1 shortcuts + the head.
const RESNET20_OTHER: i64 = 2 * (16 + 6 * 16 + 7 * 32 + 7 * 64) + (16 * 32 + 32 * 64) + (64 * 10 + 10);

#[test]
fn resnet20_16_has_the_papers_parameter_count() {
    let cost = Net::cost_of(&model(20, 16, 3, TrainMode::Learned), CIFAR10);
    assert_eq!(cost.params_total, 272_474);
    assert_eq!(cost.params_total as i64, 9 * RESNET20_SPATIAL_PER_K2 + RESNET20_OTHER);
    assert_eq!(cost.params_learnable, cost.params_total);
}

#[test]
fn frozen_models_learn_only_1x1_bn_and_head() {
    for k in [3, 5, 9] {
        let cost = Net::cost_of(&model(20, 16, k, TrainMode::Frozen), CIFAR10);
        let k2 = i64::from(k * k);
        assert_eq!(
            cost.params_total as i64,
            k2 * RESNET20_SPATIAL_PER_K2 + RESNET20_OTHER,
            "k={k}"
        );
        assert_eq!(cost.params_learnable as i64, RESNET20_OTHER, "k={k}");
    }
}

#[test]
fn lc_blocks_add_the_expanded_convs_and_the_combinations() {
    let e = 4i64;
    let mut spec = model(20, 16, 3, TrainMode::Frozen);
    spec.expansion = Some(e as u32);
    let cost = Net::cost_of(&spec, CIFAR10);
    // Every spatial conv c_in -> c_out becomes k x k c_in -> c_out*E plus 1x1 c_out*E -> c_out.
    let pairs: Vec<(i64, i64)> = std::iter::once((3, 16))
        .chain(std::iter::repeat_n((16, 16), 6))
        .chain([(16, 32)])
        .chain(std::iter::repeat_n((32, 32), 5))
        .chain([(32, 64)])
        .chain(std::iter::repeat_n((64, 64), 5))
        .collect();
    let spatial: i64 = pairs.iter().map(|(i, o)| 9 * i * o * e).sum();
    let combine: i64 = pairs.iter().map(|(_, o)| o * e * o).sum();
    assert_eq!(cost.params_total as i64, spatial + combine + RESNET20_OTHER);
    assert_eq!(cost.params_learnable as i64, combine + RESNET20_OTHER);

    spec.inter_op = InterOp::BnRelu;
    let with_bn = Net::cost_of(&spec, CIFAR10);
    let bn: i64 = pairs.iter().map(|(_, o)| 2 * o * e).sum();
    assert_eq!(with_bn.params_total as i64, spatial + combine + bn + RESNET20_OTHER);
}

#[test]
fn builder_counts_match_the_tensors() {
    let net = Net::new(
        &model(8, 8, 5, TrainMode::Frozen),
        CIFAR10,
        0,
        Device::Cpu,
        &[0.5; 3],
        &[0.25; 3],
    );
    let vars = net.vs.variables();
    let params: i64 = vars
        .iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let learnable: i64 = net.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(params as u64, net.cost.params_total);
    assert_eq!(learnable as u64, net.cost.params_learnable);
    assert!(vars.contains_key("layer2.0.downsample.0.weight"), "{:?}", vars.keys());
    assert!(vars.contains_key("fc.weight"));
}

#[test]
fn batchnorm_starts_as_pytorchs_identity() {
    let net = Net::new(
        &model(8, 8, 3, TrainMode::Learned),
        CIFAR10,
        0,
        Device::Cpu,
        &[0.5; 3],
        &[0.25; 3],
    );
    let vars = net.vs.variables();
    let bn: Vec<_> = vars
        .iter()
        .filter(|(n, _)| n.contains("bn") || n.contains("downsample.1"))
        .collect();
    assert!(bn.len() >= 4 * 7, "{}", bn.len());
    for (name, t) in bn {
        let expected = if name.ends_with("weight") || name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        assert!(
            t.eq(expected).all().int64_value(&[]) == 1,
            "{name} should start at {expected}"
        );
    }
}

#[test]
fn resnet20_macs_match_the_usual_figure() {
    // 40.81M multiply-accumulates, as commonly reported for ResNet-20 on CIFAR (convs + head).
    let cost = Net::cost_of(&model(20, 16, 3, TrainMode::Learned), CIFAR10);
    assert_eq!(cost.macs_per_image, 40_813_184);
}

#[test]
fn forward_gives_logits_for_every_kernel_size() {
    for k in [1, 3, 5, 7] {
        let net = Net::new(
            &model(8, 4, k, TrainMode::Learned),
            CIFAR10,
            0,
            Device::Cpu,
            &[0.5; 3],
            &[0.25; 3],
        );
        let x = init::with_torch_seed(0, || Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
        assert_eq!(net.forward_t(&x, false).size(), [2, 10], "k={k}");
    }
}

const ALL_SCHEMES: [InitScheme; 7] = [
    InitScheme::KaimingUniform,
    InitScheme::KaimingNormal,
    InitScheme::KaimingNormalFanOut,
    InitScheme::XavierUniform,
    InitScheme::XavierNormal,
    InitScheme::Orthogonal,
    InitScheme::Correlated,
];

fn close(actual: f64, expected: f64, rel: f64, what: &str) {
    assert!((actual / expected - 1.0).abs() < rel, "{what}: {actual} vs {expected}");
}

#[test]
fn init_statistics_follow_their_formulas() {
    // A large layer: 256 -> 128 channels, 3x3 (294,912 weights).
    let shape = [128i64, 256, 3, 3];
    let (fan_in, fan_out) = (256.0 * 9.0, 128.0 * 9.0);
    let draw = |s| init::conv_weight(s, &shape, 3, "w", None);
    let var = |t: &Tensor| t.var(false).double_value(&[]);
    let mean = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);

    let w = draw(InitScheme::KaimingUniform);
    let b = 1.0 / f64::sqrt(fan_in);
    assert!(w.max().double_value(&[]) <= b && w.min().double_value(&[]) >= -b);
    close(var(&w), b * b / 3.0, 0.02, "kaiming-uniform variance");

    let w = draw(InitScheme::KaimingNormal);
    close(var(&w), 2.0 / fan_in, 0.02, "kaiming-normal variance");
    let w = draw(InitScheme::KaimingNormalFanOut);
    close(var(&w), 2.0 / fan_out, 0.02, "kaiming-normal-fan-out variance");

    let w = draw(InitScheme::XavierUniform);
    let a = (6.0 / (fan_in + fan_out)).sqrt();
    assert!(w.max().double_value(&[]) <= a && w.min().double_value(&[]) >= -a);
    close(var(&w), a * a / 3.0, 0.02, "xavier-uniform variance");
    let w = draw(InitScheme::XavierNormal);
    close(var(&w), 2.0 / (fan_in + fan_out), 0.02, "xavier-normal variance");
    for s in ALL_SCHEMES {
        assert!(mean(&draw(s)).abs() < 2e-3 * var(&draw(s)).sqrt() * 10.0, "{s:?} mean");
    }

    // Orthogonal: the 128 rows of the flattened weight are orthonormal.
    let w = draw(InitScheme::Orthogonal).view([128, -1]);
    let gram = w.matmul(&w.transpose(0, 1));
    let eye = Tensor::eye(128, (Kind::Float, Device::Cpu));
    assert!((gram - eye).abs().max().double_value(&[]) < 1e-4);
}

#[test]
fn the_correlated_init_has_its_covariance() {
    // Many 5x5 filters; their empirical covariance over positions must match s^2 D R D.
    let shape = [512i64, 256, 5, 5];
    let fan_in = 256.0 * 25.0;
    let c = init::Correlation {
        length: 1.5,
        decay: 2.0,
    };
    let w = init::conv_weight(InitScheme::Correlated, &shape, 9, "w", Some(c))
        .view([-1, 25])
        .to_kind(Kind::Double);
    let empirical = w.transpose(0, 1).matmul(&w) / w.size()[0] as f64;
    let expected = init::correlated_covariance(5, c).to_kind(Kind::Double) * (2.0 / fan_in);
    let scale = expected.abs().max().double_value(&[]);
    let err = (&empirical - &expected).abs().max().double_value(&[]) / scale;
    assert!(err < 0.02, "max deviation {err} of the covariance");
    // Not i.i.d.: neighbours correlate and the centre varies more than the corners.
    let e = |i: i64, j: i64| expected.double_value(&[i, j]);
    assert!(e(12, 13) > 0.5 * e(12, 12), "neighbours correlate");
    assert!(e(12, 12) > 2.0 * e(0, 0), "the centre varies more than a corner");
    // Mean variance as kaiming-normal's.
    close(
        empirical.diagonal(0, 0, 1).mean(Kind::Double).double_value(&[]),
        2.0 / fan_in,
        0.02,
        "mean variance",
    );
}

#[test]
fn a_seed_reproduces_weights_bit_for_bit() {
    let shape = [16i64, 8, 5, 5];
    for scheme in ALL_SCHEMES {
        let a = init::conv_weight(scheme, &shape, 11, "layer1.0.conv1.weight", None);
        let b = init::conv_weight(scheme, &shape, 11, "layer1.0.conv1.weight", None);
        assert!(a.equal(&b), "{scheme:?}");
        assert!(!a.equal(&init::conv_weight(scheme, &shape, 12, "layer1.0.conv1.weight", None)));
        assert!(!a.equal(&init::conv_weight(scheme, &shape, 11, "layer1.0.conv2.weight", None)));
    }
    // Whole models too, independent of what else was drawn in between.
    let spec = model(8, 8, 3, TrainMode::Learned);
    let a = Net::new(&spec, CIFAR10, 5, Device::Cpu, &[0.5; 3], &[0.25; 3]);
    let _other = Net::new(&spec, CIFAR10, 6, Device::Cpu, &[0.5; 3], &[0.25; 3]);
    let b = Net::new(&spec, CIFAR10, 5, Device::Cpu, &[0.5; 3], &[0.25; 3]);
    for (name, t) in a.vs.variables() {
        assert!(t.equal(&b.vs.variables()[&name]), "{name}");
    }
}

const IMAGENET: InputShape = InputShape {
    channels: 3,
    size: 224,
    classes: 1000,
};

fn torchvision(arch: Arch, stem: Stem) -> convsweep_proto::spec::ModelSpec {
    let mut m = model(20, 16, 3, TrainMode::Learned);
    m.arch = arch;
    m.depth = None;
    m.width = None;
    m.stem = Some(stem);
    m
}

#[test]
fn torchvision_models_match_the_published_parameter_counts() {
    for (arch, params) in [
        (Arch::Resnet18, 11_689_512u64),
        (Arch::Resnet34, 21_797_672),
        (Arch::Resnet50, 25_557_032),
        (Arch::WideResnet50_2, 68_883_240),
        (Arch::MobilenetV2, 3_504_872),
        // timm's model cards (the paper's Table 2 models).
        (Arch::Resnet18d, 11_708_744),
        (Arch::Resnet50d, 25_576_264),
    ] {
        let cost = Net::cost_of(&torchvision(arch, Stem::Imagenet), IMAGENET);
        assert_eq!(cost.params_total, params, "{arch:?}");
    }
}

#[test]
fn torchvision_compute_matches_the_published_gflops() {
    // torchvision's model cards: 1.81, 3.66, 4.09, 11.4 and 0.30 GFLOPS (multiply-accumulates).
    for (arch, gmacs) in [
        (Arch::Resnet18, 1.81),
        (Arch::Resnet34, 3.66),
        (Arch::Resnet50, 4.09),
        (Arch::WideResnet50_2, 11.4),
        (Arch::MobilenetV2, 0.30),
    ] {
        let cost = Net::cost_of(&torchvision(arch, Stem::Imagenet), IMAGENET);
        close(
            cost.macs_per_image as f64 / 1e9,
            gmacs,
            0.02,
            &format!("{arch:?} GMACs"),
        );
    }
}

#[test]
fn low_res_stems_drop_the_max_pool_and_the_stride() {
    let imagenet = Net::cost_of(&torchvision(Arch::Resnet18, Stem::Imagenet), CIFAR10);
    let low_res = Net::cost_of(&torchvision(Arch::Resnet18, Stem::LowRes), CIFAR10);
    // 3x3 instead of 7x7 stem: 64*3*(49-9) fewer weights; 16x the spatial positions after it.
    assert_eq!(imagenet.params_total - low_res.params_total, 64 * 3 * 40);
    assert!(low_res.macs_per_image > 10 * imagenet.macs_per_image);
}

#[test]
fn convmixer_counts_follow_its_definition() {
    let mut m = model(8, 256, 5, TrainMode::Frozen);
    m.arch = Arch::Convmixer;
    m.patch_size = Some(2);
    let cost = Net::cost_of(&m, CIFAR10);
    let (h, d, p, k) = (256u64, 8u64, 2u64, 5u64);
    let stem = 3 * h * p * p + h + 2 * h;
    let block = (h * k * k + h + 2 * h) + (h * h + h + 2 * h);
    let head = h * 10 + 10;
    assert_eq!(cost.params_total, stem + d * block + head);
    // Frozen: the p x p and k x k weights are fixed, their biases learn.
    assert_eq!(cost.params_learnable, cost.params_total - 3 * h * p * p - d * h * k * k);
}

#[test]
fn every_family_runs_forward_at_any_kernel_size_with_lc_blocks() {
    let archs = [
        (Arch::Resnet18, Some(Stem::LowRes)),
        (Arch::Resnet50, Some(Stem::LowRes)),
        (Arch::MobilenetV2, Some(Stem::Imagenet)),
        (Arch::Convmixer, None),
    ];
    for (arch, stem) in archs {
        for (k, expansion) in [(1, None), (5, Some(2))] {
            let mut m = model(20, 16, k, TrainMode::Frozen);
            m.arch = arch;
            m.stem = stem;
            m.expansion = expansion;
            if arch == Arch::Convmixer {
                m.depth = Some(2);
                m.width = Some(32);
            } else {
                m.depth = None;
                m.width = None;
            }
            let net = Net::new(&m, CIFAR10, 0, Device::Cpu, &[0.5; 3], &[0.25; 3]);
            let x = init::with_torch_seed(0, || Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
            assert_eq!(
                net.forward_t(&x, true).size(),
                [2, 10],
                "{arch:?} k={k} E={expansion:?}"
            );
            let params: i64 = net
                .vs
                .variables()
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                .map(|(_, t)| t.numel() as i64)
                .sum();
            assert_eq!(params as u64, net.cost.params_total, "{arch:?}");
            assert_eq!(
                Net::cost_of(&m, CIFAR10),
                net.cost,
                "counting matches building: {arch:?}"
            );
        }
    }
}

#[test]
fn an_lc_block_folds_into_one_equivalent_conv() {
    use convsweep_worker::model::layers::{Builder, ConvShape};
    use convsweep_worker::model::lc::{self, SpatialLayer};
    use tch::nn::ModuleT;
    for (groups, c_in) in [(1, 6), (8, 8)] {
        let mut m = model(8, 8, 5, TrainMode::Learned);
        m.expansion = Some(4);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let mut b = Builder::new(&m, 3, Device::Cpu);
        let (block, _) = b.spatial_shaped(&vs.root(), ConvShape::new(c_in, 8, 5, 1).groups(groups), 16);
        let folded = lc::fold(&SpatialLayer::of("block".into(), &block)).expect("no in-between op: foldable");
        assert_eq!(folded.size(), [8, c_in, 5, 5]);
        let x = init::with_torch_seed(0, || Tensor::randn([4, c_in, 16, 16], (Kind::Float, Device::Cpu)));
        let lc = tch::no_grad(|| block.forward_t(&x, false));
        let one = x.conv2d(&folded, None::<Tensor>, [1, 1], [2, 2], [1, 1], 1);
        let rel = (&lc - &one).norm().double_value(&[]) / one.norm().double_value(&[]);
        assert!(rel < 1e-5, "groups={groups}: relative error {rel}");
    }
    // With a ReLU in between the block is not linear and does not fold.
    let mut m = model(8, 8, 3, TrainMode::Learned);
    m.expansion = Some(2);
    m.inter_op = InterOp::Relu;
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let (block, _) = Builder::new(&m, 0, Device::Cpu).spatial(&vs.root(), 4, 4, 1, 8);
    assert!(lc::fold(&SpatialLayer::of("block".into(), &block)).is_none());
}

#[test]
fn the_largest_paper_model_has_the_papers_size() {
    // "E = 128 at k = 9 is 312.6M parameters for ResNet-20-16".
    let mut m = model(20, 16, 9, TrainMode::Frozen);
    m.expansion = Some(128);
    let cost = Net::cost_of(&m, CIFAR10);
    assert_eq!(cost.params_total, 312_552_106);
    assert_eq!((cost.params_total as f64 / 1e5).round(), 3126.0);
}

#[test]
fn large_kernels_run_through_the_fft_on_the_cpu_and_compute_the_same() {
    use convsweep_worker::model::fftconv;
    use convsweep_worker::model::layers::Builder;
    use convsweep_worker::model::lc::Spatial;
    use tch::nn::ModuleT;
    let x = init::with_torch_seed(0, || Tensor::randn([2, 16, 16, 16], (Kind::Float, Device::Cpu)));
    for (k, mode) in [
        (9, TrainMode::Learned),
        (9, TrainMode::Frozen),
        (11, TrainMode::Frozen),
        (7, TrainMode::Learned),
    ] {
        let m = model(8, 16, k, mode);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let (layer, _) = Builder::new(&m, 1, Device::Cpu).spatial(&vs.root(), 16, 16, 1, 16);
        let Spatial::Plain(conv) = &layer else {
            panic!("no expansion: a plain conv")
        };
        let p = i64::from(k / 2);
        let y = tch::no_grad(|| layer.forward_t(&x, true));
        let direct = tch::no_grad(|| x.conv2d(&conv.weight, None::<Tensor>, [1, 1], [p, p], [1, 1], 1));
        let rel = (&y - &direct).norm().double_value(&[]) / direct.norm().double_value(&[]);
        assert!(rel < 1e-5, "k={k} {mode:?}: relative error {rel:.1e} against conv2d");
        // Which algorithm ran: the FFT's result and oneDNN's agree only to rounding.
        let fft = tch::no_grad(|| fftconv::conv2d(&x, &conv.weight, None, p));
        assert_eq!(y.equal(&fft), k >= 9, "k={k}: FFT path taken");
        assert_eq!(y.equal(&direct), k < 9, "k={k}: oneDNN path taken");
    }
}

#[test]
fn the_conv_algorithm_is_configuration_and_is_recorded() {
    use convsweep_worker::model::Compute;
    let x = init::with_torch_seed(0, || Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
    let m = model(20, 16, 9, TrainMode::Frozen);
    let stats = ([0.5; 3], [0.25; 3]);
    let fft = Net::new(&m, CIFAR10, 0, Device::Cpu, &stats.0, &stats.1);
    let direct = Net::new(
        &m,
        CIFAR10,
        0,
        Compute {
            device: Device::Cpu,
            fft_conv: false,
        },
        &stats.0,
        &stats.1,
    );
    assert_eq!(fft.conv_algorithm(), "direct", "nothing ran yet");
    let (a, b) = tch::no_grad(|| (fft.forward_t(&x, false), direct.forward_t(&x, false)));
    // 19 k x k convs and 2 1x1 shortcuts ran; the stem (3 input channels) and the two
    // stride-2 convs stay direct.
    assert_eq!(fft.conv_algorithm(), "fft:16/21");
    assert_eq!(direct.conv_algorithm(), "direct");
    let rel = (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]);
    assert!(rel < 1e-4, "same function either way: {rel:.1e}");
    assert!(!a.equal(&b), "but not the same kernels");
}
