//! Model and method sections of a training configuration, and the network they build.

use crate::{Result, StageError};
use candle_core::Device;
use opt_core::batchnorm::BatchNormConfig;
use opt_core::layers::{KernelFactory, PlainFactory};
use opt_core::opt_layer::{OptFactory, OptLayerConfig, Rotation, RotationInit};
use opt_core::orth::OrthMap;
use opt_core::sparse_opt::SoptFactory;
use opt_core::{Cnn6, Cnn6Config, ParamStore, Rng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The paper's CNN-6 (spec §5).
    Cnn6,
}

impl Arch {
    pub const ALL: [Arch; 1] = [Arch::Cnn6];

    /// The name recipes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Cnn6 => "cnn6",
        }
    }

    /// One line for `list`.
    pub fn summary(self) -> &'static str {
        match self {
            Arch::Cnn6 => {
                "the paper's CNN-6: three stages of two 3×3 conv + BN + ReLU and a 2×2 max-pool \
                 (`model.width`, or `model.widths` per stage), `fc6` over the last map, a plain 1×1 \
                 classifier; adapts to the input's channels, size and classes"
            }
        }
    }
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

fn ogd_rotation_lr() -> f64 {
    0.02
}
fn ogd_rotation_lr_factor() -> f64 {
    0.2
}
fn ogd_decay_scale() -> f64 {
    0.1
}
fn or_weight() -> f64 {
    0.1
}
fn sopt_budget_channels() -> usize {
    16
}
fn sopt_episode_length() -> u64 {
    750
}

/// The orthogonal map S-OPT's small rotations use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseMap {
    Cp,
    #[default]
    Gs,
    Hr,
    Ls,
}

impl BaseMap {
    pub fn map(self) -> OrthMap {
        match self {
            BaseMap::Cp => OrthMap::Cayley,
            BaseMap::Gs => OrthMap::GramSchmidt,
            BaseMap::Hr => OrthMap::Householder,
            BaseMap::Ls => OrthMap::Lowdin,
        }
    }
}

/// The training method: what the seven weight layers of the network are (spec §2). Defaults
/// are the official code's.
///
/// The option-less methods are empty struct variants, not unit variants: serde ignores every
/// other key of an internally tagged unit variant, so `method.weight = 0.5` under `gs` would
/// be dropped without a word; as struct variants, `deny_unknown_fields` rejects it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Standard training: every kernel is an ordinary trainable tensor.
    Baseline {},
    /// Cayley parameterization `R = (I+S)(I−S)⁻¹`, `S` from `triu(P)` (no ½).
    Cp {},
    /// Gram–Schmidt on the rows of `P`.
    Gs {},
    /// Householder reflections (QR of `P`, d−1 reflections).
    Hr {},
    /// Löwdin symmetric orthogonalization (polar factor of `P`).
    Ls {},
    /// Orthogonality-preserving gradient descent: `R` from the identity, updated by Cayley SGD.
    Ogd {
        /// Learning rate of the rotations (0.02).
        #[serde(default = "ogd_rotation_lr")]
        rotation_lr: f64,
        /// Factor applied to `rotation_lr` at each schedule milestone (0.2).
        #[serde(default = "ogd_rotation_lr_factor")]
        rotation_lr_factor: f64,
        /// The official OGD loss is `L_fit + 0.1·L2`: weight decay of the other tensors × 0.1.
        #[serde(default = "ogd_decay_scale")]
        weight_decay_scale: f64,
    },
    /// Orthogonality regularization: raw `R ~ N(0,1)` plus `weight·Σ‖RRᵀ − I‖_F` (not squared).
    Or {
        #[serde(default = "or_weight")]
        weight: f64,
    },
    /// Unconstrained over-parameterized training (the paper's control): `W = R·W0` with `R`
    /// learned freely from the identity; `W0` fixed unless `learn_w0`.
    Upt {
        #[serde(default)]
        learn_w0: bool,
    },
    /// Stochastic OPT (spec §2.8): per episode, rotate a random subset of `b` fan-in rows of
    /// each layer after the first with a small `b×b` map from the identity, then merge it into
    /// `W0`, reset it and re-sample.
    Sopt {
        /// Orthogonal map of the small rotations (`gs` in the official folder).
        #[serde(default)]
        base: BaseMap,
        /// `b = k_h·k_w·budget_channels` rows per layer. The official code samples
        /// `k²·16` rows (144 of 576, 256 of 1024: 25 %) but declares a `k²·10` rotation and
        /// so fails at its first step; 16 follows the sampler, 10 the declared size.
        #[serde(default = "sopt_budget_channels")]
        budget_channels: usize,
        /// Iterations per episode (750).
        #[serde(default = "sopt_episode_length")]
        episode_length: u64,
        /// Reproduce the official quirk of re-initialising the sparse layers' BN γ/β every
        /// episode (off: it breaks the function at each boundary and looks unintended).
        #[serde(default)]
        reset_bn: bool,
        /// Reproduce the official quirk of keeping the small rotations' momentum across
        /// episodes (off: that momentum belongs to the previous index set).
        #[serde(default)]
        stale_momentum: bool,
    },
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig::Baseline {}
    }
}

impl MethodConfig {
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Baseline {} => "baseline",
            MethodConfig::Cp {} => "cp",
            MethodConfig::Gs {} => "gs",
            MethodConfig::Hr {} => "hr",
            MethodConfig::Ls {} => "ls",
            MethodConfig::Ogd { .. } => "ogd",
            MethodConfig::Or { .. } => "or",
            MethodConfig::Upt { .. } => "upt",
            MethodConfig::Sopt { .. } => "sopt",
        }
    }

    /// The method as the paper's tables name it (`OPT (GS)`, `S-OPT (GS, 16 ch)`).
    pub fn paper_name(&self) -> String {
        match self {
            MethodConfig::Baseline {} => "Baseline".into(),
            MethodConfig::Cp {} => "OPT (CP)".into(),
            MethodConfig::Gs {} => "OPT (GS)".into(),
            MethodConfig::Hr {} => "OPT (HR)".into(),
            MethodConfig::Ls {} => "OPT (LS)".into(),
            MethodConfig::Ogd { .. } => "OPT (OGD)".into(),
            MethodConfig::Or { .. } => "OPT (OR)".into(),
            MethodConfig::Upt { learn_w0: false } => "UPT".into(),
            MethodConfig::Upt { learn_w0: true } => "UPT (learned W0)".into(),
            MethodConfig::Sopt {
                base,
                budget_channels,
                ..
            } => format!(
                "S-OPT ({}, {budget_channels} ch)",
                format!("{base:?}").to_uppercase()
            ),
        }
    }

    /// All method names, for messages and benchmarks.
    pub const NAMES: [&'static str; 9] = [
        "baseline", "cp", "gs", "hr", "ls", "ogd", "or", "upt", "sopt",
    ];

    /// The method with its default options, by name.
    pub fn from_name(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::json!({ "name": name })).ok()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        let exact = |map| OptLayerConfig {
            rotation: Rotation::Exact(map),
            init: RotationInit::Gaussian,
            decay_rotation: true,
            decay_fixed: true,
            learn_w0: false,
            penalty: 0.0,
        };
        match self {
            MethodConfig::Baseline {} => Box::new(PlainFactory),
            MethodConfig::Cp {} => Box::new(OptFactory(exact(OrthMap::Cayley))),
            MethodConfig::Gs {} => Box::new(OptFactory(exact(OrthMap::GramSchmidt))),
            MethodConfig::Hr {} => Box::new(OptFactory(exact(OrthMap::Householder))),
            MethodConfig::Ls {} => Box::new(OptFactory(exact(OrthMap::Lowdin))),
            MethodConfig::Ogd { .. } => Box::new(OptFactory(OptLayerConfig {
                rotation: Rotation::Raw,
                init: RotationInit::Identity,
                decay_rotation: false,
                decay_fixed: false,
                learn_w0: false,
                penalty: 0.0,
            })),
            MethodConfig::Or { weight } => Box::new(OptFactory(OptLayerConfig {
                rotation: Rotation::Raw,
                init: RotationInit::Gaussian,
                decay_rotation: true,
                decay_fixed: true,
                learn_w0: false,
                penalty: *weight,
            })),
            MethodConfig::Upt { learn_w0 } => Box::new(OptFactory(OptLayerConfig {
                rotation: Rotation::Raw,
                init: RotationInit::Identity,
                decay_rotation: true,
                decay_fixed: true,
                learn_w0: *learn_w0,
                penalty: 0.0,
            })),
            MethodConfig::Sopt {
                base,
                budget_channels,
                ..
            } => Box::new(SoptFactory {
                base: base.map(),
                budget_channels: *budget_channels,
            }),
        }
    }

    /// Whether the rotations are updated by Cayley SGD instead of momentum SGD.
    pub fn is_ogd(&self) -> bool {
        matches!(self, MethodConfig::Ogd { .. })
    }

    /// Multiplier of the weight decay of the momentum-SGD tensors.
    pub fn weight_decay_scale(&self) -> f64 {
        match self {
            MethodConfig::Ogd {
                weight_decay_scale, ..
            } => *weight_decay_scale,
            _ => 1.0,
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
    let net = Cnn6::new(cfg, method.factory().as_ref(), &mut store, &mut rng).map_err(|e| {
        StageError::Setting {
            field: "model",
            message: format!("cannot build {}: {e}", model.describe()),
        }
    })?;
    Ok((net, store))
}

/// Estimated peak memory of one training step, in bytes: what [`check_step_memory`] compares
/// with the machine. Deliberately simple (it must catch a width of 4096, not predict 1.4 GB to
/// the megabyte): per weight layer, the im2col patch matrix twice (forward and its gradient),
/// and four feature maps of the layer's output (convolution, BN+ReLU, and their gradients);
/// per OPT layer, `P`, `R`, their gradients and momentum in f32 plus three f64 work copies
/// of the `d×d` map; per plain layer, the kernel, its gradient and momentum. CNN-6 width 64
/// on 3×32×32 at batch 128 comes to ≈ 1.45 GB (1.54 GB peak RSS measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMemory {
    pub activations: u64,
    pub parameters: u64,
}

impl StepMemory {
    pub fn total(&self) -> u64 {
        self.activations + self.parameters
    }
}

pub fn step_memory(
    model: &ModelConfig,
    method: &MethodConfig,
    input: (usize, usize, usize),
    classes: usize,
    batch: usize,
) -> StepMemory {
    let cfg = model.cnn6_config(input, classes);
    let (mut h, mut w) = (input.1 as u64, input.2 as u64);
    let (fh, fw) = cfg.final_map();
    // (c_in, c_out, k_h·k_w, output pixels, from the factory)
    let mut layers: Vec<(u64, u64, u64, u64, bool)> = Vec::new();
    let mut prev = input.0 as u64;
    for i in 0..6 {
        let c_out = cfg.widths[i / 2] as u64;
        layers.push((prev, c_out, 9, h * w, true));
        prev = c_out;
        if i % 2 == 1 {
            (h, w) = (h / 2, w / 2);
        }
    }
    let fc6 = cfg.fc6_width as u64;
    layers.push((prev, fc6, (fh * fw) as u64, 1, true));
    layers.push((fc6, classes as u64, 1, 1, false));
    let batch = batch as u64;
    let mut mem = StepMemory {
        activations: 0,
        parameters: 0,
    };
    for (c_in, c_out, taps, pixels, opt_able) in layers {
        let d = c_in * taps;
        mem.activations += 4 * batch * pixels * (2 * d + 4 * c_out);
        let rotated = match method {
            _ if !opt_able => None,
            MethodConfig::Baseline {} => None,
            MethodConfig::Sopt {
                budget_channels, ..
            } => Some((taps * *budget_channels as u64).min(d)),
            _ => Some(d),
        };
        mem.parameters += match rotated {
            Some(r) => r * r * (4 * 4 + 8 * 3) + d * c_out * 4 * 2,
            None => d * c_out * 4 * 3,
        };
    }
    mem
}

/// Refuses a training step that cannot fit in `available` bytes, naming the setting to lower.
pub fn check_step_memory(estimate: StepMemory, available: u64) -> Result<()> {
    if estimate.total() <= available {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(StageError::Setting {
        field: "model.width",
        message: format!(
            "a training step needs about {:.1} GiB ({:.1} GiB of activations, {:.1} GiB of \
             parameters and rotations), but this machine has {:.1} GiB available; lower \
             model.width (or schedule.batch_size), or set run.memory_check = false to try anyway",
            gib(estimate.total()),
            gib(estimate.activations),
            gib(estimate.parameters),
            gib(available)
        ),
    })
}

/// Memory this process may still use: `MemAvailable` of `/proc/meminfo`, lowered to the
/// cgroup's `memory.max` headroom where one is set (containers, Slurm). `None` where neither
/// can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)?;
    let cgroup = || -> Option<u64> {
        let max: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(max.saturating_sub(current))
    };
    Some(cgroup().map_or(available, |c| c.min(available)))
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    fn model(width: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::Cnn6,
            width,
            widths: None,
            fc6_width: None,
            bn_decay: 0.999,
            bn_eps: 1e-3,
        }
    }

    /// Hand count for CNN-6 width 64, 3×32×32, 100 classes, batch 128, baseline: activation
    /// floats per image: conv1_0 1024·(2·27 + 256), conv1_1 1024·(2·576 + 256), conv2_* 2 ·
    /// 256·(1152 + 256), conv3_* 2 · 64·(1152 + 256), fc6 (2·1024 + 256), score (2·64 + 400).
    #[test]
    fn matches_a_hand_count() {
        let m = step_memory(
            &model(64),
            &MethodConfig::Baseline {},
            (3, 32, 32),
            100,
            128,
        );
        let per_image: u64 = 1024 * (54 + 256)
            + 1024 * (1152 + 256)
            + 2 * 256 * (1152 + 256)
            + 2 * 64 * (1152 + 256)
            + (2 * 1024 + 256)
            + (2 * 64 + 400);
        assert_eq!(m.activations, 4 * 128 * per_image);
        let kernels: u64 = 27 * 64 + 5 * 576 * 64 + 1024 * 64 + 64 * 100;
        assert_eq!(m.parameters, 12 * kernels);
        // OPT adds 40 bytes per entry of each d×d rotation (score stays plain).
        let gs = step_memory(&model(64), &MethodConfig::Gs {}, (3, 32, 32), 100, 128);
        let rotations: u64 = 27 * 27 + 5 * 576 * 576 + 1024 * 1024;
        let opt_kernels: u64 = kernels - 64 * 100;
        assert_eq!(
            gs.parameters,
            40 * rotations + 8 * opt_kernels + 12 * 64 * 100
        );
    }

    #[test]
    fn refuses_what_cannot_fit_and_names_the_width() {
        let huge = step_memory(&model(4096), &MethodConfig::Gs {}, (3, 32, 32), 100, 128);
        assert!(huge.total() > 100 << 30, "{huge:?}");
        let e = check_step_memory(huge, 24 << 30).unwrap_err().to_string();
        assert!(e.starts_with("model.width: ") && e.contains("GiB"), "{e}");
        let small = step_memory(&model(32), &MethodConfig::Gs {}, (1, 28, 28), 10, 128);
        assert!(check_step_memory(small, 24 << 30).is_ok());
    }
}
