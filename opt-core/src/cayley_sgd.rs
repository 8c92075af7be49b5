//! Orthogonality-preserving gradient descent (OGD, spec §2.6): Cayley SGD with momentum
//! (Li, Li & Todorovic, ICLR 2020) exactly as OPT's TensorFlow port runs it — Frobenius norm in
//! the step bound and two fixed-point iterations of the implicit Cayley retraction (the
//! authors' PyTorch original uses the 1-norm and five). No re-orthonormalisation, ever.

use crate::{ops, Entry, Error, ParamStore, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::HashMap;

pub struct CayleySgd {
    pub momentum: f64,
    slots: Vec<(String, Var, Var)>,
}

impl CayleySgd {
    /// One slot per trainable square matrix `select` accepts.
    pub fn new(store: &ParamStore, momentum: f64, select: impl Fn(&Entry) -> bool) -> Result<Self> {
        let mut slots = Vec::new();
        for e in store.trainable().filter(|e| select(e)) {
            let (r, c) = e.var.as_tensor().dims2()?;
            if r != c {
                return Err(Error::Config(format!(
                    "Cayley SGD needs square matrices; `{}` is {r}×{c}",
                    e.name
                )));
            }
            slots.push((
                e.name.clone(),
                e.var.clone(),
                Var::from_tensor(&e.var.as_tensor().zeros_like()?)?,
            ));
        }
        Ok(Self { momentum, slots })
    }

    /// One step with learning rate `lr` on the gradients of the data loss: on the CPU with the
    /// element-wise parts fused (`ops::cayley_*`, bit for bit [`Self::step_composed`]'s values),
    /// elsewhere composed.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(grads, lr, true)
    }

    /// The same step from candle ops only (the reference).
    pub fn step_composed(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(grads, lr, false)
    }

    fn step_with(&mut self, grads: &GradStore, lr: f64, fuse: bool) -> Result<()> {
        for (_, x, m) in &self.slots {
            let xt = x.as_tensor();
            let g = match grads.get(xt) {
                Some(g) => g.clone(),
                None => continue,
            };
            if fuse && ops::cayley_fusable(&[xt, m.as_tensor(), &g]) {
                Self::slot_step_fused(x, m, &g, self.momentum, lr)?;
            } else {
                Self::slot_step_composed(x, m, &g, self.momentum, lr)?;
            }
        }
        Ok(())
    }

    /// Step 4, `α = min(lr, 1/(‖W‖_F + 1e-8))`, in f64 as the official code's Python float,
    /// kept on the device (no host read per layer and step) as a 1-element tensor of `W`'s dtype.
    fn step_size(w: &Tensor, lr: f64) -> Result<Tensor> {
        Ok(w.sqr()?
            .sum_all()?
            .sqrt()?
            .to_dtype(candle_core::DType::F64)?
            .affine(1.0, 1e-8)?
            .recip()?
            .clamp(f64::MIN, lr)?
            .to_dtype(w.dtype())?)
    }

    fn slot_step_composed(x: &Var, m: &Var, g: &Tensor, momentum: f64, lr: f64) -> Result<()> {
        let xt = x.as_tensor();
        // 1. M ← βM − G
        let mom = ((m.as_tensor() * momentum)? - g)?;
        // 2. Ŵ = M Xᵀ − ½ X (Xᵀ M Xᵀ); W = Ŵ − Ŵᵀ. With A = M Xᵀ, Xᵀ M Xᵀ = Xᵀ A: three
        // d×d products instead of four (the same expression, associated differently).
        let x_t = xt.t()?;
        let a = mom.matmul(&x_t)?;
        let what = (&a - (xt.matmul(&x_t.matmul(&a)?)? * 0.5)?)?;
        let w = (&what - what.t()?)?;
        // 3. M ← W X (the projected momentum is what is stored)
        let mom = w.matmul(xt)?;
        let alpha = Self::step_size(&w, lr)?;
        let half_alpha = (&alpha * 0.5)?;
        // 5. Two fixed-point iterations of Y = X + (α/2) W (X + Y), from Y₀ = X + αM.
        let y0 = (xt + mom.broadcast_mul(&alpha)?)?;
        let y1 = (xt + w.matmul(&(xt + &y0)?)?.broadcast_mul(&half_alpha)?)?;
        let y2 = (xt + w.matmul(&(xt + &y1)?)?.broadcast_mul(&half_alpha)?)?;
        m.set(&mom)?;
        x.set(&y2)?;
        Ok(())
    }

    /// [`Self::slot_step_composed`] with its element-wise ops fused into four passes; the
    /// matmuls, the norm and the scalars are the same candle ops.
    fn slot_step_fused(x: &Var, m: &Var, g: &Tensor, momentum: f64, lr: f64) -> Result<()> {
        let xt = x.as_tensor();
        let mom = ops::cayley_momentum(m.as_tensor(), g, momentum)?;
        let x_t = xt.t()?;
        let a = mom.matmul(&x_t)?;
        let w = ops::cayley_skew(&a, &xt.matmul(&x_t.matmul(&a)?)?)?;
        let mom = w.matmul(xt)?;
        let alpha = Self::step_size(&w, lr)?;
        let half_alpha = (&alpha * 0.5)?;
        let scalar = |t: &Tensor| -> Result<f64> {
            Ok(t.to_dtype(candle_core::DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?[0])
        };
        let (alpha, half_alpha) = (scalar(&alpha)?, scalar(&half_alpha)?);
        let z0 = ops::cayley_iterate(xt, &mom, alpha)?;
        let z1 = ops::cayley_iterate(xt, &w.matmul(&z0)?, half_alpha)?;
        let t2 = w.matmul(&z1)?;
        m.set(&mom)?;
        ops::cayley_retract(xt, &t2, half_alpha)?;
        Ok(())
    }

    pub fn state(&self) -> HashMap<String, Tensor> {
        self.slots
            .iter()
            .map(|(n, _, m)| (n.clone(), m.as_tensor().clone()))
            .collect()
    }

    pub fn load_state(&self, state: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for (name, _, m) in &self.slots {
            crate::params::load_var(state, &format!("{prefix}{name}"), m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::hyperspherical_energy;
    use crate::{Kind, Rng, Role};
    use candle_core::{DType, Device};

    fn orth_err(x: &Tensor) -> f64 {
        let d = x.dim(0).unwrap();
        let e = (x.t().unwrap().matmul(x).unwrap()
            - Tensor::eye(d, DType::F32, &Device::Cpu).unwrap())
        .unwrap();
        e.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    }

    /// A store holding one rotation `x0` (`l.rotation`) and Cayley SGD (momentum 0.9) over it.
    fn one_rotation(x0: Tensor) -> Result<(Var, CayleySgd)> {
        let mut store = ParamStore::new(x0.device().clone());
        let x = store.add(
            "l.rotation",
            x0,
            Role::Trainable { decay: false },
            Kind::Rotation,
        )?;
        let opt = CayleySgd::new(&store, 0.9, |e| e.kind == Kind::Rotation)?;
        Ok((x, opt))
    }

    /// 1000 steps from the identity on a loss whose minimiser is not orthogonal:
    /// R stays orthogonal to 1e-3 and the hyperspherical energy of R·W0 stays within 1e-3.
    #[test]
    fn keeps_rotations_orthogonal_and_energy_constant_over_1000_steps() -> Result<()> {
        let dev = Device::Cpu;
        let d = 16;
        let mut rng = Rng::seed(3);
        let (x, mut opt) = one_rotation(Tensor::eye(d, DType::F32, &dev)?)?;
        let w0 = Tensor::from_vec(rng.normal_vec(d * 8, 0.3), (d, 8), &dev)?;
        let target = Tensor::from_vec(rng.normal_vec(d * 8, 1.0), (d, 8), &dev)?;
        let e0 = hyperspherical_energy(&w0)?;
        // A mean-squared loss: gradients of a realistic scale (the α cap is not hit).
        let loss0 = (x.as_tensor().matmul(&w0)? - &target)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?;
        for _ in 0..1000 {
            let loss = (x.as_tensor().matmul(&w0)? - &target)?.sqr()?.mean_all()?;
            opt.step(&loss.backward()?, 0.02)?;
        }
        let loss1 = (x.as_tensor().matmul(&w0)? - &target)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!(loss1 < loss0, "OGD must still descend: {loss0} → {loss1}");
        assert!(
            orth_err(x.as_tensor()) < 1e-3,
            "‖XᵀX − I‖ = {}",
            orth_err(x.as_tensor())
        );
        let e1 = hyperspherical_energy(&x.as_tensor().matmul(&w0)?)?;
        assert!(
            (e1.s1 - e0.s1).abs() < 1e-3 && (e1.s0 - e0.s0).abs() < 1e-3,
            "{e0:?} vs {e1:?}"
        );
        Ok(())
    }

    /// One step in f64 equals the update written out as the official code states it (four
    /// products for Ŵ, explicit α, two fixed-point iterations), to rounding.
    /// Three steps with the element-wise parts fused equal three composed steps bit for bit,
    /// in X and the momentum, in f32 and f64, on the calling thread (d = 24) and over the pool
    /// (d = 300: 90 000 entries).
    #[test]
    fn the_fused_step_is_the_composed_step_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, d) in [(DType::F32, 24), (DType::F32, 300), (DType::F64, 300)] {
            let mut rng = Rng::seed(21);
            let p = Tensor::from_vec(rng.normal_vec(d * d, 1.0), (d, d), &dev)?;
            let x0 = crate::ops::orthogonalize(&p, crate::orth::OrthMap::GramSchmidt)?
                .to_dtype(dtype)?;
            let targets: Vec<Tensor> = (0..3)
                .map(|_| {
                    Tensor::from_vec(rng.normal_vec(d * d, 1.0), (d, d), &dev)?.to_dtype(dtype)
                })
                .collect::<candle_core::Result<_>>()?;
            let run = |fused: bool| -> Result<(Vec<u64>, Vec<u64>)> {
                let (x, mut opt) = one_rotation(x0.clone())?;
                for target in &targets {
                    let grads = (x.as_tensor() - target)?.sqr()?.sum_all()?.backward()?;
                    if fused {
                        opt.step(&grads, 0.05)?;
                    } else {
                        opt.step_composed(&grads, 0.05)?;
                    }
                }
                let bits = |t: &Tensor| -> Result<Vec<u64>> {
                    Ok(t.to_dtype(DType::F64)?
                        .flatten_all()?
                        .to_vec1::<f64>()?
                        .iter()
                        .map(|v| v.to_bits())
                        .collect())
                };
                Ok((bits(x.as_tensor())?, bits(&opt.state()["l.rotation"])?))
            };
            let (fused, composed) = (run(true)?, run(false)?);
            assert!(fused.0 == composed.0, "{dtype:?} d = {d}: X differs");
            assert!(
                fused.1 == composed.1,
                "{dtype:?} d = {d}: the momentum differs"
            );
        }
        Ok(())
    }

    #[test]
    fn one_step_matches_the_update_written_out() -> Result<()> {
        let dev = Device::Cpu;
        let d = 12;
        let mut rng = Rng::seed(9);
        let p = Tensor::from_vec(rng.normal_vec(d * d, 1.0), (d, d), &dev)?;
        let x0 = crate::ops::orthogonalize(&p, crate::orth::OrthMap::GramSchmidt)?
            .to_dtype(DType::F64)?;
        let (x, mut opt) = one_rotation(x0.clone())?;
        let target =
            Tensor::from_vec(rng.normal_vec(d * d, 1.0), (d, d), &dev)?.to_dtype(DType::F64)?;
        let loss = (x.as_tensor() - &target)?.sqr()?.sum_all()?;
        let grads = loss.backward()?;
        let g = grads.get(x.as_tensor()).expect("gradient").clone();
        let lr = 0.05;
        opt.step(&grads, lr)?;
        // Written out: M = −G (zero momentum before), Ŵ = M Xᵀ − ½ X ((Xᵀ M) Xᵀ), W = Ŵ − Ŵᵀ.
        let m = g.neg()?;
        let xt = x0.t()?;
        let what = (m.matmul(&xt)? - (x0.matmul(&xt.matmul(&m)?.matmul(&xt)?)? * 0.5)?)?;
        let w = (&what - what.t()?)?;
        let mom = w.matmul(&x0)?;
        let norm = w.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        let alpha = lr.min(1.0 / (norm + 1e-8));
        let y0 = (&x0 + (&mom * alpha)?)?;
        let y1 = (&x0 + (w.matmul(&(&x0 + &y0)?)? * (alpha / 2.0))?)?;
        let y2 = (&x0 + (w.matmul(&(&x0 + &y1)?)? * (alpha / 2.0))?)?;
        let diff = (x.as_tensor() - &y2)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(
            diff < 1e-12,
            "step differs from the written-out update by {diff}"
        );
        Ok(())
    }
}
