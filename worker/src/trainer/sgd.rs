//! SGD with momentum, Nesterov and weight decay, exactly as `torch.optim.SGD` computes it
//! (single-tensor path), with its state in the open so that checkpoints can save and restore it
//! (tch's optimiser keeps momentum buffers inside libtorch where they cannot be reached).
//!
//! For each parameter `p` with gradient `g`:
//! ```text
//! g = g + weight_decay * p
//! buf = g (first step) | momentum * buf + (1 - dampening) * g
//! g = g + momentum * buf (Nesterov) | buf
//! p = p - lr * g
//! ```
//! Gradients come from `Tensor::run_backward` for the trainable parameters only, so nothing
//! accumulates in `.grad` and nothing needs zeroing.

use convsweep_proto::spec::TrainSpec;
use tch::Tensor;

/// The optimiser.
pub struct Sgd {
    params: Vec<(String, Tensor)>,
    momentum_buffers: Vec<Option<Tensor>>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
}

impl std::fmt::Debug for Sgd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sgd")
            .field("params", &self.params.len())
            .field("lr", &self.lr)
            .finish_non_exhaustive()
    }
}

impl Sgd {
    /// SGD over `params` (name, tensor) with the recipe's settings.
    pub fn new(params: Vec<(String, Tensor)>, recipe: &TrainSpec) -> Sgd {
        let n = params.len();
        Sgd {
            params,
            momentum_buffers: (0..n).map(|_| None).collect(),
            lr: recipe.lr,
            momentum: recipe.momentum,
            dampening: 0.0,
            weight_decay: recipe.weight_decay,
            nesterov: recipe.nesterov,
        }
    }

    /// Sets the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Back-propagates `loss` to the parameters and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        tch::no_grad(|| {
            for (i, mut g) in grads.into_iter().enumerate() {
                let p = &self.params[i].1;
                if !g.defined() {
                    continue;
                }
                if self.weight_decay != 0.0 {
                    g = g.g_add(&(p * self.weight_decay));
                }
                if self.momentum != 0.0 {
                    let buf = match self.momentum_buffers[i].take() {
                        None => g.copy(),
                        Some(mut b) => {
                            let _ = b.g_mul_scalar_(self.momentum);
                            let _ = b.g_add_(&(&g * (1.0 - self.dampening)));
                            b
                        }
                    };
                    g = if self.nesterov {
                        g.g_add(&(&buf * self.momentum))
                    } else {
                        buf.shallow_clone()
                    };
                    self.momentum_buffers[i] = Some(buf);
                }
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(g * self.lr));
            }
        });
    }

    /// The momentum buffers by parameter name (those that exist yet), for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.momentum_buffers)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (name.clone(), b.shallow_clone())))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are an error.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), String> {
        for (name, buf) in state {
            let i = self
                .params
                .iter()
                .position(|(n, _)| *n == name)
                .ok_or_else(|| format!("momentum buffer for unknown parameter {name}"))?;
            if buf.size() != self.params[i].1.size() {
                return Err(format!("momentum buffer {name} has shape {:?}", buf.size()));
            }
            self.momentum_buffers[i] = Some(buf.to_device(self.params[i].1.device()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The same steps written out by hand, as torch.optim.SGD documents them.
    #[test]
    fn matches_the_pytorch_update_rule() {
        let recipe = TrainSpec {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: true,
            ..TrainSpec::default()
        };
        let p = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
        let mut sgd = Sgd::new(vec![("p".into(), p.shallow_clone())], &recipe);
        let mut expected = vec![1.0f64, -2.0, 3.0];
        let mut buf: Option<Vec<f64>> = None;
        for _ in 0..3 {
            // loss = sum(p^2) / 2, so the gradient is p.
            let loss = (&p * &p).sum(Kind::Double) / 2.0;
            sgd.backward_step(&loss);
            let g: Vec<f64> = expected.iter().map(|x| x + 0.01 * x).collect();
            let b: Vec<f64> = match &buf {
                None => g.clone(),
                Some(b) => b.iter().zip(&g).map(|(b, g)| 0.9 * b + g).collect(),
            };
            let step: Vec<f64> = g.iter().zip(&b).map(|(g, b)| g + 0.9 * b).collect();
            expected = expected.iter().zip(&step).map(|(x, s)| x - 0.1 * s).collect();
            buf = Some(b);
        }
        let got = Vec::<f64>::try_from(p.detach()).unwrap();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-12, "{got:?} vs {expected:?}");
        }
        assert!(
            !p.grad().defined(),
            "gradients are taken with run_backward: nothing accumulates in .grad"
        );
    }

    #[test]
    fn state_round_trips() {
        let recipe = TrainSpec::default();
        let p = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut sgd = Sgd::new(vec![("w".into(), p.shallow_clone())], &recipe);
        sgd.backward_step(&(&p * 2.0).sum(Kind::Float));
        let state = sgd.state();
        assert_eq!(state.len(), 1);
        let mut other = Sgd::new(vec![("w".into(), p.shallow_clone())], &recipe);
        other.load_state(state).unwrap();
        assert!(other.state()[0].1.equal(&sgd.state()[0].1));
        assert!(other.load_state(vec![("nope".into(), p.detach())]).is_err());
    }
}
