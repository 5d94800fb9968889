//! The synthetic dataset: CIFAR-shaped (3x32x32, 10 classes), made deterministically from a
//! seed, learnable but not trivial.
//!
//! Class `c` is a *plaid*: two gratings at orientations `+theta` and `-theta` with
//! `theta = (c mod 5) * 18 deg` (jittered by up to +-4 deg) and a spatial frequency that is low
//! (1.5 to 2.5 cycles per image) for `c < 5` and high (3.5 to 5) otherwise. A plaid at
//! `+-theta` is its own horizontal mirror image and a grating is shift-invariant, so the
//! CIFAR augmentation (random crop and flip) never changes the class. Each image adds a
//! distractor grating of random orientation and frequency at half amplitude, a random colour
//! tint, a random brightness offset and Gaussian pixel noise (`noise` times the texture
//! amplitude). Telling neighbouring orientations apart through noise and distractor needs
//! oriented filters of some extent, which is what the sweeps compare.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use super::split::Split;
use crate::model::init::with_torch_seed;
use crate::rng::{Rng, derive_seed};

/// Side of the images.
pub const SIZE: i64 = 32;
/// Classes.
pub const CLASSES: i64 = 10;

/// Makes `n` images and labels (balanced classes, shuffled) from `seed`; `split` picks an
/// independent stream for train and test.
pub fn generate(n: usize, noise: f64, seed: u64, split: &str) -> Split {
    let mut rng = Rng::new(derive_seed(seed, split));
    let mut labels: Vec<i64> = (0..n as i64).map(|i| i % CLASSES).collect();
    let order = rng.permutation(n);
    labels = order.iter().map(|&i| labels[i as usize]).collect();

    // Per-image parameters, drawn in a fixed order.
    let mut params = vec![0f32; n * 11];
    for (i, &c) in labels.iter().enumerate() {
        let jitter = (rng.unit() - 0.5) * 8.0;
        let theta = ((c % 5) as f64 * 18.0 + jitter).to_radians();
        let freq = if c < 5 {
            1.5 + rng.unit()
        } else {
            3.5 + 1.5 * rng.unit()
        };
        let p = &mut params[i * 11..(i + 1) * 11];
        p[0] = theta as f32;
        p[1] = freq as f32;
        p[2] = (rng.unit() * 2.0 * PI) as f32; // phase of +theta
        p[3] = (rng.unit() * 2.0 * PI) as f32; // phase of -theta
        p[4] = (rng.unit() * PI) as f32; // distractor orientation
        p[5] = (1.5 + 3.5 * rng.unit()) as f32; // distractor frequency
        p[6] = (rng.unit() * 2.0 * PI) as f32; // distractor phase
        for ch in 0..3 {
            p[7 + ch] = (0.4 + 0.6 * rng.unit()) as f32; // tint
        }
        p[10] = ((rng.unit() - 0.5) * 0.4) as f32; // brightness offset
    }
    let p = Tensor::from_slice(&params).view([n as i64, 11]);
    let col = |j: i64| p.select(1, j).view([-1, 1, 1]);

    let coords = Tensor::arange(SIZE, (Kind::Float, Device::Cpu));
    let ys = coords.view([1, SIZE, 1]);
    let xs = coords.view([1, 1, SIZE]);
    let grating = |theta: &Tensor, freq: &Tensor, phase: &Tensor| {
        let u = &xs * theta.cos() + &ys * theta.sin();
        (u * freq * (2.0 * PI / SIZE as f64) + phase).cos()
    };
    let theta = col(0);
    let plaid = grating(&theta, &col(1), &col(2)) + grating(&(-&theta), &col(1), &col(3));
    let distractor = grating(&col(4), &col(5), &col(6)) * 0.5;
    let texture = (plaid * 0.5 + distractor).unsqueeze(1); // [n, 1, 32, 32], amplitude ~1
    let tint = p.narrow(1, 7, 3).view([-1, 3, 1, 1]);
    let brightness = p.select(1, 10).view([-1, 1, 1, 1]);
    let pixel_noise = with_torch_seed(derive_seed(seed, &format!("{split}/noise")), || {
        Tensor::randn([n as i64, 3, SIZE, SIZE], (Kind::Float, Device::Cpu))
    }) * noise;
    let image = (texture * tint + pixel_noise) * 0.25 + 0.5 + brightness;
    let images = (image.clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8);
    Split::new(images, Tensor::from_slice(&labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_in_range() {
        let a = generate(200, 0.6, 1, "train");
        let b = generate(200, 0.6, 1, "train");
        assert!(a.images.equal(&b.images));
        assert!(a.labels.equal(&b.labels));
        assert_eq!(a.images.size(), [200, 3, 32, 32]);
        assert_eq!(a.images.kind(), Kind::Uint8);
        let counts = a.labels.bincount(None::<Tensor>, CLASSES);
        assert_eq!(Vec::<i64>::try_from(counts).unwrap(), vec![20; 10]);
        let c = generate(200, 0.6, 2, "train");
        assert!(!a.images.equal(&c.images));
        let test = generate(200, 0.6, 1, "test");
        assert!(!a.images.equal(&test.images));
    }
}
