//! Classification metrics.

use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// A sum of many f64 terms rounded once (Neumaier's compensated summation): accuracies add
/// shares like 1/10 thousands of times, and a plain sum drifts (a collapsed network on 10 000
/// images scored 0.10000000000000088, not chance).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExactSum {
    sum: f64,
    compensation: f64,
}

impl ExactSum {
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    pub fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// Expected number of rows of `logits` (`[N, C]`) whose label is among the `k` largest logits,
/// with ties broken uniformly at random.
///
/// A row whose target logit is beaten by `g` others and tied with `t` others puts the target
/// at a uniformly random rank among `g .. g + t`, so it counts `clamp(k − g, 0, t + 1) / (t + 1)`.
/// A collapsed network (all logits equal) therefore scores chance, `k / C`, never 1. NaN logits
/// are an error: they have no rank. `k` larger than `C` is an error (top-5 of a 3-class problem
/// means nothing; callers leave such metrics out).
pub fn topk_correct(logits: &Tensor, labels: &Tensor, k: usize) -> Result<f64> {
    let (n, c) = logits.dims2()?;
    if k == 0 || k > c {
        return Err(Error::Config(format!(
            "top-{k} accuracy of {c} classes: k must be in 1..={c}"
        )));
    }
    let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    let mut correct = ExactSum::default();
    for (i, (row, &label)) in logits.iter().zip(&labels).take(n).enumerate() {
        if row.iter().any(|v| v.is_nan()) {
            return Err(Error::NonFinite(format!(
                "logits of row {i} contain NaN (the network diverged)"
            )));
        }
        let target = *row.get(label as usize).ok_or_else(|| {
            Error::Config(format!("label {label} of row {i} is not below {c} classes"))
        })?;
        let greater = row.iter().filter(|&&v| v > target).count();
        let tied = row.iter().filter(|&&v| v == target).count() - 1;
        let slots = k.saturating_sub(greater).min(tied + 1);
        correct.add(slots as f64 / (tied + 1) as f64);
    }
    Ok(correct.value())
}

/// [`topk_correct`] computed where the logits are, as a 0-dim f64 tensor, so a training loop
/// on a GPU can accumulate it without a host read per step. NaN logits make the result NaN
/// (the reader at a log point reports the divergence); labels must be below the class count
/// (the dataset stage guarantees it).
pub fn topk_correct_on_device(logits: &Tensor, labels: &Tensor, k: usize) -> Result<Tensor> {
    let (_, c) = logits.dims2()?;
    if k == 0 || k > c {
        return Err(Error::Config(format!(
            "top-{k} accuracy of {c} classes: k must be in 1..={c}"
        )));
    }
    let logits = logits.to_dtype(DType::F32)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let target = logits.gather(&labels, 1)?;
    let greater = logits.broadcast_gt(&target)?.to_dtype(DType::F64)?.sum(1)?;
    // Ties include the target itself: `tied + 1` in the host formula.
    let level = logits.broadcast_eq(&target)?.to_dtype(DType::F64)?.sum(1)?;
    let slots = greater
        .affine(-1.0, k as f64)?
        .maximum(0.0)?
        .minimum(&level)?;
    let correct = (slots / level)?.sum_all()?;
    let nan = logits.ne(&logits)?.to_dtype(DType::F64)?.sum_all()?;
    let poisoned = Tensor::new(f64::NAN, logits.device())?;
    Ok(nan.gt(0.0)?.where_cond(&poisoned, &correct)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A collapsed network scores chance exactly: 1/10 of 10 000 images is 0.1, not
    /// 0.10000000000000088, in batches as in one go.
    #[test]
    fn chance_accuracy_is_exactly_chance() -> Result<()> {
        let n = 10_000;
        let logits = Tensor::zeros((n, 10), DType::F32, &Device::Cpu)?;
        let labels = Tensor::zeros(n, DType::U32, &Device::Cpu)?;
        assert_eq!(topk_correct(&logits, &labels, 1)? / n as f64, 0.1);
        let mut batches = ExactSum::default();
        for start in (0..n).step_by(64) {
            let len = 64.min(n - start);
            let share = topk_correct(
                &logits.narrow(0, start, len)?,
                &labels.narrow(0, start, len)?,
                1,
            )?;
            batches.add(share);
        }
        assert_eq!(batches.value() / n as f64, 0.1);
        // The plain sum the accumulator replaces is what drifted.
        let plain: f64 = (0..n).map(|_| 0.1).sum();
        assert_ne!(plain / n as f64, 0.1);
        Ok(())
    }

    #[test]
    fn counts_top1_and_top2() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[[0.1f32, 0.7, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]],
            &dev,
        )?;
        let labels = Tensor::new(&[1u32, 1, 0], &dev)?;
        assert_eq!(topk_correct(&logits, &labels, 1)?, 1.0);
        assert_eq!(topk_correct(&logits, &labels, 2)?, 2.0);
        assert_eq!(topk_correct(&logits, &labels, 3)?, 3.0);
        Ok(())
    }

    /// A collapsed network (uniform logits) scores chance: k/C, not 1.
    #[test]
    fn uniform_logits_score_chance() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((4, 10), DType::F32, &dev)?;
        let labels = Tensor::new(&[0u32, 3, 7, 9], &dev)?;
        assert!((topk_correct(&logits, &labels, 1)? - 4.0 * 0.1).abs() < 1e-12);
        assert!((topk_correct(&logits, &labels, 5)? - 4.0 * 0.5).abs() < 1e-12);
        Ok(())
    }

    /// Partial ties: the target shares its value with others straddling the top-k boundary.
    #[test]
    fn partial_ties_count_their_share() -> Result<()> {
        let dev = Device::Cpu;
        // Target (index 0) is beaten by one logit and tied with two others: ranks 1, 2 or 3
        // (0-based) with probability 1/3 each. Top-1: 0; top-2: 1/3; top-3: 2/3; top-4: 1.
        let logits = Tensor::new(&[[0.5f32, 0.9, 0.5, 0.5, 0.1]], &dev)?;
        let labels = Tensor::new(&[0u32], &dev)?;
        let expect = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0];
        for (k, e) in (1..=5).zip(expect) {
            assert!(
                (topk_correct(&logits, &labels, k)? - e).abs() < 1e-12,
                "k = {k}"
            );
        }
        Ok(())
    }

    #[test]
    fn nan_logits_and_oversized_k_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let labels = Tensor::new(&[0u32], &dev)?;
        let nan = Tensor::new(&[[0.1f32, f32::NAN, 0.2]], &dev)?;
        assert!(matches!(
            topk_correct(&nan, &labels, 1),
            Err(Error::NonFinite(_))
        ));
        let ok = Tensor::new(&[[0.1f32, 0.3, 0.2]], &dev)?;
        assert!(matches!(
            topk_correct(&ok, &labels, 5),
            Err(Error::Config(_))
        ));
        Ok(())
    }

    /// The on-device count equals the host count, ties and all, for every k; NaN logits give NaN.
    #[test]
    fn on_device_count_equals_the_host_count() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[
                [1f32, 2., 2., 0.],
                [5., 5., 5., 5.],
                [0., 1., 2., 3.],
                [3., 1., 3., 3.],
            ],
            &dev,
        )?;
        let labels = Tensor::new(&[1u32, 0, 3, 0], &dev)?;
        for k in 1..=4 {
            let host = topk_correct(&logits, &labels, k)?;
            let device = topk_correct_on_device(&logits, &labels, k)?.to_scalar::<f64>()?;
            assert_eq!(host, device, "k = {k}");
        }
        let nan = Tensor::new(&[[1f32, f32::NAN], [0., 1.]], &dev)?;
        let got = topk_correct_on_device(&nan, &Tensor::new(&[0u32, 1], &dev)?, 1)?;
        assert!(got.to_scalar::<f64>()?.is_nan());
        Ok(())
    }
}
