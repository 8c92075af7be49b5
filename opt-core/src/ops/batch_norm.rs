//! Training-mode batch normalisation (+ReLU) as one op: `(x, γ, β) ↦ [y, mean, var]` packed in
//! one vector, so the batch statistics the moving averages need leave the op as an output on
//! any device (no side channel). Biased variance over (N, H, W), as the official TF code.
//!
//! The CPU path makes one fused pass forward and one backward (the composed version spends
//! most of its time in strided reductions and broadcast gradients); the CUDA path runs a
//! per-channel reduction kernel and an element-wise kernel each way. The backward reads the
//! statistics from the packed output. [`batch_norm_train_composed`] is the oracle.

use super::contiguous_f32;
use crate::par::{for_each_chunk, map_ranges};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `(x, γ, β) ↦ [y, batch mean, batch biased variance]`, `y = relu?(γ·(x − mean)/√(var + eps) + β)`.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormTrain {
    pub eps: f64,
    /// Apply `max(0, ·)` to `y` (and mask the gradient by `y > 0`).
    pub relu: bool,
}

/// Training-mode BN of `x` (`[n, c, h, w]`) with per-channel `gamma`, `beta`: returns `y` and the
/// batch mean and biased variance (`[c]`, detached). [`batch_norm_train_fused`] where the
/// device's routes say so, else [`batch_norm_train_composed`].
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    if super::routes::routes(x.device()).fused(super::FusedOp::BatchNorm) {
        batch_norm_train_fused(x, gamma, beta, eps, relu)
    } else {
        batch_norm_train_composed(x, gamma, beta, eps, relu)
    }
}

/// The fused op: f32 through [`BatchNormTrain`] on every device; other dtypes through
/// [`batch_norm_train_composed`].
pub fn batch_norm_train_fused(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let all_f32 = [x, gamma, beta].iter().all(|t| t.dtype() == DType::F32);
    if !all_f32 {
        return batch_norm_train_composed(x, gamma, beta, eps, relu);
    }
    let (n, c, h, w) = x.dims4()?;
    let len = n * c * h * w;
    let fused = || {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            BatchNormTrain { eps, relu },
        )
    };
    let packed = (|| {
        fail::fail_point!("ops::batch_norm", |a| super::injected(
            "ops::batch_norm",
            a,
            fused
        ));
        fused()
    })()?;
    let y = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
    let mean = packed.narrow(0, len, c)?.detach();
    let var = packed.narrow(0, len + c, c)?.detach();
    Ok((y, mean, var))
}

/// The same from candle's elementary ops (any device and dtype; autograd through every node).
pub fn batch_norm_train_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
    let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
    let y = centered
        .broadcast_mul(&inv_std)?
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

impl CustomOp3 for BatchNormTrain {
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
    ) -> Result<(CpuStorage, Shape)> {
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
        let len = n * c * hw;
        let mut out = vec![0f32; len + 2 * c];
        let (ys, stats) = out.split_at_mut(len);
        for_each_chunk(ys, c * hw, |first, chunk| {
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
        for ch in 0..c {
            stats[ch] = mean[ch] as f32;
            stats[c + ch] = var[ch] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, hw) = dims(xl)?;
        let out = super::cuda::batch_norm_forward(
            (xs, xl),
            (gs, gl),
            (bs, bl),
            (n, c, hw),
            self.eps,
            self.relu,
        )?;
        Ok((out, Shape::from(n * c * hw + 2 * c)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = BatchNormTrainBackward {
            eps: self.eps,
            relu: self.relu,
            gamma: gamma.detach(),
        };
        let packed = x.detach().contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &res.detach().contiguous()?,
            &op,
        )?;
        let (n, c, h, w) = x.dims4()?;
        let len = n * c * h * w;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let dgamma = packed.narrow(0, len, c)?;
        let dbeta = packed.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `(x, d[y, mean, var], [y, mean, var]) ↦ [dx, dγ, dβ]` packed in one vector:
/// `dβ = Σ g`, `dγ = Σ g·x̂`, `dx = γ/σ · (g − dβ/M − x̂·dγ/M)`, sums over (N, H, W), where
/// `g = dy`, or `dy·[y > 0]` when the forward applied a ReLU. The statistics' own gradients
/// are ignored (they leave the forward detached).
struct BatchNormTrainBackward {
    eps: f64,
    relu: bool,
    /// `γ`, on the op's device (read there, never copied to the host by the CUDA path).
    gamma: Tensor,
}

impl CustomOp3 for BatchNormTrainBackward {
    fn name(&self) -> &'static str {
        "batchnorm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(xl)?;
        let len = n * c * hw;
        let x = contiguous_f32(xs, xl, "batchnorm backward")?;
        let dy = &contiguous_f32(gs, gl, "batchnorm backward")?[..len];
        let res = contiguous_f32(rs, rl, "batchnorm backward")?;
        let (y, stats) = res.split_at(len);
        let gamma: Vec<f32> = self.gamma.to_vec1()?;
        // g = dy, masked by the ReLU's output sign where the forward applied one.
        let relu = self.relu;
        let m = (n * hw) as f64;
        let mean: Vec<f32> = stats[..c].to_vec();
        let inv_std: Vec<f64> = stats[c..2 * c]
            .iter()
            .map(|&v| 1.0 / (v as f64 + self.eps).sqrt())
            .collect();
        // Σg and Σg·(x − mean) per channel; Σg·x̂ is the second times 1/σ.
        let (dbeta, centered) = channel_sums(n, c, hw, |o, ch| {
            let mask = relu.then(|| &y[o..o + hw]);
            grad_sums(&x[o..o + hw], &dy[o..o + hw], mask, mean[ch])
        });
        let dgamma: Vec<f64> = centered.iter().zip(&inv_std).map(|(s, i)| s * i).collect();
        let mut out = vec![0f32; len + 2 * c];
        let (dx, tail) = out.split_at_mut(len);
        for_each_chunk(dx, c * hw, |first, chunk| {
            for (k, o) in chunk.chunks_mut(hw).enumerate() {
                let ch = k % c;
                let off = first * c * hw + k * hw;
                // dx = γ/σ·(g − Σg/M − x̂·Σg·x̂/M) = a·g − b·(x − mean) − d
                let k1 = gamma[ch] as f64 * inv_std[ch];
                let a = k1 as f32;
                let b = (k1 * dgamma[ch] / m * inv_std[ch]) as f32;
                let d = (k1 * dbeta[ch] / m) as f32;
                let mu = mean[ch];
                let (xs, gs) = (&x[off..off + hw], &dy[off..off + hw]);
                if relu {
                    let ys = &y[off..off + hw];
                    for (((o, &v), &g), &yv) in o.iter_mut().zip(xs).zip(gs).zip(ys) {
                        let g = if yv > 0.0 { g } else { 0.0 };
                        *o = a * g - b * (v - mu) - d;
                    }
                } else {
                    for ((o, &v), &g) in o.iter_mut().zip(xs).zip(gs) {
                        *o = a * g - b * (v - mu) - d;
                    }
                }
            }
        });
        for ch in 0..c {
            tail[ch] = dgamma[ch] as f32;
            tail[c + ch] = dbeta[ch] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        rs: &candle_core::CudaStorage,
        rl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, hw) = dims(xl)?;
        let gamma = self.gamma.contiguous()?;
        let (storage, gamma_l) = gamma.storage_and_layout();
        let gamma_s = match &*storage {
            candle_core::Storage::Cuda(s) => s,
            _ => candle_core::bail!("batchnorm backward: γ is not on the CUDA device"),
        };
        let out = super::cuda::batch_norm_backward(
            (xs, xl),
            (gs, gl),
            (rs, rl),
            (gamma_s, gamma_l),
            (n, c, hw),
            self.eps,
            self.relu,
        )?;
        Ok((out, Shape::from(n * c * hw + 2 * c)))
    }
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
/// centred squares) for accuracy: f32 lanes within a row, f64 across rows.
fn batch_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * hw) as f64;
    let (sum, _) = channel_sums(n, c, hw, |o, _| (lane_sum(&x[o..o + hw], |v| v), 0.0));
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let (sq, _) = channel_sums(n, c, hw, |o, ch| {
        let mu = mean[ch] as f32;
        (lane_sum(&x[o..o + hw], |v| (v - mu) * (v - mu)), 0.0)
    });
    (mean, sq.iter().map(|s| s / m).collect())
}

/// Independent f32 accumulators per row: wide enough for the compiler to keep them in vector
/// registers (a single f64 accumulator serialises every add on its latency).
const LANES: usize = 16;

/// `Σ f(v)` over a row, in [`LANES`] f32 partial sums combined in f64. One row is one image's
/// channel (≤ a few thousand values), so the f32 partials stay accurate to ~1e-6 relative.
#[inline]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v) as f64).sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// `(Σ g, Σ g·(x − mean))` over a row, `g = dy` masked by `y > 0` where a ReLU was applied.
#[inline]
fn grad_sums(x: &[f32], dy: &[f32], relu_out: Option<&[f32]>, mean: f32) -> (f64, f64) {
    match relu_out {
        Some(y) => grad_sums_with(x, dy, |i, g| if y[i] > 0.0 { g } else { 0.0 }, mean),
        None => grad_sums_with(x, dy, |_, g| g, mean),
    }
}

#[inline]
fn grad_sums_with(
    x: &[f32],
    dy: &[f32],
    mask: impl Fn(usize, f32) -> f32,
    mean: f32,
) -> (f64, f64) {
    let (mut sg, mut sgx) = ([0f32; LANES], [0f32; LANES]);
    let full = x.len() / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        let (xs, gs) = (&x[base..base + LANES], &dy[base..base + LANES]);
        for j in 0..LANES {
            let g = mask(base + j, gs[j]);
            sg[j] += g;
            sgx[j] += g * (xs[j] - mean);
        }
    }
    let (mut tg, mut tgx) = (0f64, 0f64);
    for i in full..x.len() {
        let g = mask(i, dy[i]);
        tg += g as f64;
        tgx += (g * (x[i] - mean)) as f64;
    }
    let total = |a: [f32; LANES]| a.iter().map(|&v| v as f64).sum::<f64>();
    (total(sg) + tg, total(sgx) + tgx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    /// The op against the composed candle-ops formulation: outputs, statistics and all three
    /// gradients, with and without the fused ReLU.
    #[test]
    fn op_matches_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let gamma = Var::from_tensor(&Tensor::new(&[1.5f32, -0.5, 2.0], &dev)?)?;
        let beta = Var::from_tensor(&Tensor::new(&[0.1f32, 0.2, -0.3], &dev)?)?;
        let mut rng = crate::Rng::seed(5);
        let x = Var::from_tensor(&Tensor::from_vec(
            rng.normal_vec(4 * 3 * 5 * 2, 2.0),
            (4, 3, 5, 2),
            &dev,
        )?)?;
        let w = Tensor::from_vec(rng.normal_vec(4 * 3 * 5 * 2, 1.0), (4, 3, 5, 2), &dev)?;
        for relu in [false, true] {
            let (yf, mf, vf) = batch_norm_train(&x, &gamma, &beta, 1e-3, relu)?;
            let (yo, mo, vo) = batch_norm_train_composed(&x, &gamma, &beta, 1e-3, relu)?;
            assert!(max_abs_diff(&yf, &yo) < 1e-5);
            assert!(max_abs_diff(&mf, &mo) < 1e-5 && max_abs_diff(&vf, &vo) < 1e-5);
            // The statistics are part of the loss here too: their gradients must not leak.
            let lf = ((yf * &w)?.sum_all()? + (mf.sum_all()? + vf.sum_all()?)?)?;
            let gf = lf.backward()?;
            let go = (yo * &w)?.sum_all()?.backward()?;
            for t in [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()] {
                let d = max_abs_diff(gf.get(t).unwrap(), go.get(t).unwrap());
                assert!(d < 1e-4, "relu {relu}: gradient differs by {d}");
            }
        }
        Ok(())
    }
}
