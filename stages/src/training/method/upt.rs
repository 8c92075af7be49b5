//! `upt`: unconstrained over-parameterized training (the paper's control): `W = R·W0` with `R`
//! learned freely from the identity; `W0` fixed unless `learn_w0`.

use super::{Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, OptLayerConfig, Rotation, RotationInit};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upt {
    /// `W0` is learned too (never in faithful OPT).
    #[serde(default)]
    pub learn_w0: bool,
}

impl Method for Upt {
    fn summary(&self) -> &'static str {
        "the paper's control: `W = R·W0` with `R` learned freely from the identity"
    }

    fn label(&self) -> String {
        if self.learn_w0 {
            "UPT (learned W0)".into()
        } else {
            "UPT".into()
        }
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(OptFactory::new(OptLayerConfig {
            rotation: Rotation::Raw,
            init: RotationInit::Identity,
            decay_rotation: true,
            decay_fixed: true,
            learn_w0: self.learn_w0,
            penalty: 0.0,
            merge_on_episode: false,
        }))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[OracleTest {
            file: "opt-core/src/opt_layer.rs",
            test: "the_kernel_is_p_times_w0_under_the_row_mapping",
        }]
    }

    fn orthogonality_tolerance(&self) -> Option<f64> {
        None
    }
}
