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

/// Iterations run before the first read when nothing better is known: a well-conditioned `P`
/// (OPT's during training) converges in fewer; a Gaussian one at d = 1024 needs about 30.
pub const FIRST_READ: usize = 16;

/// Iterations between later reads, when the first chunk did not converge.
const LATER_CHUNK: usize = 8;

/// When the iterations read their residuals from the device: a read is a wait for the whole
/// queue, so the residual norms of a chunk of iterations stay on the device and are read once
/// at its end. With `first_read` at least what the batch needs, a call reads once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iterations {
    pub first_read: usize,
    pub max: usize,
}

impl Iterations {
    /// At most `max`, the first read after [`FIRST_READ`].
    pub fn up_to(max: usize) -> Self {
        Self {
            first_read: FIRST_READ,
            max,
        }
    }
}

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
    Ok(polar_newton_schulz_scheduled(ps, Iterations::up_to(max_iters))?.0)
}

/// [`polar_newton_schulz_batched`] reading the device as `iterations` says; also returns how many
/// iterations the batch needed (the next call's `first_read`).
pub fn polar_newton_schulz_scheduled(
    ps: &Tensor,
    iterations: Iterations,
) -> Result<(Tensor, usize)> {
    let (b, d, cols) = ps.dims3()?;
    if d != cols {
        bail!("polar (Newton–Schulz): P must be square, got [{b}, {d}, {cols}]");
    }
    let x0 = ps.to_dtype(DType::F64)?;
    // Each matrix is scaled by its own Frobenius norm, so every singular value is in (0, 1]. A
    // zero or non-finite P makes every residual NaN, which the iteration's read reports.
    let norms = x0.sqr()?.sum_keepdim(2)?.sum_keepdim(1)?.sqrt()?;
    let eye = Tensor::eye(d, DType::F64, ps.device())?;
    // X ← X + ½·X(I − XᵀX).
    let (x, needed) = iterate(
        x0.broadcast_div(&norms)?,
        iterations,
        "polar",
        |x| eye.broadcast_sub(&x.t()?.matmul(x)?),
        0.5,
    )?;
    Ok((x.to_dtype(ps.dtype())?, needed))
}

/// `‖r_k‖_F` of every matrix of a `[b, d, d]` stack, detached, on its device.
fn frobenius(r: &Tensor) -> Result<Tensor> {
    r.detach().sqr()?.sum(2)?.sum(1)?.sqrt()
}

/// Iterates `x ← x + x·residual(x)·scale` until every matrix's `‖residual‖_F < TOLERANCE`;
/// `residual(x)` is `I − XᵀX` (polar) or `I − AX` (inverse). The norms of a chunk of iterations
/// are read in one transfer at its end (the first chunk `iterations.first_read` long), so the
/// result may have iterated a little past convergence — a fixed point, where that changes
/// nothing but rounding. Returns the iterate and how many iterations the batch needed; an error
/// when `iterations.max` do not get there or a residual is NaN.
fn iterate(
    mut x: Tensor,
    iterations: Iterations,
    what: &str,
    residual: impl Fn(&Tensor) -> Result<Tensor>,
    scale: f64,
) -> Result<(Tensor, usize)> {
    let mut done = 0;
    let mut chunk = iterations.first_read.clamp(1, iterations.max.max(1));
    loop {
        // norms[j]: the residual of the iterate after `done + j` iterations.
        let mut norms = Vec::with_capacity(chunk + 1);
        for _ in 0..chunk {
            let r = residual(&x)?;
            norms.push(frobenius(&r)?);
            x = (&x + (x.matmul(&r)? * scale)?)?;
        }
        norms.push(frobenius(&residual(&x)?)?);
        // The worst matrix decides; a NaN anywhere stops the batch.
        let worst: Vec<f64> = Tensor::stack(&norms, 0)?
            .to_vec2::<f64>()?
            .iter()
            .map(|row| {
                row.iter().fold(
                    0.0,
                    |m: f64, &n| if n.is_nan() { f64::NAN } else { m.max(n) },
                )
            })
            .collect();
        let last = worst[worst.len() - 1];
        if last < TOLERANCE {
            let first = worst.iter().position(|n| *n < TOLERANCE).unwrap_or(chunk);
            return Ok((x, done + first));
        }
        done += chunk;
        if last.is_nan() || done >= iterations.max {
            bail!(
                "{what} (Newton–Schulz): residual ‖·‖_F = {last:.1e} after {done} iterations \
                 (P is singular, not finite or too ill-conditioned for this route)"
            );
        }
        chunk = LATER_CHUNK.min(iterations.max - done);
    }
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
    Ok(cayley_newton_schulz_scheduled(ps, Iterations::up_to(max_iters))?.0)
}

/// [`cayley_newton_schulz_batched`] reading the device as `iterations` says; also returns how
/// many iterations the batch needed.
pub fn cayley_newton_schulz_scheduled(
    ps: &Tensor,
    iterations: Iterations,
) -> Result<(Tensor, usize)> {
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
    // starts), kept on the device; a non-finite P makes the residuals NaN.
    let abs = a.detach().abs()?;
    let norm_1 = abs.sum(1)?.max_keepdim(1)?;
    let norm_inf = abs.sum(2)?.max_keepdim(1)?;
    let scales = (norm_1 * norm_inf)?.reshape((b, 1, 1))?;
    let x0 = a.t()?.broadcast_div(&scales)?;
    let (inverse, needed) = iterate(
        x0,
        iterations,
        "Cayley",
        |x| eye.broadcast_sub(&a.matmul(x)?),
        1.0,
    )?;
    let q = eye
        .broadcast_add(&s)?
        .matmul(&inverse)?
        .to_dtype(ps.dtype())?;
    Ok((q, needed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn gaussian(b: usize, d: usize, seed: u64) -> Result<Tensor> {
        let mut rng = crate::Rng::seed(seed);
        Tensor::from_vec(rng.normal_vec(b * d * d, 1.0), (b, d, d), &Device::Cpu)
    }

    /// The count a batch reports is what it needs: the next call, told to read after that many
    /// (one read), converges to the same matrices as a call that reads after every iteration,
    /// and fewer iterations than that do not converge.
    #[test]
    fn the_reported_count_suffices_for_one_read() -> Result<()> {
        let ps = gaussian(3, 40, 5)?;
        for (name, route) in [
            (
                "polar",
                polar_newton_schulz_scheduled as fn(&Tensor, Iterations) -> _,
            ),
            ("cayley", cayley_newton_schulz_scheduled),
        ] {
            let every = Iterations {
                first_read: 1,
                max: MAX_ITERS,
            };
            let (q_every, needed) = route(&ps, every)?;
            assert!(needed > 2, "{name}: {needed}");
            let once = Iterations {
                first_read: needed,
                max: MAX_ITERS,
            };
            let (q_once, again) = route(&ps, once)?;
            assert_eq!(again, needed, "{name}");
            let diff = (q_once - &q_every)?.abs()?.flatten_all()?.max(0)?;
            assert!(diff.to_scalar::<f32>()? < 1e-6, "{name}");
            let short = Iterations {
                first_read: needed - 1,
                max: needed - 1,
            };
            assert!(
                route(&ps, short).is_err(),
                "{name}: converged before its count"
            );
        }
        Ok(())
    }

    /// A non-finite or zero P is an error from the one read, not a result.
    #[test]
    fn non_finite_and_zero_inputs_fail() -> Result<()> {
        let mut nan = gaussian(1, 8, 2)?.flatten_all()?.to_vec1::<f32>()?;
        nan[5] = f32::NAN;
        let nan = Tensor::from_vec(nan, (1, 8, 8), &Device::Cpu)?;
        assert!(polar_newton_schulz_batched(&nan, MAX_ITERS).is_err());
        assert!(cayley_newton_schulz_batched(&nan, MAX_ITERS).is_err());
        let zero = Tensor::zeros((1, 8, 8), DType::F32, &Device::Cpu)?;
        assert!(polar_newton_schulz_batched(&zero, MAX_ITERS).is_err());
        Ok(())
    }
}
