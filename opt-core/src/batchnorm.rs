//! Batch normalisation exactly as the official TensorFlow code writes it (spec §5):
//! batch mean and *biased* variance over (N, H, W), `eps = 1e-3`, moving averages with decay
//! 0.999 whose shadows start at **zero** (TF `ExponentialMovingAverage` on tensors, no
//! zero-debias), updated only by training forwards; `γ`/`β` start at 1/0 and carry L2.
//!
//! candle-nn's `BatchNorm` follows PyTorch (running variance starts at 1, unbiased running
//! variance, momentum 0.1), which changes early test curves, hence this type.

use crate::conv::contiguous_f32;
use crate::par::{for_each_chunk, map_ranges};
use crate::{ParamStore, Result, Role};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, Var};
use std::sync::{Arc, Mutex};

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
        )?;
        let beta = store.add(
            &format!("{name}.beta"),
            Tensor::zeros(channels, DType::F32, &dev)?,
            Role::Trainable { decay: true },
        )?;
        let moving_mean = store.add(
            &format!("{name}.moving_mean"),
            Tensor::zeros(channels, DType::F32, &dev)?,
            Role::Statistic,
        )?;
        let moving_var = store.add(
            &format!("{name}.moving_var"),
            Tensor::zeros(channels, DType::F32, &dev)?,
            Role::Statistic,
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

    /// `relu(forward_train(x))`, as one node on the CPU.
    pub fn forward_train_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_train_impl(x, true)
    }

    fn forward_train_impl(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (y, mean, var) = if x.device().is_cpu() && x.dtype() == DType::F32 {
            self.train_fused_cpu(x, relu)?
        } else {
            let (y, mean, var) = self.train_ops(x)?;
            (if relu { y.relu()? } else { y }, mean, var)
        };
        let d = self.cfg.decay;
        let new_mean = ((self.moving_mean.as_tensor() * d)? + (mean * (1.0 - d))?)?;
        let new_var = ((self.moving_var.as_tensor() * d)? + (var * (1.0 - d))?)?;
        self.moving_mean.set(&new_mean)?;
        self.moving_var.set(&new_var)?;
        Ok(y)
    }

    /// Composed from candle ops (any device); returns `(y, batch mean, batch variance)`.
    fn train_ops(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
        let inv_std = (var.clone() + self.cfg.eps)?.sqrt()?.recip()?;
        let y = self.affine(&centered.broadcast_mul(&inv_std)?)?;
        Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
    }

    /// One fused pass forward and one backward on the CPU: the composed version spends most of
    /// its time in strided reductions over (N, H, W) and broadcast gradients.
    fn train_fused_cpu(&self, x: &Tensor, relu: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let stats = Arc::new(Mutex::new(None));
        let op = FusedBnTrain {
            eps: self.cfg.eps,
            relu,
            stats: stats.clone(),
            batch: Mutex::new(None),
        };
        let y = x
            .contiguous()?
            .apply_op3(self.gamma.as_tensor(), self.beta.as_tensor(), op)?;
        let (mean, var) = stats
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or_else(|| candle_core::Error::Msg("batchnorm statistics missing".into()))?;
        let c = self.channels;
        let mean = Tensor::from_vec(mean, c, x.device())?;
        let var = Tensor::from_vec(var, c, x.device())?;
        Ok((y, mean, var))
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

    /// `relu(forward(x, train))`; fused with the normalisation when training on the CPU (the
    /// separate ReLU node's forward, mask and gradient buffers cost as much as BN itself).
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.forward_train_relu(x)
        } else {
            Ok(self.forward_eval(x)?.relu()?)
        }
    }
}

type Stats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// Training-mode BN `(x, γ, β) ↦ y` with exact backward; leaves the batch mean and biased
/// variance in `stats` for the moving averages.
struct FusedBnTrain {
    eps: f64,
    /// Apply `max(0, ·)` to the output (and mask the gradient by the output's sign).
    relu: bool,
    stats: Stats,
    /// The forward's f64 batch mean and variance, kept for the backward (which otherwise makes
    /// two more passes over x to recompute them).
    batch: Mutex<Option<(Vec<f64>, Vec<f64>)>>,
}

fn dims(layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, h, w) = layout.shape().dims4()?;
    Ok((n, c, h * w))
}

/// Per-channel `(Σ f(a), Σ g(a, b))` over images, accumulated in f64.
fn channel_sums(
    n: usize,
    c: usize,
    hw: usize,
    f: impl Fn(usize, usize) -> (f64, f64) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let partial = map_ranges(n, |images| {
        let mut s = (vec![0f64; c], vec![0f64; c]);
        for i in images {
            for ch in 0..c {
                let (a, b) = f((i * c + ch) * hw, ch);
                s.0[ch] += a;
                s.1[ch] += b;
            }
        }
        s
    });
    partial
        .into_iter()
        .fold((vec![0f64; c], vec![0f64; c]), |mut acc, p| {
            for ch in 0..c {
                acc.0[ch] += p.0[ch];
                acc.1[ch] += p.1[ch];
            }
            acc
        })
}

/// Per-channel batch mean and biased variance of `[n, c, hw]` data, in two passes (mean, then
/// centred squares) for accuracy.
fn batch_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    let (sum, _) = channel_sums(n, c, hw, |o, _| {
        (x[o..o + hw].iter().map(|&v| v as f64).sum(), 0.0)
    });
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let (sq, _) = channel_sums(n, c, hw, |o, ch| {
        (
            x[o..o + hw]
                .iter()
                .map(|&v| (v as f64 - mean[ch]).powi(2))
                .sum(),
            0.0,
        )
    });
    (mean, sq.iter().map(|s| s / m).collect())
}

impl CustomOp3 for FusedBnTrain {
    fn name(&self) -> &'static str {
        "batchnorm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(xl)?;
        let x = contiguous_f32(xs, xl, "batchnorm")?;
        let gamma = contiguous_f32(gs, gl, "batchnorm")?;
        let beta = contiguous_f32(bs, bl, "batchnorm")?;
        let (mean, var) = batch_stats(x, n, c, hw);
        let scale: Vec<f32> = (0..c)
            .map(|ch| (gamma[ch] as f64 / (var[ch] + self.eps).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| beta[ch] - (mean[ch] as f32) * scale[ch])
            .collect();
        let mut out = vec![0f32; n * c * hw];
        for_each_chunk(&mut out, c * hw, |first, chunk| {
            for (k, o) in chunk.chunks_mut(hw).enumerate() {
                let ch = k % c;
                let src = &x[first * c * hw + k * hw..][..hw];
                if self.relu {
                    for (y, &v) in o.iter_mut().zip(src) {
                        *y = (v * scale[ch] + shift[ch]).max(0.0);
                    }
                } else {
                    for (y, &v) in o.iter_mut().zip(src) {
                        *y = v * scale[ch] + shift[ch];
                    }
                }
            }
        });
        if let Ok(mut s) = self.stats.lock() {
            *s = Some((
                mean.iter().map(|&v| v as f32).collect(),
                var.iter().map(|&v| v as f32).collect(),
            ));
        }
        if let Ok(mut b) = self.batch.lock() {
            *b = Some((mean, var));
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = FusedBnBackward {
            eps: self.eps,
            relu: self.relu,
            gamma: gamma.to_vec1()?,
            batch: self.batch.lock().ok().and_then(|b| b.clone()),
        };
        let packed =
            x.contiguous()?
                .apply_op3_no_bwd(&grad.contiguous()?, &res.contiguous()?, &op)?;
        let (n, c, h, w) = x.dims4()?;
        let len = n * c * h * w;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let dgamma = packed.narrow(0, len, c)?;
        let dbeta = packed.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `(x, dy, y) ↦ [dx, dγ, dβ]` packed in one vector:
/// `dβ = Σ g`, `dγ = Σ g·x̂`, `dx = γ/σ · (g − dβ/M − x̂·dγ/M)`, sums over (N, H, W), where
/// `g = dy`, or `dy·[y > 0]` when the forward applied a ReLU.
struct FusedBnBackward {
    eps: f64,
    relu: bool,
    gamma: Vec<f32>,
    /// The forward's batch mean and variance; recomputed from x when absent.
    batch: Option<(Vec<f64>, Vec<f64>)>,
}

impl CustomOp3 for FusedBnBackward {
    fn name(&self) -> &'static str {
        "batchnorm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(xl)?;
        let x = contiguous_f32(xs, xl, "batchnorm backward")?;
        let dy = contiguous_f32(gs, gl, "batchnorm backward")?;
        let y = contiguous_f32(ys, yl, "batchnorm backward")?;
        // g = dy, masked by the ReLU's output sign where the forward applied one.
        let relu = self.relu;
        let g_at = |i: usize| if !relu || y[i] > 0.0 { dy[i] } else { 0.0 };
        let m = (n * hw) as f64;
        let recomputed;
        let (mean, var) = match &self.batch {
            Some((mean, var)) => (mean, var),
            None => {
                recomputed = batch_stats(x, n, c, hw);
                (&recomputed.0, &recomputed.1)
            }
        };
        let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let (dbeta, dgamma) = channel_sums(n, c, hw, |o, ch| {
            let mut a = 0f64;
            let mut b = 0f64;
            for (i, &v) in (o..o + hw).zip(&x[o..o + hw]) {
                let g = g_at(i) as f64;
                a += g;
                b += g * (v as f64 - mean[ch]) * inv_std[ch];
            }
            (a, b)
        });
        let len = n * c * hw;
        let mut out = vec![0f32; len + 2 * c];
        let (dx, tail) = out.split_at_mut(len);
        for_each_chunk(dx, c * hw, |first, chunk| {
            for (k, o) in chunk.chunks_mut(hw).enumerate() {
                let ch = k % c;
                let off = first * c * hw + k * hw;
                let k1 = self.gamma[ch] as f64 * inv_std[ch];
                let (mb, mg) = (dbeta[ch] / m, dgamma[ch] / m);
                for ((d, &v), i) in o.iter_mut().zip(&x[off..off + hw]).zip(off..) {
                    let xhat = (v as f64 - mean[ch]) * inv_std[ch];
                    *d = (k1 * (g_at(i) as f64 - mb - xhat * mg)) as f32;
                }
            }
        });
        for ch in 0..c {
            tail[ch] = dgamma[ch] as f32;
            tail[c + ch] = dbeta[ch] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
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

    /// The fused CPU path against the composed candle-ops path: outputs, statistics and all
    /// three gradients.
    #[test]
    fn fused_cpu_path_matches_composed_ops() -> Result<()> {
        let mut store = ParamStore::new(Device::Cpu);
        let bn = BatchNorm::new(&mut store, "bn", 3, BatchNormConfig::default())?;
        bn.gamma
            .set(&Tensor::new(&[1.5f32, -0.5, 2.0], &Device::Cpu)?)?;
        bn.beta
            .set(&Tensor::new(&[0.1f32, 0.2, -0.3], &Device::Cpu)?)?;
        let mut rng = crate::Rng::seed(5);
        let x = Var::from_tensor(&Tensor::from_vec(
            rng.normal_vec(4 * 3 * 5 * 2, 2.0),
            (4, 3, 5, 2),
            &Device::Cpu,
        )?)?;
        let w = Tensor::from_vec(
            rng.normal_vec(4 * 3 * 5 * 2, 1.0),
            (4, 3, 5, 2),
            &Device::Cpu,
        )?;
        let (yf, mf, vf) = bn.train_fused_cpu(&x, false)?;
        let (yo, mo, vo) = bn.train_ops(&x)?;
        assert!(max_abs_diff(&yf, &yo) < 1e-5);
        assert!(max_abs_diff(&mf, &mo) < 1e-5 && max_abs_diff(&vf, &vo) < 1e-5);
        let gf = (yf * &w)?.sum_all()?.backward()?;
        let go = (yo * &w)?.sum_all()?.backward()?;
        for t in [x.as_tensor(), bn.gamma.as_tensor(), bn.beta.as_tensor()] {
            assert!(max_abs_diff(gf.get(t).unwrap(), go.get(t).unwrap()) < 1e-4);
        }
        // With the ReLU fused in, against composed BN followed by candle's ReLU.
        let (yf, _, _) = bn.train_fused_cpu(&x, true)?;
        let yo = bn.train_ops(&x)?.0.relu()?;
        assert!(max_abs_diff(&yf, &yo) < 1e-5);
        let gf = (yf * &w)?.sum_all()?.backward()?;
        let go = (yo * &w)?.sum_all()?.backward()?;
        for t in [x.as_tensor(), bn.gamma.as_tensor(), bn.beta.as_tensor()] {
            assert!(max_abs_diff(gf.get(t).unwrap(), go.get(t).unwrap()) < 1e-4);
        }
        Ok(())
    }
}
