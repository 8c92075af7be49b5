//! The four exact orthogonal maps of OPT (spec §2.2–2.5, numerics §7) as differentiable candle
//! operations.
//!
//! candle has no LU, QR or SVD, so the maps are one [`CustomOp1`](candle_core::CustomOp1) over a
//! stack `[b, d, d]` ([`orthogonalize_batched`]; [`orthogonalize`] is a batch of one) that runs
//! on the CPU in f64 with faer's blocked routines and returns the result in the input's dtype.
//! The backward is the closed form of the spec, also in f64 on the CPU; it reuses the
//! factorisations the forward kept (the op object lives exactly as long as the autograd graph
//! that needs it). A batch's matrices are factorised concurrently (see `batch`); an OPT network
//! hands each (size, map) group of its layers to one call (`crate::rotations`).
//!
//! The op runs on any device: its `cuda_fwd` takes the stack through host memory, factorises
//! there and returns `Q` on the device; the backward does the same with `∂L/∂Q` — one round
//! trip per batch, not per layer. Beside the exact maps are the gemm routes that run where the
//! stack lives: Löwdin and Cayley as batched Newton–Schulz iterations in candle ops
//! ([`polar_newton_schulz_batched`], [`cayley_newton_schulz_batched`]), Gram–Schmidt and
//! Householder as Cholesky-QR2 with the closed-form backward in candle ops
//! ([`gram_schmidt_cholesky_qr`], [`householder_cholesky_qr`]; three small f64 kernels in
//! `kernels/maps.cu`, whose algorithms the CPU runs in the tests); all are tested against the
//! exact maps here on the CPU. Which route a network's batch takes is decided in one place,
//! the ops seam (its routes table), never here.

mod batch;
mod cayley;
mod cholesky_qr;
#[cfg(feature = "cuda")]
mod cuda;
mod dense;
mod explicit_qr;
mod newton_schulz;
mod polar;
mod qr;
mod rotate;
mod rotate_op;
#[cfg(test)]
mod rotate_tests;
#[cfg(test)]
mod tests;

pub use batch::{check_stack, orthogonalize_batched, orthogonalize_each};
pub use cholesky_qr::{gram_schmidt_cholesky_qr, householder_cholesky_qr};
pub use newton_schulz::{
    cayley_newton_schulz, cayley_newton_schulz_batched, cayley_newton_schulz_scheduled,
    polar_newton_schulz, polar_newton_schulz_batched, polar_newton_schulz_scheduled,
    Iterations as NewtonSchulzIterations, FIRST_READ as NEWTON_SCHULZ_FIRST_READ,
    MAX_ITERS as NEWTON_SCHULZ_MAX_ITERS,
};
pub use rotate_op::{check_pair, rotate_batched, rotate_ragged};

use candle_core::{bail, Result, Tensor};
use faer::{Mat, MatRef, Par};

/// Which orthogonalization turns the raw matrix `P` into `Q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrthMap {
    /// `Q = (I + S)(I − S)⁻¹`, `S = triu(P) − triu(P)ᵀ` (spec §2.2).
    Cayley,
    /// Classical Gram–Schmidt of the rows of P, in order (spec §2.3).
    GramSchmidt,
    /// d − 1 Householder reflections of the columns of P (spec §2.4).
    Householder,
    /// Löwdin / polar factor `P (PᵀP)^{-1/2}` (spec §2.5).
    Lowdin,
}

impl OrthMap {
    pub const ALL: [OrthMap; 4] = [
        OrthMap::Cayley,
        OrthMap::GramSchmidt,
        OrthMap::Householder,
        OrthMap::Lowdin,
    ];

    /// The short name of the official folder (`opt_cp`, `opt_gs`, `opt_hr`, `opt_ls`).
    pub fn name(self) -> &'static str {
        match self {
            OrthMap::Cayley => "cp",
            OrthMap::GramSchmidt => "gs",
            OrthMap::Householder => "hr",
            OrthMap::Lowdin => "ls",
        }
    }
}

/// `Q = orth(P)` for a square `P` (`[d, d]`, f32 or f64, any device), differentiable w.r.t. `P`.
///
/// One layer's map: the batched op ([`orthogonalize_batched`]) with a batch of one, so a lone
/// layer and a batch compute every matrix by the same code. Fails on a non-square or non-float
/// input, non-finite entries, and a (numerically) singular `P` for Gram–Schmidt / Householder.
pub fn orthogonalize(p: &Tensor, map: OrthMap) -> Result<Tensor> {
    let (rows, cols) = p.dims2()?;
    if rows != cols {
        bail!(
            "orthogonalize ({}): P must be square, got [{rows}, {cols}]",
            map.name()
        );
    }
    orthogonalize_batched(&p.unsqueeze(0)?, map)?.squeeze(0)
}

/// `‖Q Qᵀ − I‖_F` computed in f64 (a metric; no autograd).
pub fn orthogonality_error(q: &Tensor) -> Result<f64> {
    let q = dense::mat_from_tensor(q)?;
    let n = q.nrows();
    let mut e = Mat::<f64>::identity(n, n);
    dense::mul_add(
        e.as_mut(),
        q.as_ref(),
        q.transpose(),
        -1.0,
        dense::par_for(n),
    );
    let mut sum = 0.0;
    for j in 0..n {
        for i in 0..n {
            sum += e[(i, j)] * e[(i, j)];
        }
    }
    Ok(sum.sqrt())
}

/// The f64 factorisation of one map, kept from the forward for the backward.
enum Factors {
    Cayley(cayley::Factors),
    GramSchmidt(qr::Factors),
    Householder(qr::Factors),
    Lowdin(polar::Factors),
}

impl Factors {
    fn compute(map: OrthMap, p: MatRef<'_, f64>, par: Par) -> Result<Self> {
        dense::check_finite(p, &format!("orthogonalize ({})", map.name()))?;
        Ok(match map {
            OrthMap::Cayley => Factors::Cayley(cayley::forward(p, par)?),
            OrthMap::GramSchmidt => Factors::GramSchmidt(qr::gram_schmidt(p, par)?),
            OrthMap::Householder => Factors::Householder(qr::householder(p, par)?),
            OrthMap::Lowdin => Factors::Lowdin(polar::forward(p, par)?),
        })
    }

    /// The map's output `Q`.
    fn q(&self) -> MatRef<'_, f64> {
        match self {
            Factors::Cayley(f) => f.q.as_ref(),
            // The QR was of Pᵀ: its Q has the orthonormalised rows of P as columns.
            Factors::GramSchmidt(f) => f.q.transpose(),
            Factors::Householder(f) => f.q.as_ref(),
            Factors::Lowdin(f) => f.q.as_ref(),
        }
    }

    /// `∂L/∂P` from `G = ∂L/∂Q`.
    fn grad(&self, g: MatRef<'_, f64>, par: Par) -> Result<Mat<f64>> {
        Ok(match self {
            Factors::Cayley(f) => cayley::backward(f, g, par),
            // Q_gs = Q_qrᵀ and A = Pᵀ: transpose G in and the result out.
            Factors::GramSchmidt(f) => qr::backward(f, g.transpose(), par).transpose().to_owned(),
            Factors::Householder(f) => qr::backward(f, g, par),
            Factors::Lowdin(f) => polar::backward(f, g, par)?,
        })
    }
}
