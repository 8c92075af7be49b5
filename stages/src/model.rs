//! Model and method sections of a training configuration, and the network they build.

use crate::{Result, StageError};
use candle_core::Device;
use opt_core::batchnorm::BatchNormConfig;
use opt_core::layers::{KernelFactory, PlainFactory};
use opt_core::{Cnn6, Cnn6Config, ParamStore, Rng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The paper's CNN-6 (spec §5).
    Cnn6,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Channel width of every stage (64 in the official GS/HR/LS/OGD/OR/S-OPT nets).
    pub width: usize,
    /// Per-stage widths, overriding `width` (the CP folder uses `[32, 64, 128]`).
    pub widths: Option<[usize; 3]>,
    /// Output width of `fc6`; defaults to the last stage's width, as in the official code.
    pub fc6_width: Option<usize>,
    /// EMA decay of the BN moving statistics (0.999 official; short runs want less, since the
    /// zero-initialised shadows need ~3/(1−decay) steps before test-mode BN is meaningful).
    pub bn_decay: f64,
    /// BN epsilon (1e-3 official).
    pub bn_eps: f64,
}

impl ModelConfig {
    pub fn cnn6_config(&self, input: (usize, usize, usize), classes: usize) -> Cnn6Config {
        let widths = self.widths.unwrap_or([self.width; 3]);
        let mut cfg = Cnn6Config::new(input, classes, self.width);
        cfg.widths = widths;
        cfg.fc6_width = self.fc6_width.unwrap_or(widths[2]);
        cfg.batchnorm = BatchNormConfig {
            eps: self.bn_eps,
            decay: self.bn_decay,
        };
        cfg
    }

    pub fn describe(&self) -> String {
        match self.widths {
            Some([a, b, c]) => format!("cnn6-{a}-{b}-{c}"),
            None => format!("cnn6-w{}", self.width),
        }
    }
}

/// The training method: what the seven weight layers of the network are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Standard training: every kernel is an ordinary trainable tensor.
    #[default]
    Baseline,
}

impl MethodConfig {
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Baseline => "baseline",
        }
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        match self {
            MethodConfig::Baseline => Box::new(PlainFactory),
        }
    }
}

/// Builds the network and its parameter store; initialisation draws from `Rng::fork(seed, "init")`.
pub fn build(
    model: &ModelConfig,
    method: &MethodConfig,
    input: (usize, usize, usize),
    classes: usize,
    seed: u64,
    device: &Device,
) -> Result<(Cnn6, ParamStore)> {
    let mut store = ParamStore::new(device.clone());
    let mut rng = Rng::fork(seed, "init");
    let cfg = model.cnn6_config(input, classes);
    let net = Cnn6::new(cfg, method.factory().as_ref(), &mut store, &mut rng)
        .map_err(|e| StageError::Config(format!("cannot build {}: {e}", model.describe())))?;
    Ok((net, store))
}
