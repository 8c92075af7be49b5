//! The fused rotation as one candle op over *ragged* layers: `W_k = orth(P_k)·W0_k` for
//! matrices of different sizes (`P_k` is `d_k×d_k`, `W0_k` is `d_k×n_k`), packed one after
//! the other in two flat tensors. A network's rotations of every size are then one op, forward
//! and backward, and its matrices are scheduled largest first on the pool
//! ([`largest_first`](super::batch::largest_first)): CNN-6's 1024×1024 `fc6` on one thread
//! while the other takes the five 576×576 convolutions. One op per size would compute each
//! size's backward alone, with the other thread idle or split inside a single factorisation.
//!
//! The math is `super::rotate`'s; this file is the op's packing, scheduling and dtypes.

use super::batch::largest_first;
use super::dense::{self, RowMajorOut};
use super::explicit_qr::orthogonality_tolerance;
use super::rotate::Factors;
use super::OrthMap;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use faer::{Mat, MatMut, Par};
use std::sync::Mutex;

/// `W_k = orth(P_k)·W0_k` for a `[b, d, d]` stack of `P` and a `[b, d, n]` stack of `W0` (same
/// float dtype and device), differentiable w.r.t. both, by the exact f64 factorisations.
pub fn rotate_batched(ps: &Tensor, w0s: &Tensor, map: OrthMap) -> Result<Tensor> {
    check_pair(ps, w0s, map)?;
    let (b, d, n) = w0s.dims3()?;
    let out = apply(
        &ps.flatten_all()?,
        &w0s.flatten_all()?,
        vec![(d, n); b],
        map,
    )?;
    out.reshape((b, d, n))
}

/// An error unless `ps` is `[b, d, d]` and `w0s` `[b, d, n]` of one float dtype.
pub fn check_pair(ps: &Tensor, w0s: &Tensor, map: OrthMap) -> Result<()> {
    super::check_stack(ps, map)?;
    let (b, d, _) = ps.dims3()?;
    let (bw, dw, _) = w0s.dims3()?;
    if (bw, dw) != (b, d) || w0s.dtype() != ps.dtype() {
        bail!(
            "rotate ({}): W0 must be [{b}, {d}, n] of {:?}, got {:?} of {:?}",
            map.name(),
            ps.dtype(),
            w0s.dims(),
            w0s.dtype()
        );
    }
    Ok(())
}

/// `W_k = orth(P_k)·W0_k` for every pair (`P_k` square `[d_k, d_k]`, `W0_k` `[d_k, n_k]`, one
/// float dtype and device for all), as one op: differentiable w.r.t. every `P_k` and `W0_k`,
/// by the exact f64 factorisations.
pub fn rotate_ragged(ps: &[Tensor], w0s: &[Tensor], map: OrthMap) -> Result<Vec<Tensor>> {
    if ps.len() != w0s.len() {
        bail!(
            "rotate ({}): {} matrices P but {} W0",
            map.name(),
            ps.len(),
            w0s.len()
        );
    }
    let Some(first) = ps.first() else {
        return Ok(Vec::new());
    };
    let mut shapes = Vec::with_capacity(ps.len());
    for (p, w0) in ps.iter().zip(w0s) {
        check_pair(&p.unsqueeze(0)?, &w0.unsqueeze(0)?, map)?;
        if p.dtype() != first.dtype() || !p.device().same_device(first.device()) {
            bail!(
                "rotate ({}): every P must share one dtype and device, got {:?} on {:?} beside {:?} on {:?}",
                map.name(),
                p.dtype(),
                p.device(),
                first.dtype(),
                first.device()
            );
        }
        shapes.push(w0.dims2()?);
    }
    let flat = |ts: &[Tensor]| -> Result<Tensor> {
        let parts = ts
            .iter()
            .map(|t| t.flatten_all())
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    };
    let out = apply(&flat(ps)?, &flat(w0s)?, shapes.clone(), map)?;
    let mut offset = 0;
    shapes
        .iter()
        .map(|&(d, n)| {
            let w = out.narrow(0, offset, d * n)?.reshape((d, n));
            offset += d * n;
            w
        })
        .collect()
}

/// The op on packed inputs: `ps` holds the row-major `P_k` one after the other, `w0s` the
/// `W0_k`, `shapes[k] = (d_k, n_k)`; the result is packed as `w0s` is.
pub(super) fn apply(
    ps: &Tensor,
    w0s: &Tensor,
    shapes: Vec<(usize, usize)>,
    map: OrthMap,
) -> Result<Tensor> {
    let p_len: usize = shapes.iter().map(|&(d, _)| d * d).sum();
    let w_len: usize = shapes.iter().map(|&(d, n)| d * n).sum();
    if ps.dims() != [p_len] || w0s.dims() != [w_len] {
        bail!(
            "rotate ({}): packed inputs of {:?} and {:?} do not hold shapes {shapes:?}",
            map.name(),
            ps.dims(),
            w0s.dims()
        );
    }
    ps.contiguous()?
        .apply_op2(&w0s.contiguous()?, RotateOp::new(map, shapes))
}

/// One matrix's state from the forward, for the backward.
struct Saved {
    factors: Factors,
    w0: Mat<f64>,
    w: Mat<f64>,
}

struct RotateOp {
    map: OrthMap,
    shapes: Vec<(usize, usize)>,
    saved: Mutex<Vec<Saved>>,
}

/// Where each matrix starts in a packed tensor whose `k`-th matrix has `len(k)` entries.
fn offsets(count: usize, len: impl Fn(usize) -> usize) -> Vec<usize> {
    (0..count)
        .scan(0, |at, k| {
            let start = *at;
            *at += len(k);
            Some(start)
        })
        .collect()
}

/// The packed, contiguous values of an f32 or f64 storage, each read as f64 where it is used
/// (no intermediate f64 copy of the whole pack).
enum Packed<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl<'a> Packed<'a> {
    fn of(storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("rotate: packed input is not contiguous");
        };
        Ok(match storage {
            CpuStorage::F32(x) => Self::F32(&x[start..end]),
            CpuStorage::F64(x) => Self::F64(&x[start..end]),
            _ => bail!("rotate: expected f32 or f64"),
        })
    }

    fn at(&self, i: usize) -> f64 {
        match self {
            Self::F32(x) => f64::from(x[i]),
            Self::F64(x) => x[i],
        }
    }
}

impl RotateOp {
    fn new(map: OrthMap, shapes: Vec<(usize, usize)>) -> Self {
        Self {
            map,
            shapes,
            saved: Mutex::new(Vec::new()),
        }
    }

    fn lock_err(&self) -> candle_core::Error {
        candle_core::Error::msg(format!(
            "rotate ({}): factor cache poisoned by an earlier panic",
            self.map.name()
        ))
    }

    fn dims(&self) -> Vec<usize> {
        self.shapes.iter().map(|&(d, _)| d).collect()
    }

    /// `(Pᵀ_k, W0_k)` in f64 from the packed values: a row-major `P` read in memory order is
    /// `Pᵀ` in column-major form.
    fn unpack(&self, ps: &Packed<'_>, w0s: &Packed<'_>) -> (Vec<Mat<f64>>, Vec<Mat<f64>>) {
        let k_count = self.shapes.len();
        let p_at = offsets(k_count, |k| self.shapes[k].0 * self.shapes[k].0);
        let w_at = offsets(k_count, |k| self.shapes[k].0 * self.shapes[k].1);
        let pts = (0..k_count)
            .map(|k| {
                let (d, at) = (self.shapes[k].0, p_at[k]);
                Mat::from_fn(d, d, |j, i| ps.at(at + i * d + j))
            })
            .collect();
        let w0s = (0..k_count)
            .map(|k| {
                let ((d, n), at) = (self.shapes[k], w_at[k]);
                Mat::from_fn(d, n, |i, j| w0s.at(at + i * n + j))
            })
            .collect();
        (pts, w0s)
    }

    fn forward(&self, pts: &[Mat<f64>], w0s: Vec<Mat<f64>>, dtype: DType) -> Result<Vec<Saved>> {
        let computed = largest_first(&self.dims(), |k, par| {
            let tol = orthogonality_tolerance(dtype, pts[k].nrows());
            Factors::forward(self.map, &pts[k], w0s[k].as_ref(), tol, par)
        })?;
        Ok(computed
            .into_iter()
            .zip(w0s)
            .map(|((factors, w), w0)| Saved { factors, w0, w })
            .collect())
    }

    /// `(∂P, ∂W0)` packed, from the packed `∂L/∂W` values.
    fn backward(
        &self,
        saved: &[Saved],
        grad: &[f64],
        dtype: DType,
    ) -> Result<(CpuStorage, CpuStorage)> {
        let k_count = self.shapes.len();
        let g_at = offsets(k_count, |k| self.shapes[k].0 * self.shapes[k].1);
        let per_matrix = |k: usize, dp: RowMajorOut<'_>, par: Par| {
            let ((d, n), at) = (self.shapes[k], g_at[k]);
            let g = Mat::from_fn(d, n, |i, j| grad[at + i * n + j]);
            let s = &saved[k];
            s.factors
                .backward(s.w0.as_ref(), s.w.as_ref(), g.as_ref(), dp, par)
        };
        let dims = self.dims();
        let (dps, dw0s) = match dtype {
            DType::F64 => {
                let (dp, dw0s) = packed_outputs::<f64, _>(&dims, |k, m, par| {
                    per_matrix(k, RowMajorOut::F64(m), par)
                })?;
                (CpuStorage::F64(dp), dw0s)
            }
            _ => {
                let (dp, dw0s) = packed_outputs::<f32, _>(&dims, |k, m, par| {
                    per_matrix(k, RowMajorOut::F32(m), par)
                })?;
                (CpuStorage::F32(dp), dw0s)
            }
        };
        let dw0 = dense::mats_to_storage(dw0s.iter().map(|m| m.as_ref()), dtype)?;
        Ok((dps, dw0))
    }
}

/// A packed buffer of the square `dims[k]×dims[k]` matrices, each written in place by
/// `f(k, slot, par)` on the [`largest_first`] schedule; `f`'s results in order.
fn packed_outputs<T, R>(
    dims: &[usize],
    f: impl Fn(usize, MatMut<'_, T>, Par) -> Result<R> + Sync,
) -> Result<(Vec<T>, Vec<R>)>
where
    T: Copy + Default + Send,
    R: Send,
{
    let mut data = vec![T::default(); dims.iter().map(|d| d * d).sum()];
    let mut slots = Vec::with_capacity(dims.len());
    let mut rest = data.as_mut_slice();
    for &d in dims {
        let (slot, tail) = rest.split_at_mut(d * d);
        slots.push(Mutex::new(Some(slot)));
        rest = tail;
    }
    let results = largest_first(dims, |k, par| {
        let Some(slot) = slots[k].lock().ok().and_then(|mut s| s.take()) else {
            bail!("rotate: output slot {k} taken twice");
        };
        f(
            k,
            MatMut::from_row_major_slice_mut(slot, dims[k], dims[k]),
            par,
        )
    })?;
    Ok((data, results))
}

impl CustomOp2 for RotateOp {
    fn name(&self) -> &'static str {
        match self.map {
            OrthMap::Cayley => "rotate-cayley",
            OrthMap::GramSchmidt => "rotate-gram-schmidt",
            OrthMap::Householder => "rotate-householder",
            OrthMap::Lowdin => "rotate-lowdin",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dtype = match s1 {
            CpuStorage::F64(_) => DType::F64,
            _ => DType::F32,
        };
        let (pts, w0s) = self.unpack(&Packed::of(s1, l1)?, &Packed::of(s2, l2)?);
        let saved = self.forward(&pts, w0s, dtype)?;
        let out = dense::mats_to_storage(saved.iter().map(|s| s.w.as_ref()), dtype)?;
        *self.saved.lock().map_err(|_| self.lock_err())? = saved;
        Ok((out, Shape::from(l2.dims())))
    }

    /// Through host memory, as the exact maps do (see `batch`).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let (w, shape) = self.cpu_fwd(&s1.to_cpu_storage()?, l1, &s2.to_cpu_storage()?, l2)?;
        Ok((s1.device().storage_from_cpu_storage_owned(w)?, shape))
    }

    fn bwd(
        &self,
        p: &Tensor,
        w0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let host = |t: &Tensor| -> Result<Vec<f64>> {
            t.to_device(&candle_core::Device::Cpu)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()
        };
        let g = host(grad)?;
        let cache = self.saved.lock().map_err(|_| self.lock_err())?;
        // Not reached through `apply` (the forward always fills the cache).
        let recomputed;
        let saved: &[Saved] = if cache.len() == self.shapes.len() {
            &cache
        } else {
            let (pts, w0s) = self.unpack(&Packed::F64(&host(p)?), &Packed::F64(&host(w0)?));
            recomputed = self.forward(&pts, w0s, p.dtype())?;
            &recomputed
        };
        let (dp, dw0) = self.backward(saved, &g, p.dtype())?;
        let to_tensor = |storage: CpuStorage, like: &Tensor| -> Result<Tensor> {
            let t = match storage {
                CpuStorage::F32(v) => Tensor::from_vec(v, like.dims(), &candle_core::Device::Cpu)?,
                CpuStorage::F64(v) => Tensor::from_vec(v, like.dims(), &candle_core::Device::Cpu)?,
                _ => bail!("rotate: gradients are f32 or f64"),
            };
            t.to_device(like.device())
        };
        Ok((Some(to_tensor(dp, p)?), Some(to_tensor(dw0, w0)?)))
    }
}
