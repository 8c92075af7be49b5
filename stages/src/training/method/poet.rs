//! `poet`: POET's orthogonal equivalence transformation (Qiu et al., "Reparameterized LLM
//! Training via Orthogonal Equivalence Transformation", NeurIPS 2025, arXiv 2506.08001):
//! `W = R·W0·P`, both sides orthogonal, so `W` keeps `W0`'s singular values. Its stochastic
//! primitive: a `block_size` rotation on a random subset of each side, merged into `W0`,
//! re-initialised and re-sampled every `merge_every` steps. The layer is
//! `opt_core::family::poet`.

use super::block::BlockBase;
use super::NetworkFacts;
use super::{
    neuron_bytes, rotation_bytes, Episodes, LayerDims, Method, MethodSettingError, OracleTest,
};
use opt_core::family::poet::PoetFactory;
use opt_core::layers::KernelFactory;
use opt_core::orth::OrthMap;
use opt_core::Kind;
use serde::{Deserialize, Serialize};

fn block_size() -> usize {
    64
}
fn merge_every() -> u64 {
    400
}
fn terms() -> usize {
    5
}
fn base() -> BlockBase {
    BlockBase::CayleyNeumann
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poet {
    /// Rows (fan-in side) and columns (neuron side) each primitive rotates: `b` (64), at most
    /// the side's size.
    #[serde(default = "block_size")]
    pub block_size: usize,
    /// Steps between merge-and-reinitialise (400).
    #[serde(default = "merge_every")]
    pub merge_every: u64,
    /// The primitives' map (`cayley-neumann`, as POET; any exact map keeps the spectrum
    /// exactly).
    #[serde(default = "base")]
    pub base: BlockBase,
    /// Neumann terms when `base = "cayley-neumann"` (5).
    #[serde(default = "terms")]
    pub terms: usize,
}

impl Default for Poet {
    fn default() -> Self {
        Self {
            block_size: block_size(),
            merge_every: merge_every(),
            base: base(),
            terms: terms(),
        }
    }
}

impl Method for Poet {
    fn summary(&self) -> &'static str {
        "POET (Qiu et al., NeurIPS 2025): W = R·W0·P with random-subset primitives of \
         `block_size` on both sides through `base`, merged and re-initialised every \
         `merge_every` steps; keeps W0's singular values"
    }

    fn label(&self) -> String {
        format!("POET ({}, b = {})", self.base.label(), self.block_size)
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(PoetFactory {
            block_size: self.block_size,
            map: self.base.map(self.terms),
        })
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/family/poet.rs",
                test: "keeps_the_singular_values_of_w0_through_steps_and_merges",
            },
            OracleTest {
                file: "opt-core/src/family/poet.rs",
                test: "each_side_moves_only_its_subset",
            },
        ]
    }

    fn orth_map(&self) -> Option<OrthMap> {
        self.base.orth_map()
    }

    fn orthogonality_tolerance(&self) -> Option<f64> {
        self.base.tolerance()
    }

    fn layer_bytes(&self, layer: &LayerDims) -> u64 {
        let b = self.block_size as u64;
        rotation_bytes(b.min(layer.fan_in))
            + rotation_bytes(b.min(layer.c_out))
            + neuron_bytes(layer)
    }

    fn episodes(&self) -> Option<Episodes> {
        (self.merge_every > 0).then_some(Episodes {
            length: self.merge_every,
            stream: "poet-merge",
            reset_momentum: Some(Kind::SparseRotation),
            reset_bn: false,
            restart_data: false,
        })
    }

    fn check(&self, _network: &NetworkFacts) -> Result<(), MethodSettingError> {
        if self.block_size == 0 {
            return Err(MethodSettingError {
                key: "block_size",
                message: "expected at least 1, found 0".into(),
            });
        }
        Ok(())
    }
}
