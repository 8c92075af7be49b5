//! `ogd`: orthogonality-preserving gradient descent (spec §2.6): `R` from the identity, used as
//! is and kept orthogonal by Cayley SGD, with its own learning rate.

use super::{Method, OracleTest, RotationOptimizer};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, OptLayerConfig, Rotation, RotationInit};
use serde::{Deserialize, Serialize};

fn rotation_lr() -> f64 {
    0.02
}
fn rotation_lr_factor() -> f64 {
    0.2
}
fn decay_scale() -> f64 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ogd {
    /// Learning rate of the rotations (0.02).
    #[serde(default = "rotation_lr")]
    pub rotation_lr: f64,
    /// Factor applied to `rotation_lr` at each schedule milestone (0.2).
    #[serde(default = "rotation_lr_factor")]
    pub rotation_lr_factor: f64,
    /// The official OGD loss is `L_fit + 0.1·L2`: weight decay of the other tensors × 0.1.
    #[serde(default = "decay_scale")]
    pub weight_decay_scale: f64,
}

impl Default for Ogd {
    fn default() -> Self {
        Self {
            rotation_lr: rotation_lr(),
            rotation_lr_factor: rotation_lr_factor(),
            weight_decay_scale: decay_scale(),
        }
    }
}

impl Method for Ogd {
    fn summary(&self) -> &'static str {
        "OPT (Liu et al., CVPR 2021): orthogonality-preserving gradient descent — `R` from the \
         identity, updated by Cayley SGD"
    }

    fn label(&self) -> String {
        "OPT (OGD)".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(OptFactory::new(OptLayerConfig {
            rotation: Rotation::Raw,
            init: RotationInit::Identity,
            decay_rotation: false,
            decay_fixed: false,
            learn_w0: false,
            penalty: 0.0,
            merge_on_episode: false,
        }))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/cayley_sgd.rs",
                test: "one_step_matches_the_update_written_out",
            },
            OracleTest {
                file: "opt-core/src/opt_layer.rs",
                test: "the_kernel_is_p_times_w0_under_the_row_mapping",
            },
        ]
    }

    fn weight_decay_scale(&self) -> f64 {
        self.weight_decay_scale
    }

    fn rotation_optimizer(&self) -> RotationOptimizer {
        RotationOptimizer::CayleySgd {
            lr: self.rotation_lr,
            lr_factor: self.rotation_lr_factor,
        }
    }
}
