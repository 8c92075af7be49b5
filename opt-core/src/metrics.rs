//! Classification metrics.

use crate::{Error, Result};
use candle_core::{DType, Tensor};

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
    let mut correct = 0.0;
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
        correct += slots as f64 / (tied + 1) as f64;
    }
    Ok(correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
}
