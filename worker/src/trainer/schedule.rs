//! Learning-rate schedules as pure functions of the step.

use convsweep_proto::spec::LrSchedule;

/// The learning rate for 0-based iteration `step` of `total` iterations, the first `warmup` of
/// which warm up linearly: `lr * (step + 1) / warmup` there, then the schedule over the
/// remaining `total - warmup` iterations.
///
/// Cosine: `lr * (1 + cos(pi * s / t)) / 2` at iteration `s` of `t`, which is what PyTorch's
/// `CosineAnnealingLR` with `T_max = t`, `eta_min = 0` gives when stepped after every iteration
/// (the paper, which has no warm-up).
pub fn lr_at(schedule: LrSchedule, base: f64, step: u64, total: u64, warmup: u64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let (step, total) = (step - warmup, total.saturating_sub(warmup));
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
        let lr = |s| lr_at(LrSchedule::Cosine, 0.1, s, 1000, 0);
        assert_eq!(lr(0), 0.1);
        assert!((lr(500) - 0.05).abs() < 1e-12);
        assert!(lr(1000).abs() < 1e-12);
        assert!((1..1000).all(|s| lr(s) < lr(s - 1)));
    }

    #[test]
    fn cosine_matches_pytorch_closed_form() {
        // torch.optim.lr_scheduler.CosineAnnealingLR(T_max=10), lr=0.01, read after 3 steps.
        let expected = 0.01 * (1.0 + (std::f64::consts::PI * 3.0 / 10.0).cos()) / 2.0;
        assert!((lr_at(LrSchedule::Cosine, 0.01, 3, 10, 0) - expected).abs() < 1e-15);
    }

    #[test]
    fn constant_is_constant() {
        assert_eq!(lr_at(LrSchedule::Constant, 0.3, 77, 100, 0), 0.3);
    }

    #[test]
    fn warmup_climbs_linearly_then_the_schedule_runs_over_the_rest() {
        let lr = |s| lr_at(LrSchedule::Cosine, 0.1, s, 1100, 100);
        assert!((lr(0) - 0.001).abs() < 1e-15);
        assert!((lr(49) - 0.05).abs() < 1e-15);
        assert!((lr(99) - 0.1).abs() < 1e-15);
        assert!((1..100).all(|s| lr(s) > lr(s - 1)));
        // After it, the cosine of 1000 iterations, from the peak.
        for s in [100, 350, 600, 1100] {
            assert_eq!(lr(s), lr_at(LrSchedule::Cosine, 0.1, s - 100, 1000, 0));
        }
        assert_eq!(lr_at(LrSchedule::Constant, 0.3, 150, 1100, 100), 0.3);
        assert!((lr_at(LrSchedule::Constant, 0.3, 9, 1100, 100) - 0.03).abs() < 1e-15);
    }
}
