//! `hr`: OPT with Householder reflections (QR of `P`, d−1 reflections) (spec §2): `W = R·W0`, `R = orth(P)` by an exact map.

use super::{exact_layers, Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, Rotation};
use opt_core::orth::OrthMap;
use serde::{Deserialize, Serialize};

/// No options (an empty struct, so `deny_unknown_fields` rejects any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hr {}

impl Method for Hr {
    fn summary(&self) -> &'static str {
        "OPT (Liu et al., CVPR 2021): Householder reflections (QR of `P`, d−1 reflections)"
    }

    fn label(&self) -> String {
        "OPT (HR)".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(OptFactory::new(exact_layers(Rotation::Exact(
            OrthMap::Householder,
        ))))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_hr_matches_explicit_householder_reflections",
            },
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_hr_gradient_matches_finite_differences",
            },
        ]
    }

    fn orth_map(&self) -> Option<OrthMap> {
        Some(OrthMap::Householder)
    }
}
