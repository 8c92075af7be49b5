//! The device seam: every fused op of the training step is one op type here, with a
//! `cpu_fwd` and (with the `cuda` feature) a `cuda_fwd`, so callers never branch on the device.
//!
//! candle-nn's pattern: each op's public function applies the op for f32 inputs on any device
//! and falls back to its composed candle formulation for other dtypes; the composed formulation
//! stays beside each op (`*_composed`) as its test oracle. Backward passes are written in
//! tensors, from further ops of this module, so they run wherever the forward ran; the one
//! exception is the CPU convolution, whose backward (inside the op type) works on the host
//! slices image by image.
//!
//! | op | CPU | CUDA |
//! |---|---|---|
//! | [`conv2d`] | per image: patches in cache + one gemm; backward the same, col2im per image | im2col kernel + cuBLAS; the same backward (never candle's `conv_transpose2d`) |
//! | [`batch_norm_train`] | fused passes (row sums in f32 lanes, f64 across rows), packed `[y, mean, var]` | reduction + apply kernels, same packing |
//! | [`max_pool2x2`] | first-maximum routing | the same rule, one kernel each way |
//! | [`orthogonalize`], [`orthogonalize_batched`] | exact: f64 factorisations (faer), a batch's matrices concurrently; gemm (`run.map_route`): as on CUDA | exact: through host memory, one round trip per batch; gemm (the default): LS, CP batched Newton–Schulz, GS, HR Cholesky-QR2, on the device |
//! | [`acos`] | clamped `acos` | the same, one kernel |
//! | [`momentum_sgd_step`] | two in-place passes over the pool | the composed candle ops |
//! | OGD's step (`cayley_*`) | four fused element-wise passes around candle's matmuls | the composed candle ops |
//!
//! **Routes** ([`routes`]): each public function asks the device's route table whether its
//! fused op (`*_fused`) or its composed candle formulation (`*_composed`) runs, and which route
//! a map's batch takes; [`self_check`] fills the table when a run opens a device. Nothing else
//! in the crate chooses a route.

mod acos;
mod batch_norm;
mod cayley_step;
mod conv2d;
#[cfg(feature = "cuda")]
mod cuda;
mod elementwise;
mod maps;
mod max_pool;
mod patches;
pub mod routes;
pub mod self_check;
mod sgd;

pub use crate::orth::OrthMap;
pub use acos::{acos, acos_composed, acos_fused};
pub use batch_norm::{
    batch_norm_train, batch_norm_train_composed, batch_norm_train_fused, BatchNormTrain,
};
pub use cayley_step::{
    cayley_fusable, cayley_iterate, cayley_momentum, cayley_retract, cayley_skew,
};
pub use conv2d::{conv2d, conv2d_composed, conv2d_fused};
pub use maps::{
    gemm_route, map_groups, orthogonalize, orthogonalize_batched, orthogonalize_each,
    rotate_batched, MapGroup,
};
pub use max_pool::{max_pool2x2, max_pool2x2_composed, max_pool2x2_fused};
pub use routes::{FusedOp, MapRoute, MapRouteChoice, OpsMode};
pub use sgd::{momentum_sgd_step, momentum_sgd_step_composed, SgdStep};

use candle_core::{CpuStorage, Layout, Result};

/// A fused op's injected fault (feature `failpoints`, for the fault-injection tests):
/// `FAILPOINTS=ops::conv2d=return` makes the op fail as a kernel launch would;
/// `=return(corrupt)` returns its result scaled by 1.01 (a kernel that computes wrong values).
#[cfg(feature = "failpoints")]
pub(crate) fn injected(
    name: &str,
    action: Option<String>,
    compute: impl FnOnce() -> Result<candle_core::Tensor>,
) -> Result<candle_core::Tensor> {
    match action.as_deref() {
        Some("corrupt") => compute()?.affine(1.01, 0.0),
        _ => candle_core::bail!("injected failure (failpoint {name})"),
    }
}

/// The contiguous f32 elements of a CPU storage, or an error naming the op.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Free memory of a GPU in bytes, as its driver reports it; `None` for the CPU (whose budget the
/// caller reads from the operating system).
pub fn free_device_memory(device: &candle_core::Device) -> Result<Option<u64>> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => {
            use candle_core::cuda_backend::WrapErr;
            let (free, _total) = d.cuda_stream().context().mem_get_info().w()?;
            Ok(Some(free as u64))
        }
        _ => Ok(None),
    }
}
