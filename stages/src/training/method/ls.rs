//! `ls`: OPT with Löwdin symmetric orthogonalization (the polar factor of `P`) (spec §2): `W = R·W0`, `R = orth(P)` by an exact map.

use super::{exact_layers, Method, OracleTest};
use opt_core::layers::KernelFactory;
use opt_core::opt_layer::{OptFactory, Rotation};
use opt_core::orth::OrthMap;
use serde::{Deserialize, Serialize};

/// No options (an empty struct, so `deny_unknown_fields` rejects any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ls {}

impl Method for Ls {
    fn summary(&self) -> &'static str {
        "OPT (Liu et al., CVPR 2021): Löwdin symmetric orthogonalization (the polar factor of `P`)"
    }

    fn label(&self) -> String {
        "OPT (LS)".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(OptFactory::new(exact_layers(Rotation::Exact(
            OrthMap::Lowdin,
        ))))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_ls_matches_inverse_square_root_of_gram_matrix",
            },
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_ls_gradient_matches_finite_differences",
            },
        ]
    }

    fn orth_map(&self) -> Option<OrthMap> {
        Some(OrthMap::Lowdin)
    }
}
