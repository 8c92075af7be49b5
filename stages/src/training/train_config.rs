//! The train stage's configuration: everything that determines the trained weights, hashed
//! into the train key (the data view, model, method, schedule, loss, augmentation, seed,
//! device and regulariser), and the network it builds.

use crate::data::augment::AugmentConfig;
use crate::data::preprocess::{DataView, DatasetStats};
use crate::host::available_memory;
use crate::training::device::DeviceChoice;
use crate::training::model::{build, check_step_memory, step_memory, MethodConfig, ModelConfig};
use crate::training::regularizer::RegularizerConfig;
use crate::Result;
use candle_core::Device;
use opt_core::loss::LossKind;
use opt_core::ops::routes::{MapRouteChoice, OpsMode};
use opt_core::{Network, ParamStore};
use serde::{Deserialize, Serialize};
use std::num::{NonZeroU64, NonZeroUsize};

/// Training length: a number of iterations, or of passes over the training set
/// (`⌈epochs · ⌊n / batch⌋⌉` iterations).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Length {
    Iterations(u64),
    Epochs(f64),
}

impl Length {
    pub fn iterations(self, batches_per_epoch: u64) -> u64 {
        match self {
            Length::Iterations(n) => n,
            Length::Epochs(e) => (e * batches_per_epoch as f64).ceil() as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Heavy-ball momentum (0.9 in the official code).
    pub momentum: f64,
    pub lr: f64,
    /// Iterations at which the learning rate is multiplied by `lr_factor` (before that step).
    pub milestones: Vec<u64>,
    pub lr_factor: f64,
    pub length: Length,
    pub batch_size: usize,
    /// L2 coefficient `wd` of `wd·½‖θ‖²` (5e-4 official).
    pub weight_decay: f64,
    /// Evaluate on the test (and validation) set before the first step and every this many
    /// iterations (0 = only at the end).
    pub eval_every: u64,
}

impl ScheduleConfig {
    /// The official training length (spec §5).
    pub const DEFAULT_ITERATIONS: NonZeroU64 = NonZeroU64::new(75_000).unwrap();
    /// The official batch size.
    pub const DEFAULT_BATCH_SIZE: NonZeroUsize = NonZeroUsize::new(128).unwrap();
}

impl Default for ScheduleConfig {
    /// The official OPT schedule (spec §5): momentum 0.9, lr 0.1 divided by 10 at 30k, 50k and
    /// 65k of 75k iterations, batch 128, weight decay 5e-4; an evaluation every 500.
    fn default() -> Self {
        Self {
            momentum: 0.9,
            lr: 0.1,
            milestones: vec![30_000, 50_000, 65_000],
            lr_factor: 0.1,
            length: Length::Iterations(Self::DEFAULT_ITERATIONS.get()),
            batch_size: Self::DEFAULT_BATCH_SIZE.get(),
            weight_decay: 5e-4,
            eval_every: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossName {
    /// `−Σ y·log(softmax + floor)` with smoothed labels (the official loss).
    Official,
    /// Standard cross-entropy (with optional label smoothing).
    CrossEntropy,
}

/// The loss (also the recipe's `[loss]` section; absent keys take the official values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub kind: LossName,
    pub label_smoothing: f64,
    pub log_floor: f64,
}

impl Default for LossConfig {
    /// The official loss: label smoothing 0.01, `log(p + 1e-4)`.
    fn default() -> Self {
        Self {
            kind: LossName::Official,
            label_smoothing: 0.01,
            log_floor: 1e-4,
        }
    }
}

impl LossConfig {
    pub fn kind(&self) -> LossKind {
        match self.kind {
            LossName::Official => LossKind::Official {
                smoothing: self.label_smoothing,
                log_floor: self.log_floor,
            },
            LossName::CrossEntropy => LossKind::CrossEntropy {
                smoothing: self.label_smoothing,
            },
        }
    }
}

/// Everything that determines the trained weights (hashed into the cache key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Which decoded images train on and how they are normalised.
    pub data: DataView,
    pub model: ModelConfig,
    pub method: MethodConfig,
    pub schedule: ScheduleConfig,
    pub loss: LossConfig,
    pub augment: AugmentConfig,
    pub seed: u64,
    /// The resolved device (never `auto`): results differ across devices.
    pub device: DeviceChoice,
    /// MHE / half-space MHE added to the loss (absent: none, and the key of every recipe
    /// without one is what it was before regularisers existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regularizer: Option<RegularizerConfig>,
    /// TF32 tensor-core matmuls for f32 on a CUDA device (`run.tf32`; off, the faithful
    /// choice: full f32 products as the official code's). No effect on the CPU. Absent from the
    /// key when off, so every recipe's key is what it was before the option existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tf32: bool,
    /// How the fused ops are chosen (`run.ops`): `auto` (the device self-check decides),
    /// `fused` (a failed check is an error) or `composed` (candle's ops only). Absent from the
    /// key when `auto`, so every recipe's key is what it was before the option existed.
    #[serde(
        default,
        skip_serializing_if = "crate::training::device::is_default",
        with = "crate::training::device::named"
    )]
    pub ops: OpsMode,
    /// How the orthogonal maps are computed (`run.map_route`): `auto` (exact on the CPU, gemm on
    /// a GPU), `exact` or `gemm`. Absent from the key when `auto`.
    #[serde(
        default,
        skip_serializing_if = "crate::training::device::is_default",
        with = "crate::training::device::named"
    )]
    pub map_route: MapRouteChoice,
}

impl TrainConfig {
    /// The method as the paper's tables name it, with its regulariser: `OPT (GS)`, `MHE (s=0)`
    /// (baseline + MHE), `UPT + HS-MHE (s=2)`.
    pub fn method_label(&self) -> String {
        match (&self.regularizer, &self.method) {
            (None, m) => m.paper_name(),
            (Some(r), m) if m.method().is_plain() => r.label(),
            (Some(r), m) => format!("{} + {}", m.paper_name(), r.label()),
        }
    }

    /// Refuses a training step on inputs of shape `input` with `classes` classes whose
    /// estimated memory exceeds what `device` has available (when that is known): the
    /// machine's available memory for the CPU, the GPU's free memory for a GPU.
    pub fn check_memory(
        &self,
        input: (usize, usize, usize),
        classes: usize,
        device: &Device,
    ) -> Result<()> {
        let available = match opt_core::ops::free_device_memory(device)? {
            Some(free) => Some(free),
            None if device.is_cpu() => available_memory(),
            None => None,
        };
        if let Some(available) = available {
            let need = step_memory(
                &self.model,
                &self.method,
                input,
                classes,
                self.schedule.batch_size,
            );
            check_step_memory(need, available)?;
        }
        Ok(())
    }
}

/// The network and parameters `cfg` describes for data of these statistics, initialised from
/// the run's seed.
pub fn build_model(
    cfg: &TrainConfig,
    stats: &DatasetStats,
    device: &Device,
) -> Result<(Network, ParamStore)> {
    build(
        &cfg.model,
        &cfg.method,
        stats.shape,
        stats.classes,
        cfg.seed,
        device,
    )
}
