//! Batch normalisation exactly as the official TensorFlow code writes it (spec §5):
//! batch mean and *biased* variance over (N, H, W), `eps = 1e-3`, moving averages with decay
//! 0.999 whose shadows start at **zero** (TF `ExponentialMovingAverage` on tensors, no
//! zero-debias), updated only by training forwards; `γ`/`β` start at 1/0 and carry L2.
//!
//! candle-nn's `BatchNorm` follows PyTorch (running variance starts at 1, unbiased running
//! variance, momentum 0.1), which changes early test curves, hence this type.

use crate::ops::batch_norm_train;
use crate::{Kind, ParamStore, Result, Role};
use candle_core::{DType, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    pub eps: f64,
    /// EMA decay of the moving statistics.
    pub decay: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-3,
            decay: 0.999,
        }
    }
}

pub struct BatchNorm {
    pub gamma: Var,
    pub beta: Var,
    pub moving_mean: Var,
    pub moving_var: Var,
    cfg: BatchNormConfig,
    channels: usize,
}

impl BatchNorm {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        channels: usize,
        cfg: BatchNormConfig,
    ) -> Result<Self> {
        let dev = store.device().clone();
        let gamma = store.add(
            &format!("{name}.gamma"),
            Tensor::ones(channels, DType::F32, &dev)?,
            Role::Trainable { decay: true },
            Kind::BnScale,
        )?;
        let beta = store.add(
            &format!("{name}.beta"),
            Tensor::zeros(channels, DType::F32, &dev)?,
            Role::Trainable { decay: true },
            Kind::BnShift,
        )?;
        let moving_mean = store.add(
            &format!("{name}.moving_mean"),
            Tensor::zeros(channels, DType::F32, &dev)?,
            Role::Statistic,
            Kind::BnMovingMean,
        )?;
        let moving_var = store.add(
            &format!("{name}.moving_var"),
            Tensor::zeros(channels, DType::F32, &dev)?,
            Role::Statistic,
            Kind::BnMovingVar,
        )?;
        Ok(Self {
            gamma,
            beta,
            moving_mean,
            moving_var,
            cfg,
            channels,
        })
    }

    fn affine(&self, normalised: &Tensor) -> Result<Tensor> {
        let c = self.channels;
        let g = self.gamma.as_tensor().reshape((1, c, 1, 1))?;
        let b = self.beta.as_tensor().reshape((1, c, 1, 1))?;
        Ok(normalised.broadcast_mul(&g)?.broadcast_add(&b)?)
    }

    /// Training forward on `[N, C, H, W]`: normalise with batch statistics and update the EMAs.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_train_impl(x, false)
    }

    /// `relu(forward_train(x))`, as one node ([`crate::ops::BatchNormTrain`]).
    pub fn forward_train_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_train_impl(x, true)
    }

    fn forward_train_impl(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (y, mean, var) = batch_norm_train(
            x,
            self.gamma.as_tensor(),
            self.beta.as_tensor(),
            self.cfg.eps,
            relu,
        )?;
        let d = self.cfg.decay;
        let new_mean = ((self.moving_mean.as_tensor() * d)? + (mean * (1.0 - d))?)?;
        let new_var = ((self.moving_var.as_tensor() * d)? + (var * (1.0 - d))?)?;
        self.moving_mean.set(&new_mean)?;
        self.moving_var.set(&new_var)?;
        Ok(y)
    }

    /// Inference forward with the moving statistics.
    pub fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.channels;
        let mean = self.moving_mean.as_tensor().reshape((1, c, 1, 1))?;
        let inv_std = (self.moving_var.as_tensor() + self.cfg.eps)?
            .sqrt()?
            .recip()?
            .reshape((1, c, 1, 1))?;
        self.affine(&x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?)
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.forward_train(x)
        } else {
            self.forward_eval(x)
        }
    }

    /// `relu(forward(x, train))`; fused with the normalisation when training (the separate ReLU
    /// node's forward, mask and gradient buffers cost as much as BN itself).
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.forward_train_relu(x)
        } else {
            Ok(self.forward_eval(x)?.relu()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Hand-computed: one channel, values [1, 2, 3, 6] → mean 3, biased var 3.5.
    #[test]
    fn matches_hand_computed_values() -> Result<()> {
        let mut store = ParamStore::new(Device::Cpu);
        let bn = BatchNorm::new(&mut store, "bn", 1, BatchNormConfig::default())?;
        let x = Tensor::new(&[1f32, 2., 3., 6.], &Device::Cpu)?.reshape((4, 1, 1, 1))?;
        let y: Vec<f32> = bn.forward_train(&x)?.flatten_all()?.to_vec1()?;
        let s = (3.5f64 + 1e-3).sqrt();
        for (got, v) in y.iter().zip([1., 2., 3., 6.]) {
            assert!((*got as f64 - (v - 3.0) / s).abs() < 1e-6);
        }
        let m: Vec<f32> = bn.moving_mean.as_tensor().to_vec1()?;
        let v: Vec<f32> = bn.moving_var.as_tensor().to_vec1()?;
        assert!((m[0] as f64 - 0.003).abs() < 1e-7, "{m:?}");
        assert!((v[0] as f64 - 0.0035).abs() < 1e-7, "{v:?}");
        // Inference with the (tiny) EMA statistics: (x - 0.003)/sqrt(0.0035 + 1e-3).
        let e: Vec<f32> = bn.forward_eval(&x)?.flatten_all()?.to_vec1()?;
        assert!((e[0] as f64 - (1.0 - 0.003) / (0.0045f64).sqrt()).abs() < 1e-4);
        Ok(())
    }
}
