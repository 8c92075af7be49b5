//! The element-wise parts of one Cayley-SGD step (OGD, `crate::cayley_sgd`) fused into four
//! passes over `d×d`, around candle's matmuls.
//!
//! The composed step is six matmuls and about fifteen element-wise candle ops on one thread, each
//! a pass over the matrix with a fresh allocation; at CNN-6 width 64 the rotations hold 2.7 M
//! entries and the optimizer took 79 ms of the step. Each fused pass computes exactly the f32 (or
//! f64) operations of the composed ops it replaces, in their order, so the step is bit for bit
//! the composed one (tested in `cayley_sgd`); passes over large matrices are split over the pool.
//! Off the CPU, or for a layout they do not take, the callers run the composed ops.

use super::elementwise::{for_each_chunk, scaled, slice, slice_mut, Real};
use candle_core::{bail, CpuStorage, CustomOp2, DType, InplaceOp2, Layout, Result, Shape, Tensor};

/// Whether the fused passes take these tensors: CPU, f32 or f64, contiguous, one shape.
pub fn cayley_fusable(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else {
        return false;
    };
    first.device().is_cpu()
        && matches!(first.dtype(), DType::F32 | DType::F64)
        && ts
            .iter()
            .all(|t| t.is_contiguous() && t.dtype() == first.dtype() && t.dims() == first.dims())
}

/// `β·m − g` (the composed `(m * β) − g`).
pub fn cayley_momentum(m: &Tensor, g: &Tensor, beta: f64) -> Result<Tensor> {
    m.apply_op2_no_bwd(g, &Pass::Momentum { beta })
}

/// `W = Ŵ − Ŵᵀ` with `Ŵ = A − ½C` (the composed `what = a − c * 0.5; what − whatᵀ`), for square
/// `A`, `C`.
pub fn cayley_skew(a: &Tensor, c: &Tensor) -> Result<Tensor> {
    let (rows, cols) = a.dims2()?;
    if rows != cols {
        bail!("cayley step: W is square, got {rows}×{cols}");
    }
    a.apply_op2_no_bwd(c, &Pass::Skew { d: rows })
}

/// `X + (X + T·s)`: the next fixed-point iterate's argument `X + Y` from `Y = X + T·s` (the
/// composed `x + (x + t.broadcast_mul(s))`); `s` is the step's scalar as the composed ops hold
/// it, in the tensors' dtype.
pub fn cayley_iterate(x: &Tensor, t: &Tensor, s: f64) -> Result<Tensor> {
    x.apply_op2_no_bwd(t, &Pass::Iterate { s })
}

/// `X ← X + T·s` in place (the composed `x + t.broadcast_mul(s)`, then `x.set`).
pub fn cayley_retract(x: &Tensor, t: &Tensor, s: f64) -> Result<()> {
    x.inplace_op2(t, &Retract { s })
}

/// `out[i] = f(i)` over `out`.
fn fill<T: Real>(out: &mut [T], f: impl Fn(usize) -> T + Sync) {
    for_each_chunk(out, |first, chunk| {
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = f(first + i);
        }
    });
}

/// The passes that produce a new tensor from two.
enum Pass {
    Momentum { beta: f64 },
    Skew { d: usize },
    Iterate { s: f64 },
}

impl Pass {
    fn run<T: Real>(&self, a: &[T], b: &[T]) -> Vec<T> {
        let mut out = vec![T::of(0.0); a.len()];
        match *self {
            Self::Momentum { beta } => {
                let beta = T::of(beta);
                fill(&mut out, |i| scaled(a[i], beta) - b[i]);
            }
            Self::Skew { d } => {
                let half = T::of(0.5);
                let what = |i: usize| a[i] - scaled(b[i], half);
                fill(&mut out, |k| {
                    let (i, j) = (k / d, k % d);
                    what(k) - what(j * d + i)
                });
            }
            Self::Iterate { s } => {
                let s = T::of(s);
                fill(&mut out, |i| a[i] + (a[i] + b[i] * s));
            }
        }
        out
    }
}

impl CustomOp2 for Pass {
    fn name(&self) -> &'static str {
        match self {
            Self::Momentum { .. } => "cayley-momentum",
            Self::Skew { .. } => "cayley-skew",
            Self::Iterate { .. } => "cayley-iterate",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.run(slice(a, l1)?, slice(b, l2)?))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(self.run(slice(a, l1)?, slice(b, l2)?))
            }
            _ => bail!("cayley step: operands must share f32 or f64"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// `X ← X + T·s` in place.
struct Retract {
    s: f64,
}

fn retract<T: Real>(x: &mut [T], t: &[T], s: f64) {
    let s = T::of(s);
    for_each_chunk(x, |first, chunk| {
        for (i, x) in chunk.iter_mut().enumerate() {
            *x = *x + t[first + i] * s;
        }
    });
}

impl InplaceOp2 for Retract {
    fn name(&self) -> &'static str {
        "cayley-retract"
    }

    fn cpu_fwd(&self, x: &mut CpuStorage, lx: &Layout, t: &CpuStorage, lt: &Layout) -> Result<()> {
        match (x, t) {
            (CpuStorage::F32(x), CpuStorage::F32(t)) => {
                retract(slice_mut(x, lx)?, slice(t, lt)?, self.s);
            }
            (CpuStorage::F64(x), CpuStorage::F64(t)) => {
                retract(slice_mut(x, lx)?, slice(t, lt)?, self.s);
            }
            _ => bail!("cayley step: operands must share f32 or f64"),
        }
        Ok(())
    }
}
