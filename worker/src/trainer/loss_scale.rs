//! fp16's dynamic loss scale ([`GradScaler`]), which the optimiser applies to each step of an
//! fp16 recipe.

/// fp16's dynamic loss scale, as `torch.cuda.amp.GradScaler` keeps it with its defaults: the
/// loss is multiplied by `scale` before the backward pass and the gradients divided by it
/// after; a step whose gradients overflow is skipped and halves the scale, and 2000 steps in a
/// row without an overflow double it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradScaler {
    /// The current scale.
    pub scale: f64,
    /// Steps since the last overflow or growth.
    pub good_steps: u32,
    /// Steps skipped for an overflow, all told.
    pub skipped: u64,
}

impl GradScaler {
    const INIT: f64 = 65536.0;
    const GROWTH_INTERVAL: u32 = 2000;

    /// A scaler at torch's initial scale, 2^16.
    pub fn new() -> GradScaler {
        GradScaler {
            scale: Self::INIT,
            good_steps: 0,
            skipped: 0,
        }
    }

    /// Records whether the last step's gradients were finite.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler::new()
    }
}
