//! The networks a recipe can train, behind one type, so training, evaluation and metrics never
//! name a concrete architecture.

use crate::cnn6::{Cnn, CnnConfig};
use crate::layers::{Conv, KernelFactory};
use crate::resnet::{ResNet, ResNetConfig};
use crate::rotations::Rotations;
use crate::{ParamStore, Result, Rng};
use candle_core::Tensor;

/// What to build.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkConfig {
    /// CNN-6 or CNN-9 (three stages of plain convolutions, `fc6`, `score`).
    Cnn(CnnConfig),
    /// A CIFAR ResNet.
    ResNet(ResNetConfig),
}

pub enum Network {
    Cnn(Cnn),
    ResNet(ResNet),
}

impl Network {
    /// Builds the network, drawing initial weights from `rng` in forward order.
    pub fn new(
        config: NetworkConfig,
        factory: &dyn KernelFactory,
        store: &mut ParamStore,
        rng: &mut Rng,
    ) -> Result<Self> {
        Ok(match config {
            NetworkConfig::Cnn(c) => Network::Cnn(Cnn::new(c, factory, store, rng)?),
            NetworkConfig::ResNet(c) => Network::ResNet(ResNet::new(c, factory, store, rng)?),
        })
    }

    /// Logits `[N, classes]` for a normalised input `[N, C, H, W]`.
    ///
    /// The OPT layers' rotations are computed first, together: one batched op per (size, map)
    /// group, the groups concurrently on the CPU (see `rotations`), and handed to each layer.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, &self.rotations()?)
    }

    /// The rotations the layers' forward needs, computed together from the current weights: for
    /// several forwards over unchanged weights, with [`Self::forward_with`] (an evaluation's
    /// batches compute the maps once, not once per batch).
    pub fn rotations(&self) -> Result<Rotations> {
        crate::layers::forward_rotations(self.weight_layers())
    }

    /// [`Self::forward`] with `rotations` from [`Self::rotations`]; they must have been
    /// computed since the weights last changed (a stale context gives the old weights' logits).
    pub fn forward_with(&self, x: &Tensor, train: bool, rotations: &Rotations) -> Result<Tensor> {
        match self {
            Network::Cnn(n) => n.forward_in(x, train, rotations),
            Network::ResNet(n) => n.forward_in(x, train, rotations),
        }
    }

    /// Every weight layer in forward order; the classifier `score` last.
    pub fn weight_layers(&self) -> Box<dyn Iterator<Item = &Conv> + '_> {
        match self {
            Network::Cnn(n) => Box::new(n.weight_layers()),
            Network::ResNet(n) => Box::new(n.weight_layers()),
        }
    }

    /// The sum of the layers' extra loss terms (OR penalty), if any.
    pub fn penalty(&self) -> Result<Option<Tensor>> {
        crate::layers::total_penalty(self.weight_layers())
    }

    /// Ends an S-OPT episode in every layer that has one; returns how many layers did.
    pub fn end_episode(&self, rng: &mut Rng) -> Result<usize> {
        crate::layers::end_episode(self.weight_layers(), rng)
    }

    /// The plain CNN inside, for what only it supports (the PyTorch export).
    pub fn as_cnn(&self) -> Option<&Cnn> {
        match self {
            Network::Cnn(n) => Some(n),
            Network::ResNet(_) => None,
        }
    }
}
