//! `R = exp(A)`, `A = P − Pᵀ` skew-symmetric (Lezcano-Casado and Martínez-Rubio, "Cheap
//! Orthogonal Constraints in Neural Networks", ICML 2019; geotorch's default for SO(d)).
//!
//! Scaling and squaring of a Taylor polynomial: `exp(A) = T_m(A/2^s)^(2^s)` with `s` chosen
//! so that `‖A/2^s‖_F ≤ ½`, where the degree-[`DEGREE`] remainder is below `½¹³/13! ≈ 2e-14`
//! — exact in f32 and to about 1e-12 in f64. The backward is candle's autograd through the
//! polynomial and the squarings: the exact derivative of this scaling-and-squaring (the
//! differentiated-approximant route of Al-Mohy and Higham), which matches the Fréchet
//! derivative of `exp` to the same accuracy (tested against finite differences and an
//! independent f64 oracle).

use crate::Result;
use candle_core::{DType, Tensor};

/// Degree of the Taylor polynomial.
pub const DEGREE: usize = 12;
/// Largest `‖A/2^s‖_F` the polynomial is evaluated at.
const THETA: f64 = 0.5;

/// `exp(P − Pᵀ)` for a square `P`.
pub fn skew_expm(p: &Tensor) -> Result<Tensor> {
    let a = (p - p.t()?)?;
    expm(&a)
}

/// How many squarings bring `‖A‖_F` down to [`THETA`].
fn squarings(norm: f64) -> i32 {
    if norm.is_finite() && norm > THETA {
        (norm / THETA).log2().ceil() as i32
    } else {
        0
    }
}

/// `exp(A)` for a square `A` by scaling and squaring (one host read: `‖A‖_F`).
pub fn expm(a: &Tensor) -> Result<Tensor> {
    let d = a.dim(0)?;
    let norm = a
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let s = squarings(norm);
    let x = (a * 0.5f64.powi(s))?;
    let eye = Tensor::eye(d, a.dtype(), a.device())?;
    // Horner: T = I + x(I + x/2(I + x/3(… (I + x/m)))).
    let mut t = eye.clone();
    for k in (1..=DEGREE).rev() {
        t = (&eye + (x.matmul(&t)? / k as f64)?)?;
    }
    for _ in 0..s {
        t = t.matmul(&t)?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skew::dense_f64::{add, eye, gaussian, max_diff, mul, to_m, M};
    use candle_core::{Device, Var};

    /// The f64 oracle, independent of the code's algorithm: `Y(1)` of the ODE `Y' = A·Y`,
    /// `Y(0) = I`, integrated by classical RK4 in `steps` steps.
    fn expm_rk4(a: &M, steps: usize) -> M {
        let h = 1.0 / steps as f64;
        let mut y = eye(a.len());
        for _ in 0..steps {
            let k1 = mul(a, &y);
            let k2 = mul(a, &add(&y, h / 2.0, &k1));
            let k3 = mul(a, &add(&y, h / 2.0, &k2));
            let k4 = mul(a, &add(&y, h, &k3));
            let sum = add(&add(&add(&k1, 2.0, &k2), 2.0, &k3), 1.0, &k4);
            y = add(&y, h / 6.0, &sum);
        }
        y
    }

    /// Against the RK4 oracle in f64, at norms that need no squaring and several; the 2×2
    /// case against its closed form, a rotation by the angle `θ`.
    #[test]
    fn matches_an_ode_oracle_and_the_2x2_rotation() -> Result<()> {
        for (seed, d, std) in [(1, 5, 0.05), (2, 7, 0.4), (3, 12, 1.0)] {
            let p = gaussian(seed, d, std);
            let a = (&p - p.t()?)?;
            let got = to_m(&skew_expm(&p)?);
            let want = expm_rk4(&to_m(&a), 4000);
            let err = max_diff(&got, &want);
            assert!(err < 1e-9, "d = {d}, std = {std}: {err:e}");
        }
        let theta = 0.7f64;
        let p = Tensor::from_vec(vec![0.0, -theta, 0.0, 0.0], (2, 2), &Device::Cpu)?;
        let r = to_m(&skew_expm(&p)?);
        let (c, s) = (theta.cos(), theta.sin());
        assert!(max_diff(&r, &vec![vec![c, -s], vec![s, c]]) < 1e-12);
        Ok(())
    }

    /// `exp` of a skew matrix is orthogonal in f32 at layer-like sizes, up to the f32 rounding
    /// the squarings amplify (here ‖A‖_F ≈ 90: eight squarings); near the identity, where
    /// training starts, to rounding.
    #[test]
    fn is_orthogonal_in_f32() -> Result<()> {
        for (std, tol) in [(1.0, 1e-3), (0.01, 1e-5)] {
            let p = gaussian(4, 64, std).to_dtype(DType::F32)?;
            let err = crate::orth::orthogonality_error(&skew_expm(&p)?)?;
            assert!(err < tol, "std {std}: {err:e}");
        }
        Ok(())
    }

    /// The autograd gradient of `⟨G, exp(P − Pᵀ)⟩` against central finite differences in f64.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let d = 6;
        let p0 = gaussian(5, d, 0.8);
        let g = gaussian(6, d, 1.0);
        let loss = |p: &Tensor| -> Result<f64> {
            Ok((skew_expm(p)? * &g)?.sum_all()?.to_scalar::<f64>()?)
        };
        let p = Var::from_tensor(&p0)?;
        let l = (skew_expm(p.as_tensor())? * &g)?.sum_all()?;
        let grads = l.backward()?;
        let analytic = to_m(grads.get(p.as_tensor()).expect("a gradient"));
        let base = to_m(&p0);
        let h = 1e-6;
        let mut worst = 0.0f64;
        for i in 0..d {
            for j in 0..d {
                let mut plus = base.clone();
                plus[i][j] += h;
                let mut minus = base.clone();
                minus[i][j] -= h;
                let t = |m: M| Tensor::new(m, &Device::Cpu);
                let fd = (loss(&t(plus)?)? - loss(&t(minus)?)?) / (2.0 * h);
                worst = worst.max((fd - analytic[i][j]).abs());
            }
        }
        assert!(worst < 1e-7, "max |fd − autograd| = {worst:e}");
        Ok(())
    }
}
