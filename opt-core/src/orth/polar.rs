//! Löwdin symmetric orthogonalization (spec §2.5): the polar factor `Q = U Vᵀ` of the SVD
//! `P = U Σ Vᵀ` (equal to `P (PᵀP)^{-1/2}` without squaring the condition number).

use super::dense;
use candle_core::{bail, Result};
use faer::{Mat, MatRef, Par};

pub(super) struct Factors {
    u: Mat<f64>,
    s: Vec<f64>,
    v: Mat<f64>,
    pub(super) q: Mat<f64>,
}

pub(super) fn forward(p: MatRef<'_, f64>, par: Par) -> Result<Factors> {
    let (u, s, v) = dense::svd_square(p, "Löwdin: P", par)?;
    let q = dense::mul(u.as_ref(), v.transpose(), 1.0, par);
    Ok(Factors { u, s, v, q })
}

/// `∂L/∂P = U [(M − Mᵀ) ⊘ (σ_i + σ_j)] Vᵀ` with `M = Uᵀ G V`: only sums of singular values
/// appear, so (unlike the generic SVD gradient) repeated singular values are harmless.
pub(super) fn backward(f: &Factors, g: MatRef<'_, f64>, par: Par) -> Result<Mat<f64>> {
    let d = g.nrows();
    let ug = dense::mul(f.u.transpose(), g, 1.0, par);
    let m = dense::mul(ug.as_ref(), f.v.as_ref(), 1.0, par);
    let mut k = Mat::zeros(d, d);
    for j in 0..d {
        for i in 0..d {
            if i == j {
                continue; // (M − Mᵀ) vanishes on the diagonal, even where σ_i = 0.
            }
            let sum = f.s[i] + f.s[j];
            if sum <= 0.0 {
                bail!(
                    "Löwdin backward: P has rank < d − 1, the polar factor is not differentiable"
                );
            }
            k[(i, j)] = (m[(i, j)] - m[(j, i)]) / sum;
        }
    }
    let uk = dense::mul(f.u.as_ref(), k.as_ref(), 1.0, par);
    Ok(dense::mul(uk.as_ref(), f.v.transpose(), 1.0, par))
}
