//! The orthogonal maps as the network reaches them: each batch takes the route the device's
//! table names (`super::routes`) — the exact host factorisations, or a gemm route where the
//! tensors live (Newton–Schulz for LS/CP, Cholesky-QR2 for GS/HR) — and a batch a gemm route
//! cannot finish takes the exact route, leaving a [`MapFallback`](super::routes::MapFallback)
//! for the run's record. The algorithms live in `crate::orth`; only the choice is made here.

use super::routes::{self, DeviceRoutes, MapFallback, MapRoute};
use crate::orth::{self, OrthMap};
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// `Q = orth(P)` for a square `P` (`[d, d]`, f32 or f64, any device), differentiable w.r.t. `P`:
/// a batch of one of [`orthogonalize_batched`].
pub fn orthogonalize(p: &Tensor, map: OrthMap) -> Result<Tensor> {
    // A 2-D P becomes a stack of one; `orth::check_stack` refuses a non-square one.
    p.dims2()?;
    orthogonalize_batched(&p.unsqueeze(0)?, map)?.squeeze(0)
}

/// `Q_k = orth(P_k)` for every matrix of a `[b, d, d]` stack, by the route the device's table
/// names for `map`.
pub fn orthogonalize_batched(ps: &Tensor, map: OrthMap) -> Result<Tensor> {
    orth::check_stack(ps, map)?;
    let table = routes::routes(ps.device());
    match table.map_route(map) {
        MapRoute::Exact => orth::orthogonalize_batched(ps, map),
        route => match gemm_route(ps, map, &table) {
            Ok(q) => Ok(q),
            Err(e) => {
                table.record_fallback(MapFallback {
                    map,
                    route,
                    reason: e.to_string(),
                });
                orth::orthogonalize_batched(ps, map)
            }
        },
    }
}

/// Newton–Schulz iterations run past the last batch's count before the residuals are read.
const ITERATION_MARGIN: usize = 1;

/// `map`'s gemm route for the stack, with the device read once when the iteration count of the
/// last batch of the same shape still suffices.
pub fn gemm_route(ps: &Tensor, map: OrthMap, table: &DeviceRoutes) -> Result<Tensor> {
    fail::fail_point!("ops::map_route", |a: Option<String>| candle_core::bail!(
        "injected failure (failpoint ops::map_route{})",
        a.map(|a| format!(", {a}")).unwrap_or_default()
    ));
    let (b, d, _) = ps.dims3()?;
    let key = (map, d, b);
    let iterations = orth::NewtonSchulzIterations {
        first_read: table
            .iterations_hint(key)
            .map(|n| n + ITERATION_MARGIN)
            .unwrap_or(orth::NEWTON_SCHULZ_FIRST_READ),
        max: orth::NEWTON_SCHULZ_MAX_ITERS,
    };
    let (q, needed) = match map {
        OrthMap::Lowdin => orth::polar_newton_schulz_scheduled(ps, iterations)?,
        OrthMap::Cayley => orth::cayley_newton_schulz_scheduled(ps, iterations)?,
        OrthMap::GramSchmidt => return orth::gram_schmidt_cholesky_qr(ps),
        OrthMap::Householder => return orth::householder_cholesky_qr(ps),
    };
    table.set_iterations_hint(key, needed);
    Ok(q)
}

/// `orth(P_k)` for equally shaped matrices, computed as one batch; the results keep their
/// order and each is differentiable w.r.t. its own `P_k`.
pub fn orthogonalize_each(ps: &[Tensor], map: OrthMap) -> Result<Vec<Tensor>> {
    if ps.is_empty() {
        return Ok(Vec::new());
    }
    let q = orthogonalize_batched(&Tensor::stack(ps, 0)?, map)?;
    (0..ps.len()).map(|k| q.get(k)).collect()
}

/// [`orthogonalize_each`] of several groups (each its own map and size), concurrently on the
/// CPU — a lone large matrix then runs beside another group's batch instead of after it; each
/// matrix's result does not depend on the scheduling. On a GPU one after the other: its work is
/// queued asynchronously anyway, and candle's CUDA ops are issued from the caller's thread.
pub fn orthogonalize_groups(groups: &[(Vec<Tensor>, OrthMap)]) -> Result<Vec<Vec<Tensor>>> {
    let on_cpu = groups
        .iter()
        .flat_map(|(ps, _)| ps.first())
        .all(|p| p.device().is_cpu());
    let each = |(ps, map): &(Vec<Tensor>, OrthMap)| orthogonalize_each(ps, *map);
    if on_cpu {
        groups.par_iter().map(each).collect()
    } else {
        groups.iter().map(each).collect()
    }
}
