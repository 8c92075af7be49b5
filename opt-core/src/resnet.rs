//! The CIFAR ResNet family (He et al., "Deep Residual Learning for Image Recognition", CVPR
//! 2016, §4.2): a 3×3 stem, three stages of `n` basic blocks (ResNet-20/32/56: n = 3/5/9) with
//! widths 16/32/64 × a width factor, stride 2 at the first block of stages 2 and 3, global
//! average pooling and a 1×1 classifier.
//!
//! A basic block is `relu(bn_b(conv_b(relu(bn_a(conv_a(x))))) + shortcut(x))`; the shortcut is
//! the identity where shapes agree and a 1×1 projection + BN where they do not (the paper's
//! option B), since a parameter-free zero-padded shortcut has no weight for OPT to act on.
//!
//! Every 3×3 convolution gets its kernel from the [`KernelFactory`] (an OPT layer under an OPT
//! method); the 1×1 projections and the classifier are plain unless
//! [`ResNetConfig::opt_shortcuts`] / [`ResNetConfig::opt_classifier`] say otherwise. No biases,
//! as in the OPT networks (the classifier of the original ResNet has one).
//!
//! Layer names: the stem is `conv1_0` ([`INPUT_LAYER`]), block `b` of stage `s` has `res{s}_{b}a`,
//! `res{s}_{b}b` and, where it projects, `res{s}_{b}p`; the classifier is `score`.

use crate::batchnorm::{BatchNorm, BatchNormConfig};
use crate::layers::{Conv, KernelFactory, KernelShape, PlainKernel, INPUT_LAYER};
use crate::rotations::Rotations;
use crate::{Error, ParamStore, Result, Rng};
use candle_core::Tensor;

#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    /// Input `(channels, height, width)`.
    pub input: (usize, usize, usize),
    /// 6n + 2: 20, 32, 56, …
    pub depth: usize,
    /// Channel widths of the three stages (16/32/64 × width factor); the stem has the first.
    pub widths: [usize; 3],
    pub classes: usize,
    /// The 1×1 projection shortcuts come from the factory too (plain otherwise).
    pub opt_shortcuts: bool,
    /// The classifier comes from the factory too (plain otherwise).
    pub opt_classifier: bool,
    pub batchnorm: BatchNormConfig,
}

impl ResNetConfig {
    /// ResNet-`depth` with widths 16/32/64 × `width_factor`.
    pub fn new(
        input: (usize, usize, usize),
        classes: usize,
        depth: usize,
        width_factor: usize,
    ) -> Self {
        Self {
            input,
            depth,
            widths: [16 * width_factor, 32 * width_factor, 64 * width_factor],
            classes,
            opt_shortcuts: false,
            opt_classifier: false,
            batchnorm: BatchNormConfig::default(),
        }
    }

    /// Basic blocks per stage, `(depth − 2)/6`.
    pub fn blocks(&self) -> Result<usize> {
        if self.depth < 8 || !(self.depth - 2).is_multiple_of(6) {
            return Err(Error::Config(format!(
                "a CIFAR ResNet has depth 6n + 2 (20, 32, 56, …), got {}",
                self.depth
            )));
        }
        Ok((self.depth - 2) / 6)
    }
}

/// A convolution with its batch norm.
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

struct Block {
    a: ConvBn,
    b: ConvBn,
    /// `None`: identity shortcut.
    projection: Option<ConvBn>,
}

pub struct ResNet {
    pub config: ResNetConfig,
    stem: ConvBn,
    blocks: Vec<Block>,
    score: Conv,
}

/// What builds one layer: the factory, or a plain kernel.
struct Builder<'a> {
    factory: &'a dyn KernelFactory,
    store: &'a mut ParamStore,
    rng: &'a mut Rng,
    bn: BatchNormConfig,
}

impl Builder<'_> {
    fn conv(&mut self, name: &str, shape: KernelShape, stride: usize, opt: bool) -> Result<Conv> {
        let source = if opt {
            self.factory.build(self.store, name, shape, self.rng)?
        } else {
            Box::new(PlainKernel::new(self.store, name, shape, self.rng)?)
        };
        let mut conv = Conv::new(name, shape, shape.k_h / 2, source);
        conv.stride = stride;
        Ok(conv)
    }

    fn conv_bn(
        &mut self,
        name: &str,
        shape: KernelShape,
        stride: usize,
        opt: bool,
    ) -> Result<ConvBn> {
        let conv = self.conv(name, shape, stride, opt)?;
        let bn = BatchNorm::new(self.store, &format!("{name}.bn"), shape.c_out, self.bn)?;
        Ok(ConvBn { conv, bn })
    }
}

fn shape(c_in: usize, c_out: usize, k: usize) -> KernelShape {
    KernelShape {
        c_out,
        c_in,
        k_h: k,
        k_w: k,
    }
}

impl ResNet {
    pub fn new(
        config: ResNetConfig,
        factory: &dyn KernelFactory,
        store: &mut ParamStore,
        rng: &mut Rng,
    ) -> Result<Self> {
        let n = config.blocks()?;
        if config.classes < 2 || config.widths.contains(&0) || config.input.0 == 0 {
            return Err(Error::Config(format!(
                "invalid ResNet widths/classes: {config:?}"
            )));
        }
        let mut b = Builder {
            factory,
            store,
            rng,
            bn: config.batchnorm,
        };
        let stem = b.conv_bn(
            INPUT_LAYER,
            shape(config.input.0, config.widths[0], 3),
            1,
            true,
        )?;
        let mut blocks = Vec::new();
        let mut prev = config.widths[0];
        for (s, &width) in config.widths.iter().enumerate() {
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let name = format!("res{}_{i}", s + 1);
                let a = b.conv_bn(&format!("{name}a"), shape(prev, width, 3), stride, true)?;
                let bb = b.conv_bn(&format!("{name}b"), shape(width, width, 3), 1, true)?;
                let projection = if stride != 1 || prev != width {
                    let opt = config.opt_shortcuts;
                    Some(b.conv_bn(&format!("{name}p"), shape(prev, width, 1), stride, opt)?)
                } else {
                    None
                };
                blocks.push(Block {
                    a,
                    b: bb,
                    projection,
                });
                prev = width;
            }
        }
        let score = b.conv(
            "score",
            shape(prev, config.classes, 1),
            1,
            config.opt_classifier,
        )?;
        Ok(Self {
            config,
            stem,
            blocks,
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
        let r = rotations;
        let mut h = self
            .stem
            .bn
            .forward_relu(&self.stem.conv.forward_in(x, r)?, train)?;
        for block in &self.blocks {
            let a = block
                .a
                .bn
                .forward_relu(&block.a.conv.forward_in(&h, r)?, train)?;
            let main = block
                .b
                .bn
                .forward(&block.b.conv.forward_in(&a, r)?, train)?;
            let shortcut = match &block.projection {
                Some(p) => p.bn.forward(&p.conv.forward_in(&h, r)?, train)?,
                None => h,
            };
            h = (main + shortcut)?.relu()?;
        }
        // Global average pooling, then the 1×1 classifier.
        let pooled = h.mean_keepdim(3)?.mean_keepdim(2)?;
        let logits = self.score.forward_in(&pooled, r)?;
        let n = logits.dim(0)?;
        Ok(logits.reshape((n, self.config.classes))?)
    }

    /// Every weight layer in forward order (stem, each block's a, b and projection), then
    /// `score`.
    pub fn weight_layers(&self) -> impl Iterator<Item = &Conv> {
        std::iter::once(&self.stem.conv)
            .chain(self.blocks.iter().flat_map(|b| {
                [
                    Some(&b.a.conv),
                    Some(&b.b.conv),
                    b.projection.as_ref().map(|p| &p.conv),
                ]
                .into_iter()
                .flatten()
            }))
            .chain(std::iter::once(&self.score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::PlainFactory;
    use crate::Role;
    use candle_core::{DType, Device};

    fn build(cfg: ResNetConfig) -> Result<(ResNet, ParamStore)> {
        let mut store = ParamStore::new(Device::Cpu);
        let net = ResNet::new(cfg, &PlainFactory, &mut store, &mut Rng::seed(0))?;
        Ok((net, store))
    }

    /// ResNet-20 on CIFAR-10: the widely quoted 269 722 parameters of the option-A network
    /// (e.g. akamaster/pytorch_resnet_cifar10) less the classifier's 10 biases, plus the two
    /// projections (16·32 + 32·64 weights) and their BN γ/β (2·(32 + 64)).
    #[test]
    fn resnet20_parameter_count_and_shapes() -> Result<()> {
        let (net, store) = build(ResNetConfig::new((3, 32, 32), 10, 20, 1))?;
        let trainable = store.count(|r| matches!(r, Role::Trainable { .. }));
        assert_eq!(trainable, 269_722 - 10 + 16 * 32 + 32 * 64 + 2 * (32 + 64));
        // 19 3×3 convs + 2 projections + score.
        assert_eq!(net.weight_layers().count(), 22);
        let names: Vec<&str> = net.weight_layers().map(|c| c.name.as_str()).collect();
        assert_eq!(&names[..4], ["conv1_0", "res1_0a", "res1_0b", "res1_1a"]);
        assert!(names.contains(&"res2_0p") && names.contains(&"res3_0p"));
        assert!(!names.contains(&"res1_0p") && !names.contains(&"res2_1p"));
        for input in [(3, 32, 32), (1, 28, 28), (3, 9, 7)] {
            let (net, _) = build(ResNetConfig::new(input, 7, 20, 1))?;
            let x = Tensor::zeros((2, input.0, input.1, input.2), DType::F32, &Device::Cpu)?;
            assert_eq!(net.forward(&x, true)?.dims(), &[2, 7]);
            assert_eq!(net.forward(&x, false)?.dims(), &[2, 7]);
        }
        Ok(())
    }

    /// ResNet-32 at width factor 2: 5 blocks per stage, hand-counted per layer.
    #[test]
    fn resnet32_width2_parameter_count() -> Result<()> {
        let (net, store) = build(ResNetConfig::new((3, 32, 32), 100, 32, 2))?;
        let (w1, w2, w3) = (32, 64, 128);
        let convs = 9 * 3 * w1
            + 10 * 9 * w1 * w1
            + 9 * w1 * w2
            + 9 * 9 * w2 * w2
            + 9 * w2 * w3
            + 9 * 9 * w3 * w3
            + w1 * w2
            + w2 * w3
            + w3 * 100;
        let bn = 2 * (w1 + 10 * w1 + 10 * w2 + 10 * w3 + w2 + w3);
        assert_eq!(
            store.count(|r| matches!(r, Role::Trainable { .. })),
            convs + bn
        );
        assert_eq!(net.weight_layers().count(), 1 + 30 + 2 + 1);
        Ok(())
    }

    #[test]
    fn rejects_depths_not_6n_plus_2() {
        for depth in [0, 18, 21] {
            assert!(build(ResNetConfig::new((3, 32, 32), 10, depth, 1)).is_err());
        }
    }
}
