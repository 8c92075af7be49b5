//! Cayley parameterization (spec §2.2): `S = triu(P) − triu(P)ᵀ`, `Q = (I + S)(I − S)⁻¹`, no ½
//! factor. Only SO(d) is reachable (`det Q = +1`).

use super::dense::{self, Lu};
use candle_core::Result;
use faer::{Mat, MatRef, Par};

/// What the backward needs: the LU factors of `A = I − S` and `Q` in f64.
pub(super) struct Factors {
    a: Lu,
    pub(super) q: Mat<f64>,
}

/// `S_ij` of the skew matrix built from the upper triangle of `P` (the diagonal cancels).
pub(super) fn skew(p: MatRef<'_, f64>, i: usize, j: usize) -> f64 {
    match i.cmp(&j) {
        std::cmp::Ordering::Less => p[(i, j)],
        std::cmp::Ordering::Greater => -p[(j, i)],
        std::cmp::Ordering::Equal => 0.0,
    }
}

fn delta(i: usize, j: usize) -> f64 {
    if i == j {
        1.0
    } else {
        0.0
    }
}

pub(super) fn forward(p: MatRef<'_, f64>, par: Par) -> Result<Factors> {
    let d = p.nrows();
    let a = Lu::factor(
        Mat::from_fn(d, d, |i, j| delta(i, j) - skew(p, i, j)),
        "Cayley: I − S",
        par,
    )?;
    // (I + S) and (I − S)⁻¹ commute, so Q = (I − S)⁻¹(I + S): one LU solve, no inverse.
    let mut q = Mat::from_fn(d, d, |i, j| delta(i, j) + skew(p, i, j));
    a.solve_in_place(q.as_mut(), par);
    Ok(Factors { a, q })
}

/// `∂L/∂P = striu(Y − Yᵀ)` with `Y = ∂L/∂S = (I + Q)ᵀ G A⁻ᵀ`.
pub(super) fn backward(f: &Factors, g: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let d = g.nrows();
    // Work with Yᵀ = A⁻¹ Gᵀ (I + Q), which is a plain (non-transposed) LU solve.
    let mut yt = g.transpose().to_owned();
    dense::mul_add(yt.as_mut(), g.transpose(), f.q.as_ref(), 1.0, par);
    f.a.solve_in_place(yt.as_mut(), par);
    // Only the strict upper triangle of P enters S (U − Uᵀ), so everything else gets zero.
    Mat::from_fn(
        d,
        d,
        |i, j| {
            if i < j {
                yt[(j, i)] - yt[(i, j)]
            } else {
                0.0
            }
        },
    )
}
