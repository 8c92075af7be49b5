//! Where an OPT network's exact rotations are computed: all layers that share a size, dtype and
//! map in one batched op instead of one op per layer. A layer registered with its `W0` gets its
//! weight `W = orth(P)·W0` from the fused op ([`rotate_batched`](crate::ops::rotate_batched)),
//! which never forms the `d×d` rotation; one registered without gets `orth(P)`.
//!
//! A factory creates one [`RotationBank`] and registers each layer's `P` in it; the layer keeps
//! a [`RotationSlot`]. During a forward pass ([`ForwardScope`], entered by `Network::forward`)
//! the first layer that asks for its rotation computes every layer's — one batched op per
//! group, the groups concurrently — and the others take theirs from the bank. Outside a forward (metrics, export, S-OPT merges) a slot
//! computes its own rotation alone — by the same code, so the values are the same.
//!
//! Why a scope rather than a cache keyed on `P`: `P` changes in place (optimizer steps,
//! checkpoint restores, episode resets) and reading it back to compare would cost a device
//! read per layer. Within one forward nothing changes `P`, so results computed at the start of
//! the scope are exactly what each layer would compute itself; each is handed out once, and a
//! later scope never sees an earlier one's results (every scope has its own token).
//!
//! The scope lives in a thread-local because the layer seam (`KernelSource::kernel`) takes no
//! context: the forward runs on the caller's thread, and so do the layers' requests.

use crate::ops::{map_groups, orthogonalize, MapGroup, OrthMap};
use crate::Result;
use candle_core::{DType, Tensor, Var};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static ACTIVE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// While alive, rotations requested on this thread are computed per group and shared (see the
/// module comment). Scopes nest; dropping one restores the enclosing one.
pub struct ForwardScope {
    previous: Option<u64>,
}

impl ForwardScope {
    pub fn enter() -> Self {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        Self {
            previous: ACTIVE.with(|a| a.replace(Some(token))),
        }
    }
}

impl Drop for ForwardScope {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.previous));
    }
}

struct Layer {
    p: Var,
    /// `W0` where the layer wants `orth(P)·W0` rather than `orth(P)`.
    w0: Option<Var>,
    map: OrthMap,
    /// A rotation computed with its group, for the scope with this token, not yet handed out.
    ready: Option<(u64, Tensor)>,
}

impl Layer {
    /// `(d, n or none, dtype, map)`: the layers one batched op can take.
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

type GroupKey = (usize, Option<usize>, DType, OrthMap);

/// The registered layers of one network (shared by its OPT layers through [`RotationSlot`]s).
#[derive(Default)]
pub struct RotationBank {
    layers: Mutex<Vec<Layer>>,
}

impl RotationBank {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a layer whose rotation is `map(p)`; its slot hands out `map(p)`.
    pub fn register(self: &Arc<Self>, p: Var, map: OrthMap) -> Result<RotationSlot> {
        self.push(Layer {
            p,
            w0: None,
            map,
            ready: None,
        })
    }

    /// Registers a layer whose weight is `map(p)·w0`; its slot hands out that weight.
    pub fn register_rotated(
        self: &Arc<Self>,
        p: Var,
        w0: Var,
        map: OrthMap,
    ) -> Result<RotationSlot> {
        self.push(Layer {
            p,
            w0: Some(w0),
            map,
            ready: None,
        })
    }

    fn push(self: &Arc<Self>, layer: Layer) -> Result<RotationSlot> {
        let mut layers = self.lock()?;
        layers.push(layer);
        Ok(RotationSlot {
            bank: Arc::clone(self),
            index: layers.len() - 1,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<Layer>>> {
        self.layers.lock().map_err(|_| {
            candle_core::Error::msg("rotation bank poisoned by an earlier panic").into()
        })
    }

    /// Layer `index`'s rotation in the scope `token`: handed out if it was computed in this
    /// scope, else computed now with every layer of the bank.
    fn in_scope(&self, index: usize, token: u64) -> Result<Tensor> {
        let mut layers = self.lock()?;
        if let Some((t, q)) = layers[index].ready.take() {
            if t == token {
                return Ok(q);
            }
        }
        let mut mine = None;
        for (k, q) in compute_all(&layers)? {
            if k == index {
                mine = Some(q);
            } else {
                layers[k].ready = Some((token, q));
            }
        }
        mine.ok_or_else(|| {
            candle_core::Error::msg("rotation bank: a layer without a result").into()
        })
    }
}

/// Every layer's result, one batched op per group, the groups concurrently on the CPU
/// (`map_groups`): CNN-6's lone 1024×1024 `fc6` then runs beside the five 576×576 layers
/// instead of after them.
fn compute_all(layers: &[Layer]) -> Result<Vec<(usize, Tensor)>> {
    let mut groups: Vec<(GroupKey, Vec<usize>)> = Vec::new();
    for (k, layer) in layers.iter().enumerate() {
        let key = layer.group();
        match groups.iter_mut().find(|(g, _)| *g == key) {
            Some((_, members)) => members.push(k),
            None => groups.push((key, vec![k])),
        }
    }
    let inputs: Vec<MapGroup> = groups
        .iter()
        .map(|(key, members)| MapGroup {
            map: key.3,
            ps: members
                .iter()
                .map(|&k| layers[k].p.as_tensor().clone())
                .collect(),
            w0s: members
                .iter()
                .map(|&k| layers[k].w0.as_ref().map(|w0| w0.as_tensor().clone()))
                .collect(),
        })
        .collect();
    let results = map_groups(&inputs)?;
    Ok(groups
        .into_iter()
        .zip(results)
        .flat_map(|((_, members), qs)| members.into_iter().zip(qs))
        .collect())
}

/// One layer's handle on its bank.
pub struct RotationSlot {
    bank: Arc<RotationBank>,
    index: usize,
}

impl RotationSlot {
    /// What this layer registered for — `orth(P)`, or `orth(P)·W0` — differentiable w.r.t. its
    /// inputs: from its group's batch inside a forward scope, computed alone outside one.
    pub fn rotation(&self) -> Result<Tensor> {
        match ACTIVE.with(Cell::get) {
            Some(token) => self.bank.in_scope(self.index, token),
            None => {
                let group = {
                    let layers = self.bank.lock()?;
                    let layer = &layers[self.index];
                    MapGroup {
                        map: layer.map,
                        ps: vec![layer.p.as_tensor().clone()],
                        w0s: layer.w0.as_ref().map(|w0| vec![w0.as_tensor().clone()]),
                    }
                };
                let mut out = map_groups(std::slice::from_ref(&group))?;
                out.pop()
                    .and_then(|mut g| g.pop())
                    .ok_or_else(|| candle_core::Error::msg("rotation bank: no result").into())
            }
        }
    }

    /// `orth(P)` alone, whatever the layer registered for (metrics, exports), never from a scope.
    pub fn rotation_alone(&self) -> Result<Tensor> {
        let (p, map) = {
            let layers = self.bank.lock()?;
            let layer = &layers[self.index];
            (layer.p.as_tensor().clone(), layer.map)
        };
        Ok(orthogonalize(&p, map)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::Device;

    fn var(seed: u64, d: usize) -> Var {
        let v = Rng::seed(seed).normal_vec(d * d, 1.0);
        Var::from_tensor(&Tensor::from_vec(v, (d, d), &Device::Cpu).expect("p")).expect("var")
    }

    fn close(a: &Tensor, b: &Tensor) -> bool {
        let d = (a - b)
            .and_then(|t| t.abs())
            .and_then(|t| t.max_keepdim(1))
            .and_then(|t| t.max_keepdim(0))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("diff");
        d[0] < 1e-6
    }

    /// Inside a scope the first request computes every layer, whatever its group (a later
    /// change of another layer's `P` is not seen until the next scope); a new scope and no
    /// scope compute from the current `P`.
    #[test]
    fn a_scope_computes_every_layer_once_and_never_reuses_an_earlier_scope() -> Result<()> {
        let bank = RotationBank::new();
        let (p0, p1, p2) = (var(1, 6), var(2, 6), var(3, 4));
        let s0 = bank.register(p0.clone(), OrthMap::GramSchmidt)?;
        let s1 = bank.register(p1.clone(), OrthMap::GramSchmidt)?;
        let s2 = bank.register(p2.clone(), OrthMap::GramSchmidt)?;
        let old1 = orthogonalize(p1.as_tensor(), OrthMap::GramSchmidt)?;
        let old2 = orthogonalize(p2.as_tensor(), OrthMap::GramSchmidt)?;
        {
            let _scope = ForwardScope::enter();
            let q0 = s0.rotation()?;
            assert!(close(
                &q0,
                &orthogonalize(p0.as_tensor(), OrthMap::GramSchmidt)?
            ));
            p1.set(&var(4, 6).as_tensor().clone())?;
            p2.set(&var(5, 4).as_tensor().clone())?;
            assert!(
                close(&s1.rotation()?, &old1),
                "computed at the first request"
            );
            assert!(
                close(&s2.rotation()?, &old2),
                "another group, computed beside"
            );
        }
        let new1 = orthogonalize(p1.as_tensor(), OrthMap::GramSchmidt)?;
        assert!(!close(&new1, &old1));
        assert!(close(&s1.rotation()?, &new1), "no scope: computed alone");
        let new2 = orthogonalize(p2.as_tensor(), OrthMap::GramSchmidt)?;
        assert!(!close(&new2, &old2) && close(&s2.rotation()?, &new2));
        let _scope = ForwardScope::enter();
        assert!(close(&s1.rotation()?, &new1), "a new scope recomputes");
        Ok(())
    }
}
