//! The paper's CNN-6 (spec §5): three stages of two [3×3 conv, BN, ReLU] and a 2×2 max-pool,
//! `fc6` (a VALID convolution covering the whole last feature map, no BN, no ReLU) and a plain
//! 1×1 classifier `score`. No biases anywhere. Adapts to any input channels and size.
//!
//! The seven weight layers `conv1_0 … conv3_1, fc6` get their kernels from a
//! [`KernelFactory`](crate::layers::KernelFactory) — the seam where OPT methods plug in; `score`
//! is always an ordinary trainable layer, as in the official code.

use crate::batchnorm::{BatchNorm, BatchNormConfig};
use crate::layers::{Conv, KernelFactory, KernelShape, PlainKernel};
use crate::{Error, ParamStore, Result, Rng};
use candle_core::Tensor;

#[derive(Debug, Clone, PartialEq)]
pub struct Cnn6Config {
    /// Input `(channels, height, width)`.
    pub input: (usize, usize, usize),
    /// Channel widths of the three stages (64/64/64 in most official folders, 32/64/128 in CP).
    pub widths: [usize; 3],
    /// Output width of `fc6` (the last stage's width in the official code).
    pub fc6_width: usize,
    pub classes: usize,
    pub batchnorm: BatchNormConfig,
}

impl Cnn6Config {
    /// The official 64-wide net for an input shape.
    pub fn new(input: (usize, usize, usize), classes: usize, width: usize) -> Self {
        Self {
            input,
            widths: [width; 3],
            fc6_width: width,
            classes,
            batchnorm: BatchNormConfig::default(),
        }
    }

    /// Spatial size of the last feature map (after three floor-halving max-pools).
    pub fn final_map(&self) -> (usize, usize) {
        (self.input.1 / 8, self.input.2 / 8)
    }
}

pub struct Cnn6 {
    pub config: Cnn6Config,
    convs: Vec<(Conv, BatchNorm)>,
    fc6: Conv,
    score: Conv,
}

impl Cnn6 {
    /// Names of the layers that come from the factory, in forward order.
    pub const OPT_LAYERS: [&'static str; 7] = [
        "conv1_0", "conv1_1", "conv2_0", "conv2_1", "conv3_0", "conv3_1", "fc6",
    ];

    pub fn new(
        config: Cnn6Config,
        factory: &dyn KernelFactory,
        store: &mut ParamStore,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (c_in, h, w) = config.input;
        let (fh, fw) = config.final_map();
        if fh == 0 || fw == 0 {
            return Err(Error::Config(format!(
                "CNN-6 needs inputs of at least 8×8 (three 2×2 max-pools), got {h}×{w}"
            )));
        }
        if config.classes < 2 || config.widths.contains(&0) || config.fc6_width == 0 {
            return Err(Error::Config(format!(
                "invalid CNN-6 widths/classes: {config:?}"
            )));
        }
        let mut convs = Vec::new();
        let mut prev = c_in;
        for (i, name) in Self::OPT_LAYERS[..6].iter().enumerate() {
            let width = config.widths[i / 2];
            let shape = KernelShape {
                c_out: width,
                c_in: prev,
                k_h: 3,
                k_w: 3,
            };
            let source = factory.build(store, name, shape, rng)?;
            let bn = BatchNorm::new(store, &format!("{name}.bn"), width, config.batchnorm)?;
            convs.push((
                Conv {
                    name: name.to_string(),
                    shape,
                    padding: 1,
                    source,
                },
                bn,
            ));
            prev = width;
        }
        let shape = KernelShape {
            c_out: config.fc6_width,
            c_in: prev,
            k_h: fh,
            k_w: fw,
        };
        let fc6 = Conv {
            name: "fc6".into(),
            shape,
            padding: 0,
            source: factory.build(store, "fc6", shape, rng)?,
        };
        let shape = KernelShape {
            c_out: config.classes,
            c_in: config.fc6_width,
            k_h: 1,
            k_w: 1,
        };
        let score = Conv {
            name: "score".into(),
            shape,
            padding: 0,
            source: Box::new(PlainKernel::new(store, "score", shape, rng)?),
        };
        Ok(Self {
            config,
            convs,
            fc6,
            score,
        })
    }

    /// Logits `[N, classes]` for a normalised input `[N, C, H, W]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = bn.forward_relu(&conv.forward(&h)?, train)?;
            if i % 2 == 1 {
                h = crate::pool::max_pool2x2(&h)?;
            }
        }
        let h = self.fc6.forward(&h)?;
        let logits = self.score.forward(&h)?;
        let n = logits.dim(0)?;
        Ok(logits.reshape((n, self.config.classes))?)
    }

    /// The sum of the layers' extra loss terms (OR penalty), if any.
    pub fn penalty(&self) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for conv in self.weight_layers() {
            if let Some(p) = conv.source.penalty()? {
                total = Some(match total {
                    Some(t) => (t + p)?,
                    None => p,
                });
            }
        }
        Ok(total)
    }

    /// Ends an S-OPT episode in every layer that has one; returns how many layers did.
    pub fn end_episode(&self, rng: &mut Rng) -> Result<usize> {
        let mut n = 0;
        for conv in self.weight_layers() {
            if conv.source.end_episode(rng)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every weight layer (the seven OPT-able ones, then `score`).
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

    #[test]
    fn rejects_too_small_input() {
        let mut store = ParamStore::new(Device::Cpu);
        let cfg = Cnn6Config::new((1, 7, 7), 10, 8);
        assert!(Cnn6::new(cfg, &PlainFactory, &mut store, &mut Rng::seed(0)).is_err());
    }
}
