//! `expm`: OPT with `R = exp(P − Pᵀ)` (Lezcano-Casado and Martínez-Rubio, "Cheap Orthogonal
//! Constraints in Neural Networks", ICML 2019; geotorch's default for the orthogonal group).
//! `P` starts at zero (`R = I`); the map and its backward are `opt_core::skew::expm`.

use super::{exact_layers, neuron_bytes, rotation_bytes, LayerDims, Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, Rotation, RotationInit};
use opt_core::skew::{expm::DEGREE, SkewMap};
use serde::{Deserialize, Serialize};

/// No options (an empty struct, so `deny_unknown_fields` rejects any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expm {}

/// Squarings the estimate allows for (`‖A‖_F` up to `2⁸·½`).
const SQUARINGS: u64 = 8;

impl Method for Expm {
    fn summary(&self) -> &'static str {
        "R = exp(P − Pᵀ) by scaling and squaring (Lezcano-Casado & Martínez-Rubio, ICML 2019; \
         geotorch's default), from the identity"
    }

    fn label(&self) -> String {
        "OPT (expm)".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        let mut layers = exact_layers(Rotation::Skew(SkewMap::Expm));
        layers.init = RotationInit::Zero;
        Box::new(OptFactory::new(layers))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/skew/expm.rs",
                test: "matches_an_ode_oracle_and_the_2x2_rotation",
            },
            OracleTest {
                file: "opt-core/src/skew/expm.rs",
                test: "gradient_matches_finite_differences",
            },
        ]
    }

    /// The rotation as every OPT layer's, plus the polynomial's and the squarings'
    /// intermediates autograd keeps (f32 values and gradients).
    fn layer_bytes(&self, layer: &LayerDims) -> u64 {
        let d = layer.fan_in;
        rotation_bytes(d) + d * d * 4 * 2 * (DEGREE as u64 + SQUARINGS) + neuron_bytes(layer)
    }
}
