//! `cayley_neumann`: OPT with OFTv2's Cayley–Neumann parameterization (Qiu et al., "Orthogonal
//! Finetuning Made Scalable", arXiv 2506.19847): `R = (I + Q)(I + Q + … + Q^terms)`,
//! `Q = P − Pᵀ`, from the identity. An approximation of the Cayley transform: its
//! orthogonality error is reported per layer (`layers.csv`, `orth_error`).

use super::{exact_layers, neuron_bytes, rotation_bytes, LayerDims, Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, Rotation, RotationInit};
use opt_core::skew::SkewMap;
use serde::{Deserialize, Serialize};

fn terms() -> usize {
    5
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CayleyNeumann {
    /// Neumann terms beyond `I` for `(I − Q)⁻¹` (5, as the authors' PEFT implementation).
    #[serde(default = "terms")]
    pub terms: usize,
}

impl Default for CayleyNeumann {
    fn default() -> Self {
        Self { terms: terms() }
    }
}

impl Method for CayleyNeumann {
    fn summary(&self) -> &'static str {
        "OFTv2's Cayley–Neumann map (Qiu et al., arXiv 2506.19847): the Cayley transform with \
         (I − Q)⁻¹ truncated to `terms` Neumann terms, from the identity; approximately \
         orthogonal (its error is reported per layer)"
    }

    fn label(&self) -> String {
        format!("OPT (Cayley–Neumann, k = {})", self.terms)
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        let mut layers = exact_layers(Rotation::Skew(SkewMap::CayleyNeumann { terms: self.terms }));
        layers.init = RotationInit::Zero;
        Box::new(OptFactory::new(layers))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/skew/cayley_neumann.rs",
                test: "matches_the_closed_form_and_converges_to_cayley",
            },
            OracleTest {
                file: "opt-core/src/skew/cayley_neumann.rs",
                test: "gradient_matches_finite_differences",
            },
        ]
    }

    /// An approximation: `‖Q‖^(terms+1)` off orthogonal, which training keeps small.
    fn orthogonality_tolerance(&self) -> Option<f64> {
        Some(1e-2)
    }

    /// The rotation as every OPT layer's, plus the series' powers autograd keeps.
    fn layer_bytes(&self, layer: &LayerDims) -> u64 {
        let d = layer.fan_in;
        rotation_bytes(d) + d * d * 4 * 2 * (self.terms as u64 + 2) + neuron_bytes(layer)
    }
}
