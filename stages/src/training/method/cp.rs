//! `cp`: OPT with Cayley parameterization `R = (I+S)(I−S)⁻¹`, `S` from `triu(P)` (no ½) (spec §2): `W = R·W0`, `R = orth(P)` by an exact map.

use super::{exact_layers, Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, Rotation};
use opt_core::orth::OrthMap;
use serde::{Deserialize, Serialize};

/// No options (an empty struct, so `deny_unknown_fields` rejects any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cp {}

impl Method for Cp {
    fn summary(&self) -> &'static str {
        "OPT (Liu et al., CVPR 2021): Cayley parameterization `R = (I+S)(I−S)⁻¹`, `S` from `triu(P)` (no ½)"
    }

    fn label(&self) -> String {
        "OPT (CP)".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(OptFactory::new(exact_layers(Rotation::Exact(
            OrthMap::Cayley,
        ))))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_cp_satisfies_cayley_identity_with_det_one",
            },
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_cp_gradient_matches_finite_differences",
            },
        ]
    }

    fn orth_map(&self) -> Option<OrthMap> {
        Some(OrthMap::Cayley)
    }
}
