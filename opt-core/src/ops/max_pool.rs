//! 2×2, stride-2 max-pooling as one graph node, on every device.
//!
//! candle 0.11's own `max_pool2d` backward is wrong: it multiplies the gradient by the
//! fraction of maxima in the window instead of dividing by their count, so a unique maximum
//! receives ¼ of its gradient (tested below). Here the backward routes each gradient to the
//! window's first maximum (TensorFlow's rule) in one pass, on the CPU and in a CUDA kernel;
//! [`max_pool2x2_composed`] takes the maximum with reshape + `max` reductions, whose backward
//! is correct too (ties share the gradient), and is the op's test oracle.

use super::contiguous_f32;
use crate::par::for_each_chunk;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

struct MaxPool2x2;
struct MaxPool2x2Backward;

/// Which entry of a window `[top-left, top-right, bottom-left, bottom-right]` is its first
/// maximum (a later entry wins only if strictly greater, so a NaN never displaces a number).
#[inline]
fn first_max(v: [f32; 4]) -> usize {
    let mut best = 0;
    for k in 1..4 {
        if v[k] > v[best] {
            best = k;
        }
    }
    best
}

/// Calls `f(i, j, window)` for every 2×2 window of an `h×w` plane, row pair by row pair (slices
/// instead of per-tap index arithmetic, so the loop carries no bounds checks).
#[inline]
fn for_each_window(
    plane: &[f32],
    w: usize,
    ho: usize,
    wo: usize,
    mut f: impl FnMut(usize, usize, [f32; 4]),
) {
    for i in 0..ho {
        let top = &plane[2 * i * w..][..2 * wo];
        let bottom = &plane[(2 * i + 1) * w..][..2 * wo];
        for (j, (t, b)) in top.chunks_exact(2).zip(bottom.chunks_exact(2)).enumerate() {
            f(i, j, [t[0], t[1], b[0], b[1]]);
        }
    }
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = contiguous_f32(storage, layout, "max-pool")?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; n * c * ho * wo];
        for_each_chunk(&mut out, ho * wo, |first, chunk| {
            for (k, o) in chunk.chunks_mut(ho * wo).enumerate() {
                let plane = &x[(first + k) * h * w..][..h * w];
                for_each_window(plane, w, ho, wo, |i, j, v| o[i * wo + j] = v[first_max(v)]);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let out = super::cuda::max_pool_forward(storage, layout, (n, c, h, w))?;
        Ok((out, Shape::from((n, c, h / 2, w / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.detach().contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPool2x2Backward,
        )?))
    }
}

impl CustomOp2 for MaxPool2x2Backward {
    fn name(&self) -> &'static str {
        "max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let x = contiguous_f32(xs, xl, "max-pool backward")?;
        let g = contiguous_f32(gs, gl, "max-pool backward")?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; n * c * h * w];
        for_each_chunk(&mut out, h * w, |first, chunk| {
            for (k, o) in chunk.chunks_mut(h * w).enumerate() {
                let plane = &x[(first + k) * h * w..][..h * w];
                let gp = &g[(first + k) * ho * wo..][..ho * wo];
                for_each_window(plane, w, ho, wo, |i, j, v| {
                    let k = first_max(v);
                    o[(2 * i + k / 2) * w + 2 * j + k % 2] = gp[i * wo + j];
                });
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = xl.shape().dims4()?;
        let out = super::cuda::max_pool_backward(xs, xl, gs, gl, dims)?;
        Ok((out, xl.shape().clone()))
    }
}

/// 2×2 max-pooling with stride 2 (odd trailing rows/columns dropped): [`max_pool2x2_fused`]
/// where the device's routes say so, else [`max_pool2x2_composed`].
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if super::routes::routes(x.device()).fused(super::FusedOp::MaxPool) {
        max_pool2x2_fused(x)
    } else {
        max_pool2x2_composed(x)
    }
}

/// The fused op for f32 on every device, other dtypes through [`max_pool2x2_composed`].
pub fn max_pool2x2_fused(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        return max_pool2x2_composed(x);
    }
    let fused = || x.contiguous()?.apply_op1(MaxPool2x2);
    fail::fail_point!("ops::max_pool", |a| super::injected(
        "ops::max_pool",
        a,
        fused
    ));
    fused()
}

/// The same by reshaping into windows and reducing: any device and dtype, correct gradients
/// (ties share them). The oracle of [`max_pool2x2`].
pub fn max_pool2x2_composed(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * ho)?.narrow(3, 0, 2 * wo)?.contiguous()?;
    x.reshape((n, c, ho, 2, wo, 2))?.max(5)?.max(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    /// Against the reshape-and-reduce formulation (candle's reduction backward), on even and
    /// odd sizes.
    #[test]
    fn matches_the_reduction_formulation_forward_and_backward() -> Result<()> {
        let mut rng = crate::Rng::seed(2);
        for (h, w) in [(4, 6), (5, 7)] {
            let x = Var::from_tensor(&Tensor::from_vec(
                rng.normal_vec(2 * 3 * h * w, 1.0),
                (2, 3, h, w),
                &Device::Cpu,
            )?)?;
            let weights = Tensor::from_vec(
                rng.normal_vec(2 * 3 * (h / 2) * (w / 2), 1.0),
                (2, 3, h / 2, w / 2),
                &Device::Cpu,
            )?;
            let ours = max_pool2x2(&x)?;
            let theirs = max_pool2x2_composed(&x)?;
            assert_eq!(max_abs_diff(&ours, &theirs), 0.0);
            let go = (ours * &weights)?.sum_all()?.backward()?;
            let gt = (theirs * &weights)?.sum_all()?.backward()?;
            let d = max_abs_diff(go.get(&x).unwrap(), gt.get(&x).unwrap());
            assert!(d < 1e-6, "gradient differs by {d}");
        }
        Ok(())
    }

    /// Hand-computed: the gradient of a window's maximum is 1 at the maximum. candle's own
    /// `max_pool2d` backward gives ¼ (the bug this module works around).
    #[test]
    fn gradient_reaches_the_maximum_whole() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(
            &[[[[1f32, 5., 2., 0.], [3., 4., 7., 1.]]]],
            &Device::Cpu,
        )?)?;
        let w = Tensor::new(&[[[[10f32, 20.]]]], &Device::Cpu)?;
        let want = vec![0f32, 10., 0., 0., 0., 0., 20., 0.];
        let g = (max_pool2x2(&x)? * &w)?.sum_all()?.backward()?;
        assert_eq!(g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?, want);
        let g = (max_pool2x2_composed(&x)? * &w)?.sum_all()?.backward()?;
        assert_eq!(g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?, want);
        let g = (x.max_pool2d(2)? * &w)?.sum_all()?.backward()?;
        let candle: Vec<f32> = g.get(&x).unwrap().flatten_all()?.to_vec1()?;
        assert_eq!(
            candle[1], 2.5,
            "candle's max_pool2d backward changed: revisit this workaround"
        );
        Ok(())
    }
}
