//! `A = Q R` of a square f64 matrix with `Q` formed and `R`'s diagonal positive, for the fused
//! QR maps (`super::rotate`): by Cholesky-QR — the Gram matrix `AᵀA` (a syrk), its Cholesky
//! factor `R`, and `Q = A R⁻¹` (a triangular solve) — whose three steps run at gemm's rate,
//! where a Householder QR followed by forming `Q` runs at a fraction of it.
//!
//! Cholesky-QR loses orthogonality as `eps·cond(A)²`, so it is never trusted blindly: the
//! orthogonality defect `‖QᵀQ − I‖_F` of the `Q` it produced is measured with two probe
//! vectors (`‖(QᵀQ − I)v‖` for a ±1 vector `v` has expectation `‖QᵀQ − I‖_F`; `4d²` flops
//! each), a second pass (Cholesky-QR2: re-orthogonalise `Q`, `R ← R₂R`) runs where it exceeds
//! the caller's tolerance, and where that still misses it — or the Gram matrix is not
//! numerically positive definite — the Householder QR computes the factorisation. Every route
//! returns the same factorisation: the QR with a positive diagonal is unique.

use super::dense::{self, HouseholderQr};
use candle_core::{bail, DType, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::triangular::{self as tri, BlockStructure};
use faer::linalg::{cholesky, triangular_solve};
use faer::{Accum, Mat, MatRef, Par};

/// `A = Q R`, `Q` orthogonal and formed, `R` upper triangular with a positive diagonal — kept
/// as `Qᵀ` and `L = Rᵀ`, the forms the Cholesky route produces in place (column-major), so no
/// `d×d` transpose is ever copied; [`q`](Self::q) and [`r`](Self::r) are views.
pub(super) struct ExplicitQr {
    qt: Mat<f64>,
    l: Mat<f64>,
    /// Which computation produced it (the tests check each is reached where it should be).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) route: QrRoute,
}

/// The computation an [`ExplicitQr`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum QrRoute {
    CholeskyQr,
    CholeskyQr2,
    Householder,
}

impl ExplicitQr {
    /// Factors `a` (square, finite), with `‖QᵀQ − I‖_F ≤ tol` as measured by the probes for
    /// the Cholesky routes; fails where `a` is (numerically) singular.
    pub(super) fn factor(a: MatRef<'_, f64>, tol: f64, what: &str, par: Par) -> Result<Self> {
        let Some((qt, l)) = cholesky_pass(dense::transposed(a), par) else {
            return Self::householder(a, what, par);
        };
        if orthogonality_defect(qt.as_ref(), par) <= tol {
            return Ok(Self {
                qt,
                l,
                route: QrRoute::CholeskyQr,
            });
        }
        if let Some((qt2, l2)) = cholesky_pass(qt, par) {
            if orthogonality_defect(qt2.as_ref(), par) <= tol {
                // R = R₂R₁, i.e. L = L₁L₂.
                let mut l12 = Mat::zeros(l.nrows(), l.ncols());
                tri::matmul(
                    l12.as_mut(),
                    BlockStructure::TriangularLower,
                    Accum::Replace,
                    l.as_ref(),
                    BlockStructure::TriangularLower,
                    l2.as_ref(),
                    BlockStructure::TriangularLower,
                    1.0,
                    par,
                );
                return Ok(Self {
                    qt: qt2,
                    l: l12,
                    route: QrRoute::CholeskyQr2,
                });
            }
        }
        Self::householder(a, what, par)
    }

    /// The Householder QR of `a`, `Q` formed and the signs made positive.
    pub(super) fn householder(a: MatRef<'_, f64>, what: &str, par: Par) -> Result<Self> {
        let qr = HouseholderQr::factor(a.to_owned(), what, par)?;
        let mut qt = dense::transposed(qr.q(par).as_ref());
        let r = qr.r();
        let mut l = dense::transposed(r.as_ref());
        for k in 0..qr.dim() {
            let rkk = r[(k, k)];
            if rkk == 0.0 || !rkk.is_finite() {
                bail!("{what} is singular (R[{k},{k}] = {rkk})");
            }
            if rkk < 0.0 {
                qt.row_mut(k).iter_mut().for_each(|x| *x = -*x);
                l.col_mut(k).iter_mut().for_each(|x| *x = -*x);
            }
        }
        Ok(Self {
            qt,
            l,
            route: QrRoute::Householder,
        })
    }

    /// `Q`.
    pub(super) fn q(&self) -> MatRef<'_, f64> {
        self.qt.transpose()
    }

    /// `R` (only its upper triangle is meaningful).
    pub(super) fn r(&self) -> MatRef<'_, f64> {
        self.l.transpose()
    }

    /// The sign of `det Q`.
    pub(super) fn det_q_sign(&self, par: Par) -> f64 {
        det_sign_orthogonal(self.qt.as_ref(), par)
    }

    /// Flips `Q`'s last column and `R`'s last row (`A = QR` still holds): the sign convention
    /// of a map whose `det Q` is fixed.
    pub(super) fn flip_last(&mut self) {
        let last = self.qt.nrows() - 1;
        self.qt.row_mut(last).iter_mut().for_each(|x| *x = -*x);
        self.l.col_mut(last).iter_mut().for_each(|x| *x = -*x);
    }
}

/// One Cholesky-QR pass on `at = Aᵀ`, in place: `AᵀA = L Lᵀ` (`R = Lᵀ`), then `Qᵀ = L⁻¹ Aᵀ`;
/// `(Qᵀ, L)`, or `None` where the Gram matrix is not numerically positive definite.
fn cholesky_pass(mut at: Mat<f64>, par: Par) -> Option<(Mat<f64>, Mat<f64>)> {
    let d = at.nrows();
    // AᵀA = (Aᵀ)(Aᵀ)ᵀ.
    let mut gram = dense::gram_lower(at.transpose(), par);
    let mut buf = MemBuffer::new(cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
        d,
        par,
        Default::default(),
    ));
    cholesky::llt::factor::cholesky_in_place(
        gram.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .ok()?;
    let l = gram;
    if (0..d).any(|k| !(l[(k, k)] > 0.0 && l[(k, k)].is_finite())) {
        return None;
    }
    triangular_solve::solve_lower_triangular_in_place(l.as_ref(), at.as_mut(), par);
    Some((at, l))
}

/// An estimate of `‖QᵀQ − I‖_F`: the larger of `‖(QᵀQ − I)v‖` over two fixed ±1 probes (each an
/// unbiased estimate of its square); a non-finite `Q` gives infinity.
pub(super) fn orthogonality_defect(q: MatRef<'_, f64>, par: Par) -> f64 {
    let d = q.nrows();
    // A fixed ±1 pattern from a xorshift generator: no dependence on any global RNG state.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let probes = Mat::from_fn(d, 2, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    });
    let qv = dense::mul(q, probes.as_ref(), 1.0, par);
    // (QᵀQ − I)v
    let mut residual = Mat::from_fn(d, 2, |i, j| -probes[(i, j)]);
    dense::mul_add(residual.as_mut(), q.transpose(), qv.as_ref(), 1.0, par);
    let mut worst: f64 = 0.0;
    for j in 0..2 {
        let norm = residual.col(j).iter().map(|e| e * e).sum::<f64>().sqrt();
        if !norm.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max(norm);
    }
    worst
}

/// The orthogonality defect `‖QᵀQ − I‖_F` a QR map may leave in its f64 `Q` for a `d×d` result
/// of precision `dtype`: a tenth of what rounding the exact `Q` to f32 leaves (≈ 4e-8·√d,
/// measured in the tests), so the f32 result is the rounded exact map's to within an ulp; at
/// f64 no worse than the Householder QR's `O(d·eps)` at the sizes OPT uses. (A single
/// Cholesky-QR pass meets it at CNN-6's Gaussian `P`: defects of 3e-10 to 5e-8 at d = 576 and
/// 1024, where a fixed 1e-8 sent one layer of six through a second pass every step.)
pub(super) fn orthogonality_tolerance(dtype: DType, d: usize) -> f64 {
    match dtype {
        DType::F64 => 1e-11,
        _ => 4e-9 * (d as f64).sqrt(),
    }
}

/// The sign of `det Q` for an orthogonal `Q`, from an f32 LU: every singular value of `Q` is 1,
/// so single precision cannot move a pivot through zero (its perturbation is ~1e-5 here), at
/// half the f64 LU's cost.
pub(super) fn det_sign_orthogonal(q: MatRef<'_, f64>, par: Par) -> f64 {
    let d = q.nrows();
    let mut a = Mat::<f32>::from_fn(d, d, |i, j| q[(i, j)] as f32);
    let (_, _, transpositions) = dense::lu_in_place(&mut a, par);
    let negative_pivots = (0..d).filter(|&k| a[(k, k)] < 0.0).count();
    if (transpositions + negative_pivots).is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn gaussian(seed: u64, d: usize) -> Mat<f64> {
        let v = Rng::seed(seed).normal_vec(d * d, 1.0);
        Mat::from_fn(d, d, |i, j| f64::from(v[i * d + j]))
    }

    /// `U diag(σ) Vᵀ` with random orthogonal `U`, `V` and `σ` from 1 down to `1/cond`.
    fn conditioned(seed: u64, d: usize, cond: f64) -> Mat<f64> {
        let u = HouseholderQr::factor(gaussian(seed, d), "u", Par::Seq)
            .expect("u")
            .q(Par::Seq);
        let v = HouseholderQr::factor(gaussian(seed + 1, d), "v", Par::Seq)
            .expect("v")
            .q(Par::Seq);
        let us = Mat::from_fn(d, d, |i, j| {
            u[(i, j)] * cond.powf(-(j as f64) / (d - 1) as f64)
        });
        dense::mul(us.as_ref(), v.transpose(), 1.0, Par::Seq)
    }

    fn max_abs_diff(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
        let mut worst: f64 = 0.0;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                worst = worst.max((a[(i, j)] - b[(i, j)]).abs());
            }
        }
        worst
    }

    /// Each route is reached where it should be, and each returns the positive QR the
    /// Householder oracle computes: `Q` to the accuracy the conditioning allows, `QR = A`.
    #[test]
    fn every_route_returns_the_positive_qr() -> Result<()> {
        let d = 96;
        for (a, want) in [
            (gaussian(3, d), QrRoute::CholeskyQr),
            (conditioned(5, d, 1e6), QrRoute::CholeskyQr2),
            (conditioned(7, d, 1e10), QrRoute::Householder),
        ] {
            let qr = ExplicitQr::factor(a.as_ref(), 1e-11, "test", Par::Seq)?;
            assert_eq!(qr.route, want);
            let oracle = ExplicitQr::householder(a.as_ref(), "test", Par::Seq)?;
            let cond_r = (0..d).map(|k| oracle.r()[(k, k)]).fold(0.0, f64::max)
                / (0..d)
                    .map(|k| oracle.r()[(k, k)])
                    .fold(f64::INFINITY, f64::min);
            // Q of an ill-conditioned A is itself sensitive (to eps·cond), whoever computes it.
            let q_tol = 1e-13 * cond_r.max(10.0);
            assert!(max_abs_diff(qr.q(), oracle.q()) < q_tol, "{want:?}: Q");
            let mut qr_product = Mat::zeros(d, d);
            tri::matmul(
                qr_product.as_mut(),
                BlockStructure::Rectangular,
                Accum::Replace,
                qr.q(),
                BlockStructure::Rectangular,
                qr.r(),
                BlockStructure::TriangularUpper,
                1.0,
                Par::Seq,
            );
            assert!(
                max_abs_diff(qr_product.as_ref(), a.as_ref()) < 1e-12,
                "{want:?}: QR = A"
            );
            assert!(
                (0..d).all(|k| qr.r()[(k, k)] > 0.0),
                "{want:?}: positive diagonal"
            );
            assert!(orthogonality_defect(qr.q(), Par::Seq) < 1e-11);
        }
        Ok(())
    }

    /// The probes measure `‖QᵀQ − I‖_F`: within a factor of 3 for a known defect, and
    /// infinity for a non-finite `Q`.
    #[test]
    fn the_probes_measure_the_orthogonality_defect() -> Result<()> {
        let d = 64;
        let q = HouseholderQr::factor(gaussian(9, d), "q", Par::Seq)?.q(Par::Seq);
        assert!(orthogonality_defect(q.as_ref(), Par::Seq) < 1e-13);
        // Q(I + εE) with symmetric E: QᵀQ − I ≈ 2εE.
        let e = gaussian(10, d);
        let eps = 1e-6;
        let sym = Mat::from_fn(d, d, |i, j| eps * (e[(i, j)] + e[(j, i)]) / 2.0);
        let mut perturbed = q.clone();
        dense::mul_add(perturbed.as_mut(), q.as_ref(), sym.as_ref(), 1.0, Par::Seq);
        let exact = 2.0 * sym.norm_l2();
        let measured = orthogonality_defect(perturbed.as_ref(), Par::Seq);
        assert!(
            measured > exact / 3.0 && measured < exact * 3.0,
            "{measured:e} vs {exact:e}"
        );
        let mut broken = q;
        broken[(3, 5)] = f64::NAN;
        assert_eq!(
            orthogonality_defect(broken.as_ref(), Par::Seq),
            f64::INFINITY
        );
        Ok(())
    }

    /// The f32 LU's sign of `det Q` is the f64 LU's, for orthogonal matrices of either sign.
    #[test]
    fn the_determinant_sign_of_an_orthogonal_matrix_matches_the_f64_lu() -> Result<()> {
        for (seed, d) in [(11, 7), (12, 64), (13, 200), (14, 577)] {
            let mut q = HouseholderQr::factor(gaussian(seed, d), "q", Par::Seq)?.q(Par::Seq);
            for flip in [false, true] {
                if flip {
                    q.col_mut(0).iter_mut().for_each(|x| *x = -*x);
                }
                let want = dense::Lu::factor(q.clone(), "q", Par::Seq)?.det_sign();
                assert_eq!(det_sign_orthogonal(q.as_ref(), Par::Seq), want, "d = {d}");
            }
        }
        Ok(())
    }

    /// The f32 tolerance stays a tenth of the defect rounding an exact `Q` to f32 leaves (about
    /// 2e-7 at d = 27, 9e-7 at d = 576), so the Cholesky routes change no f32 result beyond an
    /// ulp.
    #[test]
    fn the_f32_tolerance_is_a_tenth_of_f32_rounding() -> Result<()> {
        for (seed, d) in [(16, 27), (17, 144), (18, 576)] {
            let q = HouseholderQr::factor(gaussian(seed, d), "q", Par::Seq)?.q(Par::Seq);
            let rounded = Mat::from_fn(d, d, |i, j| f64::from(q[(i, j)] as f32));
            let rounding = orthogonality_defect(rounded.as_ref(), Par::Seq);
            let tol = orthogonality_tolerance(DType::F32, d);
            assert!(
                rounding > 7.0 * tol && rounding < 15.0 * tol,
                "d = {d}: rounding to f32 leaves {rounding:e}, tolerance {tol:e}"
            );
        }
        Ok(())
    }

    /// A singular matrix is an error naming it, whatever route gives up first.
    #[test]
    fn a_singular_matrix_is_an_error() {
        let mut a = gaussian(15, 32);
        for i in 0..32 {
            a[(i, 7)] = 0.0;
        }
        let err = ExplicitQr::factor(a.as_ref(), 1e-11, "Gram–Schmidt: P", Par::Seq)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("Gram–Schmidt: P"), "{err}");
    }
}
