//! The four exact orthogonal maps of OPT (spec §2.2–2.5, numerics §7) as differentiable candle
//! operations.
//!
//! candle has no LU, QR or SVD, so each map is a [`CustomOp1`] that runs on the CPU in f64 with
//! faer's blocked routines and returns the result in the input's dtype. The backward is the
//! closed form of the spec, also in f64 on the CPU; it reuses the factorisation the forward
//! kept (the op object lives exactly as long as the autograd graph that needs it).
//!
//! The op is the device seam for the maps (`crate::ops`): its `cuda_fwd` takes `P` through host
//! memory, factorises there and returns `Q` on the device; the backward does the same with
//! `∂L/∂Q`. Callers never move tensors themselves. A d×d round trip per layer and step is what
//! the GPU path pays for GS and HR until they run in cuSOLVER; Löwdin and Cayley on a GPU run
//! as Newton–Schulz iterations in candle ops on the device ([`polar_newton_schulz`],
//! [`cayley_newton_schulz`], tested against the exact maps here on the CPU).

mod cayley;
mod dense;
mod newton_schulz;
mod polar;
mod qr;
#[cfg(test)]
mod tests;

pub use newton_schulz::{
    cayley_newton_schulz, polar_newton_schulz, MAX_ITERS as NEWTON_SCHULZ_MAX_ITERS,
};

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use faer::{Mat, MatRef};
use std::sync::Mutex;

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
/// The work happens on the CPU in f64; on another device the op copies `P` to the host and `Q`
/// back (correct, not fast). Fails on a non-square or non-float input, non-finite entries, and a
/// (numerically) singular `P` for Gram–Schmidt / Householder.
pub fn orthogonalize(p: &Tensor, map: OrthMap) -> Result<Tensor> {
    let (rows, cols) = p.dims2()?;
    if rows != cols {
        bail!(
            "orthogonalize ({}): P must be square, got [{rows}, {cols}]",
            map.name()
        );
    }
    if !matches!(p.dtype(), DType::F32 | DType::F64) {
        bail!(
            "orthogonalize ({}): P must be f32 or f64, got {:?}",
            map.name(),
            p.dtype()
        );
    }
    // On a GPU, Löwdin and Cayley run where P lives (Newton–Schulz in candle ops); a P those
    // routes cannot finish takes the exact host route below rather than a worse rotation.
    if !p.device().is_cpu() {
        let on_device = match map {
            OrthMap::Lowdin => Some(polar_newton_schulz(p, newton_schulz::MAX_ITERS)),
            OrthMap::Cayley => Some(cayley_newton_schulz(p, newton_schulz::MAX_ITERS)),
            OrthMap::GramSchmidt | OrthMap::Householder => None,
        };
        if let Some(Ok(q)) = on_device {
            return Ok(q);
        }
    }
    p.apply_op1(OrthOp {
        map,
        factors: Mutex::new(None),
    })
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
    fn compute(map: OrthMap, p: MatRef<'_, f64>) -> Result<Self> {
        if let Some((i, j)) = (0..p.ncols()).find_map(|j| {
            (0..p.nrows())
                .find(|&i| !p[(i, j)].is_finite())
                .map(|i| (i, j))
        }) {
            bail!(
                "orthogonalize ({}): P[{i}, {j}] = {} is not finite",
                map.name(),
                p[(i, j)]
            );
        }
        Ok(match map {
            OrthMap::Cayley => Factors::Cayley(cayley::forward(p)?),
            OrthMap::GramSchmidt => Factors::GramSchmidt(qr::gram_schmidt(p)?),
            OrthMap::Householder => Factors::Householder(qr::householder(p)?),
            OrthMap::Lowdin => Factors::Lowdin(polar::forward(p)?),
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
    fn grad(&self, g: MatRef<'_, f64>) -> Result<Mat<f64>> {
        Ok(match self {
            Factors::Cayley(f) => cayley::backward(f, g),
            // Q_gs = Q_qrᵀ and A = Pᵀ: transpose G in and the result out.
            Factors::GramSchmidt(f) => qr::backward(f, g.transpose()).transpose().to_owned(),
            Factors::Householder(f) => qr::backward(f, g),
            Factors::Lowdin(f) => polar::backward(f, g)?,
        })
    }
}

struct OrthOp {
    map: OrthMap,
    factors: Mutex<Option<Factors>>,
}

impl OrthOp {
    fn lock_err(&self) -> candle_core::Error {
        candle_core::Error::msg(format!(
            "orthogonalize ({}): factor cache poisoned by an earlier panic",
            self.map.name()
        ))
    }
}

impl CustomOp1 for OrthOp {
    fn name(&self) -> &'static str {
        match self.map {
            OrthMap::Cayley => "orth-cayley",
            OrthMap::GramSchmidt => "orth-gram-schmidt",
            OrthMap::Householder => "orth-householder",
            OrthMap::Lowdin => "orth-lowdin",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = dense::mat_from_storage(storage, layout)?;
        let d = p.nrows();
        if p.ncols() != d {
            bail!("{}: P must be square, got {:?}", self.name(), layout.dims());
        }
        let dtype = match storage {
            CpuStorage::F64(_) => DType::F64,
            _ => DType::F32,
        };
        let f = Factors::compute(self.map, p.as_ref())?;
        let out = dense::mat_to_storage(f.q(), dtype)?;
        *self.factors.lock().map_err(|_| self.lock_err())? = Some(f);
        Ok((out, Shape::from((d, d))))
    }

    /// Through host memory: `P` down, the CPU factorisation, `Q` up.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let host = storage.to_cpu_storage()?;
        let (q, shape) = self.cpu_fwd(&host, layout)?;
        Ok((storage.device().storage_from_cpu_storage_owned(q)?, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = dense::mat_from_tensor(grad)?;
        let cache = self.factors.lock().map_err(|_| self.lock_err())?;
        let dp = match cache.as_ref() {
            Some(f) => f.grad(g.as_ref())?,
            // Not reached through `orthogonalize` (the forward always fills the cache).
            None => {
                let p = dense::mat_from_tensor(arg)?;
                Factors::compute(self.map, p.as_ref())?.grad(g.as_ref())?
            }
        };
        Ok(Some(dense::mat_to_tensor(
            dp.as_ref(),
            arg.dtype(),
            arg.device(),
        )?))
    }
}
