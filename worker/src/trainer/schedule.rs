//! Learning-rate schedules as pure functions of the step.

use convsweep_proto::spec::LrSchedule;

/// The learning rate for 0-based iteration `step` of `total` iterations.
///
/// Cosine: `lr * (1 + cos(pi * step / total)) / 2`, which is what PyTorch's `CosineAnnealingLR`
/// with `T_max = total`, `eta_min = 0` gives when stepped after every iteration (the paper).
pub fn lr_at(schedule: LrSchedule, base: f64, step: u64, total: u64) -> f64 {
    match schedule {
        LrSchedule::Constant => base,
        LrSchedule::Cosine => {
            let t = step.min(total) as f64 / total.max(1) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_base_halves_midway_and_ends_at_zero() {
        let lr = |s| lr_at(LrSchedule::Cosine, 0.1, s, 1000);
        assert_eq!(lr(0), 0.1);
        assert!((lr(500) - 0.05).abs() < 1e-12);
        assert!(lr(1000).abs() < 1e-12);
        assert!((1..1000).all(|s| lr(s) < lr(s - 1)));
    }

    #[test]
    fn cosine_matches_pytorch_closed_form() {
        // torch.optim.lr_scheduler.CosineAnnealingLR(T_max=10), lr=0.01, read after 3 steps.
        let expected = 0.01 * (1.0 + (std::f64::consts::PI * 3.0 / 10.0).cos()) / 2.0;
        assert!((lr_at(LrSchedule::Cosine, 0.01, 3, 10) - expected).abs() < 1e-15);
    }

    #[test]
    fn constant_is_constant() {
        assert_eq!(lr_at(LrSchedule::Constant, 0.3, 77, 100), 0.3);
    }
}
