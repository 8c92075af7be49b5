//! The math of the fused rotation `W = orth(P)·W0` of an OPT layer (`W0` is `d×n`, `n`
//! neurons, `n ≪ d`), computed from the map's factorisation without ever forming the `d×d`
//! rotation, forward or backward (the candle op, its packing and scheduling: `rotate_op`).
//! The composed formulation — [`orthogonalize_batched`](super::orthogonalize_batched) followed
//! by a matmul — is its reference (tests here, the ops self-check).
//!
//! Same maps, same f64 factorisations, far fewer flops (per layer, `d³` units; the
//! composed route pays the factorisation, forming `Q`, and a closed-form backward in `d×d`
//! products):
//! * Cayley: `W = (I + S)(I − S)⁻¹ W0` is one LU of `I − S` (⅔d³) and solves with `n` columns;
//!   its backward `∂S = (I + Q)ᵀ G Xᵀ` (`X = (I − S)⁻¹W0`) is rank `n`, so it costs `O(d²n)`.
//! * Gram–Schmidt / Householder: `A = Q̃R̃` (`A = Pᵀ` or `P`) with `Q̃` formed, by Cholesky-QR
//!   checked for orthogonality (`explicit_qr`: a syrk, a Cholesky and a triangular solve, all
//!   at gemm's rate; a second pass or the Householder QR where the check fails). The QR
//!   backward `(G_Q + Q·copyltu(M)) R⁻ᵀ` becomes `Q̃ · tril(M − Mᵀ, −1) · R̃⁻ᵀ` because `Q̃` is
//!   square and orthogonal (`G_Q = −Q̃ Mᵀ`), and `M − Mᵀ` has rank `2n`: a triangular solve
//!   with a strictly triangular right-hand side (⅓d³) and one triangular product with `Q̃`
//!   (d³), that last one in the tensor's precision (the factors are rounded, not the result:
//!   `Q̃` is orthogonal, so f32 keeps its relative accuracy).
//! * Löwdin: the SVD `P = UΣVᵀ` gives `W = U (Vᵀ W0)`; in the backward `M = Uᵀ G_Q V =
//!   (UᵀG)(VᵀW0)ᵀ` is rank `n` and only `U K Vᵀ` is `d×d` (its last product, with the
//!   orthogonal `Vᵀ`, in the tensor's precision).
//!
//! `W` is the exact map's, computed in f64 and rounded once; the gradients' last `d×d` product
//! is taken in the tensor's precision, where one factor is orthogonal (f32: within 1e-6 of the
//! f64 map, `rotate_tests`).

use super::dense::{self, Lu, RowMajorOut};
use super::explicit_qr::ExplicitQr;
use super::OrthMap;
use candle_core::{bail, Result};
use faer::linalg::matmul::triangular::{self as tri, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// One matrix's factorisation, kept from the forward for the backward.
pub(super) enum Factors {
    /// LU of `A = I − S`, `S` itself, and `X = A⁻¹ W0`.
    Cayley { a: Lu, s: Mat<f64>, x: Mat<f64> },
    /// `A = Q̃ R̃` with `Q̃` formed, for `A = Pᵀ` (Gram–Schmidt, `W = Q̃ᵀ W0`) or `A = P`
    /// (Householder, `W = Q̃ W0`); `R̃`'s diagonal is positive, but for Householder's last
    /// entry where the map's determinant convention flips `Q̃`'s last column.
    Qr {
        qr: ExplicitQr,
        /// Gram–Schmidt (the rows of `P`) rather than Householder (its columns).
        rows: bool,
    },
    /// `P = U Σ Vᵀ` and `Vᵀ W0`.
    Lowdin {
        u: Mat<f64>,
        s: Vec<f64>,
        v: Mat<f64>,
        vt_w0: Mat<f64>,
    },
}

/// `S = triu(P, 1) − triu(P, 1)ᵀ`.
fn skew(p: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(p.nrows(), p.ncols(), |i, j| super::cayley::skew(p, i, j))
}

impl Factors {
    /// The factorisation of `p` and `W = orth(P)·W0`.
    /// `orth_tol`: the largest orthogonality defect `‖QᵀQ − I‖_F` a QR map may leave (see
    /// `explicit_qr::orthogonality_tolerance`).
    /// `pt` is `Pᵀ` (column-major: `P` as candle stores it, row-major).
    pub(super) fn forward(
        map: OrthMap,
        pt: &Mat<f64>,
        w0: MatRef<'_, f64>,
        orth_tol: f64,
        par: Par,
    ) -> Result<(Self, Mat<f64>)> {
        let p = pt.transpose();
        dense::check_finite(p, &format!("rotate ({})", map.name()))?;
        match map {
            OrthMap::Cayley => Self::cayley(p, w0, par),
            // Gram–Schmidt factors A = Pᵀ, Householder A = P; the QR takes Aᵀ.
            OrthMap::GramSchmidt => Self::qr(pt.as_ref(), w0, true, orth_tol, par),
            OrthMap::Householder => Self::qr(p, w0, false, orth_tol, par),
            OrthMap::Lowdin => Self::lowdin(p, w0, par),
        }
    }

    fn cayley(p: MatRef<'_, f64>, w0: MatRef<'_, f64>, par: Par) -> Result<(Self, Mat<f64>)> {
        let d = p.nrows();
        let s = skew(p);
        let a = Lu::factor(
            Mat::from_fn(d, d, |i, j| if i == j { 1.0 } else { -s[(i, j)] }),
            "Cayley: I − S",
            par,
        )?;
        let mut x = w0.to_owned();
        a.solve_in_place(x.as_mut(), par);
        let mut w = x.clone();
        dense::mul_add(w.as_mut(), s.as_ref(), x.as_ref(), 1.0, par);
        Ok((Self::Cayley { a, s, x }, w))
    }

    /// `a` is `Pᵀ` for Gram–Schmidt (`rows`), `P` for Householder.
    fn qr(
        a: MatRef<'_, f64>,
        w0: MatRef<'_, f64>,
        rows: bool,
        orth_tol: f64,
        par: Par,
    ) -> Result<(Self, Mat<f64>)> {
        let what = if rows {
            "Gram–Schmidt: P"
        } else {
            "Householder: P"
        };
        let d = a.nrows();
        let mut qr = ExplicitQr::factor(a, orth_tol, what, par)?;
        if !rows {
            // The official d − 1 reflections give det Q̃ = (−1)^(d−1); the positive QR has
            // det Q = sign(det A). Where they differ, the last column (and R's last row) flips.
            let target = if d % 2 == 1 { 1.0 } else { -1.0 };
            if qr.det_q_sign(par) != target {
                qr.flip_last();
            }
        }
        let q = qr.q();
        let w = if rows {
            dense::mul(q.transpose(), w0, 1.0, par)
        } else {
            dense::mul(q, w0, 1.0, par)
        };
        Ok((Self::Qr { qr, rows }, w))
    }

    fn lowdin(p: MatRef<'_, f64>, w0: MatRef<'_, f64>, par: Par) -> Result<(Self, Mat<f64>)> {
        let (u, s, v) = polar_factors(p, par)?;
        let vt_w0 = dense::mul(v.transpose(), w0, 1.0, par);
        let w = dense::mul(u.as_ref(), vt_w0.as_ref(), 1.0, par);
        Ok((Self::Lowdin { u, s, v, vt_w0 }, w))
    }

    /// Writes `∂L/∂P` into `dp` and returns `∂L/∂W0`, from `G = ∂L/∂W`; `w` is the forward's
    /// output.
    pub(super) fn backward(
        &self,
        w0: MatRef<'_, f64>,
        w: MatRef<'_, f64>,
        g: MatRef<'_, f64>,
        dp: RowMajorOut<'_>,
        par: Par,
    ) -> Result<Mat<f64>> {
        match self {
            Self::Cayley { a, s, x } => Ok(cayley_backward(a, s, x, g, dp, par)),
            Self::Qr { qr, rows } => Ok(qr_backward(qr, *rows, w0, w, g, dp, par)),
            Self::Lowdin { u, s, v, vt_w0 } => lowdin_backward(u, s, v, vt_w0, g, dp, par),
        }
    }
}

/// Below this `σ_min/σ_max` the Gram route's squared condition number would cost accuracy in
/// f64 (`eps·cond²` > 1e-6), and the SVD of `P` itself is taken.
const GRAM_MIN_RATIO: f64 = 1e-5;

/// `P = U Σ Vᵀ`: from the eigendecomposition of `PᵀP = V Σ² Vᵀ` and `U = P V Σ⁻¹` (a gemm,
/// an EVD and a gemm: a third of the SVD's time at d = 1024), or by the SVD where `P` is too
/// ill-conditioned for the Gram matrix.
fn polar_factors(p: MatRef<'_, f64>, par: Par) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let gram = dense::gram_lower(p, par);
    let (lambda, v) = dense::evd_symmetric(gram.as_ref(), "Löwdin: PᵀP", par)?;
    let max = lambda.iter().copied().fold(0.0, f64::max);
    let min = lambda.iter().copied().fold(f64::INFINITY, f64::min);
    if !(min > 0.0 && min >= GRAM_MIN_RATIO * GRAM_MIN_RATIO * max) {
        return dense::svd_square(p, "Löwdin: P", par);
    }
    let s: Vec<f64> = lambda.iter().map(|l| l.sqrt()).collect();
    let mut u = dense::mul(p, v.as_ref(), 1.0, par);
    for (j, sj) in s.iter().enumerate() {
        for i in 0..u.nrows() {
            u[(i, j)] /= sj;
        }
    }
    Ok((u, s, v))
}

/// Cayley: `Qᵀ G = (I + S)⁻¹(I − S) G = A⁻ᵀ A G`, `∂S = (G + QᵀG) Xᵀ`, `∂P = striu(∂S − ∂Sᵀ)`,
/// `∂W0 = Qᵀ G`.
fn cayley_backward(
    a: &Lu,
    s: &Mat<f64>,
    x: &Mat<f64>,
    g: MatRef<'_, f64>,
    mut dp: RowMajorOut<'_>,
    par: Par,
) -> Mat<f64> {
    let d = g.nrows();
    let mut qt_g = g.to_owned();
    dense::mul_add(qt_g.as_mut(), s.as_ref(), g, -1.0, par);
    a.solve_transpose_in_place(qt_g.as_mut(), par);
    let y = Mat::from_fn(d, g.ncols(), |i, j| qt_g[(i, j)] + g[(i, j)]);
    let ds = dense::mul(y.as_ref(), x.transpose(), 1.0, par);
    dp.fill(|i, j| if i < j { ds[(i, j)] - ds[(j, i)] } else { 0.0 });
    qt_g
}

/// QR maps, for `A = Q̃ R̃` (`A = Pᵀ` or `P`): `∂A = Q̃ · tril(M − Mᵀ, −1) · R̃⁻ᵀ` with
/// `M = −G_Qᵀ Q̃`, where `G_Q = W0 Gᵀ` (Gram–Schmidt, `W = Q̃ᵀ W0`; then `M = −G Wᵀ`) or
/// `G_Q = G W0ᵀ` (Householder, `W = Q̃ W0`; then `M = −W0 (Q̃ᵀG)ᵀ`). `M − Mᵀ` has rank `2n`,
/// so the `d×d` work is a triangular solve with a strictly triangular right-hand side (⅓d³)
/// and one product of `Q̃` with a triangular matrix (d³).
fn qr_backward(
    qr: &ExplicitQr,
    rows: bool,
    w0: MatRef<'_, f64>,
    w: MatRef<'_, f64>,
    g: MatRef<'_, f64>,
    mut dp: RowMajorOut<'_>,
    par: Par,
) -> Mat<f64> {
    let q = qr.q();
    // (U, V) with −M = U Vᵀ, and ∂W0.
    let (u, v, dw0) = if rows {
        (w.to_owned(), g.to_owned(), dense::mul(q, g, 1.0, par))
    } else {
        let qt_g = dense::mul(q.transpose(), g, 1.0, par);
        (qt_g.clone(), w0.to_owned(), qt_g)
    };
    // Xᵀ = R̃⁻¹ Tᵀ with Tᵀ = triu(M − Mᵀ, 1)ᵀ = triu(V Uᵀ − U Vᵀ, 1) (strictly upper, so is Xᵀ).
    let (d, n) = (u.nrows(), u.ncols());
    let lhs = Mat::from_fn(
        d,
        2 * n,
        |i, j| if j < n { v[(i, j)] } else { u[(i, j - n)] },
    );
    let rhs = Mat::from_fn(
        2 * n,
        d,
        |i, j| {
            if i < n {
                u[(j, i)]
            } else {
                -v[(j, i - n)]
            }
        },
    );
    let mut xt = Mat::zeros(d, d);
    tri::matmul(
        xt.as_mut(),
        BlockStructure::StrictTriangularUpper,
        Accum::Replace,
        lhs.as_ref(),
        BlockStructure::Rectangular,
        rhs.as_ref(),
        BlockStructure::Rectangular,
        1.0,
        par,
    );
    dense::solve_upper_strict_rhs_in_place(qr.r(), xt.as_mut(), par);
    if rows {
        // A = Pᵀ: ∂P = ∂Aᵀ = Xᵀ Q̃ᵀ.
        dp.product(
            xt.as_ref(),
            BlockStructure::StrictTriangularUpper,
            q.transpose(),
            BlockStructure::Rectangular,
            par,
        );
    } else {
        dp.product(
            q,
            BlockStructure::Rectangular,
            xt.transpose(),
            BlockStructure::StrictTriangularLower,
            par,
        );
    }
    dw0
}

/// Löwdin: `M = (UᵀG)(VᵀW0)ᵀ`, `∂P = U [(M − Mᵀ) ⊘ (σ_i + σ_j)] Vᵀ`, `∂W0 = V UᵀG`.
fn lowdin_backward(
    u: &Mat<f64>,
    s: &[f64],
    v: &Mat<f64>,
    vt_w0: &Mat<f64>,
    g: MatRef<'_, f64>,
    mut dp: RowMajorOut<'_>,
    par: Par,
) -> Result<Mat<f64>> {
    let d = g.nrows();
    let ut_g = dense::mul(u.transpose(), g, 1.0, par);
    let m = dense::mul(ut_g.as_ref(), vt_w0.transpose(), 1.0, par);
    let mut k = Mat::zeros(d, d);
    for j in 0..d {
        for i in 0..d {
            if i == j {
                continue; // (M − Mᵀ) vanishes on the diagonal, even where σ_i = 0.
            }
            let sum = s[i] + s[j];
            if sum <= 0.0 {
                bail!(
                    "Löwdin backward: P has rank < d − 1, the polar factor is not differentiable"
                );
            }
            k[(i, j)] = (m[(i, j)] - m[(j, i)]) / sum;
        }
    }
    dp.product_of_three(u.as_ref(), k.as_ref(), v.transpose(), par);
    Ok(dense::mul(v.as_ref(), ut_g.as_ref(), 1.0, par))
}
