//! Heavy-ball momentum SGD with L2 weight decay, as TF's `MomentumOptimizer` on a loss that
//! contains `wd·½‖θ‖²` terms: `a ← μ·a + (g + wd·θ)`, `θ ← θ − lr·a` (lr outside the
//! accumulator, not Nesterov; equal to PyTorch SGD with momentum and dampening 0).
//!
//! Adding `wd·θ` to the gradient is exactly the gradient of the official L2 term, without
//! building it into the autograd graph.

use crate::{Entry, Error, Kind, ParamStore, Result, Role};
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::HashMap;

struct Slot {
    name: String,
    kind: Kind,
    param: Var,
    accum: Var,
    decay: bool,
}

pub struct MomentumSgd {
    pub momentum: f64,
    pub weight_decay: f64,
    slots: Vec<Slot>,
}

impl MomentumSgd {
    /// One slot per trainable tensor of `store`, accumulators at zero.
    pub fn new(store: &ParamStore, momentum: f64, weight_decay: f64) -> Result<Self> {
        Self::for_params(store, momentum, weight_decay, |_| true)
    }

    /// Like [`MomentumSgd::new`] for the trainable tensors `select` accepts (a method can hand its
    /// rotations to another optimizer).
    pub fn for_params(
        store: &ParamStore,
        momentum: f64,
        weight_decay: f64,
        select: impl Fn(&Entry) -> bool,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::Config(format!(
                "momentum must be in [0, 1), got {momentum}"
            )));
        }
        let mut slots = Vec::new();
        for e in store.trainable().filter(|e| select(e)) {
            let decay = matches!(e.role, Role::Trainable { decay: true });
            slots.push(Slot {
                name: e.name.clone(),
                kind: e.kind,
                accum: Var::from_tensor(&e.var.as_tensor().zeros_like()?)?,
                param: e.var.clone(),
                decay,
            });
        }
        Ok(Self {
            momentum,
            weight_decay,
            slots,
        })
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for s in &self.slots {
            let theta = s.param.as_tensor();
            let g = match grads.get(theta) {
                Some(g) => g.clone(),
                None => theta.zeros_like()?,
            };
            let step = crate::ops::SgdStep {
                momentum: self.momentum,
                weight_decay: if s.decay { self.weight_decay } else { 0.0 },
                lr,
            };
            crate::ops::momentum_sgd_step(&s.param, &s.accum, &g, step)?;
        }
        Ok(())
    }

    /// Zeroes the accumulators of the tensors of `kind` (S-OPT's per-episode reset).
    pub fn reset(&self, kind: Kind) -> Result<()> {
        for s in self.slots.iter().filter(|s| s.kind == kind) {
            s.accum.set(&s.accum.as_tensor().zeros_like()?)?;
        }
        Ok(())
    }

    /// Accumulators by parameter name (for checkpoints).
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.accum.as_tensor().clone()))
            .collect()
    }

    pub fn load_state(&self, state: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for s in &self.slots {
            crate::params::load_var(state, &format!("{prefix}{}", s.name), &s.accum)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two steps by hand: θ0 = 1, loss = 3θ (g = 3), wd = 0.1, μ = 0.9, lr = 0.5.
    /// a1 = 3 + 0.1 = 3.1, θ1 = 1 − 1.55 = −0.55;
    /// a2 = 0.9·3.1 + 3 − 0.055 = 5.735, θ2 = −0.55 − 2.8675 = −3.4175.
    #[test]
    fn matches_hand_computed_steps() -> Result<()> {
        let mut store = ParamStore::new(Device::Cpu);
        let theta = store.add(
            "w",
            Tensor::ones(1, DType::F32, &Device::Cpu)?,
            Role::Trainable { decay: true },
            Kind::Other,
        )?;
        let mut opt = MomentumSgd::new(&store, 0.9, 0.1)?;
        for _ in 0..2 {
            let loss = (theta.as_tensor() * 3.0)?.sum_all()?;
            opt.step(&loss.backward()?, 0.5)?;
        }
        let v = theta.as_tensor().to_vec1::<f32>()?[0] as f64;
        assert!((v + 3.4175).abs() < 1e-5, "{v}");
        Ok(())
    }
}
