//! The rotations of one forward pass, computed by the network and handed to each layer
//! explicitly: every layer's exact map in one batched op per (size, dtype, map) group
//! ([`map_groups`]) instead of one op per layer — CNN-6's five 576×576 rotations are one call.
//! A request that carries the layer's `W0` gets the weight `W = orth(P)·W0` from the fused op
//! ([`rotate_batched`](crate::ops::rotate_batched)), which never forms the `d×d` rotation; one
//! without gets `orth(P)`.
//!
//! A layer says what it needs ([`KernelSource::rotation_requests`]: its `P` matrices and their
//! maps, each under a [`RotationKey`]); `Network::forward` gathers the requests of all its
//! layers, computes them ([`crate::layers::forward_rotations`]) and passes the result down to every layer's
//! kernel. A layer asked outside a forward (metrics, export, S-OPT merges) gets an empty
//! context ([`Rotations::none`]) and computes its rotation alone — by the same code, so the
//! values are the same.
//!
//! Why a context per forward rather than a cache keyed on `P`: `P` changes in place (optimizer
//! steps, checkpoint restores, episode resets), and reading it back to compare would cost a
//! device read per layer. Within one forward nothing changes `P`, and the context lives no
//! longer than that forward.
//!
//! [`KernelSource::rotation_requests`]: crate::layers::KernelSource::rotation_requests

use crate::ops::{map_groups, MapGroup, OrthMap};
use crate::Result;
use candle_core::{DType, Tensor, TensorId, Var};
use std::collections::HashMap;

/// Names one requested rotation: the parameter it is computed from and, for a parameter that
/// holds a stack of matrices (block-diagonal layers), the matrix's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RotationKey {
    param: TensorId,
    index: usize,
    /// The weight `orth(P)·W0` rather than the rotation.
    weight: bool,
}

impl RotationKey {
    /// The rotation of the `index`-th matrix held by `param` (0 for a lone matrix).
    pub fn new(param: &Var, index: usize) -> Self {
        Self {
            param: param.as_tensor().id(),
            index,
            weight: false,
        }
    }
}

/// One exact map a layer needs: `map(p)` for a square `p`, or with `w0` the weight
/// `map(p)·w0`.
#[derive(Debug, Clone)]
pub struct RotationRequest {
    pub key: RotationKey,
    pub p: Tensor,
    pub map: OrthMap,
    pub w0: Option<Tensor>,
}

/// `(d, n of W0 or none, dtype, map)`: the requests one batched op can take.
type GroupKey = (usize, Option<usize>, DType, OrthMap);

impl RotationRequest {
    /// `map` of the lone matrix `param`.
    pub fn of(param: &Var, map: OrthMap) -> Self {
        Self {
            key: RotationKey::new(param, 0),
            p: param.as_tensor().clone(),
            map,
            w0: None,
        }
    }

    /// The weight `map(param)·w0` of a lone matrix `param`, fused.
    pub fn weight_of(param: &Var, w0: &Var, map: OrthMap) -> Self {
        Self {
            key: RotationKey {
                weight: true,
                ..RotationKey::new(param, 0)
            },
            p: param.as_tensor().clone(),
            map,
            w0: Some(w0.as_tensor().clone()),
        }
    }

    fn group(&self) -> GroupKey {
        (
            self.p.dims().first().copied().unwrap_or(0),
            self.w0
                .as_ref()
                .map(|w0| w0.dims().get(1).copied().unwrap_or(0)),
            self.p.dtype(),
            self.map,
        )
    }
}

/// The requests `members` of one group as a batch.
fn map_group(requests: &[RotationRequest], members: &[usize], map: OrthMap) -> MapGroup {
    MapGroup {
        map,
        ps: members.iter().map(|&k| requests[k].p.clone()).collect(),
        // All of a group alike (the group key says whether they carry W0).
        w0s: members.iter().map(|&k| requests[k].w0.clone()).collect(),
    }
}

/// The rotations computed for one forward pass (empty outside one).
#[derive(Default)]
pub struct Rotations {
    computed: HashMap<RotationKey, Tensor>,
}

impl Rotations {
    /// No precomputed rotations: every layer computes its own (outside a forward).
    pub fn none() -> Self {
        Self::default()
    }

    /// Every request, one batched op per (size, dtype, map) group — groups and their members
    /// in the requests' order — the groups concurrently on the CPU: CNN-6's lone 1024×1024
    /// `fc6` runs beside the five 576×576 layers instead of after them.
    pub fn compute_requests(requests: &[RotationRequest]) -> Result<Self> {
        let mut groups: Vec<(GroupKey, Vec<usize>)> = Vec::new();
        for (k, request) in requests.iter().enumerate() {
            let key = request.group();
            match groups.iter_mut().find(|(g, _)| *g == key) {
                Some((_, members)) => members.push(k),
                None => groups.push((key, vec![k])),
            }
        }
        let inputs: Vec<MapGroup> = groups
            .iter()
            .map(|(key, members)| map_group(requests, members, key.3))
            .collect();
        let results = map_groups(&inputs)?;
        let computed = groups
            .into_iter()
            .zip(results)
            .flat_map(|((_, members), qs)| members.into_iter().zip(qs))
            .map(|(k, q)| (requests[k].key, q))
            .collect();
        Ok(Self { computed })
    }

    /// The rotation (or weight) of `request`: the one computed with its group in this forward,
    /// else computed now, alone. Differentiable w.r.t. the request's inputs either way.
    pub fn get(&self, request: &RotationRequest) -> Result<Tensor> {
        match self.computed.get(&request.key) {
            Some(q) => Ok(q.clone()),
            None => {
                let alone = map_group(std::slice::from_ref(request), &[0], request.map);
                map_groups(std::slice::from_ref(&alone))?
                    .pop()
                    .and_then(|mut g| g.pop())
                    .ok_or_else(|| candle_core::Error::msg("rotations: no result").into())
            }
        }
    }

    /// How many rotations were computed together.
    pub fn len(&self) -> usize {
        self.computed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.computed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::orthogonalize;
    use crate::Rng;
    use candle_core::Device;

    fn var(seed: u64, d: usize) -> Var {
        let v = Rng::seed(seed).normal_vec(d * d, 1.0);
        Var::from_tensor(&Tensor::from_vec(v, (d, d), &Device::Cpu).expect("p")).expect("var")
    }

    fn close(a: &Tensor, b: &Tensor) -> bool {
        let d = (a - b)
            .and_then(|t| t.abs())
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_scalar::<f32>())
            .expect("diff");
        d < 1e-6
    }

    /// A context holds what was computed when it was made (a later change of `P` is not seen
    /// until the next context), for every group; an empty context computes from the current
    /// `P`.
    #[test]
    fn a_context_holds_every_group_as_computed_and_none_computes_alone() -> Result<()> {
        let (p0, p1, p2) = (var(1, 6), var(2, 6), var(3, 4));
        let gs = OrthMap::GramSchmidt;
        let requests = || {
            [
                RotationRequest::of(&p0, gs),
                RotationRequest::of(&p1, gs),
                RotationRequest::of(&p2, gs),
            ]
        };
        let old: Vec<Tensor> = [&p0, &p1, &p2]
            .iter()
            .map(|p| orthogonalize(p.as_tensor(), gs))
            .collect::<candle_core::Result<_>>()?;
        let ctx = Rotations::compute_requests(&requests())?;
        assert_eq!(ctx.len(), 3);
        p1.set(var(4, 6).as_tensor())?;
        p2.set(var(5, 4).as_tensor())?;
        for (r, q) in requests().iter().zip(&old) {
            assert!(close(&ctx.get(r)?, q), "as computed with the context");
        }
        let new1 = orthogonalize(p1.as_tensor(), gs)?;
        assert!(!close(&new1, &old[1]));
        assert!(close(&Rotations::none().get(&requests()[1])?, &new1));
        let fresh = Rotations::compute_requests(&requests())?;
        assert!(
            close(&fresh.get(&requests()[1])?, &new1),
            "a new context recomputes"
        );
        Ok(())
    }

    /// The matrices of one stack are told apart by their index.
    #[test]
    fn keys_tell_the_matrices_of_a_stack_apart() -> Result<()> {
        let p = var(7, 5);
        let a = RotationRequest {
            key: RotationKey::new(&p, 0),
            p: p.as_tensor().clone(),
            map: OrthMap::Householder,
            w0: None,
        };
        let b = RotationRequest {
            key: RotationKey::new(&p, 1),
            p: p.as_tensor().t()?.contiguous()?,
            map: OrthMap::Householder,
            w0: None,
        };
        let ctx = Rotations::compute_requests(&[a.clone(), b.clone()])?;
        assert!(close(&ctx.get(&a)?, &orthogonalize(&a.p, a.map)?));
        assert!(close(&ctx.get(&b)?, &orthogonalize(&b.p, b.map)?));
        assert!(!close(&ctx.get(&a)?, &ctx.get(&b)?));
        Ok(())
    }

    /// A request with `W0` gets the fused weight `orth(P)·W0`, batched with the others of its
    /// size and `n`, kept apart from a rotation request of the same `P`.
    #[test]
    fn weight_requests_get_the_fused_weight() -> Result<()> {
        let (p0, p1) = (var(11, 6), var(12, 6));
        let w0 = |seed| {
            let v = Rng::seed(seed).normal_vec(6 * 3, 1.0);
            Var::from_tensor(&Tensor::from_vec(v, (6, 3), &Device::Cpu).expect("w0")).expect("var")
        };
        let (w0a, w0b) = (w0(13), w0(14));
        let hr = OrthMap::Householder;
        let requests = [
            RotationRequest::weight_of(&p0, &w0a, hr),
            RotationRequest::weight_of(&p1, &w0b, hr),
            RotationRequest::of(&p0, hr),
        ];
        let ctx = Rotations::compute_requests(&requests)?;
        assert_eq!(ctx.len(), 3);
        let q0 = orthogonalize(p0.as_tensor(), hr)?;
        assert!(close(&ctx.get(&requests[0])?, &q0.matmul(w0a.as_tensor())?));
        let q1 = orthogonalize(p1.as_tensor(), hr)?;
        assert!(close(&ctx.get(&requests[1])?, &q1.matmul(w0b.as_tensor())?));
        assert!(close(&ctx.get(&requests[2])?, &q0));
        let alone = Rotations::none().get(&requests[1])?;
        assert!(close(&alone, &q1.matmul(w0b.as_tensor())?));
        Ok(())
    }
}
