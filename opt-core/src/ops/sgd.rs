//! One heavy-ball SGD step with L2 weight decay, `a ← μ·a + (g + wd·θ)`, `θ ← θ − lr·a`,
//! written in place into `θ` and `a`.
//!
//! The composed form ([`momentum_sgd_step_composed`]) is six candle ops and two copies back
//! into the variables: eight passes over `θ`'s size, each allocating. For an OPT network the
//! rotation matrices are most of the parameters (CNN-6 width 64: 2.7 M of them), so that was a
//! measurable part of the step on one thread. On the CPU the fused form is two passes, split
//! over the pool, and computes the same f32 (or f64) operations in the same order, so its
//! results are bit for bit the composed ones (tested). Elsewhere — a GPU, or a layout it does
//! not take — the composed form runs.

use super::elementwise::{for_each_chunk, scaled, slice, slice_mut, Real};
use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};

/// The step's constants.
#[derive(Debug, Clone, Copy)]
pub struct SgdStep {
    pub momentum: f64,
    /// Multiplies `θ` in the gradient (0: no decay).
    pub weight_decay: f64,
    pub lr: f64,
}

/// One step for `theta` with accumulator `accum` and gradient `grad` (same shape and dtype).
pub fn momentum_sgd_step(theta: &Var, accum: &Var, grad: &Tensor, step: SgdStep) -> Result<()> {
    let fusable = theta.device().is_cpu()
        && matches!(theta.dtype(), DType::F32 | DType::F64)
        && [theta.as_tensor(), accum.as_tensor(), grad]
            .iter()
            .all(|t| t.is_contiguous() && t.dtype() == theta.dtype() && t.dims() == theta.dims());
    if !fusable {
        return momentum_sgd_step_composed(theta, accum, grad, step);
    }
    accum
        .as_tensor()
        .inplace_op3(grad, theta.as_tensor(), &AccumUpdate(step))?;
    theta
        .as_tensor()
        .inplace_op2(accum.as_tensor(), &ParamUpdate(step))
}

/// The same step from candle ops (the reference, and the route off the CPU).
pub fn momentum_sgd_step_composed(
    theta: &Var,
    accum: &Var,
    grad: &Tensor,
    step: SgdStep,
) -> Result<()> {
    let t = theta.as_tensor();
    let mut g = grad.clone();
    if step.weight_decay != 0.0 {
        g = (g + (t * step.weight_decay)?)?;
    }
    let a = ((accum.as_tensor() * step.momentum)? + g)?;
    accum.set(&a)?;
    theta.set(&(t - (a * step.lr)?)?)
}

/// `a ← μ·a + (g + wd·θ)`, in the composed ops' order and rounding.
fn accum_update<T: Real>(a: &mut [T], g: &[T], theta: &[T], step: SgdStep) {
    let (mu, wd) = (T::of(step.momentum), T::of(step.weight_decay));
    let decay = step.weight_decay != 0.0;
    for_each_chunk(a, |first, chunk| {
        let (g, theta) = (&g[first..], &theta[first..]);
        for (i, a) in chunk.iter_mut().enumerate() {
            let g = if decay {
                g[i] + scaled(theta[i], wd)
            } else {
                g[i]
            };
            *a = scaled(*a, mu) + g;
        }
    });
}

/// `θ ← θ − lr·a`, in the composed ops' order and rounding.
fn param_update<T: Real>(theta: &mut [T], a: &[T], step: SgdStep) {
    let lr = T::of(step.lr);
    for_each_chunk(theta, |first, chunk| {
        let a = &a[first..];
        for (i, t) in chunk.iter_mut().enumerate() {
            *t = *t - scaled(a[i], lr);
        }
    });
}

/// `a ← μ·a + (g + wd·θ)` in place in `a`.
struct AccumUpdate(SgdStep);

impl InplaceOp3 for AccumUpdate {
    fn name(&self) -> &'static str {
        "sgd-accumulate"
    }

    fn cpu_fwd(
        &self,
        a: &mut CpuStorage,
        la: &Layout,
        g: &CpuStorage,
        lg: &Layout,
        theta: &CpuStorage,
        lt: &Layout,
    ) -> Result<()> {
        match (a, g, theta) {
            (CpuStorage::F32(a), CpuStorage::F32(g), CpuStorage::F32(t)) => {
                accum_update(slice_mut(a, la)?, slice(g, lg)?, slice(t, lt)?, self.0);
            }
            (CpuStorage::F64(a), CpuStorage::F64(g), CpuStorage::F64(t)) => {
                accum_update(slice_mut(a, la)?, slice(g, lg)?, slice(t, lt)?, self.0);
            }
            _ => bail!("sgd step: θ, its accumulator and gradient must share f32 or f64"),
        }
        Ok(())
    }
}

/// `θ ← θ − lr·a` in place in `θ`.
struct ParamUpdate(SgdStep);

impl InplaceOp2 for ParamUpdate {
    fn name(&self) -> &'static str {
        "sgd-update"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        lt: &Layout,
        a: &CpuStorage,
        la: &Layout,
    ) -> Result<()> {
        match (theta, a) {
            (CpuStorage::F32(t), CpuStorage::F32(a)) => {
                param_update(slice_mut(t, lt)?, slice(a, la)?, self.0);
            }
            (CpuStorage::F64(t), CpuStorage::F64(a)) => {
                param_update(slice_mut(t, lt)?, slice(a, la)?, self.0);
            }
            _ => bail!("sgd step: θ and its accumulator must share f32 or f64"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(seed: u64, n: usize, dtype: DType) -> Result<Var> {
        let v = crate::Rng::seed(seed).normal_vec(n, 1.0);
        Var::from_tensor(&Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)?)
    }

    fn bits(t: &Tensor) -> Result<Vec<u64>> {
        Ok(t.to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .map(|x| x.to_bits())
            .collect())
    }

    /// Three steps, fused and composed from the same state, agree bit for bit in θ and the
    /// accumulator, with and without decay, in f32 and f64, on the calling thread and over the
    /// pool (odd lengths, so the chunks split unevenly; a zero gradient, so that the sign of
    /// zero is exercised).
    #[test]
    fn the_fused_step_is_the_composed_step_bit_for_bit() -> Result<()> {
        for (dtype, n) in [
            (DType::F32, 1001),
            (DType::F32, 100_003),
            (DType::F64, 100_003),
        ] {
            for weight_decay in [0.0, 5e-4] {
                let (t1, t2) = (var(1, n, dtype)?, var(1, n, dtype)?);
                let zeros = || Var::from_tensor(&Tensor::zeros(n, dtype, &Device::Cpu)?);
                let (a1, a2) = (zeros()?, zeros()?);
                let step = SgdStep {
                    momentum: 0.9,
                    weight_decay,
                    lr: 0.05,
                };
                for k in 0..3 {
                    let mut g = var(10 + k, n, dtype)?.as_tensor().clone();
                    if k == 1 {
                        g = g.zeros_like()?;
                    }
                    momentum_sgd_step(&t1, &a1, &g, step)?;
                    momentum_sgd_step_composed(&t2, &a2, &g, step)?;
                }
                assert_eq!(
                    bits(t1.as_tensor())?,
                    bits(t2.as_tensor())?,
                    "{dtype:?} wd {weight_decay}: θ"
                );
                assert_eq!(
                    bits(a1.as_tensor())?,
                    bits(a2.as_tensor())?,
                    "{dtype:?} wd {weight_decay}: a"
                );
            }
        }
        Ok(())
    }

    /// A strided gradient takes the composed route and gives the same result.
    #[test]
    fn a_strided_gradient_takes_the_composed_route() -> Result<()> {
        let (t1, t2) = (var(3, 12, DType::F32)?, var(3, 12, DType::F32)?);
        let (a1, a2) = (var(4, 12, DType::F32)?, var(4, 12, DType::F32)?);
        let g = var(5, 12, DType::F32)?
            .as_tensor()
            .reshape((3, 4))?
            .t()?
            .flatten_all()?;
        let gt = var(5, 12, DType::F32)?
            .as_tensor()
            .reshape((3, 4))?
            .t()?
            .contiguous()?
            .flatten_all()?;
        let step = SgdStep {
            momentum: 0.9,
            weight_decay: 1e-3,
            lr: 0.1,
        };
        momentum_sgd_step(&t1, &a1, &g, step)?;
        momentum_sgd_step_composed(&t2, &a2, &gt, step)?;
        assert_eq!(bits(t1.as_tensor())?, bits(t2.as_tensor())?);
        Ok(())
    }
}
