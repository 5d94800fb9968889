//! Common corruptions computed on the fly, with the parameters of CIFAR-10-C (Hendrycks &
//! Dietterich, `make_cifar_c.py`), on batches of `[0, 1]` images on any device.
//!
//! | corruption | severity 1..5 | operation |
//! |---|---|---|
//! | gaussian-noise | sigma .04 .06 .08 .09 .10 | `x + N(0, sigma)` |
//! | shot-noise | rate 500 250 100 75 50 | `Poisson(x * rate) / rate` |
//! | impulse-noise | amount .01 .02 .03 .05 .07 | that share of values set to 0 or 1 (half each) |
//! | gaussian-blur | sigma .4 .6 .7 .8 1 | Gaussian filter, radius `int(4 sigma + .5)`, edges repeated |
//! | contrast | c .75 .5 .4 .3 .15 | `(x - m) c + m`, m the image's per-channel mean |
//! | brightness | c .05 .1 .15 .2 .3 | HSV value `v + c` |
//! | pixelate | c .95 .9 .85 .75 .65 | PIL BOX resize to `int(32 c)` and back, on bytes |
//!
//! Results are clipped to `[0, 1]` and truncated to bytes as CIFAR-10-C stores them
//! (`np.uint8`). Random corruptions draw from a seed, so they are reproducible.

use convsweep_proto::spec::Corruption;
use tch::{Device, Kind, Tensor};

use crate::model::init::with_torch_seed;

/// The severity parameter of `c` (severity 1 to 5).
pub fn parameter(c: Corruption, severity: u32) -> f64 {
    let table: [f64; 5] = match c {
        Corruption::GaussianNoise => [0.04, 0.06, 0.08, 0.09, 0.10],
        Corruption::ShotNoise => [500.0, 250.0, 100.0, 75.0, 50.0],
        Corruption::ImpulseNoise => [0.01, 0.02, 0.03, 0.05, 0.07],
        Corruption::GaussianBlur => [0.4, 0.6, 0.7, 0.8, 1.0],
        Corruption::Contrast => [0.75, 0.5, 0.4, 0.3, 0.15],
        Corruption::Brightness => [0.05, 0.1, 0.15, 0.2, 0.3],
        Corruption::Pixelate => [0.95, 0.9, 0.85, 0.75, 0.65],
    };
    table[(severity.clamp(1, 5) - 1) as usize]
}

/// Random values drawn on the CPU from `seed` (reproducible on any device), moved to `like`'s.
fn seeded(seed: u64, like: &Tensor, draw: impl FnOnce(&[i64]) -> Tensor) -> Tensor {
    let size = like.size();
    with_torch_seed(seed, || draw(&size)).to_device(like.device())
}

/// Corrupts `x` (float `[B, C, H, W]` in `[0, 1]`) with `c` at `severity`.
pub fn corrupt(x: &Tensor, c: Corruption, severity: u32, seed: u64) -> Tensor {
    let p = parameter(c, severity);
    let cpu = (Kind::Float, Device::Cpu);
    let out = match c {
        Corruption::GaussianNoise => x + seeded(seed, x, |s| Tensor::randn(s, cpu)) * p,
        Corruption::ShotNoise => {
            let rate = (x * p).to_device(Device::Cpu);
            let counts = with_torch_seed(seed, || rate.poisson());
            counts.to_device(x.device()) / p
        }
        Corruption::ImpulseNoise => {
            let hit = seeded(seed, x, |s| Tensor::rand(s, cpu)).lt(p);
            let salt = seeded(seed ^ 0x5a17, x, |s| Tensor::rand(s, cpu)).lt(0.5);
            let value = salt.to_kind(Kind::Float);
            x.where_self(&hit.logical_not(), &value)
        }
        Corruption::GaussianBlur => gaussian_blur(x, p),
        Corruption::Contrast => {
            let means = x.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
            (x - &means) * p + means
        }
        Corruption::Brightness => {
            // H and S stay; RGB is V times a function of (H, S), so it scales with V. Black
            // (V = 0, S undefined -> 0) becomes grey at V = c.
            let v = x.amax([1i64].as_slice(), true);
            let v_new = (&v + p).clamp(0.0, 1.0);
            let scaled = x * &v_new / v.clamp_min(1e-12);
            let grey = v_new.expand_as(x);
            scaled.where_self(&v.gt(0.0).expand_as(x), &grey)
        }
        Corruption::Pixelate => return pixelate(x, p),
    };
    to_bytes(&out.clamp(0.0, 1.0))
}

/// `np.uint8(x * 255) / 255`: truncation to byte levels. The 1e-3 guard keeps values that are
/// exactly on a level (untouched pixels) there despite float32 rounding (128/255*255 may come
/// out as 127.99999).
fn to_bytes(x: &Tensor) -> Tensor {
    (x * 255.0 + 1e-3).floor() / 255.0
}

/// scipy/skimage `gaussian(sigma)` over H and W with mode `nearest` and `truncate = 4`.
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    let radius = (4.0 * sigma + 0.5) as i64;
    let weights: Vec<f32> = (-radius..=radius)
        .map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp() as f32)
        .collect();
    let total: f32 = weights.iter().sum();
    let kernel = Tensor::from_slice(&weights.iter().map(|w| w / total).collect::<Vec<_>>()).to_device(x.device());
    let channels = x.size()[1];
    let n = 2 * radius + 1;
    let rows = kernel.view([1, 1, n, 1]).repeat([channels, 1, 1, 1]);
    let cols = kernel.view([1, 1, 1, n]).repeat([channels, 1, 1, 1]);
    let padded = x.pad([radius, radius, radius, radius], "replicate", None);
    padded
        .conv2d(&rows, None::<Tensor>, [1, 1], [0, 0], [1, 1], channels)
        .conv2d(&cols, None::<Tensor>, [1, 1], [0, 0], [1, 1], channels)
}

/// PIL's BOX resampling coefficients from `from` to `to` pixels (`precompute_coeffs`).
fn box_coefficients(from: i64, to: i64) -> Vec<f32> {
    let scale = from as f64 / to as f64;
    let filterscale = scale.max(1.0);
    let support = 0.5 * filterscale;
    let mut m = vec![0f32; (to * from) as usize];
    for i in 0..to {
        let center = (i as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(from);
        let mut row: Vec<(i64, f64)> = Vec::new();
        for x in xmin..xmax {
            let t = (x as f64 - center + 0.5) / filterscale;
            if (-0.5..0.5).contains(&t) {
                row.push((x, 1.0));
            }
        }
        let total: f64 = row.iter().map(|(_, w)| w).sum();
        for (x, w) in row {
            m[(i * from + x) as usize] = (w / total) as f32;
        }
    }
    m
}

/// One PIL resize pass along the last dim of byte-valued floats, rounded to bytes as PIL does.
fn resize_last(x: &Tensor, to: i64) -> Tensor {
    let from = *x.size().last().expect("image tensor");
    let m = Tensor::from_slice(&box_coefficients(from, to))
        .view([to, from])
        .to_device(x.device());
    x.matmul(&m.transpose(0, 1)).round().clamp(0.0, 255.0)
}

/// PIL BOX resize of `[B, C, H, W]` byte-valued floats to `to x to`: horizontal, then vertical.
fn box_resize(x: &Tensor, to: i64) -> Tensor {
    let horizontal = resize_last(x, to);
    resize_last(&horizontal.transpose(2, 3), to).transpose(2, 3)
}

/// CIFAR-10-C pixelate: down to `int(side * c)` and back up with PIL's BOX filter, on bytes.
pub fn pixelate(x: &Tensor, c: f64) -> Tensor {
    let side = x.size()[3];
    let small = (side as f64 * c) as i64;
    let bytes = (x * 255.0).round();
    box_resize(&box_resize(&bytes, small), side) / 255.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(v: f64) -> Tensor {
        Tensor::full([4, 3, 32, 32], v, (Kind::Float, Device::Cpu))
    }

    fn mean(t: &Tensor) -> f64 {
        t.mean(Kind::Double).double_value(&[])
    }

    #[test]
    fn every_corruption_stays_in_range_on_byte_levels_and_grows_with_severity() {
        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        let x = (x * 255.0).floor() / 255.0;
        for c in Corruption::ALL {
            let mut last = 0.0;
            for s in 1..=5 {
                let y = corrupt(&x, c, s, 1);
                assert_eq!(y.size(), x.size());
                assert!(
                    y.min().double_value(&[]) >= 0.0 && y.max().double_value(&[]) <= 1.0,
                    "{c:?}"
                );
                let levels = &y * 255.0;
                assert!(
                    (&levels - levels.round()).abs().max().double_value(&[]) < 1e-4,
                    "{c:?} not on bytes"
                );
                let d = mean(&(&y - &x).abs());
                assert!(d >= last - 2e-3, "{c:?} severity {s}: {d} < {last}");
                last = d;
            }
            assert!(last > 0.005, "{c:?} changes images");
        }
    }

    #[test]
    fn noises_have_their_statistics() {
        let x = grey(0.5);
        let g = corrupt(&x, Corruption::GaussianNoise, 5, 3) - &x;
        let std = g.std(false).double_value(&[]);
        assert!((std - 0.10).abs() < 0.005, "gaussian std {std}");
        let s = corrupt(&x, Corruption::ShotNoise, 5, 3);
        // Poisson(25) / 50: variance 25 / 2500 = 0.01.
        let var = s.var(false).double_value(&[]);
        assert!((var - 0.01).abs() < 0.001, "shot variance {var}");
        let level = grey(128.0 / 255.0);
        assert!(to_bytes(&level).equal(&level), "byte levels survive truncation");
        let i = corrupt(&level, Corruption::ImpulseNoise, 5, 3);
        let changed = mean(&(&i - &level).abs().gt(1e-6).to_kind(Kind::Float));
        assert!((changed - 0.07).abs() < 0.005, "impulse share {changed}");
        let salt = mean(&i.eq(1.0).to_kind(Kind::Float));
        assert!((salt - 0.035).abs() < 0.004, "salt share {salt}");
        assert!(corrupt(&x, Corruption::GaussianNoise, 5, 3).equal(&corrupt(&x, Corruption::GaussianNoise, 5, 3)));
    }

    #[test]
    fn deterministic_corruptions_follow_their_formulas() {
        let x = (Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 255.0).floor() / 255.0;
        // Contrast: exactly (x - m) c + m, then bytes.
        let m = x.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
        let want = to_bytes(&((&x - &m) * 0.15 + &m).clamp(0.0, 1.0));
        // to_bytes is floor(255 x): check one value by hand.
        let v = ((x.double_value(&[0, 0, 0, 0]) - m.double_value(&[0, 0, 0, 0])) * 0.15
            + m.double_value(&[0, 0, 0, 0]))
        .clamp(0.0, 1.0);
        assert!((want.double_value(&[0, 0, 0, 0]) - (v * 255.0 + 1e-3).floor() / 255.0).abs() < 1e-6);
        assert!(corrupt(&x, Corruption::Contrast, 5, 0).equal(&want));
        // Brightness: the max channel (HSV value) rises by c where it can.
        let b = corrupt(&x, Corruption::Brightness, 3, 0);
        let v = x.amax([1i64].as_slice(), false);
        let vb = b.amax([1i64].as_slice(), false);
        let expected = (v + 0.15).clamp(0.0, 1.0);
        assert!((vb - expected).abs().max().double_value(&[]) <= 1.0 / 255.0 + 1e-6);
        // Blur and pixelate keep constant images.
        let g = grey(100.0 / 255.0);
        assert!(corrupt(&g, Corruption::GaussianBlur, 5, 0).equal(&g));
        assert!(corrupt(&g, Corruption::Pixelate, 5, 0).equal(&g));
    }

    #[test]
    fn blur_kernel_is_scipys() {
        // A single bright pixel spreads as the normalised kernel exp(-i^2 / 2), radius 4.
        let mut x = Tensor::zeros([1, 1, 16, 16], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(0).get(8).get(8).fill_(1.0);
        x = gaussian_blur(&x, 1.0);
        let k: Vec<f64> = (-4i32..=4).map(|i| (-0.5 * f64::from(i * i)).exp()).collect();
        let total: f64 = k.iter().sum();
        assert!((x.double_value(&[0, 0, 8, 8]) - (k[4] / total).powi(2)).abs() < 1e-6);
        assert!((x.double_value(&[0, 0, 8, 10]) - k[4] * k[6] / total / total).abs() < 1e-6);
        assert!((x.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn pil_box_coefficients() {
        // 32 -> 30: each output averages the input pixels whose centres fall in its footprint.
        let m = box_coefficients(32, 30);
        for i in 0..30 {
            let row = &m[i * 32..(i + 1) * 32];
            let total: f32 = row.iter().sum();
            assert!((total - 1.0).abs() < 1e-6);
            assert!(row.iter().filter(|w| **w > 0.0).count() <= 2);
        }
        // Upsampling 30 -> 32 picks one source pixel per output (nearest).
        let up = box_coefficients(30, 32);
        for i in 0..32 {
            assert_eq!(up[i * 30..(i + 1) * 30].iter().filter(|w| **w > 0.0).count(), 1);
        }
    }
}
