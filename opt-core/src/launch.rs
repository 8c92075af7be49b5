//! What every kernel launch of the crate's own CUDA modules (`ops`, `orth`) checks when the
//! kernel is loaded.

/// The loaded kernel `func`, or an error naming `name` unless it can run blocks of `threads` on its device
/// (its registers and shared memory decide how many threads a block may have): checked when a
/// kernel is loaded, before its first launch.
pub(crate) fn checked<F>(func: F, name: &str, threads: u32) -> candle_core::Result<F>
where
    F: std::ops::Deref<Target = candle_core::cuda_backend::cudarc::driver::CudaFunction>,
{
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as Attr;
    use candle_core::cuda_backend::WrapErr;
    let max = func
        .get_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
        .w()?;
    if i64::from(max) < i64::from(threads) {
        candle_core::bail!(
            "kernel {name}: launched with {threads} threads per block, but this device allows it \
             at most {max} (registers or shared memory per block)"
        );
    }
    Ok(func)
}
