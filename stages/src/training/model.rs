//! Model and method sections of a training configuration, and the network they build.

use crate::training::method::{plain_layer_bytes, LayerDims, NetworkFacts};
pub use crate::training::method::{BaseMap, MethodConfig};
use crate::{Result, StageError};
use candle_core::Device;
use opt_core::batchnorm::BatchNormConfig;
use opt_core::{CnnConfig, Network, NetworkConfig, ParamStore, ResNetConfig, Rng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The paper's CNN-6 (spec §5).
    Cnn6,
    /// MHE's CIFAR network (`wy1iu/MHE`): CNN-6 with three convolutions per stage.
    Cnn9,
    /// The CIFAR ResNet family (ResNet-20/32/56).
    Resnet,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Cnn6, Arch::Cnn9, Arch::Resnet];

    /// The name recipes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Cnn6 => "cnn6",
            Arch::Cnn9 => "cnn9",
            Arch::Resnet => "resnet",
        }
    }

    /// `model.width` when a recipe gives none: 64 for the plain CNNs (official OPT and MHE),
    /// 16 for ResNet (He et al.).
    pub fn default_width(self) -> usize {
        match self {
            Arch::Cnn6 | Arch::Cnn9 => 64,
            Arch::Resnet => 16,
        }
    }

    /// One line for `list`.
    pub fn summary(self) -> &'static str {
        match self {
            Arch::Cnn6 => {
                "the paper's CNN-6: three stages of two 3×3 conv + BN + ReLU and a 2×2 max-pool \
                 (`model.width`, default 64, or `model.widths` per stage), `fc6` over the last \
                 map, a plain 1×1 classifier; adapts to the input's channels, size and classes"
            }
            Arch::Cnn9 => {
                "MHE's CIFAR network (wy1iu/MHE): CNN-6 with three 3×3 conv + BN + ReLU per stage, \
                 widths `model.width` × 1/2/4 (default 64/128/256) or `model.widths`, `fc6` as \
                 wide as the last stage"
            }
            Arch::Resnet => {
                "CIFAR ResNet-`model.depth` (20, 32, 56; 6n + 2): 3×3 stem, three stages of basic \
                 blocks, widths `model.width` × 1/2/4 (default 16/32/64) or `model.widths`, \
                 identity or 1×1-projection shortcuts, global average pooling; every 3×3 conv \
                 is an OPT layer, the projections and the classifier plain unless \
                 `model.opt_shortcuts` / `model.opt_classifier`"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Channel width of the first stage (CNN-6: every stage; CNN-9 and ResNet double it per
    /// stage). 64 in the official OPT and MHE nets, 16 in ResNet.
    pub width: usize,
    /// Per-stage widths, overriding `width` (the CP folder uses `[32, 64, 128]`).
    pub widths: Option<[usize; 3]>,
    /// Output width of `fc6` (plain CNNs); defaults to the last stage's width, as in the
    /// official code.
    pub fc6_width: Option<usize>,
    /// EMA decay of the BN moving statistics (0.999 official; short runs want less, since the
    /// zero-initialised shadows need ~3/(1−decay) steps before test-mode BN is meaningful).
    pub bn_decay: f64,
    /// BN epsilon (1e-3 official).
    pub bn_eps: f64,
    /// ResNet depth, 6n + 2 (resolved to 20 for ResNet; absent for the plain CNNs, so their
    /// cache keys are what they were before ResNet existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// ResNet: the 1×1 projection shortcuts are OPT layers too (default: plain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_shortcuts: Option<bool>,
    /// ResNet: the classifier is an OPT layer too (default: plain, as in every official net).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_classifier: Option<bool>,
}

impl ModelConfig {
    /// ResNet's depth when a recipe gives none (ResNet-20).
    pub const DEFAULT_RESNET_DEPTH: usize = 20;

    /// CNN-6 with every stage `width` wide and the official BN (tests, benchmarks).
    pub fn cnn6(width: usize) -> Self {
        let bn = BatchNormConfig::default();
        Self {
            arch: Arch::Cnn6,
            width,
            widths: None,
            fc6_width: None,
            bn_decay: bn.decay,
            bn_eps: bn.eps,
            depth: None,
            opt_shortcuts: None,
            opt_classifier: None,
        }
    }

    /// The stage widths: `widths`, else `width` everywhere (CNN-6) or doubled per stage.
    pub fn stage_widths(&self) -> [usize; 3] {
        let w = self.width;
        self.widths.unwrap_or(match self.arch {
            Arch::Cnn6 => [w; 3],
            Arch::Cnn9 | Arch::Resnet => [w, 2 * w, 4 * w],
        })
    }

    /// What a method may check about this network before anything trains.
    pub fn network_facts(&self) -> NetworkFacts {
        NetworkFacts {
            narrowest_width: self.stage_widths().into_iter().min().unwrap_or(0),
        }
    }

    /// ResNet's depth ([`Self::DEFAULT_RESNET_DEPTH`] unless given).
    pub fn resnet_depth(&self) -> usize {
        self.depth.unwrap_or(Self::DEFAULT_RESNET_DEPTH)
    }

    fn batchnorm(&self) -> BatchNormConfig {
        BatchNormConfig {
            eps: self.bn_eps,
            decay: self.bn_decay,
        }
    }

    /// The plain CNN's configuration (CNN-6 or CNN-9; for ResNet, the CNN-6 of its widths).
    pub fn cnn_config(&self, input: (usize, usize, usize), classes: usize) -> CnnConfig {
        let widths = self.stage_widths();
        let mut cfg = match self.arch {
            Arch::Cnn9 => CnnConfig::cnn9(input, classes, widths),
            _ => CnnConfig::new(input, classes, self.width),
        };
        cfg.widths = widths;
        cfg.fc6_width = self.fc6_width.unwrap_or(widths[2]);
        cfg.batchnorm = self.batchnorm();
        cfg
    }

    pub fn network_config(&self, input: (usize, usize, usize), classes: usize) -> NetworkConfig {
        match self.arch {
            Arch::Cnn6 | Arch::Cnn9 => NetworkConfig::Cnn(self.cnn_config(input, classes)),
            Arch::Resnet => NetworkConfig::ResNet(ResNetConfig {
                input,
                depth: self.resnet_depth(),
                widths: self.stage_widths(),
                classes,
                opt_shortcuts: self.opt_shortcuts.unwrap_or(false),
                opt_classifier: self.opt_classifier.unwrap_or(false),
                batchnorm: self.batchnorm(),
            }),
        }
    }

    /// A short name for tables: `cnn6-w64`, `cnn6-32-64-128`, `cnn9-w64`, `resnet20-w16`.
    pub fn describe(&self) -> String {
        let arch = match self.arch {
            Arch::Resnet => format!("resnet{}", self.resnet_depth()),
            a => a.as_str().to_string(),
        };
        let widths = match self.widths {
            Some([a, b, c]) => format!("{arch}-{a}-{b}-{c}"),
            None => format!("{arch}-w{}", self.width),
        };
        let opt_extra: Vec<&str> = [
            (self.opt_shortcuts == Some(true)).then_some("opt-shortcuts"),
            (self.opt_classifier == Some(true)).then_some("opt-classifier"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if opt_extra.is_empty() {
            widths
        } else {
            format!("{widths}-{}", opt_extra.join("-"))
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
) -> Result<(Network, ParamStore)> {
    let mut store = ParamStore::new(device.clone());
    let mut rng = Rng::fork(seed, "init");
    let cfg = model.network_config(input, classes);
    let net = Network::new(cfg, method.factory().as_ref(), &mut store, &mut rng).map_err(|e| {
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

/// One weight layer as the estimate sees it.
struct LayerCost {
    c_in: u64,
    c_out: u64,
    /// `k_h·k_w`.
    taps: u64,
    /// Output pixels per image.
    pixels: u64,
    /// Built by the method's factory (an OPT layer under an OPT method).
    opt_able: bool,
}

/// The weight layers of the network `model` describes, in forward order.
fn layer_costs(
    model: &ModelConfig,
    input: (usize, usize, usize),
    classes: usize,
) -> Vec<LayerCost> {
    let layer = |c_in: u64, c_out: u64, taps: u64, pixels: u64, opt_able: bool| LayerCost {
        c_in,
        c_out,
        taps,
        pixels,
        opt_able,
    };
    let (mut h, mut w) = (input.1 as u64, input.2 as u64);
    let mut prev = input.0 as u64;
    let mut layers = Vec::new();
    match model.network_config(input, classes) {
        NetworkConfig::Cnn(cfg) => {
            let (fh, fw) = cfg.final_map();
            for width in cfg.widths {
                for _ in 0..cfg.convs_per_stage {
                    layers.push(layer(prev, width as u64, 9, h * w, true));
                    prev = width as u64;
                }
                (h, w) = (h / 2, w / 2);
            }
            let fc6 = cfg.fc6_width as u64;
            layers.push(layer(prev, fc6, (fh * fw) as u64, 1, true));
            layers.push(layer(fc6, classes as u64, 1, 1, false));
        }
        NetworkConfig::ResNet(cfg) => {
            let blocks = cfg.blocks().unwrap_or(0);
            layers.push(layer(prev, cfg.widths[0] as u64, 9, h * w, true));
            prev = cfg.widths[0] as u64;
            for (s, width) in cfg.widths.into_iter().enumerate() {
                let width = width as u64;
                for i in 0..blocks {
                    if s > 0 && i == 0 {
                        (h, w) = (h.div_ceil(2), w.div_ceil(2));
                    }
                    layers.push(layer(prev, width, 9, h * w, true));
                    layers.push(layer(width, width, 9, h * w, true));
                    if prev != width || (s > 0 && i == 0) {
                        layers.push(layer(prev, width, 1, h * w, cfg.opt_shortcuts));
                    }
                    prev = width;
                }
            }
            layers.push(layer(prev, classes as u64, 1, 1, cfg.opt_classifier));
        }
    }
    layers
}

pub fn step_memory(
    model: &ModelConfig,
    method: &MethodConfig,
    input: (usize, usize, usize),
    classes: usize,
    batch: usize,
) -> StepMemory {
    let batch = batch as u64;
    let mut mem = StepMemory {
        activations: 0,
        parameters: 0,
    };
    for l in layer_costs(model, input, classes) {
        let d = l.c_in * l.taps;
        mem.activations += 4 * batch * l.pixels * (2 * d + 4 * l.c_out);
        let dims = LayerDims {
            fan_in: d,
            c_out: l.c_out,
            taps: l.taps,
        };
        mem.parameters += if l.opt_able {
            method.method().layer_bytes(&dims)
        } else {
            plain_layer_bytes(&dims)
        };
    }
    mem
}

/// Refuses a training step that cannot fit in `available` bytes, naming the setting to lower:
/// the batch size when activations (which grow with it) take most of the step, else the width.
pub fn check_step_memory(estimate: StepMemory, available: u64) -> Result<()> {
    if estimate.total() <= available {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let (field, advice) = if estimate.activations >= estimate.parameters {
        (
            "schedule.batch_size",
            "lower schedule.batch_size (or model.width)",
        )
    } else {
        ("model.width", "lower model.width (or schedule.batch_size)")
    };
    Err(StageError::Setting {
        field,
        message: format!(
            "a training step needs about {:.1} GiB ({:.1} GiB of activations, {:.1} GiB of \
             parameters and rotations), but this machine has {:.1} GiB available; {advice}, \
             or set run.memory_check = false to try anyway",
            gib(estimate.total()),
            gib(estimate.activations),
            gib(estimate.parameters),
            gib(available)
        ),
    })
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    fn model(width: usize) -> ModelConfig {
        ModelConfig::cnn6(width)
    }

    /// Hand count for CNN-6 width 64, 3×32×32, 100 classes, batch 128, baseline: activation
    /// floats per image: conv1_0 1024·(2·27 + 256), conv1_1 1024·(2·576 + 256), conv2_* 2 ·
    /// 256·(1152 + 256), conv3_* 2 · 64·(1152 + 256), fc6 (2·1024 + 256), score (2·64 + 400).
    #[test]
    fn matches_a_hand_count() {
        let m = step_memory(&model(64), &MethodConfig::default(), (3, 32, 32), 100, 128);
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
        let gs = step_memory(
            &model(64),
            &MethodConfig::from_name("gs").unwrap(),
            (3, 32, 32),
            100,
            128,
        );
        let rotations: u64 = 27 * 27 + 5 * 576 * 576 + 1024 * 1024;
        let opt_kernels: u64 = kernels - 64 * 100;
        assert_eq!(
            gs.parameters,
            40 * rotations + 8 * opt_kernels + 12 * 64 * 100
        );
    }

    /// ResNet-20 (width 16) on 3×32×32, batch 1, baseline, by hand: stem 1024·(2·27 + 64);
    /// stage 1: six 3×3 layers 1024·(2·144 + 64); stage 2 (16×16): conv a 256·(2·144 + 128),
    /// five 256·(2·288 + 128), projection 256·(2·16 + 128); stage 3 (8×8): conv a
    /// 64·(2·288 + 256), five 64·(2·576 + 256), projection 64·(2·32 + 256); score 2·64 + 40.
    #[test]
    fn resnet_matches_a_hand_count() {
        let mut m = model(16);
        m.arch = Arch::Resnet;
        let est = step_memory(&m, &MethodConfig::default(), (3, 32, 32), 10, 1);
        let floats: u64 = 1024 * (54 + 64)
            + 6 * 1024 * (288 + 64)
            + 256 * (288 + 128)
            + 5 * 256 * (576 + 128)
            + 256 * (32 + 128)
            + 64 * (576 + 256)
            + 5 * 64 * (1152 + 256)
            + 64 * (64 + 256)
            + (128 + 40);
        assert_eq!(est.activations, 4 * floats);
        // GS rotates every 3×3 layer (d = 27, 144, 288, 576), not the projections or score.
        let gs = step_memory(
            &m,
            &MethodConfig::from_name("gs").unwrap(),
            (3, 32, 32),
            10,
            1,
        );
        let rotations: u64 = 27 * 27 + 7 * 144 * 144 + 6 * 288 * 288 + 5 * 576 * 576;
        let opt_kernels: u64 =
            27 * 16 + 6 * 144 * 16 + (144 * 32 + 5 * 288 * 32) + (288 * 64 + 5 * 576 * 64);
        let plain: u64 = 16 * 32 + 32 * 64 + 64 * 10;
        assert_eq!(gs.parameters, 40 * rotations + 8 * opt_kernels + 12 * plain);
    }

    #[test]
    fn refuses_what_cannot_fit_and_names_the_width() {
        let huge = step_memory(
            &model(4096),
            &MethodConfig::from_name("gs").unwrap(),
            (3, 32, 32),
            100,
            128,
        );
        assert!(huge.total() > 100 << 30, "{huge:?}");
        let e = check_step_memory(huge, 24 << 30).unwrap_err().to_string();
        assert!(e.starts_with("model.width: ") && e.contains("GiB"), "{e}");
        // A batch too large for a small net: the batch size is the setting to blame.
        let batch = step_memory(
            &model(32),
            &MethodConfig::from_name("gs").unwrap(),
            (3, 32, 32),
            10,
            1 << 20,
        );
        assert!(batch.activations > batch.parameters);
        let e = check_step_memory(batch, 24 << 30).unwrap_err().to_string();
        assert!(e.starts_with("schedule.batch_size: "), "{e}");
        let small = step_memory(
            &model(32),
            &MethodConfig::from_name("gs").unwrap(),
            (1, 28, 28),
            10,
            128,
        );
        assert!(check_step_memory(small, 24 << 30).is_ok());
    }
}
