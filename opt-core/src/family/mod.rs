//! The OPT family's layers beyond the paper's: OFT's block-diagonal rotation ([`block`]) and
//! POET's two-sided transformation ([`poet`]), over any map ([`RotationMap`]): an exact map
//! of the paper (`crate::orth`, batched with the network's other rotations through
//! `crate::rotations`) or a skew map (`crate::skew`: `expm`, Cayley–Neumann).

pub mod block;
pub mod poet;

use crate::orth::OrthMap;
use crate::rotations::{RotationKey, RotationRequest, Rotations};
use crate::skew::SkewMap;
use crate::Result;
use candle_core::{DType, Tensor, Var};

/// Any map of the family's layers: an exact map of the paper, or a skew map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationMap {
    Exact(OrthMap),
    Skew(SkewMap),
}

impl RotationMap {
    /// The `P` whose rotation is the identity: `I` for the exact maps (CP's skew part of `I`
    /// is zero), `0` for the skew maps.
    pub fn identity_parameter(self, b: usize, device: &candle_core::Device) -> Result<Tensor> {
        Ok(match self {
            RotationMap::Exact(_) => Tensor::eye(b, DType::F32, device)?,
            RotationMap::Skew(_) => Tensor::zeros((b, b), DType::F32, device)?,
        })
    }

    /// What a forward batches for the `index`-th matrix `p` held by `param` (exact maps only).
    pub fn request(self, param: &Var, index: usize, p: &Tensor) -> Option<RotationRequest> {
        match self {
            RotationMap::Exact(map) => Some(RotationRequest {
                key: RotationKey::new(param, index),
                p: p.clone(),
                map,
                w0: None,
            }),
            RotationMap::Skew(_) => None,
        }
    }

    /// The rotation of the `index`-th matrix `p` held by `param`: from `rotations` where the
    /// forward computed it, else now.
    pub fn rotation(
        self,
        param: &Var,
        index: usize,
        p: &Tensor,
        rotations: &Rotations,
    ) -> Result<Tensor> {
        match (self, self.request(param, index, p)) {
            (_, Some(request)) => rotations.get(&request),
            (RotationMap::Skew(map), None) => map.rotation(p),
            (RotationMap::Exact(map), None) => Ok(crate::ops::orthogonalize(p, map)?),
        }
    }
}
