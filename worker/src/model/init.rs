//! Weight initialisation, seeded per parameter.
//!
//! Every random tensor is drawn on the CPU from torch's generator, re-seeded for that tensor
//! from the trial seed and the parameter's path, under one process-wide lock. So a parameter's
//! initial value depends only on (seed, path, shape, scheme): not on construction order, on
//! other trials training in the same process, or on the device the model then moves to.
//!
//! Fans follow PyTorch: for a conv weight `[c_out, c_in/groups, k, k]`,
//! `fan_in = c_in/groups * k * k` and `fan_out = c_out * k * k`.

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

/// Fan-in of a weight `[c_out, c_in/groups, k, k]` (or `[out, in]`).
pub fn fan_in(shape: &[i64]) -> i64 {
    shape[1..].iter().product()
}

/// Fan-out of a weight `[c_out, c_in/groups, k, k]` (or `[out, in]`).
pub fn fan_out(shape: &[i64]) -> i64 {
    shape[0] * shape[2..].iter().product::<i64>()
}

/// Parameters of the correlated scheme.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correlation {
    /// Correlation length between kernel positions, pixels.
    pub length: f64,
    /// Scale of the variance's decay from the kernel centre, pixels.
    pub decay: f64,
}

/// The `k*k x k*k` covariance `D R D` of the correlated scheme over row-major kernel positions,
/// scaled to a mean diagonal of 1.
pub fn correlated_covariance(k: i64, c: Correlation) -> Tensor {
    let centre = (k - 1) as f64 / 2.0;
    let pos: Vec<(f64, f64)> = (0..k * k).map(|i| ((i / k) as f64, (i % k) as f64)).collect();
    let d: Vec<f64> = pos
        .iter()
        .map(|(y, x)| (-((y - centre).powi(2) + (x - centre).powi(2)) / (2.0 * c.decay * c.decay)).exp())
        .collect();
    let n = pos.len();
    let mut cov = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let dist2 = (pos[i].0 - pos[j].0).powi(2) + (pos[i].1 - pos[j].1).powi(2);
            cov[i * n + j] = d[i] * d[j] * (-dist2 / (2.0 * c.length * c.length)).exp();
        }
    }
    let mean_diag = (0..n).map(|i| cov[i * n + i]).sum::<f64>() / n as f64;
    Tensor::from_slice(&cov).view([n as i64, n as i64]) / mean_diag
}

/// `torch.nn.init.orthogonal_` with gain 1 on `shape` (flattened to `[shape[0], rest]`).
///
/// Computed in float64 and rounded to float32: threaded LAPACK/BLAS may block differently
/// when other threads are busy, and the float64 rounding noise this causes vanishes in the
/// final rounding, so a seed keeps reproducing the same float32 weights.
fn orthogonal(shape: &[i64]) -> Tensor {
    let rows = shape[0];
    let cols: i64 = shape[1..].iter().product();
    let mut flat = Tensor::randn([rows, cols], (Kind::Float, Device::Cpu)).to_kind(Kind::Double);
    if rows < cols {
        flat = flat.t_copy();
    }
    let (mut q, r) = Tensor::linalg_qr(&flat, "reduced");
    let signs = r.diagonal(0, 0, 1).sign();
    q *= signs.unsqueeze(0);
    if rows < cols {
        q = q.t_copy();
    }
    q.contiguous().view(shape).to_kind(Kind::Float)
}

/// A conv weight of `shape` drawn by `scheme`, on the CPU, float32. `correlation` is used by
/// the correlated scheme only.
pub fn conv_weight(
    scheme: InitScheme,
    shape: &[i64],
    seed: u64,
    path: &str,
    correlation: Option<Correlation>,
) -> Tensor {
    let fan_in = fan_in(shape) as f64;
    let fan_out = fan_out(shape) as f64;
    let opts = (Kind::Float, Device::Cpu);
    with_torch_seed(derive_seed(seed, path), || match scheme {
        InitScheme::KaimingUniform => {
            let b = 1.0 / fan_in.sqrt();
            Tensor::empty(shape, opts).uniform_(-b, b)
        }
        InitScheme::KaimingNormal => Tensor::randn(shape, opts) * (2.0 / fan_in).sqrt(),
        InitScheme::KaimingNormalFanOut => Tensor::randn(shape, opts) * (2.0 / fan_out).sqrt(),
        InitScheme::XavierUniform => {
            let a = (6.0 / (fan_in + fan_out)).sqrt();
            Tensor::empty(shape, opts).uniform_(-a, a)
        }
        InitScheme::XavierNormal => Tensor::randn(shape, opts) * (2.0 / (fan_in + fan_out)).sqrt(),
        InitScheme::Orthogonal => orthogonal(shape),
        InitScheme::Correlated => {
            let k = if shape.len() == 4 { shape[2] } else { 1 };
            let c = correlation.unwrap_or(Correlation {
                length: convsweep_proto::spec::DEFAULT_INIT_LENGTH,
                decay: convsweep_proto::spec::default_init_decay(k as u32),
            });
            let cov = correlated_covariance(k, c).to_kind(Kind::Double);
            // A tiny jitter keeps the Cholesky factorisation defined for long correlations.
            let jitter = Tensor::eye(k * k, (Kind::Double, Device::Cpu)) * 1e-9;
            let l = (cov + jitter).linalg_cholesky(false);
            let filters = shape[0] * shape[1];
            let z = Tensor::randn([filters, k * k], opts).to_kind(Kind::Double);
            // float64 for the same reason as `orthogonal`.
            (z.matmul(&l.transpose(0, 1)) * (2.0 / fan_in).sqrt())
                .to_kind(Kind::Float)
                .view(shape)
        }
    })
}

/// `U[-1/sqrt(fan_in), 1/sqrt(fan_in)]`: PyTorch's default for linear weights and biases and
/// for conv biases.
pub fn fan_in_uniform(shape: &[i64], fan_in: i64, seed: u64, path: &str) -> Tensor {
    let b = 1.0 / (fan_in as f64).sqrt();
    with_torch_seed(derive_seed(seed, path), || {
        Tensor::empty(shape, (Kind::Float, Device::Cpu)).uniform_(-b, b)
    })
}
