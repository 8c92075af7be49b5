//! What the fused element-wise optimizer passes share (`sgd`, `cayley_step`): their arithmetic
//! in f32 or f64, candle's rounding of `tensor * c`, contiguous slices of a storage, and a pass
//! that uses the pool only where the tensor is large enough to pay for waking it.

use candle_core::{bail, Layout, Result};

/// The arithmetic of a pass, in f32 or f64.
pub(super) trait Real:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    fn of(x: f64) -> Self;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
}

/// `x·c` as candle's `tensor * c` computes it (`affine(c, 0)`: `x·c + 0`, which turns −0 into +0).
pub(super) fn scaled<T: Real>(x: T, c: T) -> T {
    x * c + T::of(0.0)
}

/// `values[layout]` as a contiguous slice.
pub(super) fn slice<'a, T>(values: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("fused pass: a non-contiguous operand"),
    }
}

pub(super) fn slice_mut<'a, T>(values: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut values[start..end]),
        None => bail!("fused pass: a non-contiguous operand"),
    }
}

/// Below this many elements a pass runs on the calling thread: waking the pool would cost more
/// than it saves (a network's BN scales and biases, S-OPT's small rotations; measured on
/// ResNet-20, whose many small tensors lost ~10 % of the baseline's step to it).
const PARALLEL_MIN: usize = 1 << 16;

/// `f(first, chunk)` over disjoint chunks of `out`, split over the pool when it is large.
pub(super) fn for_each_chunk<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    if out.len() < PARALLEL_MIN {
        f(0, out);
    } else {
        crate::par::for_each_chunk(out, 1, f);
    }
}
