//! Gram–Schmidt for a device: the positive QR of `A = Pᵀ` by Cholesky-QR2 in f64 — Gram
//! matrices by batched matmul, their Cholesky factors and triangular inverses by two small ops
//! (a CUDA kernel each; plain loops on the CPU, the same algorithm, so the route is tested
//! here) — with the closed-form backward of `qr::backward` in candle ops.
//!
//! One Cholesky-QR step is `R = chol(AᵀA)` (upper, positive diagonal), `Q = A R⁻¹`; the second
//! step re-orthogonalises `Q` (orthogonality then at rounding level for `cond(P)` up to about
//! 1e7). Since `R` has a positive diagonal, `Q` is exactly the Q of the positive QR that the
//! exact map computes, up to rounding. A failed Cholesky (`cond(P)² ≳ 1/ε`, or non-finite
//! entries) or a result that is not orthogonal to [`TOLERANCE`] is an error, on which the
//! caller takes the exact host route: never a worse rotation.
//!
//! Why the orthogonality check is enough to trust the kernels' output: both produce upper-
//! triangular matrices with a positive diagonal by construction (zeros written below, pivots
//! `sqrt(p > 0)` and `1/r_cc`), so `Q = A·T` with such a `T`; if `Q` is orthogonal, uniqueness
//! of the positive QR makes it that QR's `Q` and `T = R⁻¹` — the forward value and the factor
//! the backward uses are then right to the checked tolerance, whatever a kernel got wrong.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Largest `‖QQᵀ − I‖_F` accepted from the device route.
pub const TOLERANCE: f64 = 1e-10;

/// `GS(P_k)` for a stack `[b, d, d]` (f32 or f64, any device), in `P`'s dtype, differentiable
/// w.r.t. the stack by the closed form.
pub fn gram_schmidt_cholesky_qr(ps: &Tensor) -> Result<Tensor> {
    let (_, d, cols) = ps.dims3()?;
    if d != cols {
        bail!(
            "Gram–Schmidt (Cholesky-QR): P must be square, got {:?}",
            ps.dims()
        );
    }
    let a = ps.detach().to_dtype(DType::F64)?.t()?.contiguous()?;
    let (q1, r1_inv) = cholesky_qr_step(&a)?;
    let (q, r2_inv) = cholesky_qr_step(&q1)?;
    // A = Q·R2·R1, so R⁻¹ = R1⁻¹·R2⁻¹.
    let r_inv = r1_inv.matmul(&r2_inv)?;
    let eye = Tensor::eye(d, DType::F64, ps.device())?;
    let residual = q.t()?.matmul(&q)?.broadcast_sub(&eye)?;
    let norms = residual.sqr()?.sum(2)?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
    if let Some(n) = norms.iter().find(|n| n.is_nan() || **n >= TOLERANCE) {
        bail!("Gram–Schmidt (Cholesky-QR): ‖QᵀQ − I‖_F = {n:.1e}, P too ill-conditioned");
    }
    // The map's output has the orthonormalised rows of P as rows: Qᵀ.
    let q_gs = q.t()?.contiguous()?.to_dtype(ps.dtype())?;
    ps.apply_op3(&q_gs, &r_inv, WithQrGrad)
}

/// `(Q, R⁻¹)` of one Cholesky-QR step of `a` (`[b, d, d]`, f64, contiguous).
fn cholesky_qr_step(a: &Tensor) -> Result<(Tensor, Tensor)> {
    let gram = a.t()?.matmul(a)?.contiguous()?;
    let r = gram.apply_op1_no_bwd(&CholeskyUpper)?;
    let r_inv = r.apply_op1_no_bwd(&UpperInverse)?;
    Ok((a.matmul(&r_inv)?, r_inv))
}

/// Upper Cholesky factor `R` (`G = RᵀR`, positive diagonal, zeros below) of every matrix of a
/// contiguous f64 `[b, n, n]` stack; an error when a pivot is not positive.
struct CholeskyUpper;

/// `R⁻¹` of every upper-triangular matrix of a contiguous f64 `[b, n, n]` stack.
struct UpperInverse;

fn f64_stack<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<(&'a [f64], usize, usize)> {
    let (CpuStorage::F64(x), &[b, n, m]) = (s, l.dims()) else {
        bail!("{op}: expected an f64 [b, n, n] stack, got {:?}", l.dims());
    };
    if n != m || !l.is_contiguous() {
        bail!(
            "{op}: expected a contiguous square stack, got {:?}",
            l.dims()
        );
    }
    Ok((&x[l.start_offset()..l.start_offset() + b * n * n], b, n))
}

/// The kernel's algorithm (`kernels/maps.cu`, `cholesky_upper_f64`) on one row-major matrix:
/// right-looking, row `j` scaled by its pivot, then the trailing upper triangle updated.
fn cholesky_in_place(a: &mut [f64], n: usize) -> std::result::Result<(), usize> {
    for j in 0..n {
        let pivot = a[j * n + j];
        // NaN fails `is_finite` too.
        if pivot <= 0.0 || !pivot.is_finite() {
            return Err(j);
        }
        let r = pivot.sqrt();
        a[j * n + j] = r;
        for c in j + 1..n {
            a[j * n + c] /= r;
        }
        for i in j + 1..n {
            let rji = a[j * n + i];
            for c in i..n {
                a[i * n + c] -= rji * a[j * n + c];
            }
        }
    }
    for i in 0..n {
        for c in 0..i {
            a[i * n + c] = 0.0;
        }
    }
    Ok(())
}

/// The kernel's algorithm (`upper_inverse_f64`): column `c` of `X = R⁻¹` by back-substitution.
fn upper_inverse(r: &[f64], x: &mut [f64], n: usize) {
    for c in 0..n {
        x[c * n + c] = 1.0 / r[c * n + c];
        for i in (0..c).rev() {
            let s: f64 = (i + 1..=c).map(|m| r[i * n + m] * x[m * n + c]).sum();
            x[i * n + c] = -s / r[i * n + i];
        }
    }
}

impl CustomOp1 for CholeskyUpper {
    fn name(&self) -> &'static str {
        "cholesky-upper"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b, n) = f64_stack(s, l, self.name())?;
        let mut out = x.to_vec();
        for (k, m) in out.chunks_mut(n * n).enumerate() {
            if let Err(j) = cholesky_in_place(m, n) {
                bail!("cholesky: matrix {k} is not positive definite (pivot {j})");
            }
        }
        Ok((CpuStorage::F64(out), Shape::from((b, n, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::cholesky_upper(s, l)
    }
}

impl CustomOp1 for UpperInverse {
    fn name(&self) -> &'static str {
        "upper-inverse"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, b, n) = f64_stack(s, l, self.name())?;
        let mut out = vec![0.0; b * n * n];
        for (rk, xk) in r.chunks(n * n).zip(out.chunks_mut(n * n)) {
            upper_inverse(rk, xk, n);
        }
        Ok((CpuStorage::F64(out), Shape::from((b, n, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::upper_inverse(s, l)
    }
}

/// Forward: `Q_gs` (computed beforehand, passed as the second argument) returned as the
/// result for `P`; backward: the closed form of `qr::backward` from `Q_gs` and `R⁻¹`, in candle
/// ops, so it runs where they live. Device-generic: the forward only copies storage.
struct WithQrGrad;

impl CustomOp3 for WithQrGrad {
    fn name(&self) -> &'static str {
        "gram-schmidt-cholesky-qr"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        q: &CpuStorage,
        ql: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((q.try_clone(ql)?, ql.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((q.try_clone(ql)?, ql.shape().clone()))
    }

    /// `∂L/∂A = (G_Q + Q·copyltu(M)) R⁻ᵀ`, `M = −G_Qᵀ Q`, with `A = Pᵀ`, `Q = Q_gsᵀ`,
    /// `G_Q = (∂L/∂Q_gs)ᵀ`.
    fn bwd(
        &self,
        p: &Tensor,
        q_gs: &Tensor,
        r_inv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = p.dim(1)?;
        let dev = p.device();
        let q = q_gs.to_dtype(DType::F64)?.t()?;
        let gq = grad.to_dtype(DType::F64)?.t()?;
        let m = gq.t()?.matmul(&q)?.neg()?;
        let lower = Tensor::tril2(d, DType::F64, dev)?;
        let strict = (&lower - Tensor::eye(d, DType::F64, dev)?)?;
        let copyltu = (m.broadcast_mul(&lower)? + m.broadcast_mul(&strict)?.t()?)?;
        let b = (gq + q.matmul(&copyltu)?)?;
        let da = b.matmul(&r_inv.t()?)?;
        Ok((Some(da.t()?.to_dtype(p.dtype())?), None, None))
    }
}
