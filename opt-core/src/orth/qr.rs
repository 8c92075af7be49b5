//! The QR-based maps: Gram–Schmidt on the rows (spec §2.3) and Householder reflections
//! (spec §2.4), both computed with one blocked Householder QR instead of d sequential steps.

use super::dense::{self, Lu};
use candle_core::{bail, Result};
use faer::{Mat, MatRef, Par};

/// `A = Q R` with the sign convention of the map already applied to `Q` and `R`
/// (`A = Pᵀ` for Gram–Schmidt, `A = P` for Householder).
pub(super) struct Factors {
    pub(super) q: Mat<f64>,
    r: Mat<f64>,
}

/// QR with a positive diagonal of R: flip the signs of Q's columns and R's rows.
fn positive_qr(a: Mat<f64>, what: &str, par: Par) -> Result<Factors> {
    let d = a.nrows();
    let (mut q, mut r) = dense::qr_square(a, what, par)?;
    for k in 0..d {
        let rkk = r[(k, k)];
        if rkk == 0.0 || !rkk.is_finite() {
            bail!("{what} is singular (R[{k},{k}] = {rkk})");
        }
        if rkk < 0.0 {
            flip(&mut q, &mut r, k);
        }
    }
    Ok(Factors { q, r })
}

/// Negates column k of Q and row k of R (QR stays valid).
fn flip(q: &mut Mat<f64>, r: &mut Mat<f64>, k: usize) {
    let d = q.nrows();
    for i in 0..d {
        q[(i, k)] = -q[(i, k)];
        r[(k, i)] = -r[(k, i)];
    }
}

/// Gram–Schmidt of the rows of P: `GS(P) = (Q_qr(Pᵀ))ᵀ` with positive diag(R). Stores the
/// factors of `Pᵀ`; the map's output is `qᵀ`.
pub(super) fn gram_schmidt(p: MatRef<'_, f64>, par: Par) -> Result<Factors> {
    positive_qr(p.transpose().to_owned(), "Gram–Schmidt: P", par)
}

/// Householder: the d − 1 reflections of the official code give Q_qr(P) with positive diag(R)
/// in the first d − 1 columns and `det Q = (−1)^(d−1)` (each reflection has det −1).
pub(super) fn householder(p: MatRef<'_, f64>, par: Par) -> Result<Factors> {
    let d = p.nrows();
    let mut f = positive_qr(p.to_owned(), "Householder: P", par)?;
    // det P = det Q · det R with det R > 0, so the fully positive Q has det = sign(det P).
    let det_q = Lu::factor(p.to_owned(), "Householder: P", par)?.det_sign();
    let target = if d % 2 == 1 { 1.0 } else { -1.0 };
    if det_q != target {
        flip(&mut f.q, &mut f.r, d - 1);
    }
    Ok(f)
}

/// `∂L/∂A = (G_Q + Q·copyltu(M)) R⁻ᵀ` with `M = −G_Qᵀ Q` (square, full rank, ∂L/∂R = 0).
/// The formula holds for any fixed signs of diag(R), so it serves both maps unchanged.
pub(super) fn backward(f: &Factors, gq: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let d = gq.nrows();
    let m = dense::mul(gq.transpose(), f.q.as_ref(), -1.0, par);
    let copyltu = Mat::from_fn(d, d, |i, j| if i >= j { m[(i, j)] } else { m[(j, i)] });
    let mut b = gq.to_owned();
    dense::mul_add(b.as_mut(), f.q.as_ref(), copyltu.as_ref(), 1.0, par);
    // X = B R⁻ᵀ  ⇔  R Xᵀ = Bᵀ: a triangular solve, no inverse.
    let mut xt = b.transpose().to_owned();
    dense::solve_upper_in_place(f.r.as_ref(), xt.as_mut(), par);
    xt.transpose().to_owned()
}
