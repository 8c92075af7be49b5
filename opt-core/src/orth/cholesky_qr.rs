//! Gram–Schmidt and Householder for a device: the positive QR of `A = Pᵀ` (GS) or `A = P`
//! (HR) by Cholesky-QR2 in f64 — Gram matrices by batched matmul, their Cholesky factors and
//! triangular inverses by two small ops, HR's sign(det P) by a third (a CUDA kernel each; plain
//! loops on the CPU, the same algorithms, so the routes are tested here) — with the
//! closed-form backward of `qr::backward` in candle ops.
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
/// w.r.t. the stack by the closed form. Reads the device once (the orthogonality check).
pub fn gram_schmidt_cholesky_qr(ps: &Tensor) -> Result<Tensor> {
    let (q, r_inv) = positive_qr(&ps.detach().to_dtype(DType::F64)?.t()?, "Gram–Schmidt")?;
    check_orthogonal(&q, "Gram–Schmidt")?;
    // The map's output has the orthonormalised rows of P as rows: Qᵀ.
    let q_gs = q.t()?.contiguous()?.to_dtype(ps.dtype())?;
    ps.apply_op3(&q_gs, &r_inv, WithQrGrad { transposed: true })
}

/// `HR(P_k)` for a stack `[b, d, d]`: the positive QR's `Q` of `P` with its last column
/// negated where `sign(det P) ≠ (−1)^(d−1)` (what `qr::householder` computes; the sign comes
/// from an LU with partial pivoting, a third small kernel). Differentiable by the same closed
/// form, which holds for any fixed signs of diag(R). The signs stay on the device: a singular
/// `P` (sign 0) zeroes the last column, which the one read — the orthogonality check — refuses.
pub fn householder_cholesky_qr(ps: &Tensor) -> Result<Tensor> {
    let (b, d, _) = ps.dims3()?;
    let a = ps.detach().to_dtype(DType::F64)?.contiguous()?;
    let (q, r_inv) = positive_qr(&a, "Householder")?;
    let target = if d % 2 == 1 { 1.0 } else { -1.0 };
    // +1 keeps the last column, −1 negates it, 0 (singular) zeroes it.
    let last = (a.apply_op1_no_bwd(&DetSign)? * target)?.reshape((b, 1, 1))?;
    // Q·D and R⁻¹·D with D = diag(1, …, 1, ±1): column d − 1 of both.
    let flips = if d == 1 {
        last
    } else {
        Tensor::cat(
            &[Tensor::ones((b, 1, d - 1), DType::F64, ps.device())?, last],
            2,
        )?
    };
    let q = q.broadcast_mul(&flips)?;
    check_orthogonal(&q, "Householder")?;
    let r_inv = r_inv.broadcast_mul(&flips)?;
    ps.apply_op3(
        &q.to_dtype(ps.dtype())?,
        &r_inv,
        WithQrGrad { transposed: false },
    )
}

/// `(Q, R⁻¹)` of the positive QR of every matrix of `a` (`[b, d, d]`, f64) by Cholesky-QR2,
/// unchecked: a Cholesky breakdown leaves NaN in its matrix, which [`check_orthogonal`] reports.
fn positive_qr(a: &Tensor, map: &str) -> Result<(Tensor, Tensor)> {
    let (_, d, cols) = a.dims3()?;
    if d != cols {
        bail!("{map} (Cholesky-QR): P must be square, got {:?}", a.dims());
    }
    let a = a.contiguous()?;
    let (q1, r1_inv) = cholesky_qr_step(&a)?;
    let (q, r2_inv) = cholesky_qr_step(&q1)?;
    // A = Q·R2·R1, so R⁻¹ = R1⁻¹·R2⁻¹.
    Ok((q, r1_inv.matmul(&r2_inv)?))
}

/// The route's one read: an error unless every `‖QᵀQ − I‖_F` is below [`TOLERANCE`].
fn check_orthogonal(q: &Tensor, map: &str) -> Result<()> {
    let d = q.dim(1)?;
    let eye = Tensor::eye(d, DType::F64, q.device())?;
    let residual = q.t()?.matmul(q)?.broadcast_sub(&eye)?;
    let norms = residual.sqr()?.sum(2)?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
    for (k, n) in norms.iter().enumerate() {
        if n.is_nan() {
            bail!(
                "{map} (Cholesky-QR): Cholesky breakdown in matrix {k} (P too ill-conditioned \
                 or not finite)"
            );
        }
        if *n >= TOLERANCE {
            bail!(
                "{map} (Cholesky-QR): ‖QᵀQ − I‖_F = {n:.1e} in matrix {k}, above {TOLERANCE:.0e}"
            );
        }
    }
    Ok(())
}

/// `(Q, R⁻¹)` of one Cholesky-QR step of `a` (`[b, d, d]`, f64, contiguous).
fn cholesky_qr_step(a: &Tensor) -> Result<(Tensor, Tensor)> {
    let gram = a.t()?.matmul(a)?.contiguous()?;
    let r = gram.apply_op1_no_bwd(&CholeskyUpper)?;
    let r_inv = r.apply_op1_no_bwd(&UpperInverse)?;
    Ok((a.matmul(&r_inv)?, r_inv))
}

/// Upper Cholesky factor `R` (`G = RᵀR`, positive diagonal, zeros below) of every matrix of a
/// contiguous f64 `[b, n, n]` stack; a matrix whose pivot is not positive comes out all NaN (no
/// read of the device here: the route's one orthogonality check reports it).
struct CholeskyUpper;

/// `R⁻¹` of every upper-triangular matrix of a contiguous f64 `[b, n, n]` stack.
struct UpperInverse;

/// `sign(det A_k)` (`±1`, 0 when an LU pivot is exactly zero) of every matrix of a contiguous
/// f64 `[b, n, n]` stack, as a `[b]` f64 tensor.
struct DetSign;

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

/// The kernel's algorithm (`det_sign_f64`): LU with partial pivoting (the first largest
/// `|a_ij|` of the column), the sign of the pivots' product times the swaps' parity.
fn det_sign(a: &mut [f64], n: usize) -> f64 {
    let mut sign = 1.0;
    for j in 0..n {
        let p = (j..n).fold(j, |p, i| {
            if a[i * n + j].abs() > a[p * n + j].abs() {
                i
            } else {
                p
            }
        });
        let pivot = a[p * n + j];
        if pivot == 0.0 || !pivot.is_finite() {
            return 0.0;
        }
        if p != j {
            for c in 0..n {
                a.swap(j * n + c, p * n + c);
            }
            sign = -sign;
        }
        if pivot < 0.0 {
            sign = -sign;
        }
        for i in j + 1..n {
            let l = a[i * n + j] / pivot;
            for c in j + 1..n {
                a[i * n + c] -= l * a[j * n + c];
            }
        }
    }
    sign
}

impl CustomOp1 for DetSign {
    fn name(&self) -> &'static str {
        "det-sign"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b, n) = f64_stack(s, l, self.name())?;
        let mut work = x.to_vec();
        let signs = work.chunks_mut(n * n).map(|m| det_sign(m, n)).collect();
        Ok((CpuStorage::F64(signs), Shape::from(b)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::det_sign(s, l)
    }
}

impl CustomOp1 for CholeskyUpper {
    fn name(&self) -> &'static str {
        "cholesky-upper"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b, n) = f64_stack(s, l, self.name())?;
        let mut out = x.to_vec();
        for m in out.chunks_mut(n * n) {
            if cholesky_in_place(m, n).is_err() {
                m.fill(f64::NAN);
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

/// Forward: the map's output (computed beforehand, passed as the second argument) returned as
/// the result for `P`; backward: the closed form of `qr::backward` from it and `R⁻¹`, in candle
/// ops, so it runs where they live. Device-generic: the forward only copies storage.
/// `transposed`: the output is `Qᵀ` of the QR of `Pᵀ` (Gram–Schmidt), else `Q` of `P`.
struct WithQrGrad {
    transposed: bool,
}

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

    /// `∂L/∂A = (G_Q + Q·copyltu(M)) R⁻ᵀ`, `M = −G_Qᵀ Q`; for Gram–Schmidt `A = Pᵀ`,
    /// `Q = outᵀ`, `G_Q = (∂L/∂out)ᵀ`.
    fn bwd(
        &self,
        p: &Tensor,
        out: &Tensor,
        r_inv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = p.dim(1)?;
        let dev = p.device();
        let (mut q, mut gq) = (out.to_dtype(DType::F64)?, grad.to_dtype(DType::F64)?);
        if self.transposed {
            (q, gq) = (q.t()?, gq.t()?);
        }
        let m = gq.t()?.matmul(&q)?.neg()?;
        let lower = Tensor::tril2(d, DType::F64, dev)?;
        let strict = (&lower - Tensor::eye(d, DType::F64, dev)?)?;
        let copyltu = (m.broadcast_mul(&lower)? + m.broadcast_mul(&strict)?.t()?)?;
        let b = (gq + q.matmul(&copyltu)?)?;
        let da = b.matmul(&r_inv.t()?)?;
        let dp = if self.transposed { da.t()? } else { da };
        Ok((Some(dp.to_dtype(p.dtype())?), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The det-sign op (the kernel's algorithm) against faer's LU, on matrices of both signs
    /// and sizes across the pivot search's strides, and 0 for a singular matrix.
    #[test]
    fn det_sign_matches_faers_lu() -> Result<()> {
        let mut rng = crate::Rng::seed(8);
        for d in [1, 2, 5, 27, 130] {
            let mats: Vec<f64> = rng
                .normal_vec(4 * d * d, 1.0)
                .into_iter()
                .map(f64::from)
                .collect();
            let t = Tensor::from_vec(mats.clone(), (4, d, d), &Device::Cpu)?;
            let got = t.apply_op1_no_bwd(&DetSign)?.to_vec1::<f64>()?;
            for (k, &g) in got.iter().enumerate() {
                let m = &mats[k * d * d..(k + 1) * d * d];
                let a = faer::Mat::from_fn(d, d, |i, j| m[i * d + j]);
                let want = super::super::dense::Lu::factor(a, "test", faer::Par::Seq)?.det_sign();
                assert_eq!(g, want, "d = {d} k = {k}");
            }
        }
        let singular = Tensor::from_vec(vec![1.0, 2.0, 2.0, 4.0], (1, 2, 2), &Device::Cpu)?;
        assert_eq!(
            singular.apply_op1_no_bwd(&DetSign)?.to_vec1::<f64>()?,
            [0.0]
        );
        Ok(())
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;
    use candle_core::Device;

    /// A P whose Gram matrix has no Cholesky factor (zero, or not finite) is reported by the
    /// route's one read as a breakdown, for both maps.
    #[test]
    fn a_breakdown_is_reported_by_the_one_read() -> Result<()> {
        let d = 6;
        let zero = Tensor::zeros((1, d, d), DType::F64, &Device::Cpu)?;
        let mut values = crate::Rng::seed(4).normal_vec(d * d, 1.0);
        values[7] = f32::NAN;
        let nan = Tensor::from_vec(values, (1, d, d), &Device::Cpu)?.to_dtype(DType::F64)?;
        for p in [zero, nan] {
            for route in [gram_schmidt_cholesky_qr, householder_cholesky_qr] {
                let e = route(&p).unwrap_err().to_string();
                assert!(e.contains("Cholesky breakdown in matrix 0"), "{e}");
            }
        }
        Ok(())
    }
}
