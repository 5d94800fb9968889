//! The optimisers a recipe names, in [`FlatOptimizer`]: SGD, AdamW and LAMB over one flat
//! buffer of parameters (with fp16's loss scale, [`GradScaler`], applied to its steps).
//!
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
//!
//! With `optimizer = "lamb"` the same two moments feed timm's `Lamb`: the gradients are first
//! clipped to a global norm of [`LAMB_MAX_GRAD_NORM`], the Adam direction (eps 1e-6) plus
//! `weight_decay * p` is the update, and each parameter's step is scaled by its trust ratio
//! `||p|| / ||update||` (1 where either norm is 0), all on the device.

use convsweep_proto::spec::{Optimizer, Precision, TrainSpec};
use tch::{Kind, Tensor};

/// AdamW's constants (torch.optim.AdamW's defaults).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
/// LAMB's epsilon and gradient clipping (timm's `Lamb` defaults).
const LAMB_EPS: f64 = 1e-6;
/// Global gradient norm LAMB clips to.
pub const LAMB_MAX_GRAD_NORM: f64 = 1.0;

use super::checkpoint::CheckpointError;
use super::loss_scale::GradScaler;

/// Adam's moments updated in place (`m` and `v` with gradient `g`), shared by AdamW and LAMB:
/// returns the denominator `sqrt(v_hat) + eps` at step `t` and the first moment's bias
/// correction, `1 - beta1^t`.
fn adam_moments(m: &Tensor, v: &Tensor, g: &Tensor, t: i32, eps: f64) -> (Tensor, f64) {
    let (mut m, mut v) = (m.shallow_clone(), v.shallow_clone());
    let _ = m.g_mul_scalar_(BETA1);
    let _ = m.g_add_(&(g * (1.0 - BETA1)));
    let _ = v.g_mul_scalar_(BETA2);
    let _ = v.g_add_(&(g * g * (1.0 - BETA2)));
    let (bias1, bias2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
    (v.sqrt() / bias2.sqrt() + eps, bias1)
}

/// The optimiser of a trial: SGD, AdamW or LAMB as its recipe says, all parameters and both
/// moments in flat buffers.
pub struct FlatOptimizer {
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
    /// AdamW or LAMB instead of SGD: `momentum_buffer` is the first moment, this the second.
    adamw: Option<Tensor>,
    /// LAMB (with `adamw` its second moment).
    lamb: bool,
    /// Steps taken (AdamW's bias correction).
    steps: u64,
    /// fp16's loss scale (`precision = "fp16"` only).
    scaler: Option<GradScaler>,
    /// The arithmetic of the forward pass.
    precision: Precision,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
}

impl std::fmt::Debug for FlatOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatOptimizer")
            .field("params", &self.params.len())
            .field("lr", &self.lr)
            .finish_non_exhaustive()
    }
}

impl FlatOptimizer {
    /// SGD over `params` (name, tensor) with the recipe's settings. The parameters must share
    /// one kind and device; their data moves into the optimiser's flat buffer (values kept).
    pub fn new(mut params: Vec<(String, Tensor)>, recipe: &TrainSpec) -> FlatOptimizer {
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
        FlatOptimizer {
            momentum_buffer: flat.zeros_like(),
            adamw: (recipe.optimizer != Optimizer::Sgd).then(|| flat.zeros_like()),
            lamb: recipe.optimizer == Optimizer::Lamb,
            steps: 0,
            scaler: (recipe.precision == Precision::Fp16).then(GradScaler::new),
            precision: recipe.precision,
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

    /// The arithmetic the forward pass should run in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// fp16's loss scale, when there is one.
    pub fn scaler(&self) -> Option<GradScaler> {
        self.scaler
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
        let Some(scaler) = self.scaler else {
            let grads = Tensor::run_backward(&[loss], &inputs, false, false);
            self.apply(&grads);
            return;
        };
        let scaled = loss * scaler.scale;
        let grads = Tensor::run_backward(&[&scaled], &inputs, false, false);
        let (grads, finite) = tch::no_grad(|| {
            let grads: Vec<Tensor> = grads
                .iter()
                .map(|g| {
                    if g.defined() {
                        g / scaler.scale
                    } else {
                        g.shallow_clone()
                    }
                })
                .collect();
            let overflowed: Vec<Tensor> = grads
                .iter()
                .filter(|g| g.defined())
                .map(|g| g.isfinite().logical_not().any())
                .collect();
            // One read per step, as GradScaler.step makes: the step is taken or skipped.
            let finite = overflowed.is_empty() || crate::readback::i64(&Tensor::stack(&overflowed, 0).any()) == 0;
            (grads, finite)
        });
        if let Some(s) = &mut self.scaler {
            s.update(finite);
        }
        if finite {
            self.apply(&grads);
        }
    }

    /// One step with these gradients (one per parameter; undefined for none).
    fn apply(&mut self, grads: &[Tensor]) {
        self.steps += 1;
        if self.lamb {
            tch::no_grad(|| self.lamb_step(grads));
            self.has_momentum = true;
            return;
        }
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

    /// One LAMB step over every parameter with a gradient, as timm's `Lamb` takes it.
    fn lamb_step(&self, grads: &[Tensor]) {
        let defined: Vec<Tensor> = grads.iter().filter(|g| g.defined()).map(|g| g.reshape([-1])).collect();
        if defined.is_empty() {
            return;
        }
        // Global norm clipping, on the device: grads / max(norm / max_norm, 1).
        let norm = Tensor::cat(&defined, 0).norm();
        let clip = (norm / LAMB_MAX_GRAD_NORM).clamp_min(1.0);
        let t = self.steps as i32;
        let v_all = self.adamw.as_ref().expect("LAMB keeps a second moment");
        for (g, &(s, n)) in grads.iter().zip(&self.slices) {
            if !g.defined() {
                continue;
            }
            let g = g.reshape([-1]) / &clip;
            let mut p = self.flat.narrow(0, s, n);
            let m = self.momentum_buffer.narrow(0, s, n);
            let (denom, bias1) = adam_moments(&m, &v_all.narrow(0, s, n), &g, t, LAMB_EPS);
            let mut update = (&m / bias1) / denom;
            if self.weight_decay != 0.0 {
                update += &p * self.weight_decay;
                let (w_norm, u_norm) = (p.norm(), update.norm());
                let ratio = (&w_norm / &u_norm).where_self(
                    &w_norm.gt(0.0).logical_and(&u_norm.gt(0.0)),
                    &Tensor::ones_like(&w_norm),
                );
                update *= ratio;
            }
            let _ = p.g_sub_(&(update * self.lr));
        }
    }

    /// One AdamW update of `p` with gradient `g`, first moment `m` and second moment `v` (all
    /// in place).
    fn adamw_update(&self, p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) {
        let mut p = p.shallow_clone();
        if self.weight_decay != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
        }
        let (denom, bias1) = adam_moments(m, v, g, self.steps as i32, EPS);
        let _ = p.g_sub_(&(m / denom * (self.lr / bias1)));
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
        let mut out = Vec::new();
        if let Some(s) = &self.scaler {
            out.push(("amp:scale".into(), Tensor::from(s.scale)));
            out.push(("amp:good_steps".into(), Tensor::from(i64::from(s.good_steps))));
            out.push(("amp:skipped".into(), Tensor::from(s.skipped as i64)));
        }
        if !self.has_momentum {
            return out;
        }
        let of = |buffer: &Tensor, p: &Tensor, s: i64, n: i64| buffer.narrow(0, s, n).view(p.size().as_slice()).copy();
        out.extend(
            self.params
                .iter()
                .zip(&self.slices)
                .map(|((name, p), &(s, n))| (name.clone(), of(&self.momentum_buffer, p, s, n))),
        );
        if let Some(v) = &self.adamw {
            for ((name, p), &(s, n)) in self.params.iter().zip(&self.slices) {
                out.push((format!("adamw:sq:{name}"), of(v, p, s, n)));
            }
            out.push(("adamw:steps".into(), Tensor::from(self.steps as i64)));
        }
        out
    }

    /// Restores momentum buffers saved by [`FlatOptimizer::state`]; unknown names are an error.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), CheckpointError> {
        for (name, buf) in state {
            if name == "adamw:steps" {
                self.steps = buf.int64_value(&[]).max(0) as u64;
                continue;
            }
            if let Some(field) = name.strip_prefix("amp:") {
                let Some(s) = &mut self.scaler else {
                    return Err(CheckpointError::Mismatch(format!(
                        "fp16 loss-scale state {name} in the checkpoint of a trial without fp16"
                    )));
                };
                match field {
                    "scale" => s.scale = buf.double_value(&[]),
                    "good_steps" => s.good_steps = buf.int64_value(&[]).clamp(0, i64::from(u32::MAX)) as u32,
                    "skipped" => s.skipped = buf.int64_value(&[]).max(0) as u64,
                    _ => return Err(CheckpointError::Mismatch(format!("unknown loss-scale state {name}"))),
                }
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
        let mut sgd = FlatOptimizer::new(vec![("p".into(), p.shallow_clone())], &recipe);
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
        let mut sgd = FlatOptimizer::new(
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
        let mut sgd = FlatOptimizer::new(vec![("w".into(), p.shallow_clone())], &recipe);
        sgd.backward_step(&(&p * 2.0).sum(Kind::Float));
        let state = sgd.state();
        assert_eq!(state.len(), 1);
        let mut other = FlatOptimizer::new(vec![("w".into(), p.shallow_clone())], &recipe);
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
        let mut opt = FlatOptimizer::new(vec![("p".into(), p.shallow_clone())], &recipe);
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
        let mut restored = FlatOptimizer::new(vec![("p".into(), q.shallow_clone())], &recipe);
        restored.load_state(state).unwrap();
        assert_eq!(restored.steps, 3);
        for (a, b) in restored.state().iter().zip(&opt.state()) {
            assert_eq!(a.0, b.0);
            assert!(a.1.equal(&b.1), "{}", a.0);
        }
        let sgd = TrainSpec::default();
        let mut plain = FlatOptimizer::new(vec![("p".into(), q.shallow_clone())], &sgd);
        assert!(
            plain.load_state(opt.state()).is_err(),
            "AdamW state into SGD is refused"
        );
    }

    /// LAMB written out by hand as timm's `Lamb` computes it, for two parameters (the trust
    /// ratio is per parameter, the clipping global), with gradients large enough to be clipped.
    #[test]
    fn lamb_matches_timms_update_rule() {
        let recipe = TrainSpec {
            optimizer: Optimizer::Lamb,
            lr: 0.01,
            weight_decay: 0.02,
            ..TrainSpec::default()
        };
        let a = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f64, 0.25]).set_requires_grad(true);
        let mut opt = FlatOptimizer::new(
            vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())],
            &recipe,
        );
        let mut x = [vec![1.0f64, -2.0, 3.0], vec![0.5, 0.25]];
        let mut m = [vec![0.0; 3], vec![0.0; 2]];
        let mut v = [vec![0.0; 3], vec![0.0; 2]];
        let norm = |u: &[f64]| u.iter().map(|e| e * e).sum::<f64>().sqrt();
        for t in 1..=3 {
            // loss = sum(p^3) / 3 over both: gradients p^2, global norm far above 1.
            let loss = ((&a * &a * &a).sum(Kind::Double) + (&b * &b * &b).sum(Kind::Double)) / 3.0;
            opt.backward_step(&loss);
            let g: Vec<Vec<f64>> = x.iter().map(|p| p.iter().map(|e| e * e).collect()).collect();
            let global = norm(&g.concat());
            let clip = (global / LAMB_MAX_GRAD_NORM).max(1.0);
            let (b1, b2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
            for j in 0..2 {
                let mut update = Vec::new();
                for i in 0..x[j].len() {
                    let gi = g[j][i] / clip;
                    m[j][i] = 0.9 * m[j][i] + 0.1 * gi;
                    v[j][i] = 0.999 * v[j][i] + 0.001 * gi * gi;
                    update.push(m[j][i] / b1 / ((v[j][i] / b2).sqrt() + 1e-6) + 0.02 * x[j][i]);
                }
                let ratio = norm(&x[j]) / norm(&update);
                for i in 0..x[j].len() {
                    x[j][i] -= 0.01 * ratio * update[i];
                }
            }
        }
        for (t, want) in [&a, &b].iter().zip(&x) {
            let got = Vec::<f64>::try_from(t.detach()).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
            }
        }
        // Checkpointed like AdamW: both moments and the step count.
        assert_eq!(opt.state().len(), 2 + 2 + 1);
    }

    /// fp16's loss scale: a finite step equals the unscaled one; an overflowing step is
    /// skipped and halves the scale; 2000 good steps double it; the scale survives a
    /// checkpoint. (Autocast itself needs CUDA; the scaler's arithmetic does not.)
    #[test]
    fn the_fp16_loss_scale_unscales_skips_overflows_and_grows() {
        let fp16 = TrainSpec {
            precision: Precision::Fp16,
            ..nesterov_recipe()
        };
        let step = |recipe: &TrainSpec, times: f64| {
            let p = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
            let mut sgd = FlatOptimizer::new(vec![("p".into(), p.shallow_clone())], recipe);
            let loss = (&p * &p).sum(Kind::Double) * times;
            sgd.backward_step(&loss);
            (Vec::<f64>::try_from(p.detach()).unwrap(), sgd)
        };
        let (plain, _) = step(&nesterov_recipe(), 0.5);
        let (scaled, sgd) = step(&fp16, 0.5);
        assert_eq!(scaled, plain, "a power-of-two scale is undone exactly");
        assert_eq!(sgd.scaler().unwrap().scale, 65536.0);
        assert_eq!(sgd.scaler().unwrap().good_steps, 1);

        // 1e305 x 65536 overflows float64: the step is skipped, the scale halved.
        let (skipped, sgd) = step(&fp16, 1e305);
        assert_eq!(skipped, vec![1.0, -2.0, 3.0], "parameters untouched");
        let s = sgd.scaler().unwrap();
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, 0, 1));
        assert!(
            sgd.state().iter().any(|(n, _)| n == "amp:scale"),
            "saved even before a step"
        );

        let mut s = GradScaler::new();
        for _ in 0..1999 {
            s.update(true);
        }
        assert_eq!(s.scale, 65536.0);
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (131072.0, 0));

        // Checkpointed and restored.
        let (_, a) = step(&fp16, 1e305);
        let state = a.state();
        let (_, mut b) = step(&fp16, 0.5);
        b.load_state(state).unwrap();
        assert_eq!(b.scaler(), a.scaler());
        // An SGD trial refuses fp16 state.
        let (_, mut plain) = step(&nesterov_recipe(), 0.5);
        let e = plain.load_state(a.state()).unwrap_err().to_string();
        assert!(e.contains("without fp16"), "{e}");
    }
}
