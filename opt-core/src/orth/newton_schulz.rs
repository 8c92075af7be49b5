//! Löwdin's polar factor by the Newton–Schulz iteration, in candle ops: a device-generic
//! route (the GPU computes it where it holds `P`, no host round trip) whose autograd
//! differentiates through the iterations.
//!
//! `X₀ = P/‖P‖_F` (every singular value in (0, 1]), `X ← X + ½·X(I − XᵀX)`: each iteration
//! multiplies small singular values by about 1.5 and converges quadratically once they near
//! 1, to `P(PᵀP)^{-1/2}`. A Gaussian `P` (OPT's init) has `σ_min/‖P‖_F ≈ d^{-3/2}`, so d = 1024
//! takes about 30 iterations. The work runs in f64 (on an H100/H200 f64 matmuls cost what f32
//! ones do at these sizes) and stops when `‖I − XᵀX‖_F` (computed by the iteration anyway)
//! falls below [`TOLERANCE`]; a `P` that does not get there in `max_iters` is an error, never a
//! silently worse rotation.

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
    let x0 = p.to_dtype(DType::F64)?;
    let norm = x0.sqr()?.sum_all()?.sqrt()?;
    if !(norm.to_scalar::<f64>()? > 0.0) {
        bail!("polar (Newton–Schulz): P is zero or not finite");
    }
    let eye = Tensor::eye(d, DType::F64, p.device())?;
    let mut x = x0.broadcast_div(&norm)?;
    let mut residual = f64::INFINITY;
    for _ in 0..=max_iters {
        let r = (&eye - x.t()?.matmul(&x)?)?;
        residual = r.detach().sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        if residual < TOLERANCE || !residual.is_finite() {
            break;
        }
        x = (&x + (x.matmul(&r)? * 0.5)?)?;
    }
    if !(residual < TOLERANCE) {
        bail!(
            "polar (Newton–Schulz): ‖I − XᵀX‖_F = {residual:.1e} after {max_iters} iterations \
             (P is singular or too ill-conditioned for this route)"
        );
    }
    x.to_dtype(p.dtype())
}
