//! `arccos` with a bounded derivative, for the angular MHE energies (`crate::mhe`).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `arccos(x)` elementwise, differentiable. The argument is clamped to [−1, 1] (a cosine of
/// normalised vectors can round past 1), and the derivative `−1/sqrt(1 − x²)` is bounded by
/// flooring `1 − x²` at 1e-12: the MHE code divides by `sqrt(Σw² + 1e-4)`, so |c| < 1 in exact
/// arithmetic, but in f32 a long neuron's cosine with itself rounds to 1, and the masked-out
/// diagonal must not turn `0 · ∞` into NaN. candle has no `acos`: this op has a CPU forward and
/// a CUDA kernel (f32, f64); its backward is candle ops.
pub fn acos(x: &Tensor) -> Result<Tensor> {
    if super::routes::routes(x.device()).fused(super::FusedOp::Acos) {
        acos_fused(x)
    } else {
        acos_composed(x)
    }
}

/// The fused op (f32 and f64, any device).
pub fn acos_fused(x: &Tensor) -> Result<Tensor> {
    let fused = || x.contiguous()?.apply_op1(Acos);
    fail::fail_point!("ops::acos", |a| super::injected("ops::acos", a, fused));
    fused()
}

/// Abramowitz & Stegun 4.4.46: `acos(a) = √(1 − a)·Σ c_k a^k + ε`, `|ε| ≤ 2e-8` on [0, 1].
const ACOS_SERIES: [f64; 8] = [
    1.570_796_305_0,
    -0.214_598_801_6,
    0.088_978_987_4,
    -0.050_174_304_6,
    0.030_891_881_0,
    -0.017_088_125_6,
    0.006_670_090_1,
    -0.001_262_491_1,
];

/// The same from candle's elementary ops (candle has no `acos`): the Abramowitz–Stegun series
/// 4.4.46 on `|x|` (absolute error ≤ 2e-8), reflected as `π − acos(|x|)` for `x < 0`; autograd
/// through every node. Where `|x|` rounds to 1 the square root's argument is floored, so the
/// gradient there is 0, never NaN. The oracle of [`acos_fused`] and its composed route.
pub fn acos_composed(x: &Tensor) -> Result<Tensor> {
    let c = x.clamp(-1.0, 1.0)?;
    let a = c.abs()?;
    let mut poly = a.ones_like()?.affine(0.0, ACOS_SERIES[7])?;
    for coefficient in ACOS_SERIES[..7].iter().rev() {
        poly = (poly * &a)?.affine(1.0, *coefficient)?;
    }
    let root = a.affine(-1.0, 1.0)?.maximum(1e-30)?.sqrt()?;
    let positive = (root * poly)?;
    let negative = positive.affine(-1.0, std::f64::consts::PI)?;
    c.lt(0.0)?.where_cond(&negative, &positive)
}

struct Acos;

impl CustomOp1 for Acos {
    fn name(&self) -> &'static str {
        "acos"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = layout.shape().clone();
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("acos: input must be contiguous".into()))?;
        let out = match storage {
            CpuStorage::F32(v) => {
                CpuStorage::F32(v[a..b].iter().map(|x| x.clamp(-1.0, 1.0).acos()).collect())
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(v[a..b].iter().map(|x| x.clamp(-1.0, 1.0).acos()).collect())
            }
            _ => candle_core::bail!("acos: only f32 and f64 are supported"),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cuda::acos(storage, layout)?, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let slope = arg
            .sqr()?
            .affine(-1.0, 1.0)?
            .maximum(1e-12)?
            .sqrt()?
            .recip()?
            .neg()?;
        Ok(Some(grad_res.mul(&slope)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values against std's `acos` (clamped), the gradient against `−1/√(1 − x²)` by hand, and
    /// the floor at the ends.
    #[test]
    fn values_and_bounded_gradient() -> Result<()> {
        let xs = [-1.5f64, -1.0, -0.5, 0.0, 0.3, 1.0, 1.2];
        let x = Var::from_tensor(&Tensor::new(&xs, &Device::Cpu)?)?;
        let y: Vec<f64> = acos(&x)?.to_vec1()?;
        for (v, got) in xs.iter().zip(&y) {
            assert_eq!(*got, v.clamp(-1.0, 1.0).acos());
        }
        let g: Vec<f64> = acos(&x)?
            .sum_all()?
            .backward()?
            .get(&x)
            .unwrap()
            .to_vec1()?;
        assert!((g[2] + 1.0 / (1.0f64 - 0.25).sqrt()).abs() < 1e-12);
        assert!(
            (g[1] + 1e6).abs() < 1e-3,
            "floored at 1/sqrt(1e-12): {}",
            g[1]
        );
        Ok(())
    }

    /// The composed series against std's `acos` in f64 (its 2e-8 bound) and its gradient
    /// against `−1/√(1 − x²)` away from the ends.
    #[test]
    fn composed_series_matches_std() -> Result<()> {
        let xs: Vec<f64> = (0..=200).map(|i| -1.0 + i as f64 / 100.0).collect();
        let x = Var::from_tensor(&Tensor::new(xs.as_slice(), &Device::Cpu)?)?;
        let y: Vec<f64> = acos_composed(&x)?.to_vec1()?;
        for (v, got) in xs.iter().zip(&y) {
            assert!((got - v.acos()).abs() <= 3e-8, "acos({v}) = {got}");
        }
        let g: Vec<f64> = acos_composed(&x)?
            .sum_all()?
            .backward()?
            .get(&x)
            .unwrap()
            .to_vec1()?;
        for (v, got) in xs.iter().zip(&g) {
            if v.abs() <= 0.9 {
                let want = -1.0 / (1.0 - v * v).sqrt();
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs(),
                    "acos'({v}) = {got}"
                );
            }
            assert!(got.is_finite(), "acos'({v}) = {got}");
        }
        Ok(())
    }
}
