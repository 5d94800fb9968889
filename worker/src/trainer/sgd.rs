//! SGD with momentum, Nesterov and weight decay, exactly as `torch.optim.SGD` computes it
//! (dampening 0), with its state in the open so that checkpoints can save and restore it
//! (tch's optimiser keeps momentum buffers inside libtorch where they cannot be reached).
//!
//! For each parameter `p` with gradient `g`:
//! ```text
//! g = g + weight_decay * p
//! buf = g (first step) | momentum * buf + g
//! g = g + momentum * buf (Nesterov) | buf
//! p = p - lr * g
//! ```
//! Gradients come from `Tensor::run_backward` for the trainable parameters only, so nothing
//! accumulates in `.grad` and nothing needs zeroing.
//!
//! All parameters live in one flat buffer (each parameter's data becomes a view of its slice),
//! and so does the momentum, so a step is a handful of kernels over the whole model instead of
//! several per parameter: on a GPU, where small models are bound by kernel launches, this is
//! what kept an LC model's step at 0.7x of PyTorch's (which fuses its update across tensors).
//! The momentum starts at zero, which makes `momentum * 0 + g` the first step's `g`.
//!
//! With `optimizer = "adamw"` the same buffers hold AdamW's moments, updated as
//! `torch.optim.AdamW` does (betas 0.9 and 0.999, eps 1e-8, bias correction, weight decay
//! decoupled: `p = p * (1 - lr * weight_decay)` before the Adam step). The step count is global,
//! where torch keeps one per parameter: they differ only for a parameter that goes without a
//! gradient for a while, which the trainer's models do not have.

use convsweep_proto::spec::{Optimizer, TrainSpec};
use tch::{Kind, Tensor};

/// AdamW's constants (torch.optim.AdamW's defaults).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

use super::checkpoint::CheckpointError;

/// The optimiser.
pub struct Sgd {
    /// Name and handle of each parameter; its data is a view of `flat`.
    params: Vec<(String, Tensor)>,
    /// Start and length of each parameter in `flat` and `momentum_buffer`.
    slices: Vec<(i64, i64)>,
    /// Every parameter, flattened and concatenated.
    flat: Tensor,
    /// The momentum buffers, laid out as `flat`; zero until the first step.
    momentum_buffer: Tensor,
    /// Whether a step (or a restored state) has filled the momentum buffer.
    has_momentum: bool,
    /// AdamW instead of SGD: `momentum_buffer` is its first moment, this its second.
    adamw: Option<Tensor>,
    /// Steps taken (AdamW's bias correction).
    steps: u64,
    lr: f64,
    momentum: f64,
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
    /// SGD over `params` (name, tensor) with the recipe's settings. The parameters must share
    /// one kind and device; their data moves into the optimiser's flat buffer (values kept).
    pub fn new(mut params: Vec<(String, Tensor)>, recipe: &TrainSpec) -> Sgd {
        let (kind, device) = params
            .first()
            .map_or((Kind::Float, tch::Device::Cpu), |(_, p)| (p.kind(), p.device()));
        assert!(
            params.iter().all(|(_, p)| p.kind() == kind && p.device() == device),
            "SGD parameters must share one kind and device"
        );
        let mut slices = Vec::with_capacity(params.len());
        let mut start = 0;
        for (_, p) in &params {
            slices.push((start, p.numel() as i64));
            start += p.numel() as i64;
        }
        let flat = if params.is_empty() {
            Tensor::zeros([0], (kind, device))
        } else {
            let parts: Vec<Tensor> = params.iter().map(|(_, p)| p.detach().reshape([-1])).collect();
            Tensor::cat(&parts, 0)
        };
        for ((_, p), &(s, n)) in params.iter_mut().zip(&slices) {
            let size = p.size();
            p.set_data(&flat.narrow(0, s, n).view(size.as_slice()));
        }
        Sgd {
            momentum_buffer: flat.zeros_like(),
            adamw: (recipe.optimizer == Optimizer::Adamw).then(|| flat.zeros_like()),
            steps: 0,
            flat,
            params,
            slices,
            has_momentum: false,
            lr: recipe.lr,
            momentum: recipe.momentum,
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
        if self.params.is_empty() {
            return;
        }
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        self.steps += 1;
        tch::no_grad(|| {
            if grads.iter().all(Tensor::defined) {
                let flat_grads: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
                let g = Tensor::cat(&flat_grads, 0);
                self.update(&self.flat, g, &self.momentum_buffer, self.adamw.as_ref());
            } else {
                // A parameter without a gradient is left alone, as torch.optim.SGD does.
                for (g, &(s, n)) in grads.iter().zip(&self.slices) {
                    if g.defined() {
                        let p = self.flat.narrow(0, s, n);
                        let buf = self.momentum_buffer.narrow(0, s, n);
                        let sq = self.adamw.as_ref().map(|v| v.narrow(0, s, n));
                        self.update(&p, g.reshape([-1]), &buf, sq.as_ref());
                    }
                }
            }
        });
        self.has_momentum = self.momentum != 0.0 || self.adamw.is_some();
    }

    /// One AdamW update of `p` with gradient `g`, first moment `m` and second moment `v` (all
    /// in place).
    fn adamw_update(&self, p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) {
        let mut p = p.shallow_clone();
        if self.weight_decay != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
        }
        let (mut m, mut v) = (m.shallow_clone(), v.shallow_clone());
        let _ = m.g_mul_scalar_(BETA1);
        let _ = m.g_add_(&(g * (1.0 - BETA1)));
        let _ = v.g_mul_scalar_(BETA2);
        let _ = v.g_add_(&(g * g * (1.0 - BETA2)));
        let t = self.steps as i32;
        let (bias1, bias2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        let denom = v.sqrt() / bias2.sqrt() + EPS;
        let _ = p.g_sub_(&(&m / denom * (self.lr / bias1)));
    }

    /// One update of `p` (in place) with gradient `g` and momentum buffer `buf` (in place), or
    /// AdamW's with `sq`, its second moment.
    fn update(&self, p: &Tensor, mut g: Tensor, buf: &Tensor, sq: Option<&Tensor>) {
        if let Some(v) = sq {
            return self.adamw_update(p, &g, buf, v);
        }
        if self.weight_decay != 0.0 {
            g = g.g_add(&(p * self.weight_decay));
        }
        if self.momentum != 0.0 {
            let mut b = buf.shallow_clone();
            let _ = b.g_mul_scalar_(self.momentum);
            let _ = b.g_add_(&g);
            g = if self.nesterov {
                g.g_add(&(&b * self.momentum))
            } else {
                b
            };
        }
        let mut p = p.shallow_clone();
        let _ = p.g_sub_(&(g * self.lr));
    }

    /// The momentum buffers by parameter name (none before the first step), for checkpoints;
    /// with AdamW also each second moment (`adamw:sq:<name>`) and the step count
    /// (`adamw:steps`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        if !self.has_momentum {
            return Vec::new();
        }
        let of = |buffer: &Tensor, p: &Tensor, s: i64, n: i64| buffer.narrow(0, s, n).view(p.size().as_slice()).copy();
        let mut out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .zip(&self.slices)
            .map(|((name, p), &(s, n))| (name.clone(), of(&self.momentum_buffer, p, s, n)))
            .collect();
        if let Some(v) = &self.adamw {
            for ((name, p), &(s, n)) in self.params.iter().zip(&self.slices) {
                out.push((format!("adamw:sq:{name}"), of(v, p, s, n)));
            }
            out.push(("adamw:steps".into(), Tensor::from(self.steps as i64)));
        }
        out
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are an error.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), CheckpointError> {
        for (name, buf) in state {
            if name == "adamw:steps" {
                self.steps = buf.int64_value(&[]).max(0) as u64;
                continue;
            }
            let (target, name) = match name.strip_prefix("adamw:sq:") {
                Some(param) => match &self.adamw {
                    Some(v) => (v.shallow_clone(), param.to_owned()),
                    None => {
                        return Err(CheckpointError::Mismatch(format!(
                            "AdamW state {name} in the checkpoint of an SGD trial"
                        )));
                    }
                },
                None => (self.momentum_buffer.shallow_clone(), name),
            };
            let i =
                self.params.iter().position(|(n, _)| *n == name).ok_or_else(|| {
                    CheckpointError::Mismatch(format!("momentum buffer for unknown parameter {name}"))
                })?;
            if buf.size() != self.params[i].1.size() {
                return Err(CheckpointError::Mismatch(format!(
                    "momentum buffer {name} has shape {:?}",
                    buf.size()
                )));
            }
            let (s, n) = self.slices[i];
            tch::no_grad(|| {
                target.narrow(0, s, n).copy_(&buf.reshape([-1]));
            });
            self.has_momentum = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// lr 0.1, Nesterov momentum 0.9, weight decay 0.01.
    fn nesterov_recipe() -> TrainSpec {
        TrainSpec {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: true,
            ..TrainSpec::default()
        }
    }

    /// One step of [`nesterov_recipe`] on values `x` with gradients `grad`, written out by hand
    /// as torch.optim.SGD documents it.
    fn reference_step(x: &mut [f64], grad: &[f64], buf: &mut Option<Vec<f64>>) {
        let g: Vec<f64> = grad.iter().zip(x.iter()).map(|(g, v)| g + 0.01 * v).collect();
        let b: Vec<f64> = match buf {
            None => g.clone(),
            Some(b) => b.iter().zip(&g).map(|(b, g)| 0.9 * b + g).collect(),
        };
        for ((v, g), b) in x.iter_mut().zip(&g).zip(&b) {
            *v -= 0.1 * (g + 0.9 * b);
        }
        *buf = Some(b);
    }

    /// The same steps written out by hand, as torch.optim.SGD documents them.
    #[test]
    fn matches_the_pytorch_update_rule() {
        let recipe = nesterov_recipe();
        let p = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
        let mut sgd = Sgd::new(vec![("p".into(), p.shallow_clone())], &recipe);
        let mut expected = vec![1.0f64, -2.0, 3.0];
        let mut buf: Option<Vec<f64>> = None;
        for _ in 0..3 {
            // loss = sum(p^2) / 2, so the gradient is p.
            let loss = (&p * &p).sum(Kind::Double) / 2.0;
            sgd.backward_step(&loss);
            let grad = expected.clone();
            reference_step(&mut expected, &grad, &mut buf);
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

    /// Several parameters of different shapes share the flat buffer: each follows the rule on
    /// its own, the VarStore-style handles see the updates, and a parameter without a gradient
    /// is left alone (no weight decay, no momentum), as torch.optim.SGD leaves it.
    #[test]
    fn parameters_step_independently_in_the_flat_buffer() {
        let recipe = nesterov_recipe();
        let opts = (Kind::Double, Device::Cpu);
        let a = Tensor::from_slice(&[1.0f64, -2.0, 3.0, 0.5])
            .view([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f64]).set_requires_grad(true);
        let unused = Tensor::ones([3], opts).set_requires_grad(true);
        let mut sgd = Sgd::new(
            vec![
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
                ("unused".into(), unused.shallow_clone()),
            ],
            &recipe,
        );
        // Reference: the rule applied to each value on its own; loss = sum(a^2)/2 + 3b, so the
        // gradient of a is a and that of b is 3.
        let mut x: Vec<f64> = vec![1.0, -2.0, 3.0, 0.5, 4.0];
        let mut buf: Option<Vec<f64>> = None;
        for _ in 0..3 {
            let loss = (&a * &a).sum(Kind::Double) / 2.0 + &b * 3.0;
            sgd.backward_step(&loss.sum(Kind::Double));
            let grad: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, v)| if i < 4 { *v } else { 3.0 })
                .collect();
            reference_step(&mut x, &grad, &mut buf);
        }
        let got: Vec<f64> = Vec::<f64>::try_from(a.detach().reshape([-1]))
            .unwrap()
            .into_iter()
            .chain(Vec::<f64>::try_from(b.detach()).unwrap())
            .collect();
        for (g, e) in got.iter().zip(&x) {
            assert!((g - e).abs() < 1e-12, "{got:?} vs {x:?}");
        }
        assert_eq!(a.size(), vec![2, 2]);
        assert!(unused.equal(&Tensor::ones([3], opts)), "no gradient: untouched");
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

    /// Three AdamW steps written out by hand, as torch.optim.AdamW documents them.
    #[test]
    fn adamw_matches_the_pytorch_update_rule_and_its_state_round_trips() {
        let recipe = TrainSpec {
            optimizer: Optimizer::Adamw,
            lr: 0.01,
            weight_decay: 0.05,
            ..TrainSpec::default()
        };
        let p = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
        let mut opt = Sgd::new(vec![("p".into(), p.shallow_clone())], &recipe);
        let mut x = vec![1.0f64, -2.0, 3.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        for t in 1..=3 {
            // loss = sum(p^3) / 3, so the gradient is p^2.
            let loss = (&p * &p * &p).sum(Kind::Double) / 3.0;
            opt.backward_step(&loss);
            for i in 0..3 {
                let g = x[i] * x[i];
                x[i] *= 1.0 - 0.01 * 0.05;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let (b1, b2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
                x[i] -= 0.01 / b1 * m[i] / ((v[i] / b2).sqrt() + 1e-8);
            }
        }
        let got = Vec::<f64>::try_from(p.detach()).unwrap();
        for (a, b) in got.iter().zip(&x) {
            assert!((a - b).abs() < 1e-12, "{got:?} vs {x:?}");
        }
        // The state holds both moments and the step count, and restores them.
        let state = opt.state();
        assert_eq!(state.len(), 3, "{:?}", state.iter().map(|s| &s.0).collect::<Vec<_>>());
        let q = Tensor::from_slice(&got).set_requires_grad(true);
        let mut restored = Sgd::new(vec![("p".into(), q.shallow_clone())], &recipe);
        restored.load_state(state).unwrap();
        assert_eq!(restored.steps, 3);
        for (a, b) in restored.state().iter().zip(&opt.state()) {
            assert_eq!(a.0, b.0);
            assert!(a.1.equal(&b.1), "{}", a.0);
        }
        let sgd = TrainSpec::default();
        let mut plain = Sgd::new(vec![("p".into(), q.shallow_clone())], &sgd);
        assert!(
            plain.load_state(opt.state()).is_err(),
            "AdamW state into SGD is refused"
        );
    }
}
