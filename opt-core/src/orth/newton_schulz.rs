//! Löwdin's polar factor and Cayley's inverse by Newton–Schulz iterations, in candle ops:
//! device-generic routes (the GPU computes them where it holds `P`, no host round trip) whose
//! autograd differentiates through the iterations.
//!
//! **Polar (LS).**
//! `X₀ = P/‖P‖_F` (every singular value in (0, 1]), `X ← X + ½·X(I − XᵀX)`: each iteration
//! multiplies small singular values by about 1.5 and converges quadratically once they near
//! 1, to `P(PᵀP)^{-1/2}`. A Gaussian `P` (OPT's init) has `σ_min/‖P‖_F ≈ d^{-3/2}`, so d = 1024
//! takes about 30 iterations. The work runs in f64 (on an H100/H200 f64 matmuls cost what f32
//! ones do at these sizes) and stops when `‖I − XᵀX‖_F` (computed by the iteration anyway)
//! falls below [`TOLERANCE`]; a `P` that does not get there in `max_iters` is an error, never a
//! silently worse rotation.
//!
//! **Cayley (CP).** `Q = (I + S)(I − S)⁻¹` with `X ≈ (I − S)⁻¹` from the inverse iteration
//! `X ← X + X(I − AX)`, `A = I − S`, `X₀ = Aᵀ/(‖A‖₁‖A‖_∞)` (so every eigenvalue of `AX₀` lies in
//! (0, 1]). `AᵀA = I + SᵀS` keeps A's singular values ≥ 1, so the inverse always exists; the
//! iteration count grows with `log(‖A‖₁‖A‖_∞)`, about 25 at d = 1024 from a Gaussian `P`.

use candle_core::{bail, DType, Result, Tensor};

/// Stop once `‖I − XᵀX‖_F` is below this (f64 arithmetic; the result is then rounded to the
/// input's dtype, whose own rounding dominates).
pub const TOLERANCE: f64 = 1e-10;

/// Iterations allowed by default: enough for `σ_min/σ_max` down to about 1e-12.
pub const MAX_ITERS: usize = 80;

/// The polar factor `P(PᵀP)^{-1/2}` of a square, nonsingular `P` (f32 or f64, any device), in
/// `P`'s dtype, differentiable w.r.t. `P` through the iterations.
pub fn polar_newton_schulz(p: &Tensor, max_iters: usize) -> Result<Tensor> {
    let (d, cols) = p.dims2()?;
    if d != cols {
        bail!("polar (Newton–Schulz): P must be square, got [{d}, {cols}]");
    }
    polar_newton_schulz_batched(&p.unsqueeze(0)?, max_iters)?.squeeze(0)
}

/// [`polar_newton_schulz`] of every matrix of a `[b, d, d]` stack at once (batched matmuls);
/// the batch iterates until its worst matrix has converged.
pub fn polar_newton_schulz_batched(ps: &Tensor, max_iters: usize) -> Result<Tensor> {
    let (b, d, cols) = ps.dims3()?;
    if d != cols {
        bail!("polar (Newton–Schulz): P must be square, got [{b}, {d}, {cols}]");
    }
    let x0 = ps.to_dtype(DType::F64)?;
    // Each matrix is scaled by its own Frobenius norm, so every singular value is in (0, 1].
    let norms = x0.sqr()?.sum_keepdim(2)?.sum_keepdim(1)?.sqrt()?;
    let values = norms.flatten_all()?.to_vec1::<f64>()?;
    if values.iter().any(|n| !n.is_finite() || *n <= 0.0) {
        bail!("polar (Newton–Schulz): P is zero or not finite");
    }
    let eye = Tensor::eye(d, DType::F64, ps.device())?;
    // X ← X + ½·X(I − XᵀX).
    let x = iterate(
        x0.broadcast_div(&norms)?,
        max_iters,
        "polar",
        |x| eye.broadcast_sub(&x.t()?.matmul(x)?),
        0.5,
    )?;
    x.to_dtype(ps.dtype())
}

/// Iterates `x ← x + x·residual(x)` until every matrix's `‖residual‖_F < TOLERANCE`;
/// `residual(x)` is `I − XᵀX` (polar) or `I − AX` (inverse). Errors when `max_iters` do not get
/// there.
fn iterate(
    mut x: Tensor,
    max_iters: usize,
    what: &str,
    residual: impl Fn(&Tensor) -> Result<Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let mut norm = f64::INFINITY;
    for _ in 0..=max_iters {
        let r = residual(&x)?;
        let norms = r.detach().sqr()?.sum(2)?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
        // The worst matrix decides; a NaN anywhere stops the batch (and fails below).
        norm = norms.iter().fold(
            0.0,
            |m: f64, &n| if n.is_nan() { f64::NAN } else { m.max(n) },
        );
        if norm < TOLERANCE || !norm.is_finite() {
            break;
        }
        x = (&x + (x.matmul(&r)? * scale)?)?;
    }
    if norm.is_nan() || norm >= TOLERANCE {
        bail!(
            "{what} (Newton–Schulz): residual ‖·‖_F = {norm:.1e} after {max_iters} iterations \
             (P is singular or too ill-conditioned for this route)"
        );
    }
    Ok(x)
}

/// The Cayley map `Q = (I + S)(I − S)⁻¹`, `S = triu(P) − triu(P)ᵀ`, of a square `P` (f32 or f64,
/// any device), in `P`'s dtype, differentiable w.r.t. `P` through the iterations.
pub fn cayley_newton_schulz(p: &Tensor, max_iters: usize) -> Result<Tensor> {
    let (d, cols) = p.dims2()?;
    if d != cols {
        bail!("Cayley (Newton–Schulz): P must be square, got [{d}, {cols}]");
    }
    cayley_newton_schulz_batched(&p.unsqueeze(0)?, max_iters)?.squeeze(0)
}

/// [`cayley_newton_schulz`] of every matrix of a `[b, d, d]` stack at once.
pub fn cayley_newton_schulz_batched(ps: &Tensor, max_iters: usize) -> Result<Tensor> {
    let (b, d, cols) = ps.dims3()?;
    if d != cols {
        bail!("Cayley (Newton–Schulz): P must be square, got [{b}, {d}, {cols}]");
    }
    let dev = ps.device();
    let upper = ps
        .to_dtype(DType::F64)?
        .broadcast_mul(&Tensor::triu2(d, DType::F64, dev)?)?;
    let s = (&upper - upper.t()?)?;
    let eye = Tensor::eye(d, DType::F64, dev)?;
    let a = eye.broadcast_sub(&s)?;
    // ‖A‖₁·‖A‖_∞ ≥ σ_max(A)² per matrix, from detached values (the scale only sets where X
    // starts).
    let abs = a.detach().abs()?;
    let norm_1 = abs.sum(1)?.max(1)?.to_vec1::<f64>()?;
    let norm_inf = abs.sum(2)?.max(1)?.to_vec1::<f64>()?;
    let scales: Vec<f64> = norm_1.iter().zip(&norm_inf).map(|(a, b)| a * b).collect();
    if scales.iter().any(|s| !s.is_finite()) {
        bail!("Cayley (Newton–Schulz): P is not finite");
    }
    let scales = Tensor::from_vec(scales, (b, 1, 1), dev)?;
    let x0 = a.t()?.broadcast_div(&scales)?;
    let inverse = iterate(
        x0,
        max_iters,
        "Cayley",
        |x| eye.broadcast_sub(&a.matmul(x)?),
        1.0,
    )?;
    eye.broadcast_add(&s)?
        .matmul(&inverse)?
        .to_dtype(ps.dtype())
}
