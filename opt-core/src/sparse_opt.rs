//! Stochastic OPT (S-OPT, spec §2.8): per episode, each sparse layer rotates a random subset
//! `S` of `b` fan-in coordinates with a small orthogonal matrix started at the identity; at the
//! end of the episode the rotation is merged into the fixed neurons (`W0[S,:] ← Q·W0[S,:]`)
//! and reset, and a new subset is drawn. Merge-then-reset leaves the network function
//! unchanged, so S-OPT walks through rotations of the whole fan-in space at the cost of b×b
//! maps.

use crate::layers::{KernelFactory, KernelShape, KernelSource};
use crate::opt_layer::{
    weight_to_kernel, OptKernel, OptLayerConfig, Rotation, RotationInit, FIXED,
};
use crate::orth::OrthMap;
use crate::rotations::{RotationRequest, Rotations};
use crate::{Error, Kind, ParamStore, Result, Rng, Role};
use candle_core::{DType, Tensor, Var};

/// Name suffix of the small rotations (their optimizer state may be reset per episode).
pub const SPARSE_ROTATION: &str = "sparse_rotation";
/// Name suffix of the sampled index set (stored with the model, so checkpoints keep it).
pub const INDICES: &str = "sparse_indices";

pub struct SparseOptKernel {
    pub shape: KernelShape,
    pub w0: Var,
    pub p: Var,
    pub indices: Var,
    pub map: OrthMap,
    budget: usize,
}

/// `b` distinct indices of `0..d`, uniformly without replacement (partial Fisher–Yates).
pub fn sample_indices(rng: &mut Rng, d: usize, b: usize) -> Vec<u32> {
    let mut all: Vec<u32> = (0..d as u32).collect();
    for i in 0..b.min(d) {
        let j = i + rng.below((d - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(b.min(d));
    all
}

impl SparseOptKernel {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        budget: usize,
        map: OrthMap,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (d, n) = (shape.fan_in(), shape.c_out);
        if budget == 0 || budget > d {
            return Err(Error::Config(format!(
                "S-OPT budget of {budget} rows does not fit layer `{name}` with fan-in {d}"
            )));
        }
        let dev = store.device().clone();
        let w0 = Tensor::from_vec(rng.normal_vec(d * n, shape.he_std()), (d, n), &dev)?;
        let w0 = store.add(
            &format!("{name}.{FIXED}"),
            w0,
            Role::Fixed { decay: true },
            Kind::Neurons,
        )?;
        let p = store.add(
            &format!("{name}.{SPARSE_ROTATION}"),
            Tensor::eye(budget, DType::F32, &dev)?,
            Role::Trainable { decay: true },
            Kind::SparseRotation,
        )?;
        let idx = sample_indices(rng, d, budget);
        let indices = store.add(
            &format!("{name}.{INDICES}"),
            Tensor::from_vec(idx, budget, &dev)?,
            Role::Statistic,
            Kind::SubsetIndices,
        )?;
        Ok(Self {
            shape,
            w0,
            p,
            indices,
            map,
            budget,
        })
    }

    /// `orth(P)`, batched in a forward with the network's other sparse layers of the same
    /// budget.
    fn request(&self) -> RotationRequest {
        RotationRequest::of(&self.p, self.map)
    }

    /// `W = W0` with rows `S` replaced by `orth(P)·W0[S,:]`, as `W0 + scatter(S, (Q − I)·W0[S,:])`.
    pub fn weight_in(&self, rotations: &Rotations) -> Result<Tensor> {
        let idx = self.indices.as_tensor();
        let w0 = self.w0.as_tensor();
        let rows = w0.index_select(idx, 0)?;
        let q = rotations.get(&self.request())?;
        let delta = (q.matmul(&rows)? - &rows)?;
        Ok(w0.index_add(idx, &delta, 0)?)
    }

    /// [`Self::weight_in`] outside a forward.
    pub fn weight(&self) -> Result<Tensor> {
        self.weight_in(&Rotations::none())
    }
}

impl KernelSource for SparseOptKernel {
    fn kernel_in(&self, rotations: &Rotations) -> Result<Tensor> {
        weight_to_kernel(&self.weight_in(rotations)?, self.shape)
    }

    fn rotation_requests(&self) -> Vec<RotationRequest> {
        vec![self.request()]
    }

    fn rotation_matrix(&self) -> Result<Option<Tensor>> {
        Ok(Some(Rotations::none().get(&self.request())?))
    }

    fn end_episode(&self, rng: &mut Rng) -> Result<bool> {
        let merged = self.weight()?.detach();
        self.w0.set(&merged)?;
        let dev = self.p.device().clone();
        self.p.set(&Tensor::eye(self.budget, DType::F32, &dev)?)?;
        let idx = sample_indices(rng, self.shape.fan_in(), self.budget);
        self.indices
            .set(&Tensor::from_vec(idx, self.budget, &dev)?)?;
        Ok(true)
    }
}

/// S-OPT's layers: the first layer (`conv1_0`, tiny fan-in) is a full OPT layer started at the
/// identity and never reset; every other layer is sparse with `b = k_h·k_w·budget_channels`.
pub struct SoptFactory {
    pub base: OrthMap,
    pub budget_channels: usize,
}

impl SoptFactory {
    pub fn new(base: OrthMap, budget_channels: usize) -> Self {
        Self {
            base,
            budget_channels,
        }
    }
}

impl KernelFactory for SoptFactory {
    fn build(
        &self,
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        rng: &mut Rng,
    ) -> Result<Box<dyn KernelSource>> {
        if name == crate::layers::INPUT_LAYER {
            let cfg = OptLayerConfig {
                rotation: Rotation::Exact(self.base),
                init: RotationInit::Identity,
                decay_rotation: true,
                decay_fixed: true,
                learn_w0: false,
                penalty: 0.0,
                merge_on_episode: false,
            };
            return Ok(Box::new(OptKernel::new(store, name, shape, cfg, rng)?));
        }
        let budget = shape.k_h * shape.k_w * self.budget_channels;
        Ok(Box::new(SparseOptKernel::new(
            store, name, shape, budget, self.base, rng,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use crate::{Cnn6, Cnn6Config};
    use candle_core::Device;

    /// Merge then reset leaves the network's output unchanged, and actually changes `W0`.
    #[test]
    fn merge_then_reset_preserves_the_function() -> Result<()> {
        let dev = Device::Cpu;
        let mut store = ParamStore::new(dev.clone());
        let mut rng = Rng::seed(4);
        let factory = SoptFactory::new(OrthMap::GramSchmidt, 2);
        let net = Cnn6::new(
            Cnn6Config::new((3, 16, 16), 10, 8),
            &factory,
            &mut store,
            &mut rng,
        )?;
        // Move every small rotation away from the identity, as training would.
        for e in store.of_kind(Kind::SparseRotation) {
            let b = e.var.dim(0)?;
            let noise = Tensor::from_vec(rng.normal_vec(b * b, 0.3), (b, b), &dev)?;
            e.var.set(&(e.var.as_tensor() + noise)?)?;
        }
        let x = Tensor::from_vec(rng.normal_vec(2 * 3 * 16 * 16, 1.0), (2, 3, 16, 16), &dev)?;
        let before = net.forward(&x, false)?;
        let w0_before = store
            .get("conv2_0.w0_fix")
            .unwrap()
            .var
            .as_tensor()
            .copy()?;
        let idx_before: Vec<u32> = store
            .get("conv2_0.sparse_indices")
            .unwrap()
            .var
            .as_tensor()
            .to_vec1()?;
        assert!(net.end_episode(&mut Rng::seed(99))? >= 6);
        let after = net.forward(&x, false)?;
        assert!(
            max_abs_diff(&before, &after) < 1e-4,
            "output changed by {}",
            max_abs_diff(&before, &after)
        );
        let w0_after = store
            .get("conv2_0.w0_fix")
            .unwrap()
            .var
            .as_tensor()
            .copy()?;
        assert!(
            max_abs_diff(&w0_before, &w0_after) > 1e-3,
            "the rotation was merged into W0"
        );
        let idx_after: Vec<u32> = store
            .get("conv2_0.sparse_indices")
            .unwrap()
            .var
            .as_tensor()
            .to_vec1()?;
        assert_ne!(idx_before, idx_after, "a new subset is drawn");
        let p: Vec<Vec<f32>> = store
            .get("conv2_0.sparse_rotation")
            .unwrap()
            .var
            .as_tensor()
            .to_vec2()?;
        assert!(p.iter().enumerate().all(|(i, r)| r
            .iter()
            .enumerate()
            .all(|(j, &v)| v == if i == j { 1.0 } else { 0.0 })));
        Ok(())
    }

    #[test]
    fn indices_are_distinct_and_in_range() {
        let mut rng = Rng::seed(1);
        let mut s = sample_indices(&mut rng, 576, 144);
        assert_eq!(s.len(), 144);
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 144);
        assert!(s.iter().all(|&i| i < 576));
    }
}
