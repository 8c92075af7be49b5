//! `gs`: OPT with Gram–Schmidt on the rows of `P` (spec §2): `W = R·W0`, `R = orth(P)` by an exact map.

use super::{exact_layers, Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, Rotation};
use opt_core::orth::OrthMap;
use serde::{Deserialize, Serialize};

/// No options (an empty struct, so `deny_unknown_fields` rejects any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gs {}

impl Method for Gs {
    fn summary(&self) -> &'static str {
        "OPT (Liu et al., CVPR 2021): Gram–Schmidt on the rows of `P`"
    }

    fn label(&self) -> String {
        "OPT (GS)".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(OptFactory::new(exact_layers(Rotation::Exact(
            OrthMap::GramSchmidt,
        ))))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_gs_matches_classical_gram_schmidt_of_rows",
            },
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_gs_gradient_matches_finite_differences",
            },
        ]
    }

    fn orth_map(&self) -> Option<OrthMap> {
        Some(OrthMap::GramSchmidt)
    }
}
