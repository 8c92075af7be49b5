//! POET's two-sided orthogonal equivalence transformation (Qiu et al., "Reparameterized LLM
//! Training via Orthogonal Equivalence Transformation", NeurIPS 2025, arXiv 2506.08001):
//! `W = R·W0·P` with `R` orthogonal on the fan-in side and `P` on the neuron side, so `W` keeps
//! the singular values of the fixed random `W0` exactly, whatever is learned.
//!
//! Its stochastic primitive: each side learns a small `b×b` rotation `G` acting on a random
//! subset of `b` indices (`R = I` elsewhere), from the identity. Every `merge_every` steps the
//! learned rotations are merged into the weight (`W0 ← R·W0·P`), reset to the identity, and new
//! subsets are drawn — the function is unchanged by a merge, and training walks through
//! rotations of the whole space at the cost of `b×b` maps. POET's own map for `G` is
//! Cayley–Neumann; any of the family's maps may be chosen.

use super::RotationMap;
use crate::layers::{KernelFactory, KernelShape, KernelSource};
use crate::opt_layer::{weight_to_kernel, FIXED};
use crate::rotations::{RotationRequest, Rotations};
use crate::sparse_opt::{sample_indices, INDICES, SPARSE_ROTATION};
use crate::{Kind, ParamStore, Result, Rng, Role};
use candle_core::{Tensor, Var};

/// Name suffix of the neuron-side pieces (the fan-in side uses S-OPT's names).
pub const OUTPUT_SIDE: &str = "out";

/// One side's primitive: a small rotation's `P` and the indices it acts on.
pub struct Primitive {
    pub p: Var,
    pub indices: Var,
    /// The dimension of the side (`d` or `n`).
    dim: usize,
}

impl Primitive {
    fn new(
        store: &mut ParamStore,
        name: &str,
        suffix: &str,
        dim: usize,
        b: usize,
        map: RotationMap,
        rng: &mut Rng,
    ) -> Result<Self> {
        let dev = store.device().clone();
        let p = store.add(
            &format!("{name}.{SPARSE_ROTATION}{suffix}"),
            map.identity_parameter(b, &dev)?,
            Role::Trainable { decay: true },
            Kind::SparseRotation,
        )?;
        let indices = store.add(
            &format!("{name}.{INDICES}{suffix}"),
            Tensor::from_vec(sample_indices(rng, dim, b), b, &dev)?,
            Role::Statistic,
            Kind::SubsetIndices,
        )?;
        Ok(Self { p, indices, dim })
    }

    fn size(&self) -> usize {
        self.p.dims().first().copied().unwrap_or(0)
    }

    fn reset(&self, map: RotationMap, rng: &mut Rng) -> Result<()> {
        let (b, dev) = (self.size(), self.p.device().clone());
        self.p.set(&map.identity_parameter(b, &dev)?)?;
        self.indices.set(&Tensor::from_vec(
            sample_indices(rng, self.dim, b),
            b,
            &dev,
        )?)?;
        Ok(())
    }
}

pub struct PoetKernel {
    pub shape: KernelShape,
    pub w0: Var,
    /// `R`'s primitive, on the fan-in rows of `W0`.
    pub left: Primitive,
    /// `P`'s primitive, on the neurons (columns).
    pub right: Primitive,
    pub map: RotationMap,
}

impl PoetKernel {
    /// `W0` He-normal (drawn first, as in every OPT layer); each side's block is
    /// `min(block_size, side)` wide, from the identity, on a random subset.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        block_size: usize,
        map: RotationMap,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (d, n) = (shape.fan_in(), shape.c_out);
        let dev = store.device().clone();
        let w0 = Tensor::from_vec(rng.normal_vec(d * n, shape.he_std()), (d, n), &dev)?;
        let w0 = store.add(
            &format!("{name}.{FIXED}"),
            w0,
            Role::Fixed { decay: true },
            Kind::Neurons,
        )?;
        let b = block_size.max(1);
        let left = Primitive::new(store, name, "", d, b.min(d), map, rng)?;
        let out = format!("_{OUTPUT_SIDE}");
        let right = Primitive::new(store, name, &out, n, b.min(n), map, rng)?;
        Ok(Self {
            shape,
            w0,
            left,
            right,
            map,
        })
    }

    fn side_rotation(&self, side: &Primitive, rotations: &Rotations) -> Result<Tensor> {
        self.map.rotation(&side.p, 0, side.p.as_tensor(), rotations)
    }

    /// `W = R·W0·P`, `[d, n]`: rows `S_R` of `W0` replaced by `G_R·W0[S_R,:]`, then columns
    /// `S_P` of the result by `(R·W0)[:,S_P]·G_P`.
    pub fn weight_in(&self, rotations: &Rotations) -> Result<Tensor> {
        let w0 = self.w0.as_tensor();
        let idx = self.left.indices.as_tensor();
        let rows = w0.index_select(idx, 0)?;
        let g = self.side_rotation(&self.left, rotations)?;
        let rw0 = w0.index_add(idx, &(g.matmul(&rows)? - &rows)?, 0)?;
        let idx = self.right.indices.as_tensor();
        let cols = rw0.index_select(idx, 1)?;
        let g = self.side_rotation(&self.right, rotations)?;
        Ok(rw0.index_add(idx, &(cols.matmul(&g)? - &cols)?, 1)?)
    }

    pub fn weight(&self) -> Result<Tensor> {
        self.weight_in(&Rotations::none())
    }
}

impl KernelSource for PoetKernel {
    fn kernel_in(&self, rotations: &Rotations) -> Result<Tensor> {
        weight_to_kernel(&self.weight_in(rotations)?, self.shape)
    }

    fn rotation_requests(&self) -> Vec<RotationRequest> {
        [&self.left, &self.right]
            .into_iter()
            .filter_map(|s| self.map.request(&s.p, 0, s.p.as_tensor()))
            .collect()
    }

    /// The fan-in side's small rotation (for metrics, as S-OPT's).
    fn rotation_matrix(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.side_rotation(&self.left, &Rotations::none())?))
    }

    /// Merge `W0 ← R·W0·P`, reset both primitives to the identity and draw new subsets.
    fn end_episode(&self, rng: &mut Rng) -> Result<bool> {
        let merged = self.weight()?.detach();
        self.w0.set(&merged)?;
        self.left.reset(self.map, rng)?;
        self.right.reset(self.map, rng)?;
        Ok(true)
    }
}

/// Every weight layer a [`PoetKernel`].
pub struct PoetFactory {
    pub block_size: usize,
    pub map: RotationMap,
}

impl KernelFactory for PoetFactory {
    fn build(
        &self,
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        rng: &mut Rng,
    ) -> Result<Box<dyn KernelSource>> {
        Ok(Box::new(PoetKernel::new(
            store,
            name,
            shape,
            self.block_size,
            self.map,
            rng,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orth::OrthMap;
    use crate::skew::SkewMap;
    use candle_core::{DType, Device};

    /// Singular values of a `[d, n]` tensor, in f64, from the eigenvalues of `WᵀW`
    /// (faer's symmetric eigensolver: independent of the code under test).
    fn singular_values(w: &Tensor) -> Vec<f64> {
        let w: Vec<Vec<f64>> = w.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
        let (d, n) = (w.len(), w[0].len());
        let wtw: faer::Mat<f64> =
            faer::Mat::from_fn(n, n, |i, j| (0..d).map(|t| w[t][i] * w[t][j]).sum());
        let evd = wtw.self_adjoint_eigen(faer::Side::Lower).expect("eigen");
        let s = evd.S().column_vector();
        let mut out: Vec<f64> = (0..n).map(|i| s[i].max(0.0).sqrt()).collect();
        out.sort_by(f64::total_cmp);
        out
    }

    fn perturb(p: &Var, rng: &mut Rng, std: f64) -> Result<()> {
        let b = p.dim(0)?;
        let noise = Tensor::from_vec(rng.normal_vec(b * b, std), (b, b), p.device())?;
        p.set(&(p.as_tensor() + noise)?)?;
        Ok(())
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// With an exact map, `W` keeps `W0`'s singular values through learned rotations on both
    /// sides and through merges (each merge changes `W0`, not its spectrum, and not the
    /// function); with Cayley–Neumann, up to its orthogonality error (here `‖Q‖ ≈ 0.3`, so
    /// `‖Q‖⁶ ≈ 1e-3`).
    #[test]
    fn keeps_the_singular_values_of_w0_through_steps_and_merges() -> Result<()> {
        let shape = KernelShape {
            c_out: 12,
            c_in: 4,
            k_h: 3,
            k_w: 3,
        };
        for (map, tol) in [
            (RotationMap::Exact(OrthMap::Cayley), 1e-5),
            (RotationMap::Exact(OrthMap::GramSchmidt), 1e-5),
            (RotationMap::Skew(SkewMap::Expm), 1e-5),
            (
                RotationMap::Skew(SkewMap::CayleyNeumann {
                    terms: 5,
                    scaled: true,
                }),
                1e-2,
            ),
        ] {
            let mut store = ParamStore::new(Device::Cpu);
            let mut rng = Rng::seed(11);
            let layer = PoetKernel::new(&mut store, "conv", shape, 8, map, &mut rng)?;
            let sv0 = singular_values(layer.w0.as_tensor());
            let w0_start = layer.w0.as_tensor().copy()?;
            for episode in 0..3 {
                perturb(&layer.left.p, &mut rng, 0.05)?;
                perturb(&layer.right.p, &mut rng, 0.05)?;
                let w = layer.weight()?;
                let err = max_diff(&singular_values(&w), &sv0);
                assert!(err < tol, "{map:?} episode {episode}: {err:e}");
                layer.end_episode(&mut rng)?;
                let merged = layer.weight()?;
                assert!(
                    crate::test_util::max_abs_diff(&merged, &w) < 1e-6,
                    "a merge keeps the function"
                );
            }
            let moved = crate::test_util::max_abs_diff(layer.w0.as_tensor(), &w0_start);
            assert!(moved > 1e-3, "{map:?}: merges changed W0 ({moved:e})");
        }
        Ok(())
    }

    /// Both sides act: the fan-in side on rows, the neuron side on columns.
    #[test]
    fn each_side_moves_only_its_subset() -> Result<()> {
        let shape = KernelShape {
            c_out: 10,
            c_in: 2,
            k_h: 3,
            k_w: 3,
        };
        let mut store = ParamStore::new(Device::Cpu);
        let mut rng = Rng::seed(2);
        let map = RotationMap::Exact(OrthMap::Cayley);
        let layer = PoetKernel::new(&mut store, "conv", shape, 4, map, &mut rng)?;
        perturb(&layer.right.p, &mut rng, 0.3)?;
        let w: Vec<Vec<f32>> = layer.weight()?.to_vec2()?;
        let w0: Vec<Vec<f32>> = layer.w0.as_tensor().to_vec2()?;
        let cols: Vec<u32> = layer.right.indices.as_tensor().to_vec1()?;
        for (i, row) in w.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                if !cols.contains(&(j as u32)) {
                    assert_eq!(*v, w0[i][j], "column {j} outside the subset moved");
                }
            }
        }
        assert!(crate::test_util::max_abs_diff(&layer.weight()?, layer.w0.as_tensor()) > 1e-3);
        Ok(())
    }
}
