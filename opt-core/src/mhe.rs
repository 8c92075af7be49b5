//! Minimum hyperspherical energy (MHE) as a differentiable regulariser: the controls the OPT
//! paper compares against. Definitions follow `wy1iu/MHE`, `code/architecture.py`
//! (`_add_thomson_constraint`, `_add_thomson_constraint_final`) — the same MHE-code form the
//! [`energy`](crate::energy) metric computes:
//!
//! * neurons are the columns of `W ∈ R^{d×n}`, normalised by `sqrt(Σw² + 1e-4)`;
//! * half-space MHE uses the `2n` points `[W, −W]`;
//! * with `c_ij = ŵ_i·ŵ_j`, the energy is the mean over unordered pairs `i < j` of
//!   `s = 0: −log(2 − 2c)`, `s = 1: (2 − 2c)^{−1/2}`, `s = 2: (2 − 2c)^{−1}`, and the angular
//!   forms with `θ = arccos(c)/π + 1e-4`: `a0: −log θ`, `a1: θ^{−1}`, `a2: θ^{−2}`.
//!
//! The official code's per-power weights (hidden layers 1, or 0.1 for a1/a2; the classifier
//! 10, or 1 for a1/a2, always full-space) are defaults of the recipe section, not of this
//! function.

use crate::ops::acos;
use crate::Result;
use candle_core::Tensor;

/// The energy's kernel: Riesz `s` on the chordal distance, or its angular form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MhePower {
    S0,
    S1,
    S2,
    A0,
    A1,
    A2,
}

impl MhePower {
    pub const ALL: [MhePower; 6] = [
        MhePower::S0,
        MhePower::S1,
        MhePower::S2,
        MhePower::A0,
        MhePower::A1,
        MhePower::A2,
    ];

    /// The official code's `power_s` string.
    pub fn as_str(self) -> &'static str {
        match self {
            MhePower::S0 => "0",
            MhePower::S1 => "1",
            MhePower::S2 => "2",
            MhePower::A0 => "a0",
            MhePower::A1 => "a1",
            MhePower::A2 => "a2",
        }
    }

    pub fn is_angular(self) -> bool {
        matches!(self, MhePower::A0 | MhePower::A1 | MhePower::A2)
    }
}

/// The MHE energy of the columns of `w` (`[d, n]`, f32 or f64), differentiable w.r.t. `w`;
/// `half` for half-space MHE. A scalar tensor.
pub fn mhe_energy(w: &Tensor, power: MhePower, half: bool) -> Result<Tensor> {
    let w = if half {
        Tensor::cat(&[w, &w.neg()?], 1)?
    } else {
        w.clone()
    };
    let m = w.dim(1)?;
    if m < 2 {
        return Ok(Tensor::zeros((), w.dtype(), w.device())?);
    }
    let norm = (w.sqr()?.sum_keepdim(0)? + 1e-4)?.sqrt()?;
    let unit = w.broadcast_div(&norm)?;
    let c = unit.t()?.matmul(&unit)?;
    let eye = Tensor::eye(m, w.dtype(), w.device())?;
    let values = match power {
        // The official `+ I` keeps the (discarded) diagonal finite: D_ii ≈ 0 otherwise.
        MhePower::S0 => (c.affine(-2.0, 2.0)? + &eye)?.log()?.neg()?,
        MhePower::S1 => (c.affine(-2.0, 2.0)? + &eye)?.sqrt()?.recip()?,
        MhePower::S2 => (c.affine(-2.0, 2.0)? + &eye)?.recip()?,
        _ => {
            let theta = acos(&c)?.affine(1.0 / std::f64::consts::PI, 1e-4)?;
            match power {
                MhePower::A0 => theta.log()?.neg()?,
                MhePower::A1 => theta.recip()?,
                _ => theta.sqr()?.recip()?,
            }
        }
    };
    let upper: Vec<f32> = (0..m * m)
        .map(|k| if k % m > k / m { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(upper, (m, m), w.device())?.to_dtype(w.dtype())?;
    let pairs = (m * (m - 1) / 2) as f64;
    Ok(((values * mask)?.sum_all()? / pairs)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::hyperspherical_energy;
    use crate::Rng;
    use candle_core::{DType, Device};

    fn randn(d: usize, n: usize, seed: u64) -> Tensor {
        let mut r = Rng::seed(seed);
        let v: Vec<f64> = r
            .normal_vec(d * n, 1.0)
            .into_iter()
            .map(f64::from)
            .collect();
        Tensor::from_vec(v, (d, n), &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_scalar::<f64>().unwrap()
    }

    /// The regulariser's value is the energy the metric reports (an independent, loop-based
    /// f64 implementation) for s = 0, 1, 2, full and half-space.
    #[test]
    fn equals_the_energy_metric() -> Result<()> {
        let w = randn(27, 16, 3);
        let e = hyperspherical_energy(&w)?;
        let cases = [
            (MhePower::S0, false, e.s0),
            (MhePower::S1, false, e.s1),
            (MhePower::S2, false, e.s2),
            (MhePower::S0, true, e.half_s0),
            (MhePower::S1, true, e.half_s1),
            (MhePower::S2, true, e.half_s2),
        ];
        for (power, half, expected) in cases {
            let ours = scalar(&mhe_energy(&w, power, half)?);
            assert!(
                (ours - expected).abs() < 1e-10 * expected.abs().max(1.0),
                "{power:?} half={half}: {ours} vs {expected}"
            );
        }
        Ok(())
    }

    /// Angular forms by hand: two orthogonal unit neurons are π/2 apart (θ = ½ + 1e-4); three
    /// unit neurons at 120° have c = −½ shrunk by the normalisation to −½/(1 + 1e-4).
    #[test]
    fn angular_forms_by_hand() -> Result<()> {
        let two = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 1.0], (2, 2), &Device::Cpu)?;
        let t: f64 = 0.5 + 1e-4;
        let a0 = scalar(&mhe_energy(&two, MhePower::A0, false)?);
        let a1 = scalar(&mhe_energy(&two, MhePower::A1, false)?);
        let a2 = scalar(&mhe_energy(&two, MhePower::A2, false)?);
        assert!((a0 + t.ln()).abs() < 1e-12, "{a0}");
        assert!((a1 - 1.0 / t).abs() < 1e-12, "{a1}");
        assert!((a2 - 1.0 / (t * t)).abs() < 1e-12, "{a2}");
        let (c, s) = (
            (2.0f64 * std::f64::consts::PI / 3.0).cos(),
            (2.0f64 * std::f64::consts::PI / 3.0).sin(),
        );
        let three = Tensor::from_vec(vec![1.0, c, c, 0.0, s, -s], (2, 3), &Device::Cpu)?;
        let t = (-0.5f64 / (1.0 + 1e-4)).acos() / std::f64::consts::PI + 1e-4;
        let a1 = scalar(&mhe_energy(&three, MhePower::A1, false)?);
        assert!((a1 - 1.0 / t).abs() < 1e-9, "{a1}");
        // Half-space of one neuron (‖w‖² = 25): the pair (w, −w) has c = −25/(25 + 1e-4).
        let one = Tensor::from_vec(vec![3.0f64, 4.0], (2, 1), &Device::Cpu)?;
        let h = scalar(&mhe_energy(&one, MhePower::A1, true)?);
        let t = (-25.0f64 / (25.0 + 1e-4)).acos() / std::f64::consts::PI + 1e-4;
        assert!((h - 1.0 / t).abs() < 1e-9, "{h}");
        Ok(())
    }

    /// Gradients agree with central finite differences for every power, full and half-space.
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let (d, n) = (6, 5);
        let w0 = randn(d, n, 7);
        let base: Vec<Vec<f64>> = w0.to_vec2()?;
        for power in MhePower::ALL {
            for half in [false, true] {
                let var = candle_core::Var::from_tensor(&w0)?;
                let g = mhe_energy(var.as_tensor(), power, half)?.backward()?;
                let grad: Vec<Vec<f64>> = g.get(&var).unwrap().to_vec2()?;
                let h = 1e-6;
                for (i, j) in [(0, 0), (2, 3), (5, 4), (3, 1)] {
                    let at = |delta: f64| -> Result<f64> {
                        let mut m = base.clone();
                        m[i][j] += delta;
                        let flat: Vec<f64> = m.into_iter().flatten().collect();
                        let t = Tensor::from_vec(flat, (d, n), &Device::Cpu)?;
                        Ok(scalar(&mhe_energy(&t, power, half)?))
                    };
                    let fd = (at(h)? - at(-h)?) / (2.0 * h);
                    let err = (fd - grad[i][j]).abs();
                    assert!(
                        err < 1e-6 * fd.abs().max(1.0),
                        "{power:?} half={half} ({i},{j}): fd {fd} vs {}",
                        grad[i][j]
                    );
                }
            }
        }
        Ok(())
    }

    /// Long neurons in f32 (the diagonal cosine rounds to 1) keep value and gradient finite.
    #[test]
    fn f32_diagonal_stays_finite_for_long_neurons() -> Result<()> {
        // ‖w‖² = 1e8: the f32 cosine of a neuron with itself rounds to 1.
        let w = (randn(8, 4, 2) * 1e4)?.to_dtype(DType::F32)?;
        for power in MhePower::ALL {
            let var = candle_core::Var::from_tensor(&w)?;
            let e = mhe_energy(var.as_tensor(), power, true)?;
            let g = e.backward()?;
            let grad = g.get(&var).unwrap();
            let finite = grad
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite());
            assert!(e.to_scalar::<f32>()?.is_finite() && finite, "{power:?}");
        }
        Ok(())
    }
}
