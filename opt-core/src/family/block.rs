//! OFT's block-diagonal rotation (Qiu et al., "Controlling Text-to-Image Diffusion by
//! Orthogonal Finetuning", NeurIPS 2023): `R = diag(R_1, …, R_r)` on the fan-in space, each
//! block its own learned `P_k` through any base map — `cp` as in OFT, or the paper's other exact
//! maps, or `expm`. `r` blocks of `≈ d/r` rows cost `r·(d/r)³ = d³/r²` instead of `d³`: a
//! cheap route to wide layers beside S-OPT. The effective weight is `W = R·W0`, block by block
//! (`W[rows_k] = R_k·W0[rows_k]`), never forming `R`.
//!
//! The fan-in is split into `r` contiguous blocks whose sizes differ by at most one (the first
//! `d mod r` one row larger), so any `r ≤ d` works; the exact maps of equal-sized blocks are
//! batched with the network's other rotations of that size.

use super::RotationMap;
use crate::layers::{KernelFactory, KernelShape, KernelSource};
use crate::opt_layer::{weight_to_kernel, FIXED, ROTATION};
use crate::rotations::{RotationRequest, Rotations};
use crate::{Error, Kind, ParamStore, Result, Rng, Role};
use candle_core::{Tensor, Var};

/// Sizes of `blocks` contiguous blocks covering `d` rows, differing by at most one.
pub fn block_sizes(d: usize, blocks: usize) -> Vec<usize> {
    let r = blocks.clamp(1, d.max(1));
    (0..r).map(|k| d / r + usize::from(k < d % r)).collect()
}

pub struct BlockKernel {
    pub shape: KernelShape,
    pub w0: Var,
    /// One `P_k` per block, in row order.
    pub blocks: Vec<Var>,
    pub map: RotationMap,
}

impl BlockKernel {
    /// Registers `W0` (He-normal, drawn first as in every OPT layer) and the blocks' `P_k`
    /// (N(0, 1) for an exact map, as OPT's; zero — the identity rotation — for a skew map).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        blocks: usize,
        map: RotationMap,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (d, n) = (shape.fan_in(), shape.c_out);
        if blocks == 0 {
            return Err(Error::Config(format!(
                "layer `{name}`: a block-diagonal rotation needs at least one block"
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
        let mut vars = Vec::new();
        for (k, b) in block_sizes(d, blocks).into_iter().enumerate() {
            let p = match map {
                RotationMap::Exact(_) => {
                    Tensor::from_vec(rng.normal_vec(b * b, 1.0), (b, b), &dev)?
                }
                RotationMap::Skew(_) => map.identity_parameter(b, &dev)?,
            };
            vars.push(store.add(
                &format!("{name}.{ROTATION}.{k}"),
                p,
                Role::Trainable { decay: true },
                Kind::Rotation,
            )?);
        }
        Ok(Self {
            shape,
            w0,
            blocks: vars,
            map,
        })
    }

    /// Each block's rotation `R_k`, from `rotations` where the forward computed it.
    pub fn block_rotations(&self, rotations: &Rotations) -> Result<Vec<Tensor>> {
        self.blocks
            .iter()
            .map(|p| self.map.rotation(p, 0, p.as_tensor(), rotations))
            .collect()
    }

    /// `W = diag(R_k)·W0`, `[d, n]`, block by block.
    pub fn weight_in(&self, rotations: &Rotations) -> Result<Tensor> {
        let w0 = self.w0.as_tensor();
        let mut offset = 0;
        let mut rows = Vec::with_capacity(self.blocks.len());
        for r in self.block_rotations(rotations)? {
            let b = r.dim(0)?;
            rows.push(r.matmul(&w0.narrow(0, offset, b)?)?);
            offset += b;
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// The whole `d×d` rotation (for metrics: its orthogonality error).
    pub fn rotation(&self) -> Result<Tensor> {
        let d = self.shape.fan_in();
        let mut offset = 0;
        let mut rows = Vec::new();
        for r in self.block_rotations(&Rotations::none())? {
            let b = r.dim(0)?;
            let left = Tensor::zeros((b, offset), r.dtype(), r.device())?;
            let right = Tensor::zeros((b, d - offset - b), r.dtype(), r.device())?;
            rows.push(Tensor::cat(&[left, r, right], 1)?);
            offset += b;
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

impl KernelSource for BlockKernel {
    fn kernel_in(&self, rotations: &Rotations) -> Result<Tensor> {
        weight_to_kernel(&self.weight_in(rotations)?, self.shape)
    }

    fn rotation_requests(&self) -> Vec<RotationRequest> {
        self.blocks
            .iter()
            .filter_map(|p| self.map.request(p, 0, p.as_tensor()))
            .collect()
    }

    fn rotation_matrix(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.rotation()?))
    }
}

/// Every weight layer a [`BlockKernel`] of `blocks` blocks.
pub struct BlockFactory {
    pub blocks: usize,
    pub map: RotationMap,
}

impl KernelFactory for BlockFactory {
    fn build(
        &self,
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        rng: &mut Rng,
    ) -> Result<Box<dyn KernelSource>> {
        Ok(Box::new(BlockKernel::new(
            store,
            name,
            shape,
            self.blocks,
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

    #[test]
    fn blocks_cover_the_fan_in_and_differ_by_at_most_one() {
        assert_eq!(block_sizes(27, 4), [7, 7, 7, 6]);
        assert_eq!(block_sizes(9, 4), [3, 2, 2, 2]);
        assert_eq!(block_sizes(3, 8), [1, 1, 1]);
        assert_eq!(block_sizes(576, 4), [144; 4]);
    }

    /// `W` against an f64 oracle that forms the block-diagonal `R` densely from each block's
    /// own map and multiplies row by row; `R` is orthogonal; the forward's batched context
    /// gives the same `W` as each block alone.
    #[test]
    fn weight_is_the_dense_block_diagonal_product() -> Result<()> {
        let shape = KernelShape {
            c_out: 5,
            c_in: 3,
            k_h: 3,
            k_w: 3,
        };
        for map in [
            RotationMap::Exact(OrthMap::GramSchmidt),
            RotationMap::Exact(OrthMap::Cayley),
            RotationMap::Skew(SkewMap::Expm),
        ] {
            let mut store = ParamStore::new(Device::Cpu);
            let mut rng = Rng::seed(3);
            let layer = BlockKernel::new(&mut store, "conv", shape, 4, map, &mut rng)?;
            for p in &layer.blocks {
                let b = p.dim(0)?;
                let noise = Tensor::from_vec(rng.normal_vec(b * b, 0.5), (b, b), &Device::Cpu)?;
                p.set(&(p.as_tensor() + noise)?)?;
            }
            let d = shape.fan_in();
            let mut dense = vec![vec![0.0f64; d]; d];
            let mut offset = 0;
            for p in &layer.blocks {
                let r: Vec<Vec<f64>> = match map {
                    RotationMap::Exact(m) => crate::ops::orthogonalize(p.as_tensor(), m)?,
                    RotationMap::Skew(m) => m.rotation(p.as_tensor())?,
                }
                .to_dtype(DType::F64)?
                .to_vec2()?;
                for (i, row) in r.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        dense[offset + i][offset + j] = *v;
                    }
                }
                offset += r.len();
            }
            let w0: Vec<Vec<f64>> = layer.w0.as_tensor().to_dtype(DType::F64)?.to_vec2()?;
            let got: Vec<Vec<f64>> = layer
                .weight_in(&Rotations::none())?
                .to_dtype(DType::F64)?
                .to_vec2()?;
            let batched = Rotations::compute_requests(&layer.rotation_requests())?;
            let got_batched: Vec<Vec<f64>> =
                layer.weight_in(&batched)?.to_dtype(DType::F64)?.to_vec2()?;
            let mut worst = 0.0f64;
            for i in 0..d {
                for j in 0..shape.c_out {
                    let want: f64 = (0..d).map(|t| dense[i][t] * w0[t][j]).sum();
                    worst = worst
                        .max((got[i][j] - want).abs())
                        .max((got_batched[i][j] - want).abs());
                }
            }
            assert!(worst < 1e-5, "{map:?}: {worst:e}");
            let err = crate::orth::orthogonality_error(&layer.rotation()?)?;
            assert!(err < 1e-4, "{map:?}: ‖RRᵀ − I‖ = {err:e}");
        }
        Ok(())
    }
}
