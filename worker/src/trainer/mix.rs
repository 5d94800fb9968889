//! Mixup and CutMix (as timm's "batch" mode: one draw per batch, each image mixed with the
//! batch's mirror order), soft targets, and the losses over them (cross-entropy or binary
//! cross-entropy, both with label smoothing).
//!
//! Draws come from the trial's generator only when mixing is on, so a recipe without it draws
//! exactly what it drew before.

use convsweep_proto::spec::Loss;
use tch::{Kind, Reduction, Tensor};

use crate::rng::Rng;

/// What one batch is mixed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mix {
    /// `lam * x + (1 - lam) * x.flip(0)`.
    Mixup(f64),
    /// The box `rows x cols` of `x.flip(0)` pasted into `x`; `lam` is the share left of `x`.
    Cutmix {
        /// Share of each image that stays its own.
        lam: f64,
        /// Rows of the box, `[start, end)`.
        rows: (i64, i64),
        /// Columns of the box.
        cols: (i64, i64),
    },
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u = 1.0 - rng.unit();
    let v = rng.unit();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang; shapes below 1 through shape + 1).
fn gamma(shape: f64, rng: &mut Rng) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.unit();
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - rng.unit();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Beta(alpha, alpha) draw.
pub fn beta(alpha: f64, rng: &mut Rng) -> f64 {
    let (a, b) = (gamma(alpha, rng), gamma(alpha, rng));
    if a + b > 0.0 { a / (a + b) } else { 0.5 }
}

/// The mixing of one batch of `h x w` images: none when both alphas are 0; with both, mixup
/// or CutMix at even odds (timm's `switch_prob` 0.5).
pub fn draw(mixup: f64, cutmix: f64, h: i64, w: i64, rng: &mut Rng) -> Option<Mix> {
    let use_cutmix = match (mixup > 0.0, cutmix > 0.0) {
        (false, false) => return None,
        (true, false) => false,
        (false, true) => true,
        (true, true) => rng.below(2) == 1,
    };
    if !use_cutmix {
        return Some(Mix::Mixup(beta(mixup, rng)));
    }
    let lam = beta(cutmix, rng);
    let ratio = (1.0 - lam).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
    let (cy, cx) = (rng.below(h as u64) as i64, rng.below(w as u64) as i64);
    let rows = ((cy - cut_h / 2).clamp(0, h), (cy + cut_h / 2).clamp(0, h));
    let cols = ((cx - cut_w / 2).clamp(0, w), (cx + cut_w / 2).clamp(0, w));
    // The share actually left after clipping the box to the image.
    let lam = 1.0 - ((rows.1 - rows.0) * (cols.1 - cols.0)) as f64 / (h * w) as f64;
    Some(Mix::Cutmix { lam, rows, cols })
}

/// The mixed batch and the share `lam` of each image's own label.
pub fn apply(x: &Tensor, mix: Mix) -> (Tensor, f64) {
    let other = x.flip([0]);
    match mix {
        Mix::Mixup(lam) => (x * lam + other * (1.0 - lam), lam),
        Mix::Cutmix { lam, rows, cols } => {
            let out = x.copy();
            let (rh, cw) = (rows.1 - rows.0, cols.1 - cols.0);
            if rh > 0 && cw > 0 {
                out.narrow(2, rows.0, rh)
                    .narrow(3, cols.0, cw)
                    .copy_(&other.narrow(2, rows.0, rh).narrow(3, cols.0, cw));
            }
            (out, lam)
        }
    }
}

/// Smoothed one-hot targets of `y` over `classes`, mixed with the mirror order by `lam`.
pub fn soft_targets(y: &Tensor, classes: i64, smoothing: f64, lam: f64) -> Tensor {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let hot = y.one_hot(classes).to_kind(Kind::Float) * (on - off) + off;
    &hot * lam + hot.flip([0]) * (1.0 - lam)
}

/// The loss of `logits` against soft `targets`: cross-entropy or per-class binary
/// cross-entropy (mean over images and classes, as timm's `BinaryCrossEntropy`).
pub fn soft_loss(logits: &Tensor, targets: &Tensor, loss: Loss) -> Tensor {
    match loss {
        Loss::Ce => -(targets * logits.log_softmax(-1, Kind::Float))
            .sum_dim_intlist(-1, false, Kind::Float)
            .mean(Kind::Float),
        Loss::Bce => logits.binary_cross_entropy_with_logits(targets, None::<Tensor>, None::<Tensor>, Reduction::Mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn beta_draws_have_the_right_mean_and_spread() {
        let mut rng = Rng::new(3);
        for alpha in [0.2, 1.0, 4.0] {
            let draws: Vec<f64> = (0..20_000).map(|_| beta(alpha, &mut rng)).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
            assert!((mean - 0.5).abs() < 0.01, "alpha {alpha}: mean {mean}");
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((var - want).abs() < 0.1 * want, "alpha {alpha}: var {var} vs {want}");
            assert!(draws.iter().all(|d| (0.0..=1.0).contains(d)));
        }
    }

    #[test]
    fn cutmix_pastes_the_mirror_images_box_and_lam_is_its_complement() {
        let x = Tensor::arange(2 * 8 * 8, (Kind::Float, Device::Cpu)).view([2, 1, 8, 8]);
        let mix = Mix::Cutmix {
            lam: 0.75,
            rows: (2, 6),
            cols: (0, 4),
        };
        let (out, lam) = apply(&x, mix);
        assert_eq!(lam, 0.75);
        let box0 = out.get(0).narrow(1, 2, 4).narrow(2, 0, 4);
        assert!(box0.equal(&x.get(1).narrow(1, 2, 4).narrow(2, 0, 4)));
        assert!(
            out.get(0).narrow(1, 0, 2).equal(&x.get(0).narrow(1, 0, 2)),
            "outside the box: its own"
        );
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let Some(Mix::Cutmix { lam, rows, cols }) = draw(0.0, 1.0, 32, 32, &mut rng) else {
                panic!("cutmix only")
            };
            let area = ((rows.1 - rows.0) * (cols.1 - cols.0)) as f64;
            assert!((lam - (1.0 - area / 1024.0)).abs() < 1e-12);
        }
        assert_eq!(draw(0.0, 0.0, 32, 32, &mut rng), None);
    }

    #[test]
    fn soft_targets_sum_to_one_and_soft_ce_matches_hard_ce_unmixed() {
        let y = Tensor::from_slice(&[0i64, 3, 1]);
        let t = soft_targets(&y, 4, 0.1, 1.0);
        let sums = Vec::<f64>::try_from(t.sum_dim_intlist(-1, false, Kind::Double)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
        let logits =
            Tensor::from_slice(&[1.0f32, 2.0, -1.0, 0.5, 0.0, 0.3, 2.0, -2.0, 1.5, 1.0, 0.0, 0.2]).view([3, 4]);
        let hard = logits.cross_entropy_loss(&y, None::<Tensor>, Reduction::Mean, -100, 0.1);
        let soft = soft_loss(&logits, &t, Loss::Ce);
        assert!((hard.double_value(&[]) - soft.double_value(&[])).abs() < 1e-6);
        let mixed = soft_targets(&y, 4, 0.0, 0.7);
        // Image 0 is 0.7 its own class 0 and 0.3 the mirror image's class 1.
        assert!((mixed.double_value(&[0, 0]) - 0.7).abs() < 1e-6);
        assert!((mixed.double_value(&[0, 1]) - 0.3).abs() < 1e-6);
        assert!(soft_loss(&logits, &t, Loss::Bce).double_value(&[]) > 0.0);
    }
}
