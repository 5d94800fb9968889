//! Model construction: parameter and compute counts, freezing rule, initialisation.

use convsweep_proto::spec::{InitScheme, InterOp, TrainMode};
use convsweep_worker::model::{InputShape, Net, init};
use tch::{Device, Kind};

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
        let x = tch::Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&x, false).size(), [2, 10], "k={k}");
    }
}

#[test]
fn init_statistics_follow_their_formulas() {
    let shape = [256i64, 256, 3, 3];
    let fan_in = 256.0 * 9.0;
    let w = init::conv_weight(InitScheme::KaimingUniform, &shape, 3, "w");
    let b = 1.0 / f64::sqrt(fan_in);
    assert!(w.max().double_value(&[]) <= b && w.min().double_value(&[]) >= -b);
    let var = w.var(false).double_value(&[]);
    assert!((var / (b * b / 3.0) - 1.0).abs() < 0.02, "var {var}");
    assert!(w.mean(Kind::Double).double_value(&[]).abs() < 1e-4);

    let w = init::conv_weight(InitScheme::KaimingNormal, &shape, 3, "w");
    let std = w.std(false).double_value(&[]);
    assert!((std / (2.0 / fan_in).sqrt() - 1.0).abs() < 0.02, "std {std}");
}

#[test]
fn a_seed_reproduces_weights_bit_for_bit() {
    let shape = [16i64, 8, 5, 5];
    for scheme in [InitScheme::KaimingUniform, InitScheme::KaimingNormal] {
        let a = init::conv_weight(scheme, &shape, 11, "layer1.0.conv1.weight");
        let b = init::conv_weight(scheme, &shape, 11, "layer1.0.conv1.weight");
        assert!(a.equal(&b));
        assert!(!a.equal(&init::conv_weight(scheme, &shape, 12, "layer1.0.conv1.weight")));
        assert!(!a.equal(&init::conv_weight(scheme, &shape, 11, "layer1.0.conv2.weight")));
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
