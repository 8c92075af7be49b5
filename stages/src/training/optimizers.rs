//! The optimizers of a run and their state, as checkpoints store it.

use crate::training::method::RotationOptimizer;
use crate::training::train_config::TrainConfig;
use crate::Result;
use candle_core::Tensor;
use opt_core::cayley_sgd::CayleySgd;
use opt_core::{Entry, Kind, MomentumSgd, ParamStore, PiecewiseLr};
use std::collections::HashMap;

/// The optimizers of a run: momentum SGD for everything trainable, except the rotations of a
/// method whose hook asks for Cayley SGD (OGD), updated with their own learning-rate schedule.
pub struct Optimizers {
    pub sgd: MomentumSgd,
    pub cayley: Option<(CayleySgd, PiecewiseLr)>,
}

impl Optimizers {
    pub fn new(cfg: &TrainConfig, store: &ParamStore) -> Result<Self> {
        let s = &cfg.schedule;
        let is_rotation = |e: &Entry| e.kind == Kind::Rotation;
        let ogd = cfg.method.is_ogd();
        let sgd = MomentumSgd::for_params(
            store,
            s.momentum,
            s.weight_decay * cfg.method.weight_decay_scale(),
            |e| !(ogd && is_rotation(e)),
        )?;
        let cayley = match cfg.method.method().rotation_optimizer() {
            RotationOptimizer::CayleySgd { lr, lr_factor } => Some((
                CayleySgd::new(store, s.momentum, is_rotation)?,
                PiecewiseLr {
                    base: lr,
                    milestones: s.milestones.clone(),
                    factor: lr_factor,
                },
            )),
            RotationOptimizer::MomentumSgd => None,
        };
        Ok(Self { sgd, cayley })
    }

    pub fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        iteration: u64,
    ) -> Result<()> {
        self.sgd.step(grads, lr)?;
        if let Some((c, schedule)) = &mut self.cayley {
            c.step(grads, schedule.at(iteration))?;
        }
        Ok(())
    }

    /// Optimizer state by prefixed name (`momentum.*`, `cayley.*`), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .sgd
            .state()
            .into_iter()
            .map(|(k, v)| (format!("momentum.{k}"), v))
            .collect();
        if let Some((c, _)) = &self.cayley {
            out.extend(
                c.state()
                    .into_iter()
                    .map(|(k, v)| (format!("cayley.{k}"), v)),
            );
        }
        out
    }

    pub fn load_state(&self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.sgd.load_state(state, "momentum.")?;
        if let Some((c, _)) = &self.cayley {
            c.load_state(state, "cayley.")?;
        }
        Ok(())
    }
}
