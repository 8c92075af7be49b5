//! The OPT method library: the model pieces of Orthogonal Over-Parameterized Training
//! (Liu et al., CVPR 2021) on top of candle.
//!
//! This crate knows nothing of files, recipes or pipelines. It provides
//! * [`ParamStore`]: every tensor of a model, with the role that decides how it is updated;
//! * [`layers`]: the weight seam ([`layers::KernelSource`]) through which OPT layers plug into a
//!   network, and the plain (baseline) kernel;
//! * [`BatchNorm`]: the official TensorFlow batch normalisation (biased variance, eps 1e-3,
//!   EMA 0.999 from zero-initialised shadows);
//! * [`Network`]: the paper's CNN-6, MHE's CNN-9 ([`Cnn`]) and the CIFAR ResNets ([`ResNet`]),
//!   adapting to any input shape;
//! * [`mhe`]: the MHE and half-space MHE regularisers (the paper's controls);
//! * [`loss`], [`MomentumSgd`], [`PiecewiseLr`], [`metrics`]: the training protocol of the official
//!   code (spec §5);
//! * [`Rng`]: a small seeded generator whose whole state fits in a checkpoint;
//! * [`ops`]: the device seam — one op type per fused op (convolution, BN+ReLU, max-pool,
//!   orthogonalize), each with a CPU and (feature `cuda`) a CUDA forward.

pub mod batchnorm;
pub mod cayley_sgd;
pub mod cnn6;
pub mod energy;
pub mod error;
pub mod family;
#[cfg(feature = "cuda")]
pub(crate) mod launch;
pub mod layers;
pub mod loss;
pub mod metrics;
pub mod mhe;
pub mod network;
pub mod ops;
pub mod opt_layer;
pub mod optim;
pub mod orth;
pub(crate) mod par;
pub mod params;
pub mod penalty;
pub mod resnet;
pub mod rng;
pub mod rotations;
pub mod schedule;
pub mod skew;
pub mod sparse_opt;
#[cfg(test)]
mod test_util;

pub use batchnorm::BatchNorm;
pub use cnn6::{Cnn, Cnn6, Cnn6Config, CnnConfig};
pub use error::{Error, Result};
pub use network::{Network, NetworkConfig};
pub use optim::MomentumSgd;
pub use params::{Entry, Kind, ParamStore, Role};
pub use resnet::{ResNet, ResNetConfig};
pub use rng::Rng;
pub use schedule::PiecewiseLr;
