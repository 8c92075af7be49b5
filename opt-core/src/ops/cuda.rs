//! The CUDA halves of the ops: kernel launches on candle's stream (`kernels/ops.cu`, compiled to
//! PTX by build.rs) and cuBLAS products through candle's own CUDA storage.
//!
//! Every input arrives contiguous (the ops' public functions make it so) and is read from its
//! layout's start offset. Unrun on a GPU in the session that wrote it: `orthopt gpu-check`
//! compares each against its CPU forward.

use super::patches::Patches;
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::builder_arg;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"));
const MODULE: &str = "opt_core_ops";

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
/// Threads per block of the per-channel reductions (`BN_THREADS` in ops.cu).
const BN_THREADS: u32 = 256;
/// Threads per block of the element-wise kernels (`ELEMENTWISE_THREADS` in ops.cu).
const ELEMENTWISE_THREADS: u32 = 1024;

/// The f32 elements of `s` from `l`'s start offset, which must be contiguous.
fn view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    if !l.is_contiguous() {
        bail!("{op}: input must be contiguous");
    }
    Ok(s.as_cuda_slice::<f32>()?.slice(l.start_offset()..))
}

fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c as u32, 1, 1),
        block_dim: (BN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks of [`ELEMENTWISE_THREADS`] covering `n` elements (the kernels loop over the rest).
fn elementwise(n: usize) -> LaunchConfig {
    let n = n.min(u32::MAX as usize) as u32;
    LaunchConfig {
        grid_dim: (n.div_ceil(ELEMENTWISE_THREADS).max(1), 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn wrap(slice: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::msg(format!("{what} = {v} exceeds i32")))
}

/// The geometry arguments every patch kernel takes, in ops.cu's order.
fn patch_args(p: &Patches) -> Result<[i32; 10]> {
    let (ho, wo) = p.out_hw();
    Ok([
        i32_of(p.n, "batch")?,
        i32_of(p.c, "channels")?,
        i32_of(p.h, "height")?,
        i32_of(p.w, "width")?,
        i32_of(p.k_h, "kernel height")?,
        i32_of(p.k_w, "kernel width")?,
        i32_of(p.pad, "padding")?,
        i32_of(p.stride, "stride")?,
        i32_of(ho, "output height")?,
        i32_of(wo, "output width")?,
    ])
}

fn launch_patches(
    name: &str,
    src: &CudaView<'_, f32>,
    dst: &CudaSlice<f32>,
    p: &Patches,
    total: usize,
    dev: &CudaDevice,
) -> Result<()> {
    let func = load!(dev, name, ELEMENTWISE_THREADS);
    let args = patch_args(p)?;
    let mut b = func.builder();
    b.arg(src);
    b.arg(dst);
    for a in &args {
        b.arg(a);
    }
    // SAFETY: the kernel reads `total`-consistent extents of `src` and writes `dst`, both sized
    // by the caller from the same geometry.
    unsafe { b.launch(elementwise(total)) }.w()?;
    Ok(())
}

/// `[n, c, h, w] → [n·ho·wo, c·k_h·k_w]`.
pub(super) fn im2col(x: &CudaStorage, l: &Layout, p: &Patches) -> Result<CudaStorage> {
    let dev = x.device();
    let total = p.n * p.rows_per_image() * p.cols();
    let out = unsafe { dev.alloc::<f32>(total)? };
    launch_patches("im2col_f32", &view(x, l, "im2col")?, &out, p, total, dev)?;
    Ok(wrap(out, dev))
}

/// The adjoint: `[n·ho·wo, c·k_h·k_w] → [n, c, h, w]`.
pub(super) fn col2im(cols: &CudaStorage, l: &Layout, p: &Patches) -> Result<CudaStorage> {
    let dev = cols.device();
    let total = p.n * p.c * p.h * p.w;
    let out = unsafe { dev.alloc::<f32>(total)? };
    launch_patches("col2im_f32", &view(cols, l, "col2im")?, &out, p, total, dev)?;
    Ok(wrap(out, dev))
}

/// `im2col(x) · Kᵀ` by one cuBLAS gemm (K read transposed in place), then `[n, ho·wo, c_out]`
/// copied strided into NCHW.
pub(super) fn conv2d_forward(
    x: &CudaStorage,
    xl: &Layout,
    k: &CudaStorage,
    kl: &Layout,
    p: &Patches,
    c_out: usize,
) -> Result<CudaStorage> {
    let cols = im2col(x, xl, p)?;
    let rows = p.n * p.rows_per_image();
    if !kl.is_contiguous() {
        bail!("conv2d: kernel must be contiguous");
    }
    let k_t =
        Layout::contiguous_with_offset((c_out, p.cols()), kl.start_offset()).transpose(0, 1)?;
    let product = cols.matmul(
        k,
        (1, rows, c_out, p.cols()),
        &Layout::contiguous((rows, p.cols())),
        &k_t,
    )?;
    let per_image = p.rows_per_image();
    let nchw = Layout::contiguous((p.n, per_image, c_out)).transpose(1, 2)?;
    let dev = x.device();
    let mut out = unsafe { dev.alloc_uninit(&Shape::from((p.n, c_out, per_image)), DType::F32)? };
    product.copy_strided_src(&mut out, 0, &nchw)?;
    Ok(out)
}

/// `(planes, h, w)` as the pooling kernels take them.
fn pool_args(n: usize, c: usize, h: usize, w: usize) -> Result<(i32, i32, i32)> {
    Ok((
        i32_of(n * c, "planes")?,
        i32_of(h, "height")?,
        i32_of(w, "width")?,
    ))
}

pub(super) fn max_pool_forward(
    x: &CudaStorage,
    l: &Layout,
    (n, c, h, w): (usize, usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = x.device();
    let total = n * c * (h / 2) * (w / 2);
    let out = unsafe { dev.alloc::<f32>(total)? };
    let (planes, h32, w32) = pool_args(n, c, h, w)?;
    let src = view(x, l, "max-pool")?;
    let func = load!(dev, "max_pool2x2_f32", ELEMENTWISE_THREADS);
    let mut b = func.builder();
    b.arg(&src);
    b.arg(&out);
    builder_arg!(b, planes, h32, w32);
    // SAFETY: `out` holds one value per window of `x`'s planes.
    unsafe { b.launch(elementwise(total)) }.w()?;
    Ok(wrap(out, dev))
}

pub(super) fn max_pool_backward(
    x: &CudaStorage,
    xl: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    (n, c, h, w): (usize, usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = x.device();
    let windows = n * c * (h / 2) * (w / 2);
    let out = dev.alloc_zeros::<f32>(n * c * h * w)?;
    let (planes, h32, w32) = pool_args(n, c, h, w)?;
    let op = "max-pool backward";
    let (xv, gv) = (view(x, xl, op)?, view(g, gl, op)?);
    let func = load!(dev, "max_pool2x2_backward_f32", ELEMENTWISE_THREADS);
    let mut b = func.builder();
    b.arg(&xv);
    b.arg(&gv);
    b.arg(&out);
    builder_arg!(b, planes, h32, w32);
    // SAFETY: one thread per window writes that window's maximum position in `out`.
    unsafe { b.launch(elementwise(windows)) }.w()?;
    Ok(wrap(out, dev))
}

type Input<'a> = (&'a CudaStorage, &'a Layout);

/// `(n, c, hw)` as the batch-norm kernels take them.
fn bn_args(n: usize, c: usize, hw: usize) -> Result<(i32, i32, i32)> {
    Ok((
        i32_of(n, "batch")?,
        i32_of(c, "channels")?,
        i32_of(hw, "plane")?,
    ))
}

/// `(x, γ, β) ↦ [y, mean, var]`: the per-channel statistics kernel, then the element-wise one.
pub(super) fn batch_norm_forward(
    (x, xl): Input<'_>,
    (g, gl): Input<'_>,
    (b, bl): Input<'_>,
    (n, c, hw): (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> Result<CudaStorage> {
    let dev = x.device();
    let len = n * c * hw;
    let out = unsafe { dev.alloc::<f32>(len + 2 * c)? };
    let op = "batchnorm";
    let (xv, gv, bv) = (view(x, xl, op)?, view(g, gl, op)?, view(b, bl, op)?);
    let (n32, c32, hw32) = bn_args(n, c, hw)?;
    let stats = load!(dev, "bn_stats_f32", BN_THREADS);
    let mut l = stats.builder();
    l.arg(&xv);
    l.arg(&out);
    builder_arg!(l, n32, c32, hw32);
    // SAFETY: one block per channel writes that channel's two statistics past `len`.
    unsafe { l.launch(per_channel(c)) }.w()?;
    let apply = load!(dev, "bn_apply_f32", ELEMENTWISE_THREADS);
    let mut l = apply.builder();
    l.arg(&xv);
    l.arg(&gv);
    l.arg(&bv);
    l.arg(&out);
    builder_arg!(l, n32, c32, hw32, eps, relu as i32);
    // SAFETY: element-wise over the first `len` entries, reading the statistics after them.
    unsafe { l.launch(elementwise(len)) }.w()?;
    Ok(wrap(out, dev))
}

/// `(x, d[y, ·], [y, mean, var], γ) ↦ [dx, dγ, dβ]`: per-channel sums, then `dx`.
pub(super) fn batch_norm_backward(
    (x, xl): Input<'_>,
    (dy, dyl): Input<'_>,
    (res, rl): Input<'_>,
    (gamma, gl): Input<'_>,
    (n, c, hw): (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> Result<CudaStorage> {
    let dev = x.device();
    let len = n * c * hw;
    let out = unsafe { dev.alloc::<f32>(len + 2 * c)? };
    let op = "batchnorm backward";
    let (xv, dyv, rv, gv) = (
        view(x, xl, op)?,
        view(dy, dyl, op)?,
        view(res, rl, op)?,
        view(gamma, gl, op)?,
    );
    let (n32, c32, hw32) = bn_args(n, c, hw)?;
    let sums = load!(dev, "bn_backward_sums_f32", BN_THREADS);
    let mut l = sums.builder();
    l.arg(&xv);
    l.arg(&dyv);
    l.arg(&rv);
    l.arg(&out);
    builder_arg!(l, n32, c32, hw32, eps, relu as i32);
    // SAFETY: one block per channel writes that channel's two sums past `len`.
    unsafe { l.launch(per_channel(c)) }.w()?;
    let apply = load!(dev, "bn_backward_apply_f32", ELEMENTWISE_THREADS);
    let mut l = apply.builder();
    l.arg(&xv);
    l.arg(&dyv);
    l.arg(&rv);
    l.arg(&gv);
    l.arg(&out);
    builder_arg!(l, n32, c32, hw32, eps, relu as i32);
    // SAFETY: element-wise over the first `len` entries, reading the sums after them.
    unsafe { l.launch(elementwise(len)) }.w()?;
    Ok(wrap(out, dev))
}

/// Clamped `acos`, f32 or f64.
pub(super) fn acos(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    match x.dtype() {
        DType::F32 => acos_as::<f32>(x, l, "acos_f32"),
        DType::F64 => acos_as::<f64>(x, l, "acos_f64"),
        other => bail!("acos: only f32 and f64 are supported, got {other:?}"),
    }
}

fn acos_as<T: CudaDType + DeviceRepr>(
    x: &CudaStorage,
    l: &Layout,
    kernel: &str,
) -> Result<CudaStorage> {
    let dev = x.device();
    if !l.is_contiguous() {
        bail!("acos: input must be contiguous");
    }
    let n = l.shape().elem_count();
    let src = x.as_cuda_slice::<T>()?.slice(l.start_offset()..);
    let out = unsafe { dev.alloc::<T>(n)? };
    let func = load!(dev, kernel, ELEMENTWISE_THREADS);
    let mut b = func.builder();
    b.arg(&src);
    b.arg(&out);
    builder_arg!(b, n as u64);
    // SAFETY: element-wise over n entries of both.
    unsafe { b.launch(elementwise(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
