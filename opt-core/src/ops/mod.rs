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
//! | [`orthogonalize`], [`orthogonalize_batched`] | f64 factorisations (faer), a batch's matrices concurrently | LS, CP: batched Newton–Schulz on the device; GS, HR: through host memory, one round trip per batch (see `orth`) |
//! | [`acos`] | clamped `acos` | the same, one kernel |

mod acos;
mod batch_norm;
mod conv2d;
#[cfg(feature = "cuda")]
mod cuda;
mod max_pool;

pub use crate::orth::{orthogonalize, orthogonalize_batched, OrthMap};
pub use acos::acos;
pub use batch_norm::{batch_norm_train, batch_norm_train_composed, BatchNormTrain};
pub use conv2d::{conv2d, conv2d_composed};
pub use max_pool::{max_pool2x2, max_pool2x2_composed};

use candle_core::{CpuStorage, Layout, Result};

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
