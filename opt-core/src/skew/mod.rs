//! Rotations from a skew-symmetric generator `A = P − Pᵀ`, beyond the paper's maps:
//!
//! * [`expm`]: `R = exp(A)` (Lezcano-Casado and Martínez-Rubio, ICML 2019);
//! * [`cayley_neumann`]: OFTv2's Cayley transform with a truncated Neumann series for the
//!   inverse (Qiu et al., arXiv 2506.19847).
//!
//! Both are composed candle ops (matrix products and sums), differentiated by candle's
//! autograd — exact for what is computed.

pub mod cayley_neumann;
#[cfg(test)]
mod dense_f64;
pub mod expm;

use crate::Result;
use candle_core::Tensor;

/// A map from an unconstrained square `P` to a rotation, built on the skew-symmetric
/// generator `A = P − Pᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkewMap {
    /// `exp(A)`: exactly orthogonal.
    Expm,
    /// `(I + Q)(I + Q + … + Q^terms)` with `Q = A/√d` (`scaled`) or the paper's `Q = A`: the
    /// Cayley transform with `(I − Q)⁻¹` truncated to `terms` Neumann terms beyond `I`;
    /// orthogonal up to `O(‖Q‖^(terms+1))`. The `1/√d` keeps a gradient step's change of `‖Q‖`
    /// independent of the size: unscaled, one SGD step at lr 0.01 takes CNN-6's `fc6` (d = 288,
    /// no BN after it) past the series' radius `‖Q‖ = 1` and training diverges (measured).
    CayleyNeumann { terms: usize, scaled: bool },
}

impl SkewMap {
    /// `R` from `P`, differentiable w.r.t. `P`.
    pub fn rotation(self, p: &Tensor) -> Result<Tensor> {
        match self {
            SkewMap::Expm => expm::skew_expm(p),
            SkewMap::CayleyNeumann { terms, scaled } => {
                let scale = if scaled {
                    1.0 / (p.dim(0)? as f64).sqrt()
                } else {
                    1.0
                };
                cayley_neumann::cayley_neumann(&(p * scale)?, terms)
            }
        }
    }
}
