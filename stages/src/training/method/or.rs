//! `or`: orthogonality regularization (spec §2.7): raw `R ~ N(0, 1)` plus
//! `weight·Σ‖RRᵀ − I‖_F` (not squared).

use super::{Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, OptLayerConfig, Rotation, RotationInit};
use serde::{Deserialize, Serialize};

fn weight() -> f64 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Or {
    /// Weight of the orthogonality penalty (0.1).
    #[serde(default = "weight")]
    pub weight: f64,
}

impl Default for Or {
    fn default() -> Self {
        Self { weight: weight() }
    }
}

impl Method for Or {
    fn summary(&self) -> &'static str {
        "OPT (Liu et al., CVPR 2021): orthogonality regularization — raw `R ~ N(0,1)` plus \
         `weight·Σ‖RRᵀ − I‖_F`"
    }

    fn label(&self) -> String {
        "OPT (OR)".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(OptFactory::new(OptLayerConfig {
            rotation: Rotation::Raw,
            init: RotationInit::Gaussian,
            decay_rotation: true,
            decay_fixed: true,
            learn_w0: false,
            penalty: self.weight,
            merge_on_episode: false,
        }))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/opt_layer.rs",
                test: "or_penalty_is_the_frobenius_norm_written_out",
            },
            OracleTest {
                file: "opt-core/src/opt_layer.rs",
                test: "the_kernel_is_p_times_w0_under_the_row_mapping",
            },
        ]
    }

    fn orthogonality_tolerance(&self) -> Option<f64> {
        None
    }
}
