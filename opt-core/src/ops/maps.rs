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
    routed(ps, map, || orth::orthogonalize_batched(ps, map), Ok)
}

/// The route the device's table names for a batch of `map`: `exact()`, or the gemm route's `Q`
/// through `from_q`; a gemm batch that fails is computed by `exact()` and leaves a
/// [`MapFallback`] for the run's record.
fn routed(
    ps: &Tensor,
    map: OrthMap,
    exact: impl Fn() -> Result<Tensor>,
    from_q: impl Fn(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let table = routes::routes(ps.device());
    match table.map_route_at(map, ps.dim(1)?) {
        MapRoute::Exact => exact(),
        route => match gemm_route(ps, map, &table) {
            Ok(q) => from_q(q),
            Err(e) => {
                table.record_fallback(MapFallback {
                    map,
                    route,
                    reason: e.to_string(),
                });
                exact()
            }
        },
    }
}

/// `W_k = orth(P_k)·W0_k` for a `[b, d, d]` stack of `P` and a `[b, d, n]` stack of `W0`, by
/// the route the device's table names for `map`: the exact route fused (`orth::rotate_batched`,
/// the rotation never formed), a gemm route as its `Q` times `W0`.
pub fn rotate_batched(ps: &Tensor, w0s: &Tensor, map: OrthMap) -> Result<Tensor> {
    orth::check_pair(ps, w0s, map)?;
    routed(
        ps,
        map,
        || orth::rotate_batched(ps, w0s, map),
        |q| q.matmul(w0s),
    )
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

/// Equally shaped layers that share a map: their rotations `orth(P_k)`, or, where each has its
/// `W0`, their weights `orth(P_k)·W0_k` (all of a group alike).
pub struct MapGroup {
    pub map: OrthMap,
    pub ps: Vec<Tensor>,
    pub w0s: Option<Vec<Tensor>>,
}

/// Each group's results as one batch ([`orthogonalize_batched`] or [`rotate_batched`]), the
/// results in order, each differentiable w.r.t. its own inputs.
fn map_group(group: &MapGroup) -> Result<Vec<Tensor>> {
    if group.ps.is_empty() {
        return Ok(Vec::new());
    }
    let ps = Tensor::stack(&group.ps, 0)?;
    let out = match &group.w0s {
        Some(w0s) => rotate_batched(&ps, &Tensor::stack(w0s, 0)?, group.map)?,
        None => orthogonalize_batched(&ps, group.map)?,
    };
    (0..group.ps.len()).map(|k| out.get(k)).collect()
}

/// [`map_group`] of several groups (each its own map and size). On the CPU every group of
/// weights whose size takes the exact route joins one ragged op per (map, dtype)
/// ([`orth::rotate_ragged`]): its matrices of all sizes are scheduled together, forward and
/// backward, largest first — CNN-6's lone 1024×1024 `fc6` on one thread, the five 576×576
/// layers on the other. The other groups run concurrently. On a GPU one after the other: its
/// work is queued asynchronously anyway, and candle's CUDA ops are issued from the caller's
/// thread. Each matrix's result does not depend on the grouping or the scheduling.
pub fn map_groups(groups: &[MapGroup]) -> Result<Vec<Vec<Tensor>>> {
    let on_cpu = groups
        .iter()
        .flat_map(|g| g.ps.first())
        .all(|p| p.device().is_cpu());
    if !on_cpu {
        return groups.iter().map(map_group).collect();
    }
    let mut results: Vec<Option<Vec<Tensor>>> = vec![None; groups.len()];
    for (members, map) in ragged_partitions(groups)? {
        let mut ps = Vec::new();
        let mut w0s = Vec::new();
        for &g in &members {
            ps.extend(groups[g].ps.iter().cloned());
            w0s.extend(groups[g].w0s.iter().flatten().cloned());
        }
        let mut ws = orth::rotate_ragged(&ps, &w0s, map)?.into_iter();
        for &g in &members {
            results[g] = Some(ws.by_ref().take(groups[g].ps.len()).collect());
        }
    }
    let rest: Vec<usize> = (0..groups.len())
        .filter(|&g| results[g].is_none())
        .collect();
    let computed: Vec<Vec<Tensor>> = rest
        .par_iter()
        .map(|&g| map_group(&groups[g]))
        .collect::<Result<_>>()?;
    for (g, r) in rest.into_iter().zip(computed) {
        results[g] = Some(r);
    }
    Ok(results.into_iter().map(Option::unwrap_or_default).collect())
}

/// The weight groups (`W0` given, the exact route at their size) as partitions of one map and
/// dtype, each partition's groups in order.
fn ragged_partitions(groups: &[MapGroup]) -> Result<Vec<(Vec<usize>, OrthMap)>> {
    let mut partitions: Vec<((OrthMap, candle_core::DType), Vec<usize>)> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let Some(p) = group.ps.first() else { continue };
        let exact =
            routes::routes(p.device()).map_route_at(group.map, p.dim(0)?) == MapRoute::Exact;
        if group.w0s.is_none() || !exact {
            continue;
        }
        let key = (group.map, p.dtype());
        match partitions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(g),
            None => partitions.push((key, vec![g])),
        }
    }
    Ok(partitions
        .into_iter()
        .map(|((map, _), members)| (members, map))
        .collect())
}
