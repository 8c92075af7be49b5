//! The Cayley–Neumann parameterization of OFTv2 (Qiu et al., "Orthogonal Finetuning Made
//! Scalable", arXiv 2506.19847): the Cayley transform `R = (I + Q)(I − Q)⁻¹` of the skew
//! matrix `Q = P − Pᵀ`, with the inverse replaced by its truncated Neumann series
//! `(I − Q)⁻¹ ≈ I + Q + … + Q^k` (`k = terms`; 5 by default, as the authors' PEFT
//! implementation). Only matrix products, so no solve and an exact autograd backward.
//!
//! It is an approximation: `R = (I + Q)(I − Q)⁻¹(I − Q^(k+1))`, so `‖RRᵀ − I‖` grows like
//! `‖Q‖^(k+1)` — small near the identity, where OFT-style training starts (`P = 0`), and
//! divergent past `‖Q‖ = 1`. Its orthogonality error is reported per layer like every
//! method's. The layers use it through `SkewMap::CayleyNeumann`, which scales the generator
//! by `1/√d` (see there).

use crate::Result;
use candle_core::Tensor;

/// `(I + Q)(I + Q + … + Q^terms)` with `Q = P − Pᵀ`.
pub fn cayley_neumann(p: &Tensor, terms: usize) -> Result<Tensor> {
    let q = (p - p.t()?)?;
    let eye = Tensor::eye(q.dim(0)?, q.dtype(), q.device())?;
    let mut series = eye.clone();
    let mut power = eye.clone();
    for _ in 0..terms {
        power = power.matmul(&q)?;
        series = (series + &power)?;
    }
    Ok((eye + &q)?.matmul(&series)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skew::dense_f64::{add, eye, gaussian, max_diff, mul, to_m, M};
    use candle_core::{Device, Var};

    /// Gauss–Jordan inverse with partial pivoting (the oracle's own, not the code's).
    fn inverse(a: &M) -> M {
        let n = a.len();
        let mut m: M = a
            .iter()
            .zip(eye(n))
            .map(|(r, e)| r.iter().copied().chain(e).collect())
            .collect();
        for c in 0..n {
            let piv = (c..n)
                .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
                .unwrap();
            m.swap(c, piv);
            let d = m[c][c];
            m[c].iter_mut().for_each(|v| *v /= d);
            for r in 0..n {
                if r != c {
                    let f = m[r][c];
                    let row = m[c].clone();
                    m[r].iter_mut().zip(row).for_each(|(v, p)| *v -= f * p);
                }
            }
        }
        m.into_iter().map(|r| r[n..].to_vec()).collect()
    }

    /// Against the f64 oracle `(I + Q)(I − Q)⁻¹(I − Q^(k+1))` (the series' closed form, by a
    /// Gauss–Jordan inverse), for several `k`; and its distance from the exact Cayley
    /// transform falls like `‖Q‖^(k+1)`.
    #[test]
    fn matches_the_closed_form_and_converges_to_cayley() -> Result<()> {
        let d = 7;
        let p = gaussian(1, d, 0.03);
        let q = to_m(&(&p - p.t()?)?);
        let n = d;
        let cayley = mul(&add(&eye(n), 1.0, &q), &inverse(&add(&eye(n), -1.0, &q)));
        let mut previous = f64::INFINITY;
        for k in [1usize, 2, 5, 8] {
            let mut qk1 = eye(n);
            for _ in 0..=k {
                qk1 = mul(&qk1, &q);
            }
            let want = mul(&cayley, &add(&eye(n), -1.0, &qk1));
            let got = to_m(&cayley_neumann(&p, k)?);
            assert!(max_diff(&got, &want) < 1e-13, "k = {k}");
            let from_cayley = max_diff(&got, &cayley);
            assert!(from_cayley < previous, "k = {k}: {from_cayley:e}");
            previous = from_cayley;
        }
        assert!(previous < 1e-5, "{previous:e}");
        // The layers' map scales the generator by 1/√d first.
        let scaled = (&p * (1.0 / (d as f64).sqrt()))?;
        let want = to_m(&cayley_neumann(&scaled, 5)?);
        let got = to_m(
            &crate::skew::SkewMap::CayleyNeumann {
                terms: 5,
                scaled: true,
            }
            .rotation(&p)?,
        );
        assert!(max_diff(&got, &want) < 1e-15);
        // Unscaled, the paper's generator: the series of P − Pᵀ itself.
        let plain = to_m(
            &crate::skew::SkewMap::CayleyNeumann {
                terms: 5,
                scaled: false,
            }
            .rotation(&p)?,
        );
        assert!(max_diff(&plain, &to_m(&cayley_neumann(&p, 5)?)) < 1e-15);
        Ok(())
    }

    /// The autograd gradient of `⟨G, R⟩` against central finite differences in f64.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let d = 5;
        let p0 = gaussian(2, d, 0.3);
        let g = gaussian(3, d, 1.0);
        let loss = |p: &Tensor| -> Result<f64> {
            Ok((cayley_neumann(p, 5)? * &g)?
                .sum_all()?
                .to_scalar::<f64>()?)
        };
        let p = Var::from_tensor(&p0)?;
        let l = (cayley_neumann(p.as_tensor(), 5)? * &g)?.sum_all()?;
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
