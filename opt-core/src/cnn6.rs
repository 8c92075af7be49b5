//! The plain CNNs of OPT and MHE (spec §5): three stages of `convs_per_stage` [3×3 conv, BN,
//! ReLU] and a 2×2 max-pool, `fc6` (a VALID convolution covering the whole last feature map, no
//! BN, no ReLU) and a plain 1×1 classifier `score`. No biases anywhere. Adapts to any input
//! channels and size.
//!
//! * CNN-6 (two convolutions per stage) is the OPT paper's network.
//! * CNN-9 (three per stage, widths 64/128/256, `fc6` → 256) is the network MHE was published
//!   on: `wy1iu/MHE`, `code/architecture.py`, `VGG.build` (layers `conv{1,2,3}_{0,1,2}`, `pool`
//!   after each stage, `fc6` 4×4 VALID, `score` 1×1), so OPT and MHE compare on it.
//!
//! Layer `i` of stage `s` is named `conv{s+1}_{i}`. The weight layers `conv… , fc6` get their
//! kernels from a [`KernelFactory`](crate::layers::KernelFactory) — the seam where OPT methods
//! plug in; `score` is always an ordinary trainable layer, as in the official code.

use crate::batchnorm::{BatchNorm, BatchNormConfig};
use crate::layers::{Conv, KernelFactory, KernelShape, PlainKernel};
use crate::rotations::Rotations;
use crate::{Error, ParamStore, Result, Rng};
use candle_core::Tensor;

#[derive(Debug, Clone, PartialEq)]
pub struct CnnConfig {
    /// Input `(channels, height, width)`.
    pub input: (usize, usize, usize),
    /// Channel widths of the three stages (64/64/64 in most official OPT folders, 32/64/128 in
    /// CP, 64/128/256 in MHE's CNN-9).
    pub widths: [usize; 3],
    /// 3×3 convolutions per stage: 2 (CNN-6) or 3 (CNN-9).
    pub convs_per_stage: usize,
    /// Output width of `fc6` (the last stage's width in the official code).
    pub fc6_width: usize,
    pub classes: usize,
    pub batchnorm: BatchNormConfig,
}

/// The OPT paper's name for the configuration of [`Cnn`] it uses.
pub type Cnn6Config = CnnConfig;
/// The network type CNN-6 and CNN-9 share.
pub type Cnn6 = Cnn;

impl CnnConfig {
    /// The official 64-wide CNN-6 for an input shape.
    pub fn new(input: (usize, usize, usize), classes: usize, width: usize) -> Self {
        Self {
            input,
            widths: [width; 3],
            convs_per_stage: 2,
            fc6_width: width,
            classes,
            batchnorm: BatchNormConfig::default(),
        }
    }

    /// MHE's CNN-9 with stage widths `widths` (64/128/256 in `wy1iu/MHE`), `fc6` as wide as
    /// the last stage.
    pub fn cnn9(input: (usize, usize, usize), classes: usize, widths: [usize; 3]) -> Self {
        Self {
            input,
            widths,
            convs_per_stage: 3,
            fc6_width: widths[2],
            classes,
            batchnorm: BatchNormConfig::default(),
        }
    }

    /// Spatial size of the last feature map (after three floor-halving max-pools).
    pub fn final_map(&self) -> (usize, usize) {
        (self.input.1 / 8, self.input.2 / 8)
    }

    /// Names of the layers that come from the factory, in forward order.
    pub fn factory_layers(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..3)
            .flat_map(|s| (0..self.convs_per_stage).map(move |i| format!("conv{}_{i}", s + 1)))
            .collect();
        names.push("fc6".into());
        names
    }
}

pub struct Cnn {
    pub config: CnnConfig,
    convs: Vec<(Conv, BatchNorm)>,
    fc6: Conv,
    score: Conv,
}

impl Cnn {
    /// Names of CNN-6's layers that come from the factory, in forward order.
    pub const OPT_LAYERS: [&'static str; 7] = [
        "conv1_0", "conv1_1", "conv2_0", "conv2_1", "conv3_0", "conv3_1", "fc6",
    ];

    pub fn new(
        config: CnnConfig,
        factory: &dyn KernelFactory,
        store: &mut ParamStore,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (c_in, h, w) = config.input;
        let (fh, fw) = config.final_map();
        if fh == 0 || fw == 0 {
            return Err(Error::Config(format!(
                "the CNN needs inputs of at least 8×8 (three 2×2 max-pools), got {h}×{w}"
            )));
        }
        if config.classes < 2
            || config.widths.contains(&0)
            || config.fc6_width == 0
            || config.convs_per_stage == 0
        {
            return Err(Error::Config(format!(
                "invalid CNN widths/depth/classes: {config:?}"
            )));
        }
        let names = config.factory_layers();
        let mut convs = Vec::new();
        let mut prev = c_in;
        // Parameters are created in forward order (kernel, then its BN): CNN-6's draw order,
        // which checkpoints and golden tests pin.
        for (i, name) in names[..names.len() - 1].iter().enumerate() {
            let width = config.widths[i / config.convs_per_stage];
            let shape = KernelShape {
                c_out: width,
                c_in: prev,
                k_h: 3,
                k_w: 3,
            };
            let source = factory.build(store, name, shape, rng)?;
            let bn = BatchNorm::new(store, &format!("{name}.bn"), width, config.batchnorm)?;
            convs.push((Conv::new(name, shape, 1, source), bn));
            prev = width;
        }
        let shape = KernelShape {
            c_out: config.fc6_width,
            c_in: prev,
            k_h: fh,
            k_w: fw,
        };
        let fc6 = Conv::new("fc6", shape, 0, factory.build(store, "fc6", shape, rng)?);
        let shape = KernelShape {
            c_out: config.classes,
            c_in: config.fc6_width,
            k_h: 1,
            k_w: 1,
        };
        let score = Conv::new(
            "score",
            shape,
            0,
            Box::new(PlainKernel::new(store, "score", shape, rng)?),
        );
        Ok(Self {
            config,
            convs,
            fc6,
            score,
        })
    }

    /// Logits `[N, classes]` for a normalised input `[N, C, H, W]`, the rotations of all
    /// layers computed together first.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let rotations = crate::layers::forward_rotations(self.weight_layers())?;
        self.forward_in(x, train, &rotations)
    }

    /// [`Self::forward`] with the layers' rotations taken from `rotations`.
    pub fn forward_in(&self, x: &Tensor, train: bool, rotations: &Rotations) -> Result<Tensor> {
        let mut h = x.clone();
        let per_stage = self.config.convs_per_stage;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = bn.forward_relu(&conv.forward_in(&h, rotations)?, train)?;
            if i % per_stage == per_stage - 1 {
                h = crate::ops::max_pool2x2(&h)?;
            }
        }
        let h = self.fc6.forward_in(&h, rotations)?;
        let logits = self.score.forward_in(&h, rotations)?;
        let n = logits.dim(0)?;
        Ok(logits.reshape((n, self.config.classes))?)
    }

    /// The sum of the layers' extra loss terms (OR penalty), if any.
    pub fn penalty(&self) -> Result<Option<Tensor>> {
        crate::layers::total_penalty(self.weight_layers())
    }

    /// Ends an S-OPT episode in every layer that has one; returns how many layers did.
    pub fn end_episode(&self, rng: &mut Rng) -> Result<usize> {
        crate::layers::end_episode(self.weight_layers(), rng)
    }

    /// Every weight layer (the factory's, then `score`).
    pub fn weight_layers(&self) -> impl Iterator<Item = &Conv> {
        self.convs
            .iter()
            .map(|(c, _)| c)
            .chain([&self.fc6, &self.score])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::PlainFactory;
    use candle_core::{DType, Device};

    #[test]
    fn shapes_adapt_to_input() -> Result<()> {
        for (input, fc) in [((1, 28, 28), 3), ((3, 32, 32), 4)] {
            let mut store = ParamStore::new(Device::Cpu);
            let cfg = Cnn6Config::new(input, 10, 8);
            let net = Cnn6::new(cfg, &PlainFactory, &mut store, &mut Rng::seed(0))?;
            assert_eq!(net.fc6.shape.k_h, fc);
            let x = Tensor::zeros((2, input.0, input.1, input.2), DType::F32, &Device::Cpu)?;
            assert_eq!(net.forward(&x, true)?.dims(), &[2, 10]);
            assert_eq!(net.forward(&x, false)?.dims(), &[2, 10]);
        }
        // 7 weight layers + score; 6 BN layers × 4 tensors.
        let mut store = ParamStore::new(Device::Cpu);
        Cnn6::new(
            Cnn6Config::new((3, 32, 32), 100, 64),
            &PlainFactory,
            &mut store,
            &mut Rng::seed(0),
        )?;
        assert_eq!(store.entries().len(), 8 + 24);
        assert_eq!(
            store.count(|r| r == crate::Role::Trainable { decay: true }) - 2 * 6 * 64,
            27 * 64 + 5 * 576 * 64 + 1024 * 64 + 6400
        );
        Ok(())
    }

    /// CNN-9 (MHE's layout) on CIFAR shapes: 9 convs + fc6 + score, hand-counted parameters.
    #[test]
    fn cnn9_shapes_and_parameter_count() -> Result<()> {
        let mut store = ParamStore::new(Device::Cpu);
        let cfg = CnnConfig::cnn9((3, 32, 32), 100, [64, 128, 256]);
        assert_eq!(cfg.factory_layers().len(), 10);
        let net = Cnn::new(cfg, &PlainFactory, &mut store, &mut Rng::seed(0))?;
        let names: Vec<&str> = net.weight_layers().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv1_0", "conv1_1", "conv1_2", "conv2_0", "conv2_1", "conv2_2", "conv3_0",
                "conv3_1", "conv3_2", "fc6", "score"
            ]
        );
        let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
        assert_eq!(net.forward(&x, true)?.dims(), &[2, 100]);
        // Hand count: 3×3 kernels 3·64 + 2·64·64 | 64·128 + 2·128·128 | 128·256 + 2·256·256
        // (×9 taps), fc6 4·4·256·256, score 256·100, BN γ and β of the nine convs.
        let kernels = 9
            * (3 * 64 + 2 * 64 * 64 + 64 * 128 + 2 * 128 * 128 + 128 * 256 + 2 * 256 * 256)
            + 16 * 256 * 256
            + 256 * 100;
        let bn = 2 * (3 * 64 + 3 * 128 + 3 * 256);
        assert_eq!(
            store.count(|r| r == crate::Role::Trainable { decay: true }),
            kernels + bn
        );
        Ok(())
    }

    #[test]
    fn rejects_too_small_input() {
        let mut store = ParamStore::new(Device::Cpu);
        let cfg = Cnn6Config::new((1, 7, 7), 10, 8);
        assert!(Cnn6::new(cfg, &PlainFactory, &mut store, &mut Rng::seed(0)).is_err());
    }
}
