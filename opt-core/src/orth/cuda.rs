//! The CUDA halves of the GS/HR device routes' three small ops (`kernels/maps.cu`, one
//! thread block per matrix, f64), launched on candle's stream.
//!
//! Unrun on a GPU in the session that wrote it: the same algorithms run on the CPU in
//! `cholesky_qr.rs`'s tests, and `orthopt gpu-check` compares the device route with the exact
//! map.

use candle_core::backend::BackendStorage;
use candle_core::builder_arg;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/maps.ptx"));
const MODULE: &str = "opt_core_maps";

/// The kernel `$name` of this module, checked to take blocks of `$threads` on the device.
macro_rules! load {
    ($dev:expr, $name:expr, $threads:expr) => {
        crate::launch::checked(
            $dev.get_or_load_custom_func($name, MODULE, PTX)?,
            $name,
            $threads,
        )?
    };
}
/// Threads per block (one block per matrix): enough to keep a trailing update of a 1024×1024
/// matrix busy, within the 1024-thread limit; `MAPS_THREADS` in maps.cu, every kernel's launch
/// bound (a power of two, for the pivot search's reduction).
const THREADS: u32 = 512;

/// The f64 `[b, n, n]` stack of `s` from `l`'s start offset, which must be contiguous.
fn stack<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<(CudaView<'a, f64>, u32, i32)> {
    let &[b, n, m] = l.dims() else {
        bail!("{op}: expected a [b, n, n] stack, got {:?}", l.dims());
    };
    if n != m || !l.is_contiguous() {
        bail!(
            "{op}: expected a contiguous square stack, got {:?}",
            l.dims()
        );
    }
    let b = u32::try_from(b).map_err(|_| candle_core::Error::msg(format!("{op}: batch {b}")))?;
    let n = i32::try_from(n).map_err(|_| candle_core::Error::msg(format!("{op}: size {n}")))?;
    Ok((s.as_cuda_slice::<f64>()?.slice(l.start_offset()..), b, n))
}

fn per_matrix(b: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (b, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Upper Cholesky factors; a matrix with a pivot that is not positive comes out all NaN (no read
/// of the device: the route's one orthogonality check reports it).
pub(super) fn cholesky_upper(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let (g, b, n) = stack(s, l, "cholesky")?;
    let out = unsafe { dev.alloc::<f64>(l.shape().elem_count())? };
    let func = load!(dev, "cholesky_upper_f64", THREADS);
    let mut builder = func.builder();
    builder.arg(&g);
    builder.arg(&out);
    builder_arg!(builder, n);
    // SAFETY: block k reads and writes only matrix k of `g`/`out`, both sized from the same
    // layout.
    unsafe { builder.launch(per_matrix(b)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l.shape().clone(),
    ))
}

/// Inverses of upper-triangular matrices.
pub(super) fn upper_inverse(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let (r, b, n) = stack(s, l, "upper inverse")?;
    let out = unsafe { dev.alloc::<f64>(l.shape().elem_count())? };
    let func = load!(dev, "upper_inverse_f64", THREADS);
    let mut builder = func.builder();
    builder.arg(&r);
    builder.arg(&out);
    builder_arg!(builder, n);
    // SAFETY: block k reads matrix k of `r` and writes every entry of matrix k of `out`.
    unsafe { builder.launch(per_matrix(b)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l.shape().clone(),
    ))
}

/// `sign(det A_k)` of every matrix (LU with partial pivoting in a scratch copy), as `[b]` f64.
pub(super) fn det_sign(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let (a, b, n) = stack(s, l, "det sign")?;
    let work = unsafe { dev.alloc::<f64>(l.shape().elem_count())? };
    let out = unsafe { dev.alloc::<f64>(b as usize)? };
    let func = load!(dev, "det_sign_f64", THREADS);
    let mut builder = func.builder();
    builder.arg(&a);
    builder.arg(&work);
    builder.arg(&out);
    builder_arg!(builder, n);
    // SAFETY: block k copies matrix k of `a` into its part of `work`, factorises it there and
    // writes `out[k]`; the pivot search uses THREADS (= DET_THREADS) shared slots.
    unsafe { builder.launch(per_matrix(b)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(b as usize),
    ))
}
