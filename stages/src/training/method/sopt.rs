//! `sopt`: stochastic OPT (spec §2.8): per episode, rotate a random subset of `b` fan-in rows of
//! each layer after the first with a small `b×b` map from the identity, then merge it into
//! `W0`, reset it and re-sample.

use super::{
    neuron_bytes, rotation_bytes, Episodes, LayerDims, Method, MethodSettingError, NetworkFacts,
    OracleTest,
};
use opt_core::layers::KernelFactory;
use opt_core::orth::OrthMap;
use opt_core::sparse_opt::SoptFactory;
use opt_core::Kind;
use serde::{Deserialize, Serialize};

/// The orthogonal map S-OPT's small rotations use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseMap {
    Cp,
    #[default]
    Gs,
    Hr,
    Ls,
}

impl BaseMap {
    pub fn map(self) -> OrthMap {
        match self {
            BaseMap::Cp => OrthMap::Cayley,
            BaseMap::Gs => OrthMap::GramSchmidt,
            BaseMap::Hr => OrthMap::Householder,
            BaseMap::Ls => OrthMap::Lowdin,
        }
    }
}

fn budget_channels() -> usize {
    16
}
fn episode_length() -> u64 {
    750
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sopt {
    /// Orthogonal map of the small rotations (`gs` in the official folder).
    #[serde(default)]
    pub base: BaseMap,
    /// `b = k_h·k_w·budget_channels` rows per layer. The official code samples
    /// `k²·16` rows (144 of 576, 256 of 1024: 25 %) but declares a `k²·10` rotation and
    /// so fails at its first step; 16 follows the sampler, 10 the declared size.
    #[serde(default = "budget_channels")]
    pub budget_channels: usize,
    /// Iterations per episode (750).
    #[serde(default = "episode_length")]
    pub episode_length: u64,
    /// Reproduce the official quirk of re-initialising the sparse layers' BN γ/β every
    /// episode (off: it breaks the function at each boundary and looks unintended).
    #[serde(default)]
    pub reset_bn: bool,
    /// Reproduce the official quirk of keeping the small rotations' momentum across
    /// episodes (off: that momentum belongs to the previous index set).
    #[serde(default)]
    pub stale_momentum: bool,
}

impl Default for Sopt {
    fn default() -> Self {
        Self {
            base: BaseMap::default(),
            budget_channels: budget_channels(),
            episode_length: episode_length(),
            reset_bn: false,
            stale_momentum: false,
        }
    }
}

impl Method for Sopt {
    fn summary(&self) -> &'static str {
        "stochastic OPT (Liu et al., CVPR 2021, §2.8): small rotations of random fan-in subsets, \
         merged into `W0` and re-sampled every `episode_length` steps"
    }

    fn label(&self) -> String {
        format!(
            "S-OPT ({}, {} ch)",
            format!("{:?}", self.base).to_uppercase(),
            self.budget_channels
        )
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(SoptFactory::new(self.base.map(), self.budget_channels))
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[
            OracleTest {
                file: "opt-core/src/sparse_opt.rs",
                test: "merge_then_reset_preserves_the_function",
            },
            OracleTest {
                file: "opt-core/src/orth/tests.rs",
                test: "orth_gs_matches_classical_gram_schmidt_of_rows",
            },
        ]
    }

    fn orth_map(&self) -> Option<OrthMap> {
        Some(self.base.map())
    }

    fn layer_bytes(&self, layer: &LayerDims) -> u64 {
        let rows = (layer.taps * self.budget_channels as u64).min(layer.fan_in);
        rotation_bytes(rows) + neuron_bytes(layer)
    }

    fn episodes(&self) -> Option<Episodes> {
        (self.episode_length > 0).then_some(Episodes {
            length: self.episode_length,
            stream: "sopt-episode",
            reset_momentum: (!self.stale_momentum).then_some(Kind::SparseRotation),
            reset_bn: self.reset_bn,
            restart_data: true,
        })
    }

    /// S-OPT rotates k²·budget_channels of each sparse layer's k²·(input channels) fan-in
    /// rows, so the budget must fit the narrowest input.
    fn check(&self, network: &NetworkFacts) -> Result<(), MethodSettingError> {
        let narrowest = network.narrowest_width;
        if self.budget_channels == 0 || self.budget_channels > narrowest {
            return Err(MethodSettingError {
                key: "budget_channels",
                message: format!(
                    "expected 1 to {narrowest} (the narrowest layer's input channels), found {}",
                    self.budget_channels
                ),
            });
        }
        Ok(())
    }
}
