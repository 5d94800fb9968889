//! Weight initialisation, seeded per parameter.
//!
//! Every random tensor is drawn on the CPU from torch's generator, re-seeded for that tensor
//! from the trial seed and the parameter's path, under one process-wide lock. So a parameter's
//! initial value depends only on (seed, path, shape, scheme): not on construction order, on
//! other trials training in the same process, or on the device the model then moves to.

use std::sync::Mutex;

use convsweep_proto::spec::InitScheme;
use tch::{Device, Kind, Tensor};

use crate::rng::derive_seed;

static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Runs `f` with torch's global generator seeded to `seed`, excluding every other seeded draw.
pub fn with_torch_seed<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    f()
}

/// Fan-in of a weight of shape `[c_out, c_in, k, k]` (or `[out, in]`).
pub fn fan_in(shape: &[i64]) -> i64 {
    shape[1..].iter().product()
}

/// A conv weight `[c_out, c_in, k, k]` drawn by `scheme`, on the CPU, float32.
///
/// - kaiming-uniform (PyTorch's default, a = sqrt(5)): `U[-b, b]`, `b = 1/sqrt(fan_in)`.
/// - kaiming-normal (fan_in, ReLU gain): `N(0, 2/fan_in)`.
pub fn conv_weight(scheme: InitScheme, shape: &[i64], seed: u64, path: &str) -> Tensor {
    let fan_in = fan_in(shape) as f64;
    let opts = (Kind::Float, Device::Cpu);
    with_torch_seed(derive_seed(seed, path), || match scheme {
        InitScheme::KaimingUniform => {
            let b = 1.0 / fan_in.sqrt();
            Tensor::empty(shape, opts).uniform_(-b, b)
        }
        InitScheme::KaimingNormal => Tensor::randn(shape, opts) * (2.0 / fan_in).sqrt(),
    })
}

/// `U[-1/sqrt(fan_in), 1/sqrt(fan_in)]`: PyTorch's default for linear weights and biases.
pub fn linear_uniform(shape: &[i64], fan_in: i64, seed: u64, path: &str) -> Tensor {
    let b = 1.0 / (fan_in as f64).sqrt();
    with_torch_seed(derive_seed(seed, path), || {
        Tensor::empty(shape, (Kind::Float, Device::Cpu)).uniform_(-b, b)
    })
}
