//! The maps of many layers at once: `Q_k = orth(P_k)` for a stack `[b, d, d]`, one
//! differentiable op, so a network's five 576×576 rotations are one call rather than five.
//!
//! On the CPU every matrix is factorised by the same f64 code as a lone layer; the batch only
//! decides *where the threads go*. With two or more matrices they run concurrently on rayon's
//! pool, each with faer's sequential kernels: at d = 576 and 1024 on 2 threads, faer's own
//! parallelism gains nothing for QR/SVD/LU (measured: QR 21 ms sequential vs 26 ms on 2
//! threads at d = 576), while independent layers scale. A lone matrix keeps faer's
//! parallelism (what it had before batching), so a one-layer group computes bit for bit what
//! the per-layer op did. Each matrix's result depends only on the matrix and that choice, never
//! on scheduling, so runs stay reproducible.

use super::{dense, Factors, OrthMap};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use faer::{Mat, Par};
use std::sync::Mutex;

/// `Q_k = orth(P_k)` for every matrix of a `[b, d, d]` stack (f32 or f64, any device) by the
/// exact f64 factorisations on the host, differentiable w.r.t. the stack. (Which route a network's
/// maps take is chosen in the ops seam, not here.)
/// Fails on a non-square or non-float input, non-finite entries, and a (numerically) singular
/// `P_k` for Gram–Schmidt / Householder.
pub fn orthogonalize_batched(ps: &Tensor, map: OrthMap) -> Result<Tensor> {
    check_stack(ps, map)?;
    ps.apply_op1(OrthBatchOp {
        map,
        factors: Mutex::new(Vec::new()),
    })
}

/// An error unless `ps` is a `[b, d, d]` stack of f32 or f64.
pub fn check_stack(ps: &Tensor, map: OrthMap) -> Result<()> {
    let (_, rows, cols) = ps.dims3()?;
    if rows != cols {
        bail!(
            "orthogonalize ({}): P must be square, got [{rows}, {cols}]",
            map.name()
        );
    }
    if !matches!(ps.dtype(), DType::F32 | DType::F64) {
        bail!(
            "orthogonalize ({}): P must be f32 or f64, got {:?}",
            map.name(),
            ps.dtype()
        );
    }
    Ok(())
}

/// `orth(P_k)` for equally shaped matrices by the exact route, as one batch.
pub fn orthogonalize_each(ps: &[Tensor], map: OrthMap) -> Result<Vec<Tensor>> {
    if ps.is_empty() {
        return Ok(Vec::new());
    }
    let q = orthogonalize_batched(&Tensor::stack(ps, 0)?, map)?;
    (0..ps.len()).map(|k| q.get(k)).collect()
}

/// Runs `f(k, par)` for every matrix `k < b`: concurrently with sequential faer kernels for a
/// batch, with faer's parallelism for a lone matrix (see the module comment). Results keep
/// their order.
pub(super) fn per_matrix<R: Send>(
    b: usize,
    d: usize,
    f: impl Fn(usize, Par) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    largest_first(&vec![d; b], f)
}

/// Runs `f(k, par)` for matrices of sizes `dims[k]`: a lone matrix with faer's parallelism,
/// several on a queue that the pool's threads take from, largest first, each with sequential
/// kernels. Largest first is the classic greedy schedule (within 4⁄3 of the best): CNN-6's
/// 1024×1024 map runs on one thread while the other takes the five 576×576 ones, where rayon's
/// halving split would put the large one and two others on the same thread.
///
/// A matrix larger than all others also gets faer's parallelism: its kernels fork, the other
/// threads keep to the queue while it has work, and a thread that finds it empty joins the
/// scope's wait and steals the large matrix's remaining parallel work (measured at CNN-6 width
/// 64, GS: the forward's critical path was the 1024×1024 map alone on one thread). Each
/// matrix's result depends on its inputs and these (size-only) choices, never on which thread
/// took it. Results keep their order.
pub(super) fn largest_first<R: Send>(
    dims: &[usize],
    f: impl Fn(usize, Par) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    match dims {
        [] => return Ok(Vec::new()),
        [d] => return Ok(vec![f(0, dense::par_for(*d))?]),
        _ => {}
    }
    let mut order: Vec<usize> = (0..dims.len()).collect();
    // Stable: equal sizes keep their order, so the schedule is the same on every run.
    order.sort_by_key(|&k| std::cmp::Reverse(dims[k]));
    let giant = (dims[order[0]] > dims[order[1]]).then_some(order[0]);
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<R>>>> = dims.iter().map(|_| Mutex::new(None)).collect();
    let workers = rayon::current_num_threads().clamp(1, dims.len());
    rayon::scope(|s| {
        for _ in 0..workers {
            s.spawn(|_| {
                while let Some(&k) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let par = if Some(k) == giant {
                        dense::par_for(dims[k])
                    } else {
                        Par::Seq
                    };
                    let result = f(k, par);
                    if let Ok(mut slot) = results[k].lock() {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .enumerate()
        .map(|(k, slot)| {
            slot.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| bail!("matrix {k}: its computation panicked"))
        })
        .collect()
}

struct OrthBatchOp {
    map: OrthMap,
    /// Each matrix's factorisation, kept from the forward for the backward (the op object lives
    /// exactly as long as the autograd graph that needs it).
    factors: Mutex<Vec<Factors>>,
}

impl OrthBatchOp {
    fn lock_err(&self) -> candle_core::Error {
        candle_core::Error::msg(format!(
            "orthogonalize ({}): factor cache poisoned by an earlier panic",
            self.map.name()
        ))
    }
}

impl CustomOp1 for OrthBatchOp {
    fn name(&self) -> &'static str {
        match self.map {
            OrthMap::Cayley => "orth-cayley",
            OrthMap::GramSchmidt => "orth-gram-schmidt",
            OrthMap::Householder => "orth-householder",
            OrthMap::Lowdin => "orth-lowdin",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let ps = dense::mats_from_storage(storage, layout)?;
        let dtype = match storage {
            CpuStorage::F64(_) => DType::F64,
            _ => DType::F32,
        };
        let &[b, d, _] = layout.dims() else {
            bail!(
                "{}: expected [b, d, d], got {:?}",
                self.name(),
                layout.dims()
            );
        };
        let factors = per_matrix(b, d, |k, par| {
            Factors::compute(self.map, ps[k].as_ref(), par)
        })?;
        let out = dense::mats_to_storage(factors.iter().map(Factors::q), dtype)?;
        *self.factors.lock().map_err(|_| self.lock_err())? = factors;
        Ok((out, Shape::from((b, d, d))))
    }

    /// Through host memory: the stack down, the CPU factorisations, `Q` up (the exact route on a
    /// GPU, and the fallback of its gemm routes).
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
        let gs = dense::mats_from_tensor(grad)?;
        let (b, d, _) = arg.dims3()?;
        let cache = self.factors.lock().map_err(|_| self.lock_err())?;
        // Not reached through `orthogonalize_batched` (the forward always fills the cache).
        let recomputed;
        let factors: &[Factors] = if cache.len() == b {
            &cache
        } else {
            let ps = dense::mats_from_tensor(arg)?;
            recomputed = per_matrix(b, d, |k, par| {
                Factors::compute(self.map, ps[k].as_ref(), par)
            })?;
            &recomputed
        };
        let dps: Vec<Mat<f64>> = per_matrix(b, d, |k, par| factors[k].grad(gs[k].as_ref(), par))?;
        Ok(Some(dense::mats_to_tensor(
            &dps,
            arg.dtype(),
            arg.device(),
        )?))
    }
}
