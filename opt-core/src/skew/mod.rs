//! Rotations from a skew-symmetric generator `A = P − Pᵀ`, beyond the paper's maps:
//!
//! * [`expm`]: `R = exp(A)` (Lezcano-Casado and Martínez-Rubio, ICML 2019);
//! * [`cayley_neumann`]: OFTv2's Cayley transform with a truncated Neumann series for the
//!   inverse (Qiu et al., arXiv 2506.19847).
//!
//! Both are composed candle ops (matrix products and sums), differentiated by candle's
//! autograd — exact for what is computed.

pub mod cayley_neumann;
pub mod expm;

use crate::Result;
use candle_core::Tensor;

/// A map from an unconstrained square `P` to a rotation, built on the skew-symmetric
/// generator `A = P − Pᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkewMap {
    /// `exp(A)`: exactly orthogonal.
    Expm,
    /// `(I + A)(I + A + … + A^terms)`: the Cayley transform with `(I − A)⁻¹` truncated to
    /// `terms` Neumann terms beyond `I`; orthogonal up to `O(‖A‖^(terms+1))`.
    CayleyNeumann { terms: usize },
}

impl SkewMap {
    /// `R` from `P`, differentiable w.r.t. `P`.
    pub fn rotation(self, p: &Tensor) -> Result<Tensor> {
        match self {
            SkewMap::Expm => expm::skew_expm(p),
            SkewMap::CayleyNeumann { terms } => cayley_neumann::cayley_neumann(p, terms),
        }
    }
}
