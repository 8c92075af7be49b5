//! Convolution as im2col + one matrix product, on every device.
//!
//! candle's CPU `conv2d` backward computes the input gradient with a direct (vec-dot per
//! output pixel) `conv_transpose2d`, which makes CNN-6 training several times slower than the
//! forward pass justifies. Lowering the convolution to `im2col(x) · Kᵀ` puts forward and both
//! backward products into gemm; the only non-gemm work is the im2col gather and its adjoint,
//! the col2im scatter-add, implemented here as custom ops with exact adjoint backward passes.
//! On CUDA the same three ops run as kernels (`ops/cuda.rs`) around cuBLAS products: candle's
//! own CUDA backward goes through a naive `conv_transpose2d` kernel, which the training path
//! must not use.

mod per_image;

use super::contiguous_f32;
use super::patches::Patches;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor,
};

/// `[n, c, h, w] → [n·ho·wo, c·k_h·k_w]`.
struct Im2Col(Patches);

/// The adjoint of [`Im2Col`]: `[n·ho·wo, c·k_h·k_w] → [n, c, h, w]`, summing overlapping taps.
struct Col2Im(Patches);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let input = contiguous_f32(storage, layout, "im2col")?;
        let out = per_image::im2col_rows(&p, input);
        Ok((
            CpuStorage::F32(out),
            Shape::from((p.n * p.rows_per_image(), p.cols())),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let p = self.0;
        Ok((
            super::cuda::im2col(storage, layout, &p)?,
            Shape::from((p.n * p.rows_per_image(), p.cols())),
        ))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let input = contiguous_f32(storage, layout, "col2im")?;
        let out = per_image::col2im_rows(&p, input);
        Ok((CpuStorage::F32(out), Shape::from((p.n, p.c, p.h, p.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let p = self.0;
        Ok((
            super::cuda::col2im(storage, layout, &p)?,
            Shape::from((p.n, p.c, p.h, p.w)),
        ))
    }
}

/// A convolution as one graph node: `im2col(x)·Kᵀ` inside the forward, and the two
/// gradient products inside the backward. Keeping the 9×-activation-sized patch matrix out of
/// the autograd graph matters: candle accumulates every node's gradient into a fresh zeroed
/// buffer, which for the patch matrix cost more than the products themselves.
struct Conv2dIm2col {
    pad: usize,
    stride: usize,
}

impl Conv2dIm2col {
    fn patches(&self, x: &Layout, k: &Layout) -> Result<(Patches, usize)> {
        let (n, c, h, w) = x.shape().dims4()?;
        let (c_out, c_k, k_h, k_w) = k.shape().dims4()?;
        if c != c_k {
            candle_core::bail!("conv2d_im2col: input has {c} channels, kernel expects {c_k}");
        }
        if h + 2 * self.pad < k_h || w + 2 * self.pad < k_w {
            candle_core::bail!(
                "conv2d_im2col: kernel {k_h}×{k_w} larger than padded input {h}×{w}"
            );
        }
        Ok((
            Patches {
                n,
                c,
                h,
                w,
                k_h,
                k_w,
                pad: self.pad,
                stride: self.stride,
            },
            c_out,
        ))
    }
}

impl CustomOp2 for Conv2dIm2col {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (p, c_out) = self.patches(xl, kl)?;
        let (ho, wo) = p.out_hw();
        let x = contiguous_f32(xs, xl, "conv2d")?;
        let k = contiguous_f32(ks, kl, "conv2d")?;
        Ok((
            CpuStorage::F32(per_image::forward(&p, x, k, c_out)),
            Shape::from((p.n, c_out, ho, wo)),
        ))
    }

    /// The same product on the GPU: the im2col kernel, one cuBLAS gemm against the kernel read
    /// transposed in place, and a strided copy from `[n, ho·wo, c_out]` to NCHW.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (p, c_out) = self.patches(xl, kl)?;
        let (ho, wo) = p.out_hw();
        let out = super::cuda::conv2d_forward(xs, xl, ks, kl, &p, c_out)?;
        Ok((out, Shape::from((p.n, c_out, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let wants_grad_x = x.track_op() || x.is_variable();
        let (x, k) = (x.detach(), k.detach());
        let (p, c_out) = self.patches(x.layout(), k.layout())?;
        if x.device().is_cpu() {
            return cpu_backward(&p, c_out, (&x, &k, grad), wants_grad_x);
        }
        let rows = p.n * p.rows_per_image();
        // [n, c_out, ho, wo] → [n·ho·wo, c_out]
        let g = grad
            .detach()
            .reshape((p.n, c_out, p.rows_per_image()))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, c_out))?;
        let cols = x.contiguous()?.apply_op1_no_bwd(&Im2Col(p))?;
        let grad_k = g.t()?.matmul(&cols)?.reshape(k.shape())?;
        // The network input needs no gradient: skip the largest product when nothing wants it.
        let grad_x = if wants_grad_x {
            let kmat = k.reshape((c_out, p.cols()))?;
            Some(g.matmul(&kmat)?.apply_op1_no_bwd(&Col2Im(p))?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_k)))
    }
}

/// Both gradients on the CPU, image by image ([`per_image`]).
fn cpu_backward(
    p: &Patches,
    c_out: usize,
    (x, k, grad): (&Tensor, &Tensor, &Tensor),
    wants_grad_x: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    let (gs, gl) = grad.storage_and_layout();
    let (xs, xl) = x.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (Storage::Cpu(gs), Storage::Cpu(xs), Storage::Cpu(ks)) = (&*gs, &*xs, &*ks) else {
        candle_core::bail!("conv2d backward: CPU tensors expected");
    };
    let gy = contiguous_f32(gs, gl, "conv2d backward")?;
    let kv = contiguous_f32(ks, kl, "conv2d backward")?;
    let grad_k = per_image::grad_kernel(p, contiguous_f32(xs, xl, "conv2d backward")?, gy, c_out);
    let grad_k = Tensor::from_vec(grad_k, k.shape(), k.device())?;
    let grad_x = if wants_grad_x {
        let gx = per_image::grad_input(p, gy, kv, c_out);
        Some(Tensor::from_vec(gx, x.shape(), x.device())?)
    } else {
        None
    };
    Ok((grad_x, Some(grad_k)))
}

/// Convolution of `x` (`[n, c, h, w]`) with `kernel` (`[c_out, c, k_h, k_w]`), symmetric
/// zero padding and a stride: [`conv2d_fused`] where the device's routes say so (see
/// [`super::routes`]), else [`conv2d_composed`]. Same result as
/// `x.conv2d(kernel, pad, stride, 1, 1)`.
pub fn conv2d(x: &Tensor, kernel: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    if super::routes::routes(x.device()).fused(super::FusedOp::Conv2d) {
        conv2d_fused(x, kernel, pad, stride)
    } else {
        conv2d_composed(x, kernel, pad, stride)
    }
}

/// The fused convolution: `im2col(x) · Kᵀ` for f32 on every device (one graph node,
/// gemm-based backward); other dtypes take [`conv2d_composed`].
pub fn conv2d_fused(x: &Tensor, kernel: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("conv2d: stride must be positive");
    }
    if x.dtype() != DType::F32 || kernel.dtype() != DType::F32 {
        return conv2d_composed(x, kernel, pad, stride);
    }
    let fused = || {
        x.contiguous()?
            .apply_op2(&kernel.contiguous()?, Conv2dIm2col { pad, stride })
    };
    fail::fail_point!("ops::conv2d", |a| super::injected("ops::conv2d", a, fused));
    fused()
}

/// candle's own convolution: the oracle [`conv2d`] is tested against.
pub fn conv2d_composed(x: &Tensor, kernel: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    x.conv2d(kernel, pad, stride, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::Rng::seed(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(r.normal_vec(n, 1.0), shape, &Device::Cpu).unwrap()
    }

    /// Forward and both gradients agree with candle's own convolution (an independent
    /// implementation) for SAME, VALID and 1×1 geometries.
    #[test]
    fn matches_candle_conv_forward_and_backward() -> Result<()> {
        // Strided cases: ResNet's down-sampling 3×3 (even and odd inputs) and 1×1 projection.
        for (shape, kshape, pad, stride) in [
            ([3, 4, 7, 6], [5, 4, 3, 3], 1, 1),
            ([2, 3, 4, 4], [6, 3, 4, 4], 0, 1),
            ([2, 5, 3, 3], [4, 5, 1, 1], 0, 1),
            ([2, 4, 8, 8], [6, 4, 3, 3], 1, 2),
            ([2, 3, 7, 5], [4, 3, 3, 3], 1, 2),
            ([2, 4, 8, 8], [5, 4, 1, 1], 0, 2),
            // More images than one kernel-gradient partial sum holds.
            ([19, 3, 6, 5], [4, 3, 3, 3], 1, 1),
        ] {
            let x = Var::from_tensor(&randn(&shape, 1))?;
            let k = Var::from_tensor(&randn(&kshape, 2))?;
            let probe = randn(&[1], 3); // fixed weights for a scalar loss
            let ours = conv2d(&x, &k, pad, stride)?;
            let theirs = conv2d_composed(&x, &k, pad, stride)?;
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_abs_diff(&ours, &theirs) < 1e-4);
            let weights = randn(ours.dims(), 4);
            let lo = (ours * &weights)?.sum_all()?.broadcast_mul(&probe)?;
            let lt = (theirs * &weights)?.sum_all()?.broadcast_mul(&probe)?;
            let (go, gt) = (lo.backward()?, lt.backward()?);
            assert!(max_abs_diff(go.get(&x).unwrap(), gt.get(&x).unwrap()) < 1e-3);
            assert!(max_abs_diff(go.get(&k).unwrap(), gt.get(&k).unwrap()) < 1e-3);
        }
        Ok(())
    }
}
