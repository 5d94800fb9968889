//! L-inf adversarial attacks on `[0, 1]` inputs (normalisation is inside the model): FGSM
//! (Goodfellow et al.) and PGD (Madry et al.). The model is in eval mode and gradients are
//! taken with respect to the input only: parameter gradients are never computed or touched.

use tch::{Kind, Reduction, Tensor};

use crate::model::Net;
use crate::model::init::with_torch_seed;

/// The gradient of the mean cross-entropy with respect to `x` alone.
fn input_gradient(net: &Net, x: &Tensor, y: &Tensor) -> Tensor {
    let x = x.detach().set_requires_grad(true);
    let logits = net.forward_t(&x, false);
    let loss = logits.cross_entropy_loss(y, None::<Tensor>, Reduction::Mean, -100, 0.0);
    Tensor::run_backward(&[&loss], &[&x], false, false).remove(0)
}

/// FGSM: one signed-gradient step of size `eps`, clipped to `[0, 1]`.
pub fn fgsm(net: &Net, x: &Tensor, y: &Tensor, eps: f64) -> Tensor {
    if eps == 0.0 {
        return x.detach();
    }
    let g = input_gradient(net, x, y);
    (x + g.sign() * eps).clamp(0.0, 1.0).detach()
}

/// One PGD configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pgd {
    /// L-inf radius.
    pub eps: f64,
    /// Iterations.
    pub steps: u32,
    /// Step size.
    pub step_size: f64,
    /// Start from a uniformly random point of the eps-ball.
    pub random_start: bool,
}

/// PGD: `steps` signed-gradient steps of size `step_size`, each projected back onto the
/// eps-ball around `x` and onto `[0, 1]`; optionally from a uniformly random start in the ball
/// (drawn from `seed`).
pub fn pgd(net: &Net, x: &Tensor, y: &Tensor, p: Pgd, seed: u64) -> Tensor {
    let Pgd {
        eps,
        steps,
        step_size,
        random_start,
    } = p;
    if eps == 0.0 {
        return x.detach();
    }
    let lower = (x - eps).clamp_min(0.0);
    let upper = (x + eps).clamp_max(1.0);
    let mut adv = if random_start {
        let noise = with_torch_seed(seed, || Tensor::rand(x.size(), (Kind::Float, tch::Device::Cpu)));
        let noise = noise.to_device(x.device()) * (2.0 * eps) - eps;
        (x + noise).clamp(0.0, 1.0)
    } else {
        x.detach()
    };
    for _ in 0..steps {
        let g = input_gradient(net, &adv, y);
        adv = (&adv + g.sign() * step_size).detach();
        adv = adv.max_other(&lower).min_other(&upper);
    }
    adv.detach()
}

/// How many of `y` the model gets right on `x`, a scalar on the device (not read).
pub fn correct(net: &Net, x: &Tensor, y: &Tensor) -> Tensor {
    tch::no_grad(|| net.forward_t(x, false).argmax(-1, false).eq_tensor(y).sum(Kind::Int64))
}
