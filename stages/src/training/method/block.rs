//! `block`: OFT's block-diagonal rotation (Qiu et al., "Controlling Text-to-Image Diffusion by
//! Orthogonal Finetuning", NeurIPS 2023): `R = diag(R_1, …, R_r)` on each layer's fan-in,
//! `r = blocks`, each block through the base map — `cp` as in OFT, or gs/hr/ls, expm,
//! cayley-neumann. `d³/r²` instead of `d³` per layer: a cheap route to wide layers beside
//! S-OPT. The layer is `opt_core::family::block`.

use super::{
    neuron_bytes, rotation_bytes, LayerDims, Method, MethodSettingError, NetworkFacts, OracleTest,
};
use opt_core::family::block::{block_sizes, BlockFactory};
use opt_core::family::RotationMap;
use opt_core::layers::KernelFactory;
use opt_core::orth::OrthMap;
use opt_core::skew::SkewMap;
use serde::{Deserialize, Serialize};

/// The map of a family layer's small rotations (block's blocks, POET's primitives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockBase {
    #[default]
    Cp,
    Gs,
    Hr,
    Ls,
    Expm,
    CayleyNeumann,
}

impl BlockBase {
    /// The map, with `terms` Neumann terms for `cayley-neumann`.
    pub fn map(self, terms: usize) -> RotationMap {
        match self {
            BlockBase::Cp => RotationMap::Exact(OrthMap::Cayley),
            BlockBase::Gs => RotationMap::Exact(OrthMap::GramSchmidt),
            BlockBase::Hr => RotationMap::Exact(OrthMap::Householder),
            BlockBase::Ls => RotationMap::Exact(OrthMap::Lowdin),
            BlockBase::Expm => RotationMap::Skew(SkewMap::Expm),
            BlockBase::CayleyNeumann => RotationMap::Skew(SkewMap::CayleyNeumann {
                terms,
                scaled: true,
            }),
        }
    }

    /// How tables name it.
    pub fn label(self) -> &'static str {
        match self {
            BlockBase::Cp => "CP",
            BlockBase::Gs => "GS",
            BlockBase::Hr => "HR",
            BlockBase::Ls => "LS",
            BlockBase::Expm => "expm",
            BlockBase::CayleyNeumann => "Cayley–Neumann",
        }
    }

    /// The exact map, if the base is one.
    pub fn orth_map(self) -> Option<OrthMap> {
        match self.map(0) {
            RotationMap::Exact(m) => Some(m),
            RotationMap::Skew(_) => None,
        }
    }

    /// Orthogonality a trained layer keeps: exact maps to rounding; Cayley–Neumann promises
    /// none once `‖Q‖` grows past 1 (its drift is reported, see `cayley_neumann`).
    pub fn tolerance(self) -> Option<f64> {
        match self {
            BlockBase::CayleyNeumann => None,
            _ => Some(1e-3),
        }
    }
}

fn blocks() -> usize {
    4
}
fn terms() -> usize {
    5
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// Blocks per layer, `r` (4); a layer with fewer fan-in rows gets one block per row.
    #[serde(default = "blocks")]
    pub blocks: usize,
    /// The blocks' map (`cp`, as OFT).
    #[serde(default)]
    pub base: BlockBase,
    /// Neumann terms when `base = "cayley-neumann"` (5).
    #[serde(default = "terms")]
    pub terms: usize,
}

impl Default for Block {
    fn default() -> Self {
        Self {
            blocks: blocks(),
            base: BlockBase::default(),
            terms: terms(),
        }
    }
}

impl Method for Block {
    fn summary(&self) -> &'static str {
        "OFT's block-diagonal rotation (Qiu et al., NeurIPS 2023): `blocks` blocks per layer, \
         each through the `base` map (cp as OFT; gs, hr, ls, expm, cayley-neumann)"
    }

    fn label(&self) -> String {
        format!("OFT block ({}, r = {})", self.base.label(), self.blocks)
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(BlockFactory {
            blocks: self.blocks,
            map: self.base.map(self.terms),
        })
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[OracleTest {
            file: "opt-core/src/family/block.rs",
            test: "weight_is_the_dense_block_diagonal_product",
        }]
    }

    fn orth_map(&self) -> Option<OrthMap> {
        self.base.orth_map()
    }

    fn orthogonality_tolerance(&self) -> Option<f64> {
        self.base.tolerance()
    }

    fn layer_bytes(&self, layer: &LayerDims) -> u64 {
        let sizes = block_sizes(layer.fan_in as usize, self.blocks);
        sizes.iter().map(|&b| rotation_bytes(b as u64)).sum::<u64>() + neuron_bytes(layer)
    }

    fn check(&self, _network: &NetworkFacts) -> Result<(), MethodSettingError> {
        if self.blocks == 0 {
            return Err(MethodSettingError {
                key: "blocks",
                message: "expected at least 1 block per layer, found 0".into(),
            });
        }
        Ok(())
    }
}
